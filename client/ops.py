"""The FUSE request handlers: thin translations from pyfuse3 calls to `Meta`
(namespace) and `DataPath` (file contents).

Every handler runs inside `_guarded`: a `LoomError` becomes its errno through
`loomproto.errors.errno_of`, and any other exception is a bug that is logged
once with its traceback and answered with EIO, so the mount stays alive.

Caveats:
- Inode numbers are the cluster's own; lookup counts are not tracked, since
  the metadata servers decide when an unlinked inode's data goes (open
  registrations and session leases), not the kernel's forget.
- setxattr's XATTR_CREATE/REPLACE flags never reach a pyfuse3 filesystem;
  the kernel emulates them with a getxattr first, so they are not atomic.

Fault hook (tests only, off by default): with the mount option
``debug_faults``, a getxattr or setxattr of the name `FAULT_XATTR` raises a
RuntimeError inside the handler, to prove that a bug costs one EIO and not
the mount.
"""

import collections
import contextlib
import copy
import errno
import functools
import inspect
import itertools
import logging
import os
import stat
import time

import pyfuse3
import trio

from loomproto import errors
from loomproto.layout import Layout

from .behind import CREATE, UnlinksBehind
from .data import FileData
from .dirnames import INVALIDATE_WAIT, DirNames, drop_old_name
from .filenames import FRESH, FileNames
from .meta import check_name
from .statahead import MAX_ENTRIES as STATAHEAD_MAX_ENTRIES
from .statahead import MIN_TIMEOUT, Listing, StatAhead, Window

log = logging.getLogger(__name__)

ACL_XATTR_PREFIX = b"system.posix_acl_"
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")
COOKIE_BASE = 3  # 1 and 2 are the positions after "." and ".."
SEQ_BITS = 48
READDIR_BATCH = 256
RENAME_EXCHANGE = 2  # renameat2's flag (linux/fs.h)
FAULT_XATTR = b"user.loomfs.debug.fault"
SLOW_REQUEST = 5.0  # a handler slower than this is logged with its arguments
PAGE_GENS = 65536  # files whose pages in the kernel this client can vouch for
TOLD_MAX = 65536  # inodes whose attributes as last given to the kernel are kept (_told)
MIXED = "mixed"  # _told: replies with different attributes since the last drop
WRONG_NAMED_MAX = 4096  # inodes remembered as reached by a wrong name (_verify_name)
APPEND_RETRY = 1.0  # seconds: an O_APPEND open is sent back for the size once in this
REFUSED_FOR = 1.0  # seconds a refused change's repeat by the same thread is awaited
REFUSED_MAX = 4096  # (inode, thread) pairs whose change by name answered ESTALE (_by_name)
STALE_RETRIES = 4  # lookups of a name whose inode's early unlinks keep landing meanwhile
# Lease left (seconds, of mdsd.leases.LEASE) that a create answered before its commit
# needs, for its request to reach the shard before the lease ends (client.behind).
EARLY_CREATE_MARGIN = 0.05
INVALIDATIONS = 4  # threads at most for the kernel invalidations after failed creates


def _stamp(attr: dict) -> tuple:
    """What tells this client that a file's data may have changed elsewhere: its
    size, mtime and ctime.  ctime too, because a rewrite in place at the same
    size followed by utime back to the old mtime (tar -x, cp -p, rsync -t
    --inplace) leaves size and mtime as they were, while ctime moves on."""
    return attr["size"], attr["mtime"], attr.get("ctime", 0)


class InjectedFault(RuntimeError):
    """Raised by the debug fault hook: stands for any bug in a handler."""


def _guarded(handler):
    @functools.wraps(handler)
    async def wrapper(*args, **kwargs):
        started = trio.current_time()
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except errors.LoomError as exc:
            log.debug("%s: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(errors.errno_of(exc)) from None
        except trio.TooSlowError:
            log.warning("%s: timed out", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except ExceptionGroup as group:
            # Parallel stripe and replica calls fail together; the first typed
            # error decides the errno when every failure is a typed one.
            leaves = _leaves(group)
            if all(isinstance(e, errors.LoomError) for e in leaves):
                log.debug("%s: %s", handler.__name__, leaves[0])
                raise pyfuse3.FUSEError(errors.errno_of(leaves[0])) from None
            log.exception("unexpected error in %s", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            took = trio.current_time() - started
            if took > SLOW_REQUEST:
                log.warning("slow request: %s%r took %.1fs", handler.__name__,
                            _brief(args[1:]), took)
    return wrapper


def _brief(args: tuple) -> tuple:
    """Handler arguments for a log line: no request contexts, no large buffers."""
    return tuple(f"<{len(a)} bytes>" if isinstance(a, (bytes, memoryview)) and len(a) > 64
                 else a for a in args if not isinstance(a, pyfuse3.RequestContext))


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _guard_all(cls):
    for name, member in list(vars(cls).items()):
        if inspect.iscoroutinefunction(member) and not name.startswith("_"):
            setattr(cls, name, _guarded(member))
    return cls


def _cookie(shard: int, seq: int) -> int:
    return (shard << SEQ_BITS | seq) + COOKIE_BASE


def _uncookie(cookie: int) -> tuple[int, int]:
    value = cookie - COOKIE_BASE
    return value >> SEQ_BITS, value & ((1 << SEQ_BITS) - 1)


class Handle:
    __slots__ = ("ino", "fd", "flags", "errors_seen")

    def __init__(self, ino, fd, flags):
        self.ino = ino
        self.fd = fd
        self.flags = flags
        self.errors_seen = fd.error_count  # failed writes reported (FileData.failed)


@_guard_all
class LoomOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, meta, data, attr_timeout: float = 1.0, entry_timeout: float = 1.0,
                 on_init=None, debug_faults: bool = False, unlink_window: int = 0,
                 statahead: bool = True, create_window: int = 0,
                 negative_timeout: float = 0.0):
        super().__init__()
        self.on_init = on_init
        self.debug_faults = debug_faults
        self.meta = meta
        self.data = data
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout
        # How long the kernel may keep a "no such name" answer.  0 by default: a
        # name another mount makes shows here at once (a tester saw git on two
        # mounts lose a commit after `git gc`: the new loose ref stayed invisible
        # while the kernel kept the answer, and git read the packed one).
        self.negative_timeout = negative_timeout
        self.files: dict[int, FileData] = {}
        # ino -> the inode `gen` that the kernel's cached pages of the file match: set
        # at open, moved on by this client's own changes (`_own_change`).  Any change
        # bumps gen, so a file whose gen moved otherwise was changed by someone else.
        self._page_gens: collections.OrderedDict[int, int] = collections.OrderedDict()
        self.handles: dict[int, Handle] = {}
        self._fhs = itertools.count(1)
        self._resizing = collections.Counter()  # ino -> our size changes in flight
        self.dir_names = DirNames()  # where the kernel knows each directory (client.dirnames)
        self.file_names = FileNames()  # the files' names it holds (client.filenames)
        # Unlinks answered before their commit, and the waits for them (client.behind).
        nursery = getattr(meta.cluster, "nursery", None)
        self.behind = UnlinksBehind(nursery, unlink_window if nursery is not None else 0,
                                    on_failure=self._early_failed,
                                    create_window=create_window)
        # Listings fetched when a directory's names are looked up one by one
        # (client.statahead); none without a nursery to fetch them in.
        on = statahead and nursery is not None and attr_timeout > MIN_TIMEOUT
        self.statahead = StatAhead(entry_timeout if on else 0.0)
        # ino -> its `_verify_name` check: (done, the wrong names it found)
        self._verifying: dict[int, tuple[trio.Event, list]] = {}
        # ino -> when a name of ours for it was found wrong (`_verify_name`)
        self._wrong_named: collections.OrderedDict[int, float] = collections.OrderedDict()
        # (ino, pid) -> when a change by name was refused (_by_name)
        self._refused: collections.OrderedDict[tuple, float] = collections.OrderedDict()
        # ino -> (size, mtime, ctime) the kernel last got in a reply (_opened_fresh)
        # (ino, pid) -> when an O_APPEND open was sent back for the size
        # (_append_at_stale_size)
        self._append_retried: collections.OrderedDict[tuple, float] = \
            collections.OrderedDict()
        self._told: collections.OrderedDict[int, tuple] = collections.OrderedDict()
        # ino -> the kernel's lookup count of it (`_referenced`, `forget`)
        self._lookups: dict[int, int] = {}
        self._invalidations = None  # trio.CapacityLimiter, made in the event loop

    def init(self):
        # Called while libfuse answers the kernel's INIT; the kernel applies
        # its own read-ahead from that answer, so tuning must come after.
        if self.on_init is not None:
            self.on_init()

    # -- attributes -------------------------------------------------------

    def _entry(self, attr: dict, record: bool = True) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = attr["ino"]
        entry.st_mode = attr["mode"]
        entry.st_nlink = attr["nlink"]
        entry.st_uid = attr["uid"]
        entry.st_gid = attr["gid"]
        entry.st_rdev = attr.get("rdev", 0)
        entry.st_size = attr["size"]
        entry.st_atime_ns = attr["atime"]
        entry.st_mtime_ns = attr["mtime"]
        entry.st_ctime_ns = attr["ctime"]
        entry.st_blksize = 1 << 20
        fd = self.files.get(attr["ino"])
        if fd is not None:
            entry.st_size = self._open_size(fd, attr)
            if fd.size_dirty:
                entry.st_mtime_ns = max(entry.st_mtime_ns, fd.mtime_ns)
        entry.st_blocks = (entry.st_size + 511) // 512
        entry.attr_timeout = self.attr_timeout
        entry.entry_timeout = self.entry_timeout
        if record:
            self._record_told(entry)
        return entry

    def _record_told(self, entry: pyfuse3.EntryAttributes) -> None:
        """What a reply gives the kernel (see `_opened_fresh`).  Two replies with
        different attributes since the last drop leave it unknown (MIXED): the
        kernel may keep either, as it throws away a reply to a request sent before
        another reply changed the inode (a reviewer's finding)."""
        ino = entry.st_ino
        stamp = (entry.st_size, entry.st_mtime_ns, entry.st_ctime_ns)
        known = self._told.get(ino, stamp)
        self._told[ino] = stamp if known == stamp else MIXED
        self._told.move_to_end(ino)
        if len(self._told) > TOLD_MAX:
            self._told.popitem(last=False)

    def _kernel_stamp(self, attr: dict) -> tuple:
        """(size, mtime, ctime) as `_entry` would give them to the kernel now."""
        size, mtime = attr["size"], attr["mtime"]
        fd = self.files.get(attr["ino"])
        if fd is not None:
            size = self._open_size(fd, attr)
            if fd.size_dirty:
                mtime = max(mtime, fd.mtime_ns)
        return size, mtime, attr["ctime"]

    async def _opened_fresh(self, attr: dict) -> None:
        """Close-to-open for the size: an open answers with no attributes, so the
        kernel went on with the size it last had from us, for up to attr_timeout,
        and read a file another mount had grown only up to that size (empty, for
        one made empty and stat'ed here first: a tester's report).  When the
        open's fresh attributes differ from what the kernel last got (`_told`),
        its copy is dropped, and it asks again before reading past that size."""
        ino = attr["ino"]
        if self._told.get(ino) == self._kernel_stamp(attr):
            return
        self._told.pop(ino, None)
        with trio.move_on_after(INVALIDATE_WAIT):
            await trio.to_thread.run_sync(_invalidate_attrs, ino, abandon_on_cancel=True)

    def _open_size(self, fd: FileData, attr: dict) -> int:
        """The size of a file open here, kept in `fd.size` for reads: the shard's
        size, or the end of our unflushed writes when that is further.  The
        shard may have a size another client committed since we opened, larger
        or smaller; a new (size, mtime, ctime) from it also drops our cached chunks."""
        if self._resizing[fd.ino]:
            return fd.size  # our truncate or commit is on its way; attr may predate it
        stamp = _stamp(attr)
        if stamp != fd.server_stamp:
            fd.server_stamp = stamp
            fd.read_cache.clear()
            fd.generation += 1
        fd.size = max(attr["size"], fd.written_end) if fd.size_dirty else attr["size"]
        return fd.size

    @contextlib.contextmanager
    def _changing_size(self, ino: int):
        """Around our own size change of `ino`: replies sent before it do not set fd.size."""
        self._resizing[ino] += 1
        try:
            yield
        finally:
            self._resizing[ino] -= 1
            if not self._resizing[ino]:
                del self._resizing[ino]

    async def lookup(self, parent_inode, name, ctx=None):
        check_name(name)  # ENAMETOOLONG before any answer, as the shard gives it
        self._looked_up_by(ctx)
        if self.behind:
            await self.behind.settle_name(parent_inode, name)
        if self.meta.absent.absent(parent_inode, name, trio.current_time()):
            # Known absent under a lease (client.absent); the kernel keeps
            # no negative entry of it, so the lease's end takes effect at once.
            self.dir_names.forget_at(parent_inode, name)
            return self._negative(0)
        entry = self._statahead_hit(parent_inode, name)
        if entry is not None:
            return entry
        for _ in range(STALE_RETRIES):
            since = self.behind.ends
            try:
                attr, seq = await self.meta.lookup_entry(parent_inode, name)
            except errors.NotFound:
                self.dir_names.forget_at(parent_inode, name)
                self.behind.gone(parent_inode, name)
                return self._negative(self.negative_timeout)
            if not self.behind.stale(attr["ino"], since):
                break
            # Another name of a file whose unlink is on its way or landed while
            # this was read (another mount linked it since we counted its links):
            # ask again for its count after the commit.
            await self.behind.settle_ino(attr["ino"])
        self.statahead.confirmed(attr["ino"])
        # Counted before the wait below: a forget of the kernel's old struct
        # handled meanwhile must not drop what this reply gives it.
        entry = self._entry(attr)
        self._referenced(attr["ino"])
        if stat.S_ISDIR(attr["mode"]) and name not in (b".", b".."):
            try:
                await drop_old_name(self.dir_names, attr["ino"], parent_inode, name)
            except BaseException:  # cancelled (unmount): the kernel gets no entry
                self._forget_lookups(attr["ino"], 1)
                raise
        elif name not in (b".", b".."):
            self._statahead_missed(parent_inode, name, seq)
        self._gave_name(parent_inode, name, attr)
        return entry

    def _statahead_hit(self, parent_inode: int, name: bytes):
        """The entry of `name` from a listing of `parent_inode` fetched ahead
        (client.statahead), with what is left of the entry and attribute
        timeouts; None when the shard must be asked."""
        now = time.monotonic()
        found = self.statahead.find(parent_inode, name, now)
        if found is None:
            return None
        ino, listing = found
        if ino in self.statahead.wrong:
            return None  # a shard's lookup decides (and clears it if right)
        attr = self.meta.attrs.get(ino)
        fetched = self.meta.fetched.get(ino)
        if attr is None or fetched is None:
            listing.gone += 1  # forgotten since: enough of those fetch it again
            return None
        if attr["nlink"] != 1 or not (stat.S_ISREG(attr["mode"]) or stat.S_ISLNK(attr["mode"])):
            return None
        attr_left = self.attr_timeout - (now - fetched)
        entry_left = self.statahead.entry_left(listing, now)
        if attr_left < MIN_TIMEOUT:
            listing.gone += 1  # aged here since: enough of those fetch it again
            return None
        if entry_left < MIN_TIMEOUT or self.behind.stale(ino, listing.since):
            return None
        listing.hits += 1
        listing.used = now
        self.statahead.served(ino, parent_inode, name)
        if isinstance(listing, Window):
            ahead = self.statahead.next_window(listing, now)
            if ahead is not None:
                self._start_window(parent_inode, listing.shard, *ahead, read_ahead=True)
        entry = self._named(parent_inode, name, attr)
        entry.attr_timeout = attr_left
        entry.entry_timeout = entry_left
        return entry

    def _statahead_missed(self, parent_inode: int, name: bytes, seq: int | None) -> None:
        """A lookup of `name` in `parent_inode` went to a shard, which found it at
        `seq`: maybe fetch the directory's listing, or a window of it."""
        dir_attr = self.meta.attrs.get(parent_inode)
        entries = (dir_attr["size"] if dir_attr is not None and stat.S_ISDIR(dir_attr["mode"])
                   else None)
        now = time.monotonic()
        if self.statahead.missed(parent_inode, entries, now):
            generation = self.statahead.fetch_started(parent_inode)
            self.meta.cluster.nursery.start_soon(self._fetch_listing, parent_inode, generation,
                                                 name=f"stat-ahead of {parent_inode}")
            return
        if self.statahead.windowed(parent_inode, now):
            shard = self.meta.cluster.shard_of_dentry(parent_inode, name)
            window = self.statahead.window_missed(parent_inode, shard, seq, now)
            if window is not None:
                self._start_window(parent_inode, shard, *window)

    def _start_window(self, parent_inode: int, shard: int, after: int, count: int,
                      read_ahead: bool = False) -> None:
        began = self.statahead.window_started(parent_inode, shard)
        self.meta.cluster.nursery.start_soon(
            self._fetch_window, parent_inode, shard, after, count, read_ahead, began,
            name=f"stat-ahead of {parent_inode} on shard {shard} after {after}")

    async def _fetch_window(self, parent_inode: int, shard: int, after: int, count: int,
                            read_ahead: bool, began) -> None:
        """The `count` entries of `shard`'s share of `parent_inode` after seq
        `after`, as a window (client.statahead)."""
        window = None
        try:
            await self.behind.settle_dir(parent_inode)  # a window shows our unlinks
            since = self.behind.ends
            started = time.monotonic()
            reply = await self.meta.readdir(parent_inode, shard, after, count)
            names: dict[bytes, int] = {}
            last = after
            for name, seq, attr in reply["entries"]:
                names[name] = attr["ino"]
                last = seq
            window = Window(names, started, since, parent_inode, shard, after, last,
                            bool(reply["more"]), read_ahead)
        except (errors.LoomError, trio.TooSlowError) as exc:
            log.debug("stat-ahead of directory %d on shard %d: %s", parent_inode, shard, exc)
        except Exception:  # a background task: a bug here must not end the mount
            log.exception("stat-ahead of directory %d on shard %d failed", parent_inode, shard)
        finally:
            self.statahead.window_ended(parent_inode, shard, began, window)

    async def _fetch_listing(self, parent_inode: int, generation: int) -> None:
        listing = None
        try:
            await self.behind.settle_dir(parent_inode)  # a listing shows our unlinks
            if self.meta.attrs.get(parent_inode) is None:
                # Its size was unknown when the fetch was asked for: a directory
                # known too big is not listed (a listing fills the attribute cache).
                dir_attr = await self.meta.getattr(parent_inode)
                if dir_attr["size"] > STATAHEAD_MAX_ENTRIES:
                    self.statahead.too_big(parent_inode, time.monotonic())
                    return
            since = self.behind.ends
            started = time.monotonic()
            names: dict[bytes, int] = {}
            for shard in range(self.meta.cluster.nshards):
                after = 0
                while True:
                    reply = await self.meta.readdir(parent_inode, shard, after, READDIR_BATCH)
                    for name, seq, attr in reply["entries"]:
                        names[name] = attr["ino"]
                        after = seq
                    if len(names) > STATAHEAD_MAX_ENTRIES:  # it grew since its size was read
                        self.statahead.too_big(parent_inode, time.monotonic())
                        return
                    if not reply["more"]:
                        break
            listing = Listing(names, started, since)
        except (errors.LoomError, trio.TooSlowError) as exc:
            log.debug("stat-ahead of directory %d: %s", parent_inode, exc)
        except Exception:  # a background task: a bug here must not end the mount
            log.exception("stat-ahead of directory %d failed", parent_inode)
        finally:
            self.statahead.fetch_ended(parent_inode, generation, listing)

    def _stale(self, ino: int) -> pyfuse3.FUSEError:
        """ESTALE, for an operation on an inode that the kernel reached through a
        name another mount has since removed or pointed elsewhere (`mv tmp cfg`):
        on ESTALE the kernel looks the name up afresh (LOOKUP_REVAL) and tries
        again, where ENOENT would end the call on a name that may well exist.  That
        lookup must reach a shard, so no listing fetched ahead answers the name
        again.  (Only where a name was used: an fstat of a removed directory held
        open, or a stat of a removed working directory, answer as a local
        filesystem does, a tester found.)"""
        self.statahead.stale_ino(ino, time.monotonic())
        return pyfuse3.FUSEError(errno.ESTALE)

    async def _verify_name(self, ino: int, ctx=None) -> None:
        """Before a change of `ino` by a name (chmod, chown, truncate, utime,
        setxattr, removexattr, link, an open for writing): that the names the
        kernel may have walked still lead there.  Those are a name a listing
        fetched ahead gave it (client.statahead), and the names this mount gave it
        more than `FRESH` seconds ago (client.filenames): another mount may have
        replaced a name or moved the file aside since, and the old inode may live
        on, under another name too (`mv cfg cfg.bak` and a new `cfg`): the change
        would land on it (a tester's `> cfg` emptied the backup).  ESTALE makes
        the kernel look the name up again; a wrong name is also dropped from the
        kernel, which may hold several for the inode.  For a listed name, every
        later call on the inode answers ESTALE until a shard gives it again; a
        name of ours is just dropped, so the kernel's retry through a descriptor
        (/proc/self/fd/N of an O_PATH one walks no name) lands on the file it
        holds, as on a local filesystem.  Concurrent calls wait for the one
        check and take its verdict (they came by the same names: a tester's two
        `> f` at once emptied the moved file), and later ones are refused for a
        while (`_refuse_if_named_wrong`); a file open here is past this.  Reads
        (readlink, getxattr, a read-only open) are not checked first: they
        answer ESTALE if the inode is gone, and may read a moved-aside file, as
        through the kernel's own dentry cache."""
        if ino in self.files:
            self.statahead.take_served(ino)
            return
        checking = self._verifying.get(ino)
        if checking is not None:  # another call's check of it: take its verdict
            done, verdict = checking
            await done.wait()
            if verdict:
                if ctx is not None:
                    self._note_refused(ino, ctx)
                raise pyfuse3.FUSEError(errno.ESTALE)
        if ino in self.statahead.wrong:
            # Found wrong before: the kernel may go on with its syscall after an
            # ESTALE from a getxattr it asks for itself (truncate's check of
            # security.capability), and its setattr must not land either.
            raise pyfuse3.FUSEError(errno.ESTALE)
        self._refuse_if_named_wrong(ino, ctx)
        listed = self.statahead.take_served(ino)
        places = [] if listed is None else [listed]
        places += [p for p in self.file_names.to_check(ino, time.monotonic()) if p != listed]
        if not places:
            return
        done, verdict = trio.Event(), []
        self._verifying[ino] = (done, verdict)
        try:
            wrong = verdict
            for parent, name in places:
                try:
                    found = await self.meta.lookup(parent, name)
                except errors.NotFound:
                    found = None
                except BaseException:
                    if listed is not None:  # not checked: the next call does
                        self.statahead.served(ino, *listed)
                    raise
                if found is None or found["ino"] != ino:
                    wrong.append((parent, name))
                else:
                    self.file_names.confirmed(ino, parent, name, time.monotonic())
            if wrong:
                if listed in wrong:
                    self.statahead.found_wrong(ino, time.monotonic())
                else:
                    self._wrong_named[ino] = time.monotonic()
                    while len(self._wrong_named) > WRONG_NAMED_MAX:
                        self._wrong_named.popitem(last=False)
                    if ctx is not None:
                        # As a refusal by name: the kernel's repeat through a
                        # descriptor (no lookup between) is done as asked, by
                        # `_by_name` too.
                        self._note_refused(ino, ctx)
                for parent, name in wrong:
                    self.file_names.drop(ino, parent, name)
                # In the background: the kernel may hold the parent's lock while it
                # waits for this answer (link within one directory).
                self.meta.cluster.nursery.start_soon(self._drop_entries, wrong)
                raise pyfuse3.FUSEError(errno.ESTALE)
        finally:
            del self._verifying[ino]
            done.set()

    def _refuse_if_named_wrong(self, ino: int, ctx) -> None:
        """ESTALE for a change of an inode one of whose names was found wrong
        lately, until a lookup gives it again: another call may have walked that
        name before the kernel dropped it (a tester's four `> f` at once: the
        ones after the check went on, on the moved file).  The repeat of a
        refused call from the same thread with no lookup between came through a
        descriptor, and goes on."""
        at = self._wrong_named.get(ino)
        if at is None:
            return
        now = time.monotonic()
        if now - at > max(self.entry_timeout, FRESH):
            del self._wrong_named[ino]  # every entry the kernel had then has expired
            return
        if ctx is not None:
            refused = self._refused.get((ino, ctx.pid))
            if refused is not None and now - refused <= REFUSED_FOR:
                return
            self._note_refused(ino, ctx)
        raise pyfuse3.FUSEError(errno.ESTALE)

    async def _drop_entries(self, places: list[tuple[int, bytes]]) -> None:
        """Make the kernel forget names that lead elsewhere now."""
        if self._invalidations is None:
            self._invalidations = trio.CapacityLimiter(INVALIDATIONS)
        try:
            for parent, name in places:
                with trio.move_on_after(INVALIDATE_WAIT):
                    await trio.to_thread.run_sync(_invalidate_name, parent, name,
                                                  abandon_on_cancel=True,
                                                  limiter=self._invalidations)
        except Exception:  # a background task: a bug here must not end the mount
            log.exception("dropping stale names %r from the kernel failed", places)

    @contextlib.contextmanager
    def _changing_names(self, *places: tuple[int, bytes]):
        """Around a namespace change of ours of the names at `places` (parent,
        name): their directories' listings fetched ahead, and fetches that
        overlap the change, are dropped; windows lose those names
        (client.statahead)."""
        for parent, name in places:
            self.statahead.changed(parent, (name,))
        try:
            yield
        finally:
            for parent, name in places:
                self.statahead.changed(parent, (name,))

    @contextlib.contextmanager
    def _removing_name(self, parent: int, name: bytes):
        """Around an unlink or rmdir of ours: the name leaves the listing of
        `parent` fetched ahead, which stays for the other names."""
        self.statahead.removed(parent, name)
        try:
            yield
        finally:
            self.statahead.removed(parent, name)

    @staticmethod
    def _negative(timeout: float) -> pyfuse3.EntryAttributes:
        """A negative entry the kernel may cache for `timeout` seconds."""
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = 0
        entry.entry_timeout = timeout
        return entry

    async def getattr(self, inode, ctx=None):
        # A directory's attributes are asked for again after each create or
        # unlink in it (the kernel drops them): see Meta.cached_dir.
        attr = self.meta.cached_dir(inode, self.attr_timeout)
        if attr is None:
            if self.behind:
                await self.behind.settle_ino(inode)
            try:
                attr = await self.meta.getattr(inode)
            except errors.NotFound:
                if self._reached_by_name(inode):
                    raise self._stale(inode) from None
                raise
            if attr["nlink"] == 0 and self._reached_by_name(inode):
                # Unlinked and not open here: still there only while another
                # client holds it, reached through a name that is now another file's.
                raise self._stale(inode)
        return self._entry(attr)

    def _reached_by_name(self, ino: int) -> bool:
        """Whether a getattr of `ino`, gone or unlinked, came through a name the
        kernel still caches, which another mount removed or pointed at a new file
        (`mv ref.lock ref`): then ESTALE makes stat(2) look the name up again, where
        ENOENT failed the call on a name that exists (a tester's report: git on two
        mounts lost commits).  Only for a regular file or symlink not open here
        through FUSE: an fstat of an open file, of a removed directory held open or
        of a FIFO or device (which the kernel opens without asking us), and a stat
        of a removed working directory, answer as before.  An O_PATH descriptor of a
        regular file also opens nothing here: its fstat, once every name of the file
        is gone and the file lives only because another mount holds it, answers
        ESTALE where a local filesystem answers (a reviewer's finding; rare, left)."""
        if ino in self.files:
            return False
        known = self.meta.attrs.get(ino)
        return known is not None and (stat.S_ISREG(known["mode"])
                                      or stat.S_ISLNK(known["mode"]))

    async def setattr(self, inode, attr, fields, fh, ctx):
        if self.behind:
            await self.behind.settle_ino(inode)
        if fh is None:
            await self._verify_name(inode, ctx)
        linked = fh is None and self._by_name(inode, ctx)
        try:
            return await self._setattr(inode, attr, fields, ctx, linked)
        except errors.NotFound:
            if linked:
                raise self._refuse_by_name(inode, ctx) from None
            raise

    def _by_name(self, inode: int, ctx) -> bool:
        """Whether a change of `inode` (chmod, chown, utime, truncate, setxattr,
        removexattr, link) must check that the file still has a name, because the
        kernel may have come by one it caches: another mount may have replaced the
        file since, and the old one be gone or live on only while held open there.
        ESTALE (`_refuse_by_name`) then makes the kernel look the name up again and
        repeat the call, which lands on the file the name leads to now; the change
        failed with ENOENT or landed on the old file (a tester's churn run).

        The kernel's repeat of a refused call reaching the same inode, from the same
        thread within REFUSED_FOR and with no lookup from it between, did not come by
        a name (a /proc/self/fd/N path of an O_PATH descriptor, AT_EMPTY_PATH: the
        second walk ends on the same inode, and asks nothing) and is done as asked,
        as a local filesystem does (a reviewer's finding).  A repeat by a name
        always looks the name up first.  Files open here and other types are not
        checked (`_reached_by_name`); nor is an old file that still has another name
        (a hard link) or is open here: the change lands on it."""
        if not self._reached_by_name(inode):
            return False
        key = (inode, ctx.pid)
        refused_at = self._refused.pop(key, None)
        return refused_at is None or time.monotonic() - refused_at > REFUSED_FOR

    def _refuse_by_name(self, inode: int, ctx) -> pyfuse3.FUSEError:
        self._note_refused(inode, ctx)
        return self._stale(inode)

    def _note_refused(self, inode: int, ctx) -> None:
        self._refused[(inode, ctx.pid)] = time.monotonic()
        while len(self._refused) > REFUSED_MAX:
            self._refused.popitem(last=False)

    def _looked_up_by(self, ctx) -> None:
        """A lookup from this thread: its next change is not a descriptor's repeat."""
        if self._refused and ctx is not None:
            for key in [key for key in self._refused if key[1] == ctx.pid]:
                del self._refused[key]

    async def _setattr(self, inode, attr, fields, ctx, linked: bool):
        changes = {}
        if fields.update_mode:
            changes["mode"] = attr.st_mode
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime:
            changes["atime"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime"] = attr.st_mtime_ns
        if fields.update_ctime:
            changes["ctime"] = attr.st_ctime_ns
        fd = self.files.get(inode)
        if fd is not None:
            # Pending writes land (and their size and mtime) before the change,
            # so an explicit mtime or size is not overtaken by older writes.
            await self._flush(fd)
            if fields.update_mtime:
                fd.mtime_ns = 0
        caller = {"uid": ctx.uid, "gid": ctx.gid, "groups": _groups(ctx)}
        if not fields.update_size:
            new_attr = await self.meta.setattr(inode, changes, caller, linked)
            self._own_change(new_attr)
            return self._entry(new_attr)
        changes["size"] = attr.st_size
        with self._changing_size(inode):
            await self._truncate(inode, attr.st_size, linked)
            new_attr = await self.meta.setattr(inode, changes, caller, linked)
        self._own_change(new_attr)
        return self._entry(new_attr)

    async def _truncate(self, ino: int, size: int, linked: bool = False):
        fd = self.files.get(ino)
        if fd is None:
            attr = await self.meta.getattr(ino)
            if not stat.S_ISREG(attr["mode"]):
                raise errors.Invalid(f"truncate of non-file ino {ino}")
            if linked and attr["nlink"] == 0:
                # Checked before any chunk is cut: see _by_name.  (A replace that
                # commits between this check and the setattr leaves the old file
                # cut and its setattr refused: a narrow race, left.)
                raise errors.NotFound(f"inode {ino} has no name left")
            fd = FileData(ino, Layout.from_wire(attr["layout"]), attr["size"])
        await self.data.truncate(fd, size)
        fd.size_dirty = False
        fd.written_end = 0

    # -- namespace --------------------------------------------------------

    async def _replaced_dir(self, ino: int, exc: errors.LoomError) -> errors.LoomError:
        """What to answer for directory `ino`, found gone: ESTALE when the name this
        mount gave the kernel for it leads to another directory now (another mount
        ran `rm -r out; mkdir out`), so that the kernel walks the name again and the
        call lands in the new one (it failed with ENOENT for up to entry_timeout, a
        tester found); else `exc`.  A working directory or an open one reached
        without a name gets ESTALE too in that case, as on NFS, where ENOENT came
        before."""
        place = self.dir_names.place_of(ino)
        if place is None:
            return exc
        try:
            found = await self.meta.lookup(*place)
        except (errors.LoomError, trio.TooSlowError):
            return exc
        if found["ino"] == ino or not stat.S_ISDIR(found["mode"]):
            return exc
        # The kernel's retry looks the name up again itself (LOOKUP_REVAL) and
        # drops the old dentry; an invalidation from here could race that retry
        # and drop the new one, under a process that just entered it.  The place
        # stays known for the next call that reaches the old directory (its
        # lookup records the new one there).
        return self._stale(ino)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        await self.behind.settle_name(parent_inode, name)
        try:
            with self._changing_names((parent_inode, name)):
                attr = await self.meta.mknod(parent_inode, name, mode, rdev, ctx.uid, ctx.gid)
        except errors.NotFound as exc:
            raise await self._replaced_dir(parent_inode, exc) from None
        return self._named(parent_inode, name, attr)

    async def mkdir(self, parent_inode, name, mode, ctx):
        await self.behind.settle_name(parent_inode, name)
        mode = stat.S_IFDIR | stat.S_IMODE(mode)
        try:
            with self._changing_names((parent_inode, name)):
                attr = await self.meta.mkdir(parent_inode, name, mode, ctx.uid, ctx.gid)
        except errors.NotFound as exc:
            raise await self._replaced_dir(parent_inode, exc) from None
        self.dir_names.record(attr["ino"], parent_inode, name)
        if self.behind.creates_early:
            self.meta.want_inos()  # for the creates it may answer early in it
        return self._named(parent_inode, name, attr)

    async def symlink(self, parent_inode, name, target, ctx):
        await self.behind.settle_name(parent_inode, name)
        try:
            with self._changing_names((parent_inode, name)):
                attr = await self.meta.symlink(parent_inode, name, target, ctx.uid, ctx.gid)
        except errors.NotFound as exc:
            raise await self._replaced_dir(parent_inode, exc) from None
        return self._named(parent_inode, name, attr)

    async def readlink(self, inode, ctx):
        if self.behind:
            await self.behind.settle_ino(inode)
        try:
            return await self.meta.readlink(inode)
        except errors.NotFound:
            if self._reached_by_name(inode):  # replaced elsewhere: look the name up again
                raise self._stale(inode) from None
            raise

    async def link(self, inode, new_parent_inode, new_name, ctx):
        if self.behind:
            await self.behind.settle_ino(inode)
            await self.behind.settle_name(new_parent_inode, new_name)
        await self._verify_name(inode, ctx)
        by_name = self._by_name(inode, ctx)
        try:
            with self._changing_names((new_parent_inode, new_name)):
                attr = await self.meta.link(inode, new_parent_inode, new_name)
        except errors.NotFound:
            if by_name:  # see _by_name
                raise self._refuse_by_name(inode, ctx) from None
            raise
        return self._named(new_parent_inode, new_name, attr)

    def _named(self, parent_inode: int, name: bytes, attr: dict) -> pyfuse3.EntryAttributes:
        """The entry of a name the kernel gets from this reply."""
        self._gave_name(parent_inode, name, attr)
        entry = self._entry(attr)
        self._referenced(attr["ino"])
        return entry

    def _gave_name(self, parent_inode: int, name: bytes, attr: dict) -> None:
        self.behind.saw(parent_inode, name, attr["ino"], attr["mode"])
        if self._wrong_named:
            self._wrong_named.pop(attr["ino"], None)  # reached by a name that is right
        if not stat.S_ISDIR(attr["mode"]) and name not in (b".", b".."):
            self.file_names.gave(attr["ino"], parent_inode, name, time.monotonic())

    def _referenced(self, ino: int) -> None:
        """A reply gives the kernel an entry of `ino`: its lookup count goes up by
        one (lookup, create, mknod, mkdir, symlink, link, readdirplus entries)."""
        self._lookups[ino] = self._lookups.get(ino, 0) + 1

    async def unlink(self, parent_inode, name, ctx):
        check_name(name)
        with self._removing_name(parent_inode, name):
            await self._unlink(parent_inode, name)
        self.file_names.gone(parent_inode, name)

    async def _unlink(self, parent_inode, name):
        if self._early_unlink(parent_inode, name) is not None:
            await self.behind.reserve(parent_inode, name)
            ino = self._early_unlink(parent_inode, name)
            if ino is not None:
                # Answered once sent, committed in the background (client.behind).
                when = self.meta.removing(parent_inode)
                await self.behind.send(parent_inode, name, ino, functools.partial(
                    self.meta.unlink, parent_inode, name, when))
                return
            self.behind.release()
        self.behind.gone(parent_inode, name)
        await self.behind.settle_name(parent_inode, name)
        await self.meta.unlink(parent_inode, name)

    def _early_unlink(self, parent_inode: int, name: bytes) -> int | None:
        """The inode if this unlink may be answered before its commit: as
        client.behind decides, and only when the inode lives on the name's shard,
        whose hold on requests about it (mdsd.removals) then covers the inode too."""
        ino = self.behind.may_answer_early(parent_inode, name, self.files, self.meta.attrs)
        cluster = self.meta.cluster
        if ino is None or cluster.shard_of_ino(ino) != cluster.shard_of_dentry(parent_inode,
                                                                               name):
            return None
        return ino

    async def _early_failed(self, item) -> None:
        """An unlink or create answered before its commit failed: the kernel's
        attributes of the parent (which showed it) are dropped, so they are asked
        for again; after a create, so is the name (it leads nowhere), and the
        file, if still open here, fails its writes, fsync and close."""
        parent_inode = item.parent
        self.meta.forget(parent_inode)
        if item.kind != CREATE:
            with trio.move_on_after(INVALIDATE_WAIT):
                await trio.to_thread.run_sync(_invalidate_attrs, parent_inode,
                                              abandon_on_cancel=True)
            return
        if not item.written:
            return  # the create itself fails: the kernel got nothing
        fd = self.files.get(item.ino)
        if fd is not None:
            fd.create_error = item.failure
        self.behind.gone(parent_inode, item.name)
        # Not waited for: the kernel takes the directory's lock for the name, and a
        # create in it may hold that lock while it waits for this one's place.
        self.meta.cluster.nursery.start_soon(self._forget_created, parent_inode, item.name)

    async def _forget_created(self, parent_inode: int, name: bytes) -> None:
        if self._invalidations is None:
            self._invalidations = trio.CapacityLimiter(INVALIDATIONS)
        try:
            with trio.move_on_after(INVALIDATE_WAIT):
                await trio.to_thread.run_sync(_invalidate_attrs, parent_inode,
                                              abandon_on_cancel=True,
                                              limiter=self._invalidations)
            with trio.move_on_after(INVALIDATE_WAIT):
                await trio.to_thread.run_sync(_invalidate_name, parent_inode, name,
                                              abandon_on_cancel=True,
                                              limiter=self._invalidations)
        except Exception:  # a background task: a bug here must not end the mount
            log.exception("dropping %r in %d from the kernel after its failed create",
                          name, parent_inode)

    async def rmdir(self, parent_inode, name, ctx):
        if self.behind:
            await self.behind.settle_dir_at(parent_inode, name, self.dir_names.place_of)
        self.behind.gone(parent_inode, name)
        with self._removing_name(parent_inode, name):
            await self.meta.rmdir(parent_inode, name)
        self.dir_names.forget_at(parent_inode, name)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if self.behind:
            await self.behind.settle_name(parent_inode_old, name_old)
            await self.behind.settle_dir_at(parent_inode_new, name_new,  # it may be replaced
                                            self.dir_names.place_of)
        moved = [self.behind.ino_at(parent_inode_old, name_old),
                 self.behind.ino_at(parent_inode_new, name_new)]
        self.behind.gone(parent_inode_old, name_old)
        self.behind.gone(parent_inode_new, name_new)
        try:
            with self._changing_names((parent_inode_old, name_old),
                                      (parent_inode_new, name_new)):
                await self.meta.rename(parent_inode_old, name_old, parent_inode_new,
                                       name_new, flags)
        except errors.NotFound as exc:
            for parent in dict.fromkeys((parent_inode_new, parent_inode_old)):
                replaced = await self._replaced_dir(parent, exc)
                if replaced is not exc:
                    raise replaced from None
            raise
        for ino in moved:  # the kernel moves its own entries: nothing to check by name
            if ino is not None:
                self.statahead.take_served(ino)
        self.dir_names.renamed((parent_inode_old, name_old), (parent_inode_new, name_new),
                               exchange=bool(flags & RENAME_EXCHANGE))
        self.file_names.renamed((parent_inode_old, name_old), (parent_inode_new, name_new),
                                bool(flags & RENAME_EXCHANGE))

    async def forget(self, inode_list):
        for ino, nlookup in inode_list:
            self._forget_lookups(ino, nlookup)

    def _forget_lookups(self, ino: int, nlookup: int) -> None:
        # What the kernel forgets is one struct inode and the lookups it
        # counted.  After drop_caches it may look the inode up again before
        # the forget of the old struct arrives here; the inode is known to
        # the kernel until the count of every reply is taken back.  (Dropping
        # at the late forget lost a directory's attributes, and stat-ahead
        # then gave up on it for BACKOFF: cold stats ran at a fifth of
        # their speed in one bench run in three.)
        left = self._lookups.pop(ino, 0) - nlookup
        if left > 0:
            self._lookups[ino] = left
            return
        self.dir_names.forget(ino)
        self.file_names.forget(ino)
        self.statahead.forgotten(ino)
        self._told.pop(ino, None)
        if ino not in self.files:
            self.meta.forget(ino)

    # -- directories ------------------------------------------------------

    async def opendir(self, inode, ctx):
        if self.behind:
            await self.behind.settle_ino(inode)
        try:
            attr = await self.meta.getattr(inode)
        except errors.NotFound as exc:
            raise await self._replaced_dir(inode, exc) from None
        if not stat.S_ISDIR(attr["mode"]):
            raise errors.NotDir(f"ino {inode} is not a directory")
        return inode

    async def readdir(self, fh, start_id, token):
        # The kernel takes a lookup of each entry of a reply it gets; a handler
        # that fails after some entries were buffered sends none of them.
        referenced: list[int] = []
        await self._readdir(fh, start_id, token, referenced)
        for ino in referenced:
            self._referenced(ino)

    async def _readdir(self, fh, start_id, token, referenced: list[int]):
        ino = fh
        if self.behind:
            await self.behind.settle_dir(ino)  # a listing shows our unlinks
        if start_id < 1 and not await self._reply_dot(token, ino, b".", ino, 1):
            return
        if start_id < 2:
            parent = (await self.meta.lookup(ino, b".."))["ino"]
            if not await self._reply_dot(token, ino, b"..", parent, 2):
                return
        first_shard, after = _uncookie(max(start_id, COOKIE_BASE))
        for shard in range(first_shard, self.meta.cluster.nshards):
            if not await self._readdir_shard(token, ino, shard, after, referenced):
                return
            after = 0

    def _listed_dir(self, ino: int, parent_ino: int, name: bytes) -> None:
        """A directory sent in a readdir reply: the kernel makes a dentry for it
        there (readdirplus) without a lookup, so its place is recorded as a lookup's
        is.  When this mount gave it to the kernel under another name, the old name
        is dropped in the background: the kernel may have kept it (it moves a
        directory's dentry only when it gets the locks at once), and a readdir
        must not wait for that."""
        old = self.dir_names.place_of(ino)
        if old is None:
            self.dir_names.record(ino, parent_ino, name)
        elif old != (parent_ino, name):
            self.meta.cluster.nursery.start_soon(self._drop_old_name_quietly, ino,
                                                 parent_ino, name)

    async def _drop_old_name_quietly(self, ino: int, parent_ino: int, name: bytes) -> None:
        try:
            await drop_old_name(self.dir_names, ino, parent_ino, name)
        except Exception:  # a background task: a bug here must not end the mount
            log.exception("dropping the old name of directory %d failed", ino)

    async def _reply_dot(self, token, ino, name, target, next_id) -> bool:
        attr = self.meta.attrs.get(target) or await self.meta.getattr(target)
        return pyfuse3.readdir_reply(token, name, self._entry(attr, record=False), next_id)

    async def _readdir_shard(self, token, ino, shard, after, referenced: list[int]) -> bool:
        while True:
            since = self.behind.ends
            reply = await self.meta.readdir(ino, shard, after, READDIR_BATCH)
            for name, seq, attr in reply["entries"]:
                if self.behind.stale(attr["ino"], since):  # as in lookup
                    await self.behind.settle_ino(attr["ino"])
                    try:
                        attr = await self.meta.getattr(attr["ino"])
                    except errors.NotFound:  # its other name went too meanwhile
                        after = seq
                        continue
                entry = self._entry(attr, record=False)
                if not pyfuse3.readdir_reply(token, name, entry, _cookie(shard, seq)):
                    return False  # not sent: the kernel asks again from here
                self._record_told(entry)
                referenced.append(attr["ino"])
                self.statahead.confirmed(attr["ino"])
                if stat.S_ISDIR(attr["mode"]):
                    self._listed_dir(attr["ino"], ino, name)
                self._gave_name(ino, name, attr)
                after = seq
            if not reply["more"]:
                return True

    async def releasedir(self, fh):
        pass

    async def fsyncdir(self, fh, datasync):
        # Every namespace change is committed on its shard before its reply,
        # except unlinks and creates answered early (client.behind): wait for those.
        await self.behind.settle_dir(fh)
        failed = self.behind.take_failure(fh)
        if failed is not None:
            raise pyfuse3.FUSEError(errno.EIO) from failed

    async def statfs(self, ctx):
        info = await self.meta.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = 4096
        out.f_blocks = info["bytes_total"] // 4096
        free = info.get("bytes_free", info["bytes_total"] - info["bytes_used"])
        out.f_bfree = out.f_bavail = max(0, free) // 4096
        out.f_files = info["inodes_used"] + info["inodes_free"]
        out.f_ffree = out.f_favail = info["inodes_free"]
        out.f_namemax = 255
        return out

    # -- files ------------------------------------------------------------

    async def create(self, parent_inode, name, mode, flags, ctx):
        if self.behind:
            await self.behind.settle_name(parent_inode, name)
        attr = await self._create_early(parent_inode, name, mode, ctx)
        if attr is not None:
            fi = self._new_handle(attr, flags)
            self.files[attr["ino"]].born_placement = self.meta.cluster.placement_changes
            self._pages_opened(attr)
            return fi, self._named(parent_inode, name, attr)
        try:
            with self._changing_names((parent_inode, name)):
                attr = await self.meta.mknod(parent_inode, name,
                                             stat.S_IFREG | stat.S_IMODE(mode), 0, ctx.uid,
                                             ctx.gid, open_it=True)
        except errors.NotFound as exc:
            raise await self._replaced_dir(parent_inode, exc) from None
        except errors.Exists:
            if flags & os.O_EXCL:
                raise
            # Another client made the name since the kernel looked: without
            # O_EXCL, open(2) opens what is there.
            attr = await self.meta.lookup(parent_inode, name)
            if stat.S_ISDIR(attr["mode"]):
                raise errors.IsDir(f"{name!r} in {parent_inode} is a directory") from None
            if not stat.S_ISREG(attr["mode"]):
                # The kernel takes only a regular file from a create (anything
                # else is EIO, with the entry and handle never given back).
                # ESTALE: it walks the path again, finds the name, and opens a
                # FIFO or device, or follows a symlink, as on a local disk.
                raise self._stale(attr["ino"]) from None
            fi = await self.open(attr["ino"], flags, ctx)
            return fi, self._named(parent_inode, name, self.meta.attrs.get(attr["ino"], attr))
        fi = self._new_handle(attr, flags)
        self.files[attr["ino"]].born_placement = self.meta.cluster.placement_changes
        self._pages_opened(attr)
        return fi, self._named(parent_inode, name, attr)

    async def _create_early(self, parent: int, name: bytes, mode: int, ctx) -> dict | None:
        """The new file's attributes, if this create is answered before its commit
        (client.behind): the reply the shard will give is built here, from the
        parent's cached mode, group and layout, a number from the shard's block
        for this client, and this client's clock.  None: ask the shard first."""
        meta, behind = self.meta, self.behind
        if not behind.creates_early:
            return None
        check_name(name)
        shard = meta.cluster.shard_of_dentry(parent, name)
        parent_attr = meta.attrs.get(parent)
        if (parent_attr is None or not stat.S_ISDIR(parent_attr["mode"])
                or not meta.absent.absent(parent, name, trio.current_time())):
            return None
        ino = meta.take_ino(shard)
        if ino is None:
            return None
        await behind.reserve_create()
        # No await from here until the request is written (behind.send).
        parent_attr = meta.attrs.get(parent)  # (as it is now)
        if parent_attr is None or not meta.absent.claim(parent, name, trio.current_time(),
                                                        EARLY_CREATE_MARGIN):
            behind.release_create()
            return None
        try:
            now = time.time_ns()
            gid = parent_attr["gid"] if parent_attr["mode"] & stat.S_ISGID else ctx.gid
            layout = parent_attr.get("layout") or meta.cluster.config.layout.to_wire()
            attr = {"ino": ino, "mode": stat.S_IFREG | stat.S_IMODE(mode), "nlink": 1,
                    "uid": ctx.uid, "gid": gid, "rdev": 0, "size": 0, "atime": now,
                    "mtime": now, "ctime": now, "gen": 1, "layout": layout, "blocks": 0}
        except BaseException:
            meta.absent.forget(parent)
            behind.release_create()
            raise
        with self._changing_names((parent, name)):
            await behind.send(parent, name, ino, functools.partial(
                meta.create_early, parent, name, attr, parent_attr["mode"],
                parent_attr["gid"]), kind=CREATE)
        return attr

    async def _settle_create(self, fd: FileData, wait: bool = True) -> None:
        """Before a write or fsync of a file whose create was answered early: its
        commit, and EIO if it failed (client.behind).  A flush (close) waits for
        nothing: what it must send was written, and the write waited already."""
        if wait and self.behind.pending_ino(fd.ino):
            await self.behind.settle_ino(fd.ino)
        if fd.create_error is not None:
            raise errors.IOFailure(f"the create of inode {fd.ino} failed after its answer: "
                                   f"{fd.create_error.message}")

    async def open(self, inode, flags, ctx):
        if self.behind:
            await self.behind.settle_ino(inode)
        cached = self.meta.attrs.get(inode)
        prefetch = self._prefetch(inode, cached, flags)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            await self._verify_name(inode, ctx)  # a write must not land on a moved-aside file
        else:
            self.statahead.take_served(inode)  # the open itself finds a gone inode out
        try:
            attr = await self.meta.open(inode, flags)
        except errors.NotFound:
            raise self._stale(inode) from None
        if attr["nlink"] == 0 and inode not in self.files and not stat.S_ISDIR(attr["mode"]):
            # Unlinked, and not open here: the kernel came by a name it cached before
            # another mount removed or replaced the file (as `mv tmp cfg` does).
            # ESTALE makes it look the name up again and open what it is now.
            await self.meta.close(inode)
            raise self._stale(inode)
        if prefetch is not None and prefetch.stamp != _stamp(attr):
            # Another client's commit came between: the chunk may predate it.
            prefetch = None
        if self._append_at_stale_size(attr, flags, ctx):
            await self.meta.close(inode)
            raise self._stale(inode)  # (its lookup must reach a shard, not a listing)
        fi = self._new_handle(attr, flags, prefetch)
        keep = self._pages_opened(attr)
        if flags & os.O_TRUNC:
            self._told.pop(inode, None)  # the kernel sets the size to 0 itself
        else:
            try:
                await self._opened_fresh(attr)
            except BaseException:
                await self.release(fi.fh)
                raise
        if flags & os.O_TRUNC:
            # libfuse asks the kernel for atomic O_TRUNC: the truncation is ours.
            try:
                await self._open_truncate(attr, ctx)
            except BaseException:
                await self.release(fi.fh)
                raise
            return fi
        fi.keep_cache = keep
        return fi

    def _append_at_stale_size(self, attr: dict, flags: int, ctx) -> bool:
        """Whether an O_APPEND open must first have the kernel take the file's
        size anew.  The kernel puts an O_APPEND write at the size it has cached
        and never asks before an append (only before a read past it), so after
        another mount appended or truncated, appends from two mounts in turn wrote
        over each other (a tester lost half the lines of `echo >> f`).  ESTALE
        makes the kernel look the name up again (LOOKUP_REVAL), which gives it
        the size, and open again.  Once per thread: its next open within
        APPEND_RETRY that meets a change again (another mount appending at the
        same time, or an open through /proc/self/fd that walks no name) goes on;
        other threads' opens are each sent back (a tester's: the second of two
        processes appending at once went on with the old size, and an open
        meeting a change twice failed with ESTALE).  The writeback
        cache keeps its own size (README "Kernel writeback cache")."""
        ino = attr["ino"]
        if not flags & os.O_APPEND or flags & os.O_TRUNC or self.enable_writeback_cache:
            return False
        now = time.monotonic()
        key = (ino, getattr(ctx, "pid", 0))
        retried = self._append_retried.pop(key, None)  # only this thread's next open
        gen = attr.get("gen")
        if gen is not None and self._page_gens.get(ino) == gen:
            # Nobody else changed the file since this mount last had it: the
            # kernel's size is right, grown by our own writes (even those that are
            # still on their way, which the shard's size lacks).
            return False
        told = self._told.get(ino)
        if told not in (None, MIXED) and told[0] == self._kernel_stamp(attr)[0]:
            return False
        if retried is not None and now - retried < APPEND_RETRY:
            return False
        self._append_retried[key] = now
        while len(self._append_retried) > TOLD_MAX:
            self._append_retried.popitem(last=False)
        self._told.pop(ino, None)  # the lookup's reply sets it afresh
        return True

    def _pages_opened(self, attr: dict) -> bool:
        """Close-to-open: whether the kernel may keep its pages of the file at this
        open (nothing changed it since they were read, or only this client did).
        Size and mtime alone do not tell: a rewrite at the same size with utime
        back to the old mtime (tar -x, rsync -t --inplace) keeps both."""
        ino, gen = attr["ino"], attr.get("gen")
        if gen is None:
            return False
        keep = self._page_gens.get(ino) == gen
        self._page_gens[ino] = gen
        self._page_gens.move_to_end(ino)
        while len(self._page_gens) > PAGE_GENS:
            self._page_gens.popitem(last=False)
        return keep

    def _own_change(self, attr: dict) -> None:
        """The reply to this client's own commit or setattr of a file: the kernel's
        pages follow that change, so they still match unless someone else's
        change came in between (then gen moved by more than one)."""
        ino, gen = attr["ino"], attr.get("gen")
        known = self._page_gens.get(ino)
        if known is None or gen == known or attr.get("unchanged"):
            return  # (unchanged: a commit that wrote nothing; gen moved, if at all, by others)
        if gen == known + 1:
            self._page_gens[ino] = gen
            told = self._told.get(ino)
            if told not in (None, MIXED):
                # Our writes moved the kernel's size as they moved the shard's: an
                # O_APPEND open here next needs no new size (_append_at_stale_size).
                self._told[ino] = (attr["size"], *told[1:])
        else:
            del self._page_gens[ino]

    async def _open_truncate(self, attr: dict, ctx):
        """open(O_TRUNC): size 0, new mtime and ctime, and (for a caller other than
        root) set-user-ID and group-executable set-group-ID cleared, as truncate does."""
        ino = attr["ino"]
        changes = {"size": 0}
        mode = attr["mode"]
        if ctx.uid != 0 and mode & (stat.S_ISUID | stat.S_ISGID):
            mode &= ~stat.S_ISUID
            if mode & stat.S_IXGRP:
                mode &= ~stat.S_ISGID
            changes["mode"] = mode
        await self._flush(self.files[ino])
        caller = {"uid": ctx.uid, "gid": ctx.gid, "groups": _groups(ctx)}
        with self._changing_size(ino):
            await self._truncate(ino, 0)
            self._own_change(await self.meta.setattr(ino, changes, caller))

    def _prefetch(self, ino: int, cached: dict | None, flags: int):
        """For a read-only open of a file of one chunk that no handle here has
        open, start fetching the chunk now (client.data, `DataPath.prefetch`)."""
        if (flags & os.O_ACCMODE != os.O_RDONLY or cached is None or ino in self.files
                or not stat.S_ISREG(cached["mode"]) or not cached.get("layout")):
            return None
        layout = Layout.from_wire(cached["layout"])
        stamp = _stamp(cached)
        vouched = self._page_gens.get(ino)
        if not 0 < stamp[0] <= layout.unit or (vouched is not None
                                                 and vouched == cached.get("gen")):
            # Unchanged since a handle here had it open: the kernel likely holds its
            # pages and keeps them (keep_cache), so the fetch would go unused.
            return None
        return self.data.prefetch(ino, layout, stamp[0], stamp)

    def _new_handle(self, attr: dict, flags: int, prefetch=None) -> pyfuse3.FileInfo:
        ino = attr["ino"]
        fd = self.files.get(ino)
        if fd is None:
            layout = Layout.from_wire(attr["layout"]) if attr.get("layout") else Layout()
            fd = self.files[ino] = FileData(ino, layout, attr["size"])
            fd.server_stamp = _stamp(attr)
            self.meta.cluster.open_inos[ino] = 0
            if prefetch is not None:
                self.data.adopt(prefetch, fd)
        else:
            self._open_size(fd, attr)
            # Close-to-open: what another client wrote is fetched anew, also by
            # a fetch that started before this open and ends after it.
            fd.read_cache.clear()
            fd.generation += 1
        fd.handles += 1
        self.meta.cluster.open_inos[ino] += 1
        fh = next(self._fhs)
        self.handles[fh] = Handle(ino, fd, flags)
        return pyfuse3.FileInfo(fh=fh)

    async def read(self, fh, off, size):
        handle = self.handles[fh]
        return await self.data.read(handle.fd, off, size)

    async def write(self, fh, off, buf):
        handle = self.handles[fh]
        await self._settle_create(handle.fd)
        return await self.data.write(handle.fd, off, buf, time.time_ns())

    async def flush(self, fh):
        handle = self.handles[fh]
        if (handle.flags & os.O_ACCMODE) == os.O_RDONLY:
            # A reader's close(2) has nothing of its own to send, and must not take
            # or report another handle's failed write (a tester saw a reader's
            # close fail with EIO for it); its fsync(2) still reports it, as on
            # Linux, and the writers' own closes and the release send their writes.
            return
        await self._flush(handle.fd, handle)

    async def fsync(self, fh, datasync):
        handle = self.handles[fh]
        fd = handle.fd
        await self._settle_create(fd)
        await self._flush(fd, handle)
        try:
            await self.data.sync(fd)
        except BaseException:
            self._page_gens.pop(fd.ino, None)  # as in _flush: the pages may not be stored
            raise

    async def _flush(self, fd: FileData, handle: Handle | None = None):
        """Send the file's writes and commit its size; raises the error of a failed
        write, and to `handle` any failed write it has not been told of."""
        await self._settle_create(fd, wait=False)
        await self.data.drain(fd)
        error = self.data.take_error(fd)
        missed = handle is not None and fd.error_count > handle.errors_seen
        if handle is not None:
            handle.errors_seen = fd.error_count
        if error is None and missed:
            # Another handle's flush or fsync took the error first and did what
            # follows; this one's caller must hear of it too.
            raise copy.copy(fd.last_error)
        if error is not None:
            # The size those writes would have given the file is not recorded:
            # a failed write must not leave a file that reads as zeros.
            fd.size_dirty = False
            fd.written_end = 0
            # What did land past the size must not show up if the file grows later.
            self.meta.cluster.nursery.start_soon(self._mark_tail, fd.ino)
            # The kernel's pages hold those writes, stored or not: the next open here
            # drops them instead of keeping them for good (a tester saw this mount
            # read bytes that no OSD had, while every other mount read the old ones).
            self._page_gens.pop(fd.ino, None)
            raise error
        if fd.size_dirty:
            # Commit the end of our own writes: fd.size may be a size from
            # before another client truncated the file, not ours to restore.
            chunks = set(fd.chunks_written)
            end, mtime = fd.written_end, fd.mtime_ns
            with self._changing_size(fd.ino):
                self._own_change(await self.meta.commit_size(fd.ino, end, mtime, chunks))
            fd.chunks_written -= chunks
            if (fd.written_end, fd.mtime_ns) == (end, mtime):  # no write meanwhile
                fd.size_dirty = False
                fd.written_end = 0

    async def _mark_tail(self, ino: int) -> None:
        try:
            await self.meta.mark_tail(ino)
        except (errors.LoomError, trio.TooSlowError) as exc:
            log.warning("ino %d: cannot report the failed writes past its size: %s", ino, exc)
        except Exception:  # a background task: a bug here must not end the mount
            log.exception("reporting the failed writes of ino %d failed", ino)

    async def release(self, fh):
        handle = self.handles.pop(fh)
        fd = handle.fd
        fd.handles -= 1
        open_inos = self.meta.cluster.open_inos
        open_inos[fd.ino] -= 1
        if fd.handles:
            return
        try:
            if self.behind.pending_ino(fd.ino):  # its create registers the open
                await self.behind.settle_ino(fd.ino)
            await self._flush(fd)
        finally:
            # The kernel does not wait for release: a new open of the same
            # file may have taken this FileData while we flushed.
            if fd.handles == 0:
                self.data.closed(fd)
                del self.files[fd.ino]
                del open_inos[fd.ino]
                await self.meta.close(fd.ino)

    # -- extended attributes ----------------------------------------------

    async def setxattr(self, inode, name, value, ctx):
        if self.behind:
            await self.behind.settle_ino(inode)
        await self._verify_name(inode, ctx)
        self._fault_hook(inode, name)
        _check_xattr_name(name)
        linked = self._by_name(inode, ctx)
        try:
            await self.meta.setxattr(inode, name, value, linked=linked)
        except errors.NotFound:
            if linked:
                raise self._refuse_by_name(inode, ctx) from None
            raise

    async def getxattr(self, inode, name, ctx):
        if self.behind:
            await self.behind.settle_ino(inode)
        if inode in self.statahead.wrong and inode not in self.files:
            raise pyfuse3.FUSEError(errno.ESTALE)  # see _verify_name
        self._fault_hook(inode, name)
        _check_xattr_name(name)
        try:
            return await self.meta.getxattr(inode, name)
        except errors.NotFound:
            if self._reached_by_name(inode):  # see readlink
                raise self._stale(inode) from None
            raise

    def _fault_hook(self, ino: int, name: bytes):
        if self.debug_faults and name == FAULT_XATTR:
            raise InjectedFault(f"debug fault injected on ino {ino}")

    async def listxattr(self, inode, ctx):
        if self.behind:
            await self.behind.settle_ino(inode)
        if inode in self.statahead.wrong and inode not in self.files:
            raise pyfuse3.FUSEError(errno.ESTALE)  # see _verify_name
        return await self.meta.listxattr(inode)

    async def removexattr(self, inode, name, ctx):
        if self.behind:
            await self.behind.settle_ino(inode)
        await self._verify_name(inode, ctx)
        _check_xattr_name(name)
        linked = self._by_name(inode, ctx)
        try:
            await self.meta.removexattr(inode, name, linked=linked)
        except errors.NotFound:
            if linked:
                raise self._refuse_by_name(inode, ctx) from None
            raise


def _check_xattr_name(name: bytes) -> None:
    """As Linux filesystems answer: EOPNOTSUPP outside the namespaces kept here,
    EINVAL for a namespace with no name after it (a tester's `foo.k` and
    `system.foo` were stored, and `user.`).  POSIX ACLs (`system.posix_acl_*`)
    are not enforced, so they are not stored either: cp -a, tar and rsync then
    fall back to chmod, as on a filesystem without ACLs."""
    if name.startswith(ACL_XATTR_PREFIX):
        raise errors.NotSupported(f"POSIX ACLs are not supported ({name!r})")
    for space in XATTR_NAMESPACES:
        if name.startswith(space):
            if name == space:
                raise errors.Invalid(f"no attribute name after {name!r}")
            return
    raise errors.NotSupported(f"no such attribute namespace ({name!r})")


def _invalidate_name(parent: int, name: bytes) -> None:
    try:
        pyfuse3.invalidate_entry(parent, name)
    except OSError as exc:  # ENOENT: the kernel no longer has the name
        log.debug("invalidate of %r in %d: %s", name, parent, exc)


def _invalidate_attrs(ino: int) -> None:
    try:
        pyfuse3.invalidate_inode(ino, attr_only=True)
    except OSError as exc:  # ENOENT: the kernel no longer has the inode
        log.debug("invalidate of inode %d: %s", ino, exc)


def _groups(ctx) -> list[int]:
    try:
        return sorted(pyfuse3.get_sup_groups(ctx.pid))
    except (OSError, ValueError):
        return []

