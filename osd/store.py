"""The chunk store: every chunk of one data directory, its index and its open files.

Chunk ``(ino, chunk_index)`` lives at ``chunks/<ino % 256 as 2 hex>/<ino hex>/<chunk_index>``
under the data directory, in the format of `osd.chunkfile`.

Concurrency rules:
- Every operation on one chunk runs under that chunk's lock (`KeyedLocks`), for
  its whole duration including the thread that does the I/O.  An open fd is
  only used under its chunk's lock, so the LRU may close any fd whose chunk is
  not locked.
- Blocking work runs in `trio.to_thread.run_sync` with the store's own
  `CapacityLimiter`.  The exception is a read of at most CACHED_READ_MAX
  bytes (a whole chunk of the default 1 MiB unit) whose pages are all cached: a
  ``preadv(RWF_NOWAIT)`` and the CRC of its blocks, done on the trio thread.
  A 4 KiB random read spends more on the hop to a thread and back than on the
  read; a cached 1 MiB chunk costs about 0.1 ms of copying here, and taking
  it off the thread hop cut the OSDs' CPU of a warm 1 GiB sequential read from
  0.61 to 0.53 ms per MiB.  Those threads are not abandoned on cancellation, so the
  in-memory index is always updated right after the thread that changed the
  disk, with no checkpoint in between.
- `sync_file` of one inode runs under that inode's sync lock, so a second caller
  waits for the fsyncs already in flight instead of returning early.

The index (ino -> chunk_index -> length and version) is rebuilt at start by
reading every chunk header; `stat`, `list_chunks`, `truncate_file` and
`delete_file` work from it.

Limitations:
- The index is in memory: about 200 bytes per chunk, and the start-up scan
  reads every header.  Fine for the chunk counts of a test cluster; a
  persistent index is the fix when start-up time or memory starts to matter.
- Reads of one chunk are serialised with each other (one lock per chunk).
"""

import errno
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass

import trio

from loomproto import errors

from . import checksum, chunkfile
from .locks import KeyedLocks
from .writeback import start_writeback

log = logging.getLogger(__name__)

CHUNKS_DIR = "chunks"
IO_THREADS = 8
MAX_OPEN_FILES = 256
CACHED_READ_MAX = 1 << 20  # reads up to this may skip the thread hop
TMP_SUFFIX = ".recv"


class OutOfSequence(Exception):
    """A replicated write does not follow this copy's version (`have`)."""

    def __init__(self, have: int):
        super().__init__(f"copy is at version {have}")
        self.have = have


@dataclass
class ChunkMeta:
    length: int
    version: int
    corrupt: bool = False


@dataclass
class _Handle:
    fd: int
    header: chunkfile.ChunkHeader
    path: str


async def _nothing_to_do() -> None:
    """The checkpoint of an operation that found nothing to do (no I/O).  A free
    chunk lock is taken without one (osd.locks), and loops over many chunks
    (a scrub, a delete, a truncate of chunks cut before, recovery's removals)
    must still let the other tasks run between them."""
    await trio.lowlevel.checkpoint()


def _where(ino: int, chunk_index: int) -> chunkfile.ChunkName:
    return chunkfile.ChunkName(ino, chunk_index)


class ChunkStore:
    def __init__(self, data_dir: str, io_threads: int = IO_THREADS,
                 max_open: int = MAX_OPEN_FILES):
        self.root = os.path.join(data_dir, CHUNKS_DIR)
        self.max_open = max_open
        self.index: dict[int, dict[int, ChunkMeta]] = {}
        self.used = 0
        self.chunk_count = 0
        self._limiter = trio.CapacityLimiter(io_threads)
        self._locks = KeyedLocks()
        self._sync_locks = KeyedLocks()
        self._handles: OrderedDict[tuple, _Handle] = OrderedDict()
        self._dirty: dict[int, set[int]] = {}  # ino -> chunk indexes written since sync
        self._dirty_dirs: dict[int, set[str]] = {}  # ino -> directories with new entries
        # ino -> chunks whose fsync failed here, until a copy replaces them (sync_file)
        self._sync_failed: dict[int, set[int]] = {}

    # -- paths and lifecycle --------------------------------------------------

    def ino_dir(self, ino: int) -> str:
        return os.path.join(self.root, f"{ino % 256:02x}", f"{ino:x}")

    def chunk_path(self, ino: int, chunk_index: int) -> str:
        return os.path.join(self.ino_dir(ino), str(chunk_index))

    async def open(self) -> None:
        """Create the chunk directory if needed and rebuild the index from disk."""
        os.makedirs(self.root, exist_ok=True)
        found = await trio.to_thread.run_sync(_scan, self.root, limiter=self._limiter)
        for (ino, chunk_index), meta in found.items():
            self._set_meta(ino, chunk_index, meta)
        log.info("chunk store %s: %d chunks, %d bytes, checksums by %s", self.root,
                 self.chunk_count, self.used, checksum.IMPLEMENTATION)

    def close(self) -> None:
        while self._handles:
            _, handle = self._handles.popitem()
            os.close(handle.fd)

    # -- index ----------------------------------------------------------------

    def meta(self, ino: int, chunk_index: int) -> ChunkMeta | None:
        return self.index.get(ino, {}).get(chunk_index)

    def _set_meta(self, ino: int, chunk_index: int, meta: ChunkMeta | None) -> None:
        chunks = self.index.setdefault(ino, {})
        old = chunks.pop(chunk_index, None)
        if old is not None:
            self.used -= old.length
            self.chunk_count -= 1
        if meta is not None:
            if chunk_index in self._sync_failed.get(ino, ()):
                meta.corrupt = True  # written on top: still not known to be on disk
            chunks[chunk_index] = meta
            self.used += meta.length
            self.chunk_count += 1
        if not chunks:
            del self.index[ino]

    def list_chunks(self, ino: int | None, after: tuple | None, limit: int) -> list:
        if ino is None:
            keys = sorted((i, c) for i, chunks in self.index.items() for c in chunks)
        else:
            keys = [(ino, c) for c in sorted(self.index.get(ino, {}))]
        if after is not None:
            keys = [key for key in keys if key > after]
        rows = []
        for key in keys[:limit]:
            meta = self.meta(*key)
            rows.append([key[0], key[1], meta.length, meta.version])
        return rows

    # -- blocking work and open files -----------------------------------------

    async def _io(self, path: str, fn, *args):
        """Run `fn` in an I/O thread and turn OSError into a typed error."""
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except OSError as exc:
            raise _typed_os_error(exc, path) from None

    async def _handle(self, ino: int, chunk_index: int, create: bool) -> _Handle | None:
        """The open file of a chunk; None if it does not exist and `create` is false.

        The caller holds the chunk's lock.
        """
        key = (ino, chunk_index)
        handle = self._handles.get(key)
        if handle is not None:
            self._handles.move_to_end(key)
            return handle
        path = self.chunk_path(ino, chunk_index)
        if self.meta(ino, chunk_index) is not None:
            fd, header = await self._io(path, _open_chunk, path, _where(ino, chunk_index))
        elif create:
            fd, header, new_dirs = await self._io(path, _create_chunk, path, None, 0,
                                                  _where(ino, chunk_index))
            self._set_meta(ino, chunk_index, ChunkMeta(0, 0))
            self._dirty_dirs.setdefault(ino, set()).update(new_dirs)
        else:
            return None

        return self._adopt(key, fd, header, path)

    def _adopt(self, key: tuple, fd: int, header, path: str) -> _Handle:
        """Keep a chunk's fd that an I/O thread opened (the caller holds its lock)."""
        handle = self._handles[key] = _Handle(fd, header, path)
        self._evict()
        return handle

    def _evict(self) -> None:
        """Close least recently used fds of unlocked chunks down to `max_open`."""
        excess = len(self._handles) - self.max_open
        if excess <= 0:
            return
        victims = []
        for key in self._handles:  # oldest first; stops at the first few unlocked
            if not self._locks.busy(key):
                victims.append(key)
                if len(victims) == excess:
                    break
        for key in victims:
            os.close(self._handles.pop(key).fd)

    def _drop_handle(self, key: tuple) -> None:
        handle = self._handles.pop(key, None)
        if handle is not None:
            os.close(handle.fd)

    # -- operations -----------------------------------------------------------

    async def read(self, ino: int, chunk_index: int, offset: int, length: int):
        """``(data, version)`` of a byte range; ``(b"", 0)`` if the chunk is absent."""
        key = (ino, chunk_index)
        async with self._locks.hold(key):
            where = _where(ino, chunk_index)
            handle = self._handles.get(key)
            if handle is None:
                if self.meta(ino, chunk_index) is None:
                    await _nothing_to_do()
                    return b"", 0
                # Opened and read in one trip to an I/O thread: a cold small
                # file's read would otherwise take two.
                path = self.chunk_path(ino, chunk_index)
                fd, header, data = await self._io(path, _open_and_read, path, offset, length,
                                                  where)
                self._adopt(key, fd, header, path)
                return data, header.version
            self._handles.move_to_end(key)
            data = None
            if length <= CACHED_READ_MAX:
                data = self._read_cached(handle, offset, length, where)
            if data is None:
                data = await self._io(handle.path, chunkfile.read, handle.fd, handle.header,
                                      offset, length, where)
            return data, handle.header.version

    def _read_cached(self, handle: _Handle, offset: int, length: int,
                     where: chunkfile.ChunkName):
        """A small read served on the trio thread when the page cache holds it
        (no thread hop); None when it needs the disk."""
        try:
            return chunkfile.read_cached(handle.fd, handle.header, offset, length, where)
        except OSError as exc:
            raise _typed_os_error(exc, handle.path) from None

    async def write(self, ino: int, chunk_index: int, offset: int, data,
                    version: int | None = None, sequential: bool = False) -> int:
        """Apply a write; returns the chunk's new version (`version` if given).

        With `sequential` (a replica applying the primary's write) the write
        lands only on top of version ``version - 1``; otherwise `OutOfSequence`
        tells the version this copy has (0: absent or corrupt).
        """
        async with self._locks.hold((ino, chunk_index)):
            if sequential:
                meta = self.meta(ino, chunk_index)
                have = 0 if meta is None or meta.corrupt else meta.version
                if have != version - 1:
                    raise OutOfSequence(have)
            if offset == 0 and self.meta(ino, chunk_index) is None:
                return await self._write_new(ino, chunk_index, data, version or 1)

            key = (ino, chunk_index)
            where = _where(ino, chunk_index)
            handle = self._handles.get(key)
            if handle is None and self.meta(ino, chunk_index) is not None:
                # Opened and written in one trip to an I/O thread, as reads are.
                path = self.chunk_path(ino, chunk_index)
                fd, header = await self._io(path, _open_and_write, path, offset, data,
                                            version, where)
                handle = self._adopt(key, fd, header, path)
            else:
                handle = await self._handle(ino, chunk_index, create=True)
                if version is None:
                    version = handle.header.version + 1
                header = await self._io(handle.path, _write_chunk, handle.fd, handle.header,
                                        offset, data, version, where)

            # No checkpoint from here on: the index follows the disk at once.
            handle.header = header
            self._set_meta(ino, chunk_index, ChunkMeta(header.length, header.version))
            self._dirty.setdefault(ino, set()).add(chunk_index)
            return header.version

    async def _write_new(self, ino: int, chunk_index: int, data, version: int) -> int:
        """The first write of an absent chunk, at offset 0: created and written in
        one trip to an I/O thread (the common case of sequential writes).  The
        caller holds the chunk's lock."""
        key = (ino, chunk_index)
        path = self.chunk_path(ino, chunk_index)
        fd, header, new_dirs = await self._io(path, _create_chunk, path, data, version,
                                              _where(ino, chunk_index))

        # No checkpoint from here on: the index follows the disk at once.
        self._handles[key] = _Handle(fd, header, path)
        self._set_meta(ino, chunk_index, ChunkMeta(header.length, header.version))
        self._dirty_dirs.setdefault(ino, set()).update(new_dirs)
        self._dirty.setdefault(ino, set()).add(chunk_index)
        self._evict()
        return header.version

    async def replace(self, ino: int, chunk_index: int, data, version: int,
                      only_if_newer: bool = True) -> bool:
        """Install a whole chunk copied from another replica (recovery, repair).

        The copy is written to a temporary file, fsynced and renamed over the
        chunk, so a crash leaves either the old or the new copy.  With
        `only_if_newer` it is refused (returns False) when the local copy's
        version is at or past `version` and the local copy is not corrupt.
        """
        key = (ino, chunk_index)
        async with self._locks.hold(key):
            meta = self.meta(ino, chunk_index)
            if only_if_newer and meta is not None and not meta.corrupt \
                    and meta.version >= version:
                return False
            path = self.chunk_path(ino, chunk_index)
            self._drop_handle(key)
            fd, header, new_dirs = await self._io(path, _replace_chunk, path, data, version,
                                                  _where(ino, chunk_index))

            # No checkpoint from here on: the index follows the disk at once.
            self._handles[key] = _Handle(fd, header, path)
            self._sync_cleared(ino, chunk_index)  # the copy was fsynced before its rename
            self._set_meta(ino, chunk_index, ChunkMeta(header.length, header.version))
            self._dirty_dirs.setdefault(ino, set()).update(new_dirs)
            self._evict()
            return True

    async def remove_chunk(self, ino: int, chunk_index: int) -> None:
        """Drop one chunk (moved elsewhere by recovery or rebalance)."""
        await self._remove_chunk(ino, chunk_index)
        if ino not in self.index:
            await self._io(self.ino_dir(ino), _rmdir_quietly, self.ino_dir(ino))

    def _sync_cleared(self, ino: int, chunk_index: int) -> None:
        failed = self._sync_failed.get(ino)
        if failed is not None:
            failed.discard(chunk_index)
            if not failed:
                del self._sync_failed[ino]

    def mark_corrupt(self, ino: int, chunk_index: int) -> None:
        meta = self.meta(ino, chunk_index)
        if meta is not None:
            meta.corrupt = True

    async def verify(self, ino: int, chunk_index: int) -> bool | None:
        """Read the whole chunk from its file and check every block; False (and
        marked corrupt) if it fails its checks or its file is gone from the disk,
        None if it cannot be read for another reason (left as it is, reported)."""
        key = (ino, chunk_index)
        async with self._locks.hold(key):
            self._drop_handle(key)  # the file as it is now, not one kept open
        try:
            await self.read(ino, chunk_index, 0, chunkfile.MAX_CHUNK)
            if chunk_index in self._sync_failed.get(ino, ()):
                # It reads back from the page cache; what its disk holds is unknown.
                raise errors.Corrupt(f"ino {ino} chunk {chunk_index}: its fsync failed")
        except errors.Corrupt as exc:
            log.error("scrub: %s", exc)
        except errors.IOFailure as exc:
            if os.path.exists(self.chunk_path(ino, chunk_index)):
                # A failure that may pass (EMFILE, one EIO): marked corrupt, the copy
                # could be replaced by an older one of another replica.
                log.error("scrub: %s: %s, left as it is", _where(ino, chunk_index), exc)
                return None
            log.error("scrub: %s: its file is gone", _where(ino, chunk_index))
        else:
            return True
        self.mark_corrupt(ino, chunk_index)
        return False

    async def truncate_file(self, ino: int, size: int, unit: int,
                            every: bool = False) -> dict[int, int]:
        """Cut every chunk to what lies below `size`; idempotent.  Returns
        ``{chunk_index: new version}`` of the chunks this call cut, and with
        `every` of every chunk at or past `size` (cut now or before).

        A chunk wholly past `size` is cut to nothing, not removed: the empty
        copy keeps its version, one higher than before the cut.  A replica
        that missed the truncate (it was down) still holds the old version
        and so loses to the cut copy, in recovery and in read checks; had the
        chunk been removed, the stale copy would be the newest one left.
        Only `delete_file` (the inode is gone for good) removes chunks.
        """
        cut = {}
        for chunk_index in sorted(self.index.get(ino, {})):
            start = chunk_index * unit
            if start + unit > size:
                version = await self._cut_chunk(ino, chunk_index, max(0, size - start))
                if version is None and every:
                    meta = self.meta(ino, chunk_index)
                    version = None if meta is None else meta.version
                if version is not None:
                    cut[chunk_index] = version
        return cut

    async def _cut_chunk(self, ino: int, chunk_index: int, size: int) -> int | None:
        async with self._locks.hold((ino, chunk_index)):
            meta = self.meta(ino, chunk_index)
            if meta is None or meta.length <= size:
                await _nothing_to_do()
                return None
            handle = await self._handle(ino, chunk_index, create=False)
            version = handle.header.version + 1
            where = _where(ino, chunk_index)
            header = await self._io(handle.path, chunkfile.truncate, handle.fd,
                                    handle.header, size, version, where)

            handle.header = header
            self._set_meta(ino, chunk_index, ChunkMeta(header.length, header.version))
            self._dirty.setdefault(ino, set()).add(chunk_index)
            return header.version

    async def _remove_chunk(self, ino: int, chunk_index: int) -> None:
        async with self._locks.hold((ino, chunk_index)):
            if self.meta(ino, chunk_index) is None:
                await _nothing_to_do()
                return
            key = (ino, chunk_index)
            path = self.chunk_path(ino, chunk_index)
            self._drop_handle(key)
            await self._io(path, _unlink_quietly, path)
            self._sync_cleared(ino, chunk_index)
            self._set_meta(ino, chunk_index, None)
            self._dirty.get(ino, set()).discard(chunk_index)

    async def delete_file(self, ino: int) -> None:
        """Remove every chunk of the inode and its directory; idempotent."""
        await self.delete_files([ino])

    async def delete_files(self, inos: list[int]) -> None:
        """`delete_file` of each inode; the directories go in one I/O-thread trip
        (a reclaim names every inode on every OSD, most of them absent here)."""
        for ino in inos:
            for chunk_index in sorted(self.index.get(ino, {})):
                await self._remove_chunk(ino, chunk_index)
        dirs = []
        for ino in inos:
            if ino not in self.index:
                self._dirty.pop(ino, None)
                self._dirty_dirs.pop(ino, None)
                dirs.append(self.ino_dir(ino))
        if dirs:
            await self._io(dirs[0], _rmdirs_quietly, dirs)

    async def sync_file(self, ino: int) -> None:
        """fsync every chunk of `ino` written since its last sync, then the new
        directory entries, deepest first.

        A failed fsync fails every later sync of the inode too, until each chunk
        it covered (every chunk of the inode, when a directory failed) is
        replaced by a copy from another replica (`replace`, which fsyncs before
        it renames) or removed.  Linux reports a writeback error
        to one fsync only and marks the pages clean, so trying again would
        return success over data that may never have reached the disk.  The
        chunks are also marked corrupt: their version counts for nothing, so
        recovery, scrub and the next read or write through them copy a
        replica's (with one replica there is none, and the page cache's bytes
        are served as they are).
        """
        async with self._sync_locks.hold(ino):
            failed = self._sync_failed.get(ino)
            if failed:
                raise errors.IOFailure(f"ino {ino}: an fsync of chunks {sorted(failed)} "
                                       f"failed on this osd, and no copy replaced them yet")
            chunks = self._dirty.pop(ino, set())
            dirs = self._dirty_dirs.pop(ino, set())
            paths = {self.chunk_path(ino, c): c for c in sorted(chunks)}
            ordered_dirs = sorted(dirs, key=len, reverse=True)
            try:
                failures = await self._io(self.ino_dir(ino), _fsync_each, list(paths),
                                          ordered_dirs)
            except errors.LoomError:  # not an fsync's failure: all may be tried again
                self._dirty.setdefault(ino, set()).update(chunks)
                self._dirty_dirs.setdefault(ino, set()).update(dirs)
                raise
            if failures:
                self._sync_failures(ino, paths, dirs, failures)
        log.debug("synced ino %d: %d chunks, %d directories", ino, len(paths), len(dirs))

    def _sync_failures(self, ino: int, paths: dict, dirs: set, failures: list) -> None:
        """After failed fsyncs: which chunks stay failed, then the error to raise.
        A chunk file's failure fails that chunk; a directory's fails every chunk
        of the inode (the names in it may be lost), and the directories are
        fsynced again by the sync after the chunks are replaced."""
        bad = {paths[path] for path, _ in failures if path in paths}
        if any(path not in paths for path, _ in failures):
            bad.update(self.index.get(ino, {}))
            self._dirty_dirs.setdefault(ino, set()).update(dirs)
        bad = {c for c in bad if self.meta(ino, c) is not None}
        if bad:
            self._sync_failed.setdefault(ino, set()).update(bad)
            for chunk_index in bad:
                self.mark_corrupt(ino, chunk_index)
        log.error("fsync of ino %d failed on %s; chunks %s wait for a replica's copy",
                  ino, [path for path, _ in failures], sorted(bad))
        path, exc = failures[0]
        raise _typed_os_error(exc, path)


def _typed_os_error(exc: OSError, path: str) -> errors.LoomError:
    if chunkfile.is_no_space(exc):
        log.warning("no space left writing %s", path)
        return errors.NoSpace(f"no space left on osd for {os.path.basename(path)}")
    log.error("I/O error on %s: %s", path, exc)
    return errors.IOFailure(f"i/o error on osd: {exc.strerror or exc}")


# -- blocking helpers (run in I/O threads) ----------------------------------------


def _open_chunk(path: str, where: chunkfile.ChunkName):
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        return fd, chunkfile.load(fd, where)
    except BaseException:
        os.close(fd)
        raise


def _open_and_read(path: str, offset: int, length: int, where: chunkfile.ChunkName):
    """``(fd, header, data)``: a chunk opened and `length` bytes read at `offset`."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        return (fd, *chunkfile.load_and_read(fd, offset, length, where))
    except BaseException:
        os.close(fd)
        raise


def _open_and_write(path: str, offset: int, data, version: int | None,
                    where: chunkfile.ChunkName):
    """``(fd, header)``: a chunk opened and written (at its next version unless
    `version` is given)."""
    fd, header = _open_chunk(path, where)
    try:
        if version is None:
            version = header.version + 1
        return fd, _write_chunk(fd, header, offset, data, version, where)
    except BaseException:
        os.close(fd)
        raise


def _make_dirs(path: str) -> list[str]:
    """mkdir -p for a chunk's directory; returns the directories whose entries
    change: `path` itself (the new chunk file) and the parent of each new one."""
    missing = []
    probe = path
    while not os.path.isdir(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            pass  # a concurrent create of another chunk of the same bucket
    return [path] + [os.path.dirname(directory) for directory in missing]


def _create_chunk(path: str, data, version: int, where: chunkfile.ChunkName):
    """Create a chunk file, empty or holding `data` at `version`; returns
    ``(fd, header, dirs with new entries)``.  A failure (ENOSPC) leaves no file."""
    new_dirs = _make_dirs(os.path.dirname(path))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        if data is None:
            return fd, chunkfile.create(fd, where), new_dirs
        header = chunkfile.create_with(fd, data, version, where)
        start_writeback(fd, chunkfile.HEADER_SIZE, len(data))
        return fd, header, new_dirs
    except BaseException:
        os.close(fd)
        _unlink_quietly(path)
        raise


def _write_chunk(fd: int, header, offset: int, data, version: int, where: chunkfile.ChunkName):
    """chunkfile.write, then the disk writes of a large one begun (osd.writeback)."""
    header = chunkfile.write(fd, header, offset, data, version, where)
    start_writeback(fd, chunkfile.HEADER_SIZE + offset, len(data))
    return header


def _replace_chunk(path: str, data, version: int, where: chunkfile.ChunkName):
    """Write a whole chunk to a temporary file, fsync it and rename it over `path`;
    returns ``(fd, header, dirs with new entries)``."""
    new_dirs = _make_dirs(os.path.dirname(path))
    tmp = path + TMP_SUFFIX
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        header = chunkfile.create(fd, where)
        header = chunkfile.write(fd, header, 0, data, version, where)
        os.fsync(fd)
        os.rename(tmp, path)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    return fd, header, new_dirs


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _rmdir_quietly(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError as exc:
        # Absent already, or a concurrent write created a new chunk in it.
        if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            raise


def _rmdirs_quietly(paths: list[str]) -> None:
    for path in paths:
        _rmdir_quietly(path)


def _fsync_each(files: list[str], dirs: list[str]) -> list[tuple[str, OSError]]:
    """fsync every file, then every directory; ``(path, error)`` of the fsyncs
    that failed (one failure does not skip the rest: each is told apart).  A
    path that cannot be opened (EMFILE, ENOMEM) raises: nothing was reported
    for it, so the sync can be tried again."""
    failures = []
    for path, flags in [(f, os.O_RDONLY) for f in files] + \
            [(d, os.O_RDONLY | os.O_DIRECTORY) for d in dirs]:
        try:
            fd = os.open(path, flags | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # deleted since it was written: nothing left to make durable
        try:
            os.fsync(fd)
        except OSError as exc:
            failures.append((path, exc))
        finally:
            os.close(fd)
    return failures


def _scan(root: str) -> dict:
    """Read every chunk header under `root`: ``{(ino, chunk_index): ChunkMeta}``."""
    found = {}
    for bucket_dir in _subdirs(root):
        for ino_dir in _subdirs(bucket_dir):
            ino_name = os.path.basename(ino_dir)
            for chunk_name in os.listdir(ino_dir):
                if chunk_name.endswith(TMP_SUFFIX):  # a copy cut short by a crash
                    _unlink_quietly(os.path.join(ino_dir, chunk_name))
                    continue
                key = _parse_chunk_name(ino_name, chunk_name)
                if key is None:
                    log.warning("ignoring stray file %s", os.path.join(ino_dir, chunk_name))
                    continue
                path = os.path.join(ino_dir, chunk_name)
                if os.stat(path).st_size == 0:
                    # A create cut short before its header landed (crash, full disk):
                    # it holds nothing, and kept it would count as a corrupt chunk
                    # that no replica can repair when the chunk exists nowhere else.
                    log.warning("removing empty chunk file %s", path)
                    _unlink_quietly(path)
                    continue
                found[key] = _scan_one(path, key)
    return found


def _subdirs(path: str) -> list[str]:
    return [entry.path for entry in os.scandir(path) if entry.is_dir(follow_symlinks=False)]


def _parse_chunk_name(ino_name: str, chunk_name: str):
    try:
        return int(ino_name, 16), int(chunk_name, 10)
    except ValueError:
        return None


def _scan_one(path: str, key: tuple) -> ChunkMeta:
    try:
        fd, header = _open_chunk(path, _where(*key))
    except errors.Corrupt as exc:
        log.error("corrupt chunk %s: %s", path, exc)
        return ChunkMeta(0, 0, corrupt=True)
    os.close(fd)
    return ChunkMeta(header.length, header.version)
