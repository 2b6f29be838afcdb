"""The client's data path: striping reads and writes over the OSDs.

Writes are gathered per file into chunk-sized buffers.  A buffer that fills a
whole chunk is sent at once; the others wait until the file's dirty bytes pass
its write window, a read touches them, or the file is flushed.  Many chunks
are in flight at once, each to its own primary OSD, which forwards to the
replicas.  A failed chunk write is remembered and reported by the next
`flush`/`fsync` of the file (as NFS does), since `write` has returned already.

Reads go to the chunk's primary (the next replica when it fails).  A reader
that moves sequentially gets whole chunks and a read-ahead of the next two
stripes, fetched from several OSDs concurrently in background tasks: a request
waits only for its own chunks, and a chunk ahead is fetched once however many
requests want it.  Random reads fetch just their range.
A file of at most one chunk opened read-only, and open nowhere else on this
mount, has that chunk fetched while its open goes to the shard (`prefetch`):
the kernel sends the first read only after the open's reply, so a small file
would otherwise cost the two round trips one after the other.  The fetch
starts inside the open request, after the open(2) began, so it sees every
write closed before, as the read it stands in for would (close-to-open).

Failover: a chunk write goes to the first replica the map shows up (the
acting primary), which forwards to the other up replicas.  When that OSD does
not answer, or answers TryAgain (a replica did not answer and is not marked
down yet), the write waits for a newer map and is sent again with the
replica list of that map, until `io_timeout` passes.  A call in flight to an
OSD that the map then marks down is given up at once (`_call_osd`): an OSD
that hangs without closing its connections (stopped, stuck on its disk) would
otherwise hold the request for the whole `io_timeout`; then the file's next
flush/fsync fails with EIO and the log names the chunk and its OSDs.  Reads
try every replica (up ones first) and go round again after a map change,
until `io_timeout`.  A read of a chunk whose last read gave up less than
GAVE_UP_FOR ago, with no map change since, tries for QUICK_RETRY only: the
kernel's retry of a failed read-ahead would otherwise double the wait for EIO.
A write is acknowledged once every up replica holds it; `sync` (fsync)
returns once every up replica that took a write of the file has fsynced it.

Limitations:
- A write of a chunk whose OSDs are all down fails after `io_timeout`; the
  data waits in memory until then (bounded by the window).
- Truncation and deletion reach the OSDs that are up; an OSD that was down
  catches up through its recovery pass (osd.recovery).
"""

import logging
from collections import OrderedDict

import trio

from loomproto import errors
from loomproto.layout import Layout, osd_order, replicas_for_chunk

log = logging.getLogger(__name__)

SMALL_READ = 64 << 10  # reads below this that jump around fetch just their range
READ_CACHE_STRIPES = 4
# Chunks fetched ahead in the background, over all files: read-ahead is optional,
# and past this a sequential read fetches only what it asks for.
READ_AHEAD_MAX = 64
READ_REORDER = 16  # requests of one size the kernel may have in flight out of order
# A chunk that no replica served within io_timeout is tried for only
# QUICK_RETRY seconds by the reads in the next GAVE_UP_FOR seconds, while the
# map stays the same: the kernel retries a failed read-ahead with a read of the
# one page asked for, which would otherwise wait io_timeout again.
GAVE_UP_FOR = 5.0
QUICK_RETRY = 1.0
GAVE_UP_MAX = 1024


class ChunkBuffer:
    """Dirty bytes of one chunk: a bytearray and the sorted extents written."""

    __slots__ = ("data", "extents")

    def __init__(self):
        self.data = bytearray()
        self.extents: list[list[int]] = []

    def put(self, offset: int, piece) -> None:
        end = offset + len(piece)
        if not self.extents and offset == 0:
            # The common case, a write that starts a chunk: keep the caller's
            # bytes as they are; a later write into this chunk copies once.
            self.data = piece
            self.extents = [[0, end]]
            return
        if not isinstance(self.data, bytearray):
            self.data = bytearray(self.data)
        if len(self.data) < end:
            self.data.extend(bytes(end - len(self.data)))
        self.data[offset:end] = piece
        self._add_extent(offset, end)

    def piece(self, start: int, end: int):
        """A view of dirty bytes [start, end), without copying them."""
        return memoryview(self.data)[start:end]

    def _add_extent(self, start: int, end: int) -> None:
        merged = []
        for old_start, old_end in self.extents:
            if old_end < start or old_start > end:
                merged.append([old_start, old_end])
            else:
                start, end = min(start, old_start), max(end, old_end)
        merged.append([start, end])
        merged.sort()
        self.extents = merged

    def covers(self, unit: int) -> bool:
        return len(self.extents) == 1 and self.extents[0] == [0, unit]

    @property
    def dirty_bytes(self) -> int:
        return sum(end - start for start, end in self.extents)


class FileData:
    """Data state of one open inode in this client, shared by its handles."""

    def __init__(self, ino: int, file_layout: Layout, size: int):
        self.ino = ino
        self.layout = file_layout
        self.size = size
        self.dirty: OrderedDict[int, ChunkBuffer] = OrderedDict()
        self.dirty_bytes = 0
        self.in_flight = 0
        self.idle = trio.Event()
        self.idle.set()
        self.progress = trio.Event()  # set (and replaced) whenever a chunk write ends
        self.error: errors.LoomError | None = None  # for the next flush, fsync or read
        # Every failed write counts here, and each open handle reports the failures
        # counted since it last reported one at its own flush or fsync (client.ops),
        # as Linux reports a writeback error once to every open file: `error` alone
        # went to whichever handle flushed first, and another writer's fsync then
        # succeeded over bytes that were never stored (a tester's report).
        self.error_count = 0
        self.last_error: errors.LoomError | None = None
        self.written_osds: set[int] = set()
        self.chunks_written: set[int] = set()  # since the last commit_size (loomproto.chunkset)
        self.size_dirty = False
        # The end of this client's writes since its last commit_size: what it
        # commits, not `size`, which may be another client's older size.
        self.written_end = 0
        self.server_stamp = None  # (size, mtime, ctime) the shard last reported: others' changes
        self.chunk_record = None  # (server_stamp, ranges of chunk indices ever written)
        # Cluster.placement_changes when this client made the inode (create), else
        # None: until the placement first changes, no chunk of it can sit outside
        # its set.  A change and its undoing (an OSD out, then in) still count:
        # another client may have written chunks under the placement in between.
        self.born_placement = None
        self.mtime_ns = 0
        self.read_cache: OrderedDict[int, bytes] = OrderedDict()
        self.fetching: dict[int, trio.Event] = {}
        self.generation = 0  # bumped by every write and truncate, for the read cache
        self.next_read = -1
        self.handles = 0
        # A fetch of chunk 0 begun by the open (`DataPath.prefetch`) that failed:
        # the read that waited for it fails with this instead of waiting again.
        self.failed_fetch: dict[int, errors.LoomError] = {}
        # Its create, answered before its commit, failed then (client.behind):
        # writes, fsync and close of this open file fail with it.
        self.create_error: errors.LoomError | None = None
        self.reading_ahead: set[trio.CancelScope] = set()  # see DataPath.closed

    def failed(self, error: errors.LoomError) -> None:
        """A write of this file failed: the next flush, fsync or read fails with the
        first such error, and every handle's next flush or fsync with one."""
        self.error = self.error or error
        self.error_count += 1
        self.last_error = error


class Prefetch:
    """Chunk 0 of a small file, fetched while the file's open is on its way."""

    __slots__ = ("done", "data", "error", "fd", "generation", "stamp")

    def __init__(self, stamp):
        self.done = trio.Event()
        self.data: bytes | None = None  # None: failed, or still running
        self.error: errors.LoomError | None = None
        self.fd: FileData | None = None  # the file's FileData once the open succeeded
        self.generation = 0
        self.stamp = stamp  # (size, mtime, ctime) of the file as this client knew it then


class DataPath:
    def __init__(self, cluster, nursery, write_window: int = 16 << 20,
                 max_in_flight: int = 32, io_timeout: float = 60.0):
        self.cluster = cluster
        self.nursery = nursery
        self.write_window = write_window
        self.io_timeout = io_timeout
        self._slots = trio.Semaphore(max_in_flight)
        self._reading_ahead = 0  # background read-ahead fetches, over all files
        self._orders: OrderedDict[tuple, list[int]] = OrderedDict()
        # (ino, chunk index) -> (map epoch, until) of reads that gave up
        self._gave_up: OrderedDict[tuple, tuple] = OrderedDict()
        # osd id -> cancel scopes of the calls to it in flight (see _call_osd)
        self._calls_to: dict[int, set[trio.CancelScope]] = {}
        self._watching_map = False

    # -- placement --------------------------------------------------------

    def replicas(self, fd: FileData, chunk_index: int) -> list[int]:
        key = (fd.ino, self.cluster.map.epoch)
        order = self._orders.get(key)
        if order is None:
            order = osd_order(fd.ino, self.cluster.in_osds())
            self._orders[key] = order
            if len(self._orders) > 4096:
                self._orders.popitem(last=False)
        return replicas_for_chunk(fd.layout, fd.ino, chunk_index, order,
                                  self.cluster.map.hosts())

    def acting(self, replicas: list[int]) -> list[int]:
        """The replica list with the first up OSD moved to the front (the acting
        primary); empty when none is up."""
        up = [osd_id for osd_id in replicas if self.cluster.map.is_up(osd_id)]
        if not up:
            return []
        return [up[0]] + [osd_id for osd_id in replicas if osd_id != up[0]]

    # -- writes -----------------------------------------------------------

    async def write(self, fd: FileData, offset: int, data: bytes, now_ns: int) -> int:
        if fd.error is not None:
            raise fd.error
        view = memoryview(data)
        pos = 0
        for chunk_index, in_chunk, length in fd.layout.chunks(offset, len(data)):
            buf = fd.dirty.get(chunk_index)
            if buf is None:
                buf = fd.dirty[chunk_index] = ChunkBuffer()
            before = buf.dirty_bytes
            buf.put(in_chunk, view[pos:pos + length])
            fd.dirty_bytes += buf.dirty_bytes - before
            fd.read_cache.pop(chunk_index, None)
            pos += length
            if buf.covers(fd.layout.unit):
                self._send_chunk(fd, chunk_index)
        fd.generation += 1
        fd.size = max(fd.size, offset + len(data))
        fd.written_end = max(fd.written_end, offset + len(data))
        fd.size_dirty = True
        fd.mtime_ns = now_ns
        if fd.dirty_bytes > self.write_window:
            for chunk_index in list(fd.dirty):
                self._send_chunk(fd, chunk_index)
        # Back-pressure: never hold more than the window in flight for a file.
        while fd.in_flight and fd.dirty_bytes > self.write_window:
            await fd.progress.wait()
        return len(data)

    def _send_chunk(self, fd: FileData, chunk_index: int) -> None:
        buf = fd.dirty.pop(chunk_index)
        if fd.in_flight == 0:
            fd.idle = trio.Event()
        fd.in_flight += 1
        self.nursery.start_soon(self._write_chunk, fd, chunk_index, buf,
                                name=f"write ino {fd.ino} chunk {chunk_index}")

    async def _write_chunk(self, fd: FileData, chunk_index: int, buf: ChunkBuffer):
        try:
            async with self._slots:
                for start, end in buf.extents:
                    piece = buf.piece(start, end)
                    await self._write_piece(fd, chunk_index, start, piece)
        except errors.LoomError as exc:
            log.error("write of ino %d chunk %d failed: %s", fd.ino, chunk_index, exc)
            # ENOSPC stays ENOSPC for the application; everything else is EIO.
            fd.failed(exc if isinstance(exc, errors.NoSpace) else errors.IOFailure(str(exc)))
        except Exception:
            # A bug here must fail this file's next flush, not the whole mount.
            log.exception("write of ino %d chunk %d failed unexpectedly", fd.ino, chunk_index)
            fd.failed(errors.IOFailure(f"internal error writing ino {fd.ino}"))
        finally:
            # The chunk changed on the OSDs: a copy fetched before (or while) it
            # landed is stale, and so is any fetch still running.
            fd.read_cache.pop(chunk_index, None)
            fd.generation += 1
            fd.dirty_bytes -= buf.dirty_bytes
            fd.in_flight -= 1
            fd.progress.set()
            fd.progress = trio.Event()
            if fd.in_flight == 0:
                fd.idle.set()

    async def _write_piece(self, fd, chunk_index, offset, piece):
        deadline = trio.current_time() + self.io_timeout
        while True:
            replicas = self.replicas(fd, chunk_index)
            if not replicas:
                raise errors.IOFailure("no OSD in the cluster map")
            acting = self.acting(replicas)
            try:
                if not acting:
                    raise errors.TryAgain(f"every replica is down: osds {replicas}")
                args = {"ino": fd.ino, "chunk": chunk_index, "offset": offset,
                        "replicas": acting, "epoch": self.cluster.map.epoch}
                if fd.born_placement == self.cluster.placement_changes:
                    args["fresh"] = True  # the OSD need not look for it elsewhere
                elif chunk_index in fd.chunks_written:
                    # Not in the inode's record yet: if no up OSD has it, it is out
                    # of reach, not a hole to start anew (osd.replication).
                    args["written"] = True
                await self._call_osd(acting[0], "write", args, piece, deadline=deadline)
                fd.written_osds.update(replicas)
                fd.chunks_written.add(chunk_index)
                return
            except (errors.TransportError, errors.StaleMap, errors.TryAgain,
                    trio.TooSlowError) as exc:
                if trio.current_time() >= deadline:
                    log.error("write of ino %d chunk %d: no replica took it within %gs "
                              "(osds %s): %s", fd.ino, chunk_index, self.io_timeout,
                              replicas, exc or "timeout")
                    raise errors.IOFailure(
                        f"no replica of ino {fd.ino} chunk {chunk_index} took the write "
                        f"(osds {replicas}): {exc or 'timeout'}") from None
                if isinstance(exc, errors.StaleMap):
                    # The placement changed and our map is behind: fetch it and go
                    # to the chunk's primary under it (the old one refuses).  The
                    # file then no longer counts as made under the current placement.
                    log.info("write of ino %d chunk %d: %s", fd.ino, chunk_index, exc)
                    epoch = self.cluster.map.epoch
                    await self.cluster.refresh_map()
                    if self.cluster.map.epoch > epoch:
                        continue
                log.warning("write of ino %d chunk %d to osd %s failed, retrying: %s",
                            fd.ino, chunk_index, acting[0] if acting else "-", exc or "timeout")
                await self._wait_for_map(min(1.0, max(0.0, deadline - trio.current_time())))

    async def _call_osd(self, osd_id: int, op: str, args: dict, payload=b"", *,
                        deadline: float):
        """``(result, payload)`` of one OSD call.  Raises `trio.TooSlowError` at
        `deadline`, and `TransportError` as soon as a newer map marks the OSD down
        while the call waits (an OSD already down when asked is asked anyway: the
        map may be behind)."""
        timeout = max(0.1, deadline - trio.current_time())
        if not self.cluster.map.is_up(osd_id):
            with trio.fail_after(timeout):
                return await self.cluster.osd(osd_id).call_payload(op, args, payload)
        # One cancel scope per call, which `_cancel_calls_to_down` cancels when a
        # map marks the OSD down: no task or nursery per call (a call is a few
        # hundred microseconds of this process's CPU, and two tasks were a tenth).
        if not self._watching_map:
            self._watching_map = True
            self.nursery.start_soon(self._cancel_calls_to_down, name="calls to down OSDs")
        given_up = trio.CancelScope()
        calls = self._calls_to.setdefault(osd_id, set())
        calls.add(given_up)
        try:
            with given_up, trio.fail_after(timeout):
                return await self.cluster.osd(osd_id).call_payload(op, args, payload)
        finally:
            calls.discard(given_up)
        log.warning("%s of ino %s on osd %d given up: the map marks it down", op,
                    args.get("ino"), osd_id)
        raise errors.TransportError(f"osd {osd_id} was marked down during {op}")

    async def _cancel_calls_to_down(self) -> None:
        """For every new map: give up the calls in flight to the OSDs it marks down.
        It looks before its first wait too: a map that came between the first call
        and this task's start would otherwise go unseen (a call registers only
        while its OSD is up, so one now down was marked down since)."""
        while True:
            for osd_id, calls in self._calls_to.items():
                if calls and not self.cluster.map.is_up(osd_id):
                    for given_up in calls:
                        given_up.cancel()
            await self.cluster.map_changed.wait()

    async def _wait_for_map(self, seconds: float):
        with trio.move_on_after(seconds):
            await self.cluster.map_changed.wait()

    async def drain(self, fd: FileData, chunks=None) -> None:
        """Send dirty chunks (all, or those in `chunks`) and wait until none is in flight."""
        for chunk_index in list(fd.dirty):
            if chunks is None or chunk_index in chunks:
                self._send_chunk(fd, chunk_index)
        while fd.in_flight:
            await fd.idle.wait()

    def take_error(self, fd: FileData):
        error, fd.error = fd.error, None
        return error

    async def sync(self, fd: FileData) -> None:
        """Every byte written so far is on stable storage on its replicas."""
        osds = sorted(fd.written_osds)
        async with trio.open_nursery() as nursery:
            for osd_id in osds:
                nursery.start_soon(self._sync_one, fd.ino, osd_id)

    async def _sync_one(self, ino, osd_id):
        deadline = trio.current_time() + self.io_timeout
        while self.cluster.map.is_up(osd_id):
            try:
                await self._call_osd(osd_id, "sync_file", {"ino": ino}, deadline=deadline)
                return
            except (errors.TransportError, errors.StaleMap, trio.TooSlowError) as exc:
                # A replica that died after taking the data: once the map
                # shows it down the remaining replicas are what counts.
                if trio.current_time() >= deadline:
                    log.error("fsync of ino %d on osd %d failed for %gs: %s", ino, osd_id,
                              self.io_timeout, exc or "timeout")
                    raise errors.IOFailure(f"fsync of ino {ino} on osd {osd_id} failed: "
                                           f"{exc or 'timeout'}") from None
                log.warning("fsync of ino %d on osd %d failed, retrying: %s", ino, osd_id,
                            exc or "timeout")
                await self._wait_for_map(min(1.0, max(0.0, deadline - trio.current_time())))

    # -- reads ------------------------------------------------------------

    async def read(self, fd: FileData, offset: int, length: int) -> bytes:
        end = min(offset + length, fd.size)
        if offset >= end:
            return b""
        touched = {ci for ci, _, _ in fd.layout.chunks(offset, end - offset)}
        if touched & fd.dirty.keys() or fd.in_flight:
            await self.drain(fd, touched)
            if fd.error is not None:
                # Left for the next flush or fsync, which reports it to the writer
                # and does what follows a failed write (client.ops `_flush`).
                raise fd.error
        # Kernel read-ahead sends several requests at once, so "sequential"
        # tolerates a little reordering around the previous end: a few requests
        # of this one's size, at most two chunks.  A window of whole chunks for
        # small reads too would take a random 4 KiB read that lands near the
        # last one for the start of a stream, worth a whole stripe of fetches.
        window = min(2 * fd.layout.unit, READ_REORDER * max(length, 4096))
        sequential = abs(offset - fd.next_read) <= window
        fd.next_read = end
        if sequential or length >= SMALL_READ:
            return await self._read_chunks(fd, offset, end, sequential)
        return await self._read_range(fd, offset, end)

    async def _read_range(self, fd, offset, end):
        pieces = list(fd.layout.chunks(offset, end - offset))
        results = [b""] * len(pieces)

        async def fetch(i, chunk_index, in_chunk, length):
            cached = fd.read_cache.get(chunk_index)
            try:
                if cached is not None:
                    results[i] = cached[in_chunk:in_chunk + length]
                else:
                    results[i] = await self._fetch(fd, chunk_index, in_chunk, length)
            except errors.LoomError as exc:
                results[i] = exc

        if len(pieces) == 1:  # the common small read: no nursery and task for one fetch
            await fetch(0, *pieces[0])
        else:
            async with trio.open_nursery() as nursery:
                for i, piece in enumerate(pieces):
                    nursery.start_soon(fetch, i, *piece)
        # A failed chunk fails the whole request: a short reply would make the
        # kernel take its end for the end of the file.
        for result in results:
            if isinstance(result, errors.LoomError):
                raise result
        return b"".join(_pad(r, p[2]) for r, p in zip(results, pieces, strict=True))

    async def _read_chunks(self, fd, offset, end, read_ahead: bool):
        unit = fd.layout.unit
        first, last = offset // unit, (end - 1) // unit
        if read_ahead:
            # The chunks past this request are fetched in the background: the
            # request waits only for its own, so the fetches of the next stripe
            # overlap the kernel's next requests instead of holding this one.
            ahead_end = min(last + 2 * max(fd.layout.count, 2), (fd.size - 1) // unit)
            for chunk_index in range(last + 1, ahead_end + 1):
                if self._reading_ahead >= READ_AHEAD_MAX:
                    break
                if chunk_index not in fd.read_cache and chunk_index not in fd.fetching:
                    # Claimed now, so that a request arriving before the task runs
                    # waits for this fetch instead of starting a second one.
                    claim = self._claim(fd, chunk_index)
                    self._reading_ahead += 1
                    self.nursery.start_soon(self._read_ahead, fd, chunk_index, claim,
                                            name=f"read-ahead ino {fd.ino}")
        failed: dict[int, errors.LoomError] = {}

        async def cache(chunk_index):
            try:
                await self._cache_chunk(fd, chunk_index)
            except errors.LoomError as exc:
                failed[chunk_index] = exc

        missing = [ci for ci in range(first, last + 1) if ci not in fd.read_cache]
        if len(missing) == 1:
            await cache(missing[0])
        elif missing:
            async with trio.open_nursery() as nursery:
                for chunk_index in missing:
                    nursery.start_soon(cache, chunk_index)
        pieces = list(fd.layout.chunks(offset, end - offset))
        if len(pieces) == 1 and pieces[0][0] in fd.read_cache:
            chunk_index, in_chunk, length = pieces[0]
            # A view, not a slice: a cached chunk is a bytearray, whose slices copy
            # (a megabyte per request); cached chunks are replaced, never changed.
            return _pad(memoryview(fd.read_cache[chunk_index])[in_chunk:in_chunk + length],
                        length)
        out = bytearray()
        for chunk_index, in_chunk, length in pieces:
            data = fd.read_cache.get(chunk_index)
            if chunk_index in failed:
                raise failed[chunk_index]  # not a short read: see _read_range
            if data is None:  # evicted meanwhile by a concurrent reader
                data = await self._fetch(fd, chunk_index, in_chunk, length)
                in_chunk = 0
            out += _pad(memoryview(data)[in_chunk:in_chunk + length], length)
        return out

    async def _read_ahead(self, fd: FileData, chunk_index: int, claim) -> None:
        """Fetch one chunk past a sequential read into the read cache.  A chunk
        that cannot be read fails only a read that reaches it (which tries it
        again), not the one that merely read ahead past it."""
        scope = trio.CancelScope()
        fd.reading_ahead.add(scope)
        try:
            with scope:
                await self._fill(fd, chunk_index, claim)
        except (errors.LoomError, trio.TooSlowError) as exc:
            log.debug("read-ahead of ino %d chunk %d: %s", fd.ino, chunk_index, exc)
        except Exception:  # a background task: a bug here must not end the mount
            log.exception("read-ahead of ino %d chunk %d failed", fd.ino, chunk_index)
        finally:
            fd.reading_ahead.discard(scope)
            self._reading_ahead -= 1

    @staticmethod
    def closed(fd: FileData) -> None:
        """The file's last handle here is released: its fetches ahead are given up
        (a closed file's chunks would only be dropped, and with an OSD down each
        would otherwise retry for io_timeout)."""
        for scope in list(fd.reading_ahead):
            scope.cancel()

    def prefetch(self, ino: int, file_layout: Layout, size: int, stamp=()) -> Prefetch:
        """Start fetching chunk 0 of `ino` for an open on its way (see the module
        docstring); `adopt` hands the result to the open's FileData, if the open
        finds the file as it was then (`Prefetch.stamp`)."""
        fetch = Prefetch(stamp)
        self.nursery.start_soon(self._run_prefetch, fetch, FileData(ino, file_layout, size),
                                name=f"prefetch ino {ino}")
        return fetch

    async def _run_prefetch(self, fetch: Prefetch, probe: FileData):
        try:
            fetch.data = await self._fetch(probe, 0, 0, probe.layout.unit)
        except errors.LoomError as exc:
            # The read that waited for it fails with this error, after one io_timeout.
            log.debug("prefetch of ino %d failed: %s", probe.ino, exc)
            fetch.error = exc
        except Exception:
            log.exception("prefetch of ino %d failed unexpectedly", probe.ino)
        finally:
            fd = fetch.fd
            if fd is not None:
                if fd.fetching.get(0) is fetch.done:
                    del fd.fetching[0]
                self._keep_prefetched(fd, fetch)
            fetch.done.set()

    def adopt(self, fetch: Prefetch, fd: FileData) -> None:
        """The open succeeded: its reads use the prefetched chunk (waiting for it
        as for any fetch in flight, if it is still running)."""
        if fetch.done.is_set():
            fetch.generation = fd.generation
            self._keep_prefetched(fd, fetch)
            return
        fetch.fd, fetch.generation = fd, fd.generation
        fd.fetching.setdefault(0, fetch.done)

    @staticmethod
    def _keep_prefetched(fd: FileData, fetch: Prefetch) -> None:
        # Not when a write, truncate or newer open came meanwhile (see _cache_chunk).
        if fetch.generation != fd.generation or 0 in fd.dirty:
            return
        if fetch.data is not None:
            fd.read_cache[0] = fetch.data
        elif fetch.error is not None:
            fd.failed_fetch[0] = fetch.error

    async def _cache_chunk(self, fd, chunk_index):
        """Fetch a whole chunk into the read cache, once even for concurrent readers."""
        pending = fd.fetching.get(chunk_index)
        if pending is not None:
            await pending.wait()
            failure = fd.failed_fetch.get(chunk_index)
            if failure is not None:
                raise failure
            return
        await self._fill(fd, chunk_index, self._claim(fd, chunk_index))

    @staticmethod
    def _claim(fd: FileData, chunk_index: int) -> tuple:
        """Mark a fetch of the chunk as on its way (for `_fill`), so that
        concurrent readers wait for it."""
        fd.failed_fetch.pop(chunk_index, None)  # a new attempt
        fd.fetching[chunk_index] = done = trio.Event()
        return done, fd.generation

    async def _fill(self, fd: FileData, chunk_index: int, claim: tuple) -> None:
        done, generation = claim
        try:
            data = await self._fetch(fd, chunk_index, 0, fd.layout.unit)
            # Not when a write or truncate raced the fetch, nor while this client
            # still holds unsent bytes of the chunk (the OSDs' copy is old).
            if generation == fd.generation and chunk_index not in fd.dirty:
                fd.read_cache[chunk_index] = data
            while len(fd.read_cache) > READ_CACHE_STRIPES * max(fd.layout.count, 2):
                fd.read_cache.popitem(last=False)
        finally:
            del fd.fetching[chunk_index]
            done.set()

    async def _fetch(self, fd, chunk_index, offset, length) -> bytes:
        quick = self._gave_up_lately(fd.ino, chunk_index)
        deadline = trio.current_time() + (QUICK_RETRY if quick else self.io_timeout)
        while True:
            failures = []
            no_good_copy = 0  # replicas that answered with a corrupt copy or none at all
            replicas = self.replicas(fd, chunk_index)
            # Up replicas first; down ones last, in case the map is behind.
            ordered = sorted(replicas, key=lambda osd_id: not self.cluster.map.is_up(osd_id))
            args = {"ino": fd.ino, "chunk": chunk_index, "offset": offset, "length": length,
                    "replicas": replicas, "epoch": self.cluster.map.epoch}
            for osd_id in ordered:
                try:
                    header, data = await self._call_osd(osd_id, "read", args,
                                                        deadline=deadline)
                    if header.get("version") or not await self._was_written(fd, chunk_index):
                        return data  # a copy, or a hole
                    no_good_copy += 1
                    log.warning("read of ino %d chunk %d: osd %d has no copy of a chunk "
                                "recorded as written", fd.ino, chunk_index, osd_id)
                    failures.append(f"osd {osd_id}: no copy")
                except errors.Corrupt as exc:
                    no_good_copy += 1
                    log.warning("read of ino %d chunk %d from osd %d: %s", fd.ino, chunk_index,
                                osd_id, exc)
                    failures.append(f"osd {osd_id}: {exc}")
                except (errors.TransportError, errors.IOFailure, errors.NoSpace,
                        errors.StaleMap, errors.TryAgain, trio.TooSlowError) as exc:
                    # (NoSpace: an OSD of an older version than this one could not
                    # make room to catch up; another replica may serve the read.)
                    log.warning("read of ino %d chunk %d from osd %d failed: %s",
                                fd.ino, chunk_index, osd_id, exc or "timeout")
                    failures.append(f"osd {osd_id}: {exc or 'timeout'}")
            if no_good_copy == len(ordered):
                # Every replica answered, none with good data: waiting changes nothing.
                log.error("read of ino %d chunk %d: no good copy on any replica (osds %s): %s",
                          fd.ino, chunk_index, replicas, "; ".join(failures))
                raise errors.IOFailure(f"ino {fd.ino} chunk {chunk_index} has no good copy: "
                                       + "; ".join(failures))
            if trio.current_time() >= deadline:
                break
            await self._wait_for_map(min(1.0, max(0.0, deadline - trio.current_time())))
        message = (f"no replica of ino {fd.ino} chunk {chunk_index} answered: "
                   + "; ".join(failures))
        if quick:
            log.error("read of ino %d chunk %d: still no replica answers (osds %s)",
                      fd.ino, chunk_index, replicas)
            raise errors.IOFailure(message)
        log.error("read of ino %d chunk %d: no replica answered within %gs (osds %s)",
                  fd.ino, chunk_index, self.io_timeout, replicas)
        key = (fd.ino, chunk_index)
        self._gave_up[key] = (self.cluster.map.epoch, trio.current_time() + GAVE_UP_FOR)
        self._gave_up.move_to_end(key)
        while len(self._gave_up) > GAVE_UP_MAX:
            self._gave_up.popitem(last=False)
        raise errors.IOFailure(message)

    def _gave_up_lately(self, ino: int, chunk_index: int) -> bool:
        """Whether a read of this chunk waited io_timeout in vain less than
        GAVE_UP_FOR ago, and the map has not changed since."""
        gave_up = self._gave_up.get((ino, chunk_index))
        if gave_up is None:
            return False
        epoch, until = gave_up
        if epoch == self.cluster.map.epoch and trio.current_time() < until:
            return True
        del self._gave_up[(ino, chunk_index)]
        return False

    async def _was_written(self, fd, chunk_index) -> bool:
        """Whether the file's record (`loomproto.chunkset`) says this chunk was written,
        so that no copy of it means data lost, not a hole.  The record is asked once
        per (size, mtime, ctime) the shard reported for the file."""
        if chunk_index in fd.chunks_written:
            return True
        if fd.chunk_record is None or fd.chunk_record[0] != fd.server_stamp:
            try:
                ranges = await self.cluster.mds(self.cluster.shard_of_ino(fd.ino),
                                                "chunk_record", {"ino": fd.ino})
            except errors.NotFound:
                ranges = []
            fd.chunk_record = (fd.server_stamp, ranges)
        return any(start <= chunk_index < end for start, end in fd.chunk_record[1])

    # -- truncation -------------------------------------------------------

    async def truncate(self, fd: FileData, size: int) -> None:
        await self.drain(fd)
        fd.read_cache.clear()
        fd.generation += 1
        try:
            await self._cut(fd, size)
        finally:
            # A read while the OSDs cut may have fetched bytes from before the cut.
            fd.read_cache.clear()
            fd.generation += 1

    async def _cut(self, fd: FileData, size: int) -> None:
        # A chunk none of whose replicas is up (one replica, say) is neither cut
        # nor recorded as missed by anyone: the old bytes would come back with
        # its OSD.  Such a file is flagged below.
        unreachable = self._cut_unreachable(fd, size)
        args = {"ino": fd.ino, "size": size, "unit": fd.layout.unit}
        went_down = await self._truncate_round(args)
        for _ in range(len(self.cluster.in_osds())):
            if not went_down:
                break
            # They died before they cut, while the others still counted them up, so
            # nothing recorded the cut as missed by them: asked again with `again`,
            # the OSDs that are up record it now (osd.missed, osd.recovery).
            log.warning("truncate of ino %d: osds %s went down before they answered; "
                        "asking the others again", fd.ino, went_down)
            went_down = await self._truncate_round(dict(args, again=True))
        if unreachable or went_down or self._cut_unreachable(fd, size):
            # An OSD that was down, or died during the cut, may hold the only copy of
            # a chunk past the size, uncut and unrecorded: the inode's shard is told,
            # and cuts it at the next open or size change once every OSD is up
            # (mdsd.tails).
            await self.cluster.mds(self.cluster.shard_of_ino(fd.ino), "mark_tail",
                                   {"ino": fd.ino})
        fd.size = size
        fd.chunks_written = {i for i in fd.chunks_written if i < fd.layout.chunk_count(size)}

    def _cut_unreachable(self, fd: FileData, size: int) -> list[int]:
        """Chunk indices a truncate of `fd` (at its known size) to `size` must cut
        whose replica set has no up member.  A set depends only on the stripe
        slot, so at most `count` indices are looked at."""
        first, count = size // fd.layout.unit, fd.layout.chunk_count(fd.size)
        out = []
        for chunk_index in range(first, min(count, first + fd.layout.count)):
            if not any(self.cluster.map.is_up(o) for o in self.replicas(fd, chunk_index)):
                out.append(chunk_index)
        return out

    async def _truncate_round(self, args: dict) -> list[int]:
        """truncate_file on every up OSD at once; returns those that the map marked
        down before they answered.  Every call runs to its end before a failure is
        raised: one failing must not cancel the cuts of the others halfway."""
        went_down, failures = [], []

        async def one(osd_id):
            try:
                if not await self._truncate_one(osd_id, args):
                    went_down.append(osd_id)
            except errors.LoomError as exc:
                failures.append(exc)

        # Every up OSD, in or out: one marked out may still hold a copy that
        # recovery has not moved yet, and would push back uncut.
        async with trio.open_nursery() as nursery:
            for osd_id in sorted(self.cluster.map.osds):
                if self.cluster.map.is_up(osd_id):
                    nursery.start_soon(one, osd_id)
        if failures:
            raise failures[0]
        return sorted(went_down)

    async def _truncate_one(self, osd_id: int, args: dict) -> bool:
        """True once `osd_id` cut; False when the map marks it down first (its
        recovery pass brings it the cut when it returns).  Transport errors are
        retried after a newer map, until `io_timeout`."""
        deadline = trio.current_time() + self.io_timeout
        while True:
            try:
                await self._call_osd(osd_id, "truncate_file",
                                     dict(args, epoch=self.cluster.map.epoch), deadline=deadline)
                return True
            except (errors.TransportError, errors.StaleMap, errors.TryAgain,
                    trio.TooSlowError) as exc:
                if not self.cluster.map.is_up(osd_id):
                    return False
                if trio.current_time() >= deadline:
                    log.error("truncate of ino %d on osd %d: no answer within %gs: %s",
                              args["ino"], osd_id, self.io_timeout, exc or "timeout")
                    raise errors.IOFailure(f"truncate of ino {args['ino']} on osd {osd_id}: "
                                           f"no answer within {self.io_timeout:g}s") from None
                log.debug("truncate of ino %d on osd %d: %s; retrying", args["ino"], osd_id,
                          exc or "timeout")
                await self._wait_for_map(min(1.0, max(0.0, deadline - trio.current_time())))


def _pad(data: bytes, length: int) -> bytes:
    """Holes and short chunks read as zeros."""
    if len(data) >= length:
        return data
    return bytes(data) + bytes(length - len(data))
