"""Unlinks and creates answered before their commit, and what must wait for them.

A removal costs a shard commit (an fsync) and a round trip, and a program
removing files one after another (``rm -rf``, a dataset cleaner, a checkpoint
rotation) waits for each in turn, while the shard could commit many of them
with one fsync (mdsd.store's group commit).  So an unlink of a file this
client knows is answered as soon as its request is written to the shard's
connection, and up to `window` of them travel at once.  Only what the kernel
has already checked goes this way: the name was looked up, created or listed
here as a regular file or a symlink with one link (another name's lookup
would show the old link count), and the file is not open here.  Everything
else waits for its commit as before, and so does an unlink whose request
cannot be written (its shard unreachable): it fails as that one would.

What this client sees stays exact: before a request that may depend on a
pending removal goes out, it waits for it (`settle_name`, `settle_ino`,
`settle_dir`, `settle_all`): a lookup or create of the same name, anything
about the removed inode, a listing or fsync of the directory, an rmdir or a
rename onto it.  The kernel has already made the name negative, so it asks
us (a lookup) before using the name again.  (client.meta keeps the parent's
cached attributes, which show the removal at once, from being replaced by a
shard's reply until the commit landed.)

Other mounts: a request about the name, the inode or the directory that
reaches the shard after the unlink waits there for its commit
(mdsd.removals), and one sent after the application learnt of the removal
reaches it after the unlink, which was written first.  Durability is the
directory's, as on a local filesystem: fsync of the directory waits for its
pending removals and reports one that failed after its answer (EIO) once;
unmount waits for them (a bounded time, client.mount.UNMOUNT_UNLINKS_SECONDS).
A removal that fails after its answer (the shard stopped answering past
mds_timeout, or it found a directory under the name) is logged, the parent's
attributes are dropped from the kernel, and the name shows again at its next
lookup.  An unlink of a name that another mount removed first succeeds (its
NotFound comes too late to tell).  A client killed with removals in flight
loses those the shard had not received (at most `window`), as a local
filesystem loses the removals its journal had not written at a power cut.

Creates (create(2) of a regular file) go the same way where this client holds
a lease on the name's share of the directory (client.absent: nobody else may
add an entry there meanwhile) and a number for the new inode from the shard
(client.meta `take_ino`); client.ops builds the reply the shard will build.
The waits above cover them: anything about the name, the new inode or the
directory waits for the commit, and so do a write to the file, its fsync and
its release, so no byte reaches an OSD for a file that might not be made.  A
create that fails after its answer (its shard stopped answering, or the lease
ran out before the shard had the request and another mount took the name or
removed the directory) is logged and reported as an unlink is; the kernel
forgets the name, and the file's write, fsync and close fail with EIO.
"""

import logging
import stat
from collections import OrderedDict

import trio

from loomproto import errors

log = logging.getLogger(__name__)

NAMES_KEPT = 32_768  # (parent, name) -> (ino, mode) remembered from replies (~8 MiB)
FAILED_KEPT = 1024  # directories with a failure not yet reported by their fsync
ENDED_KEPT = 4096  # inodes whose early unlink ended, with when (see `stale`)


UNLINK, CREATE = "unlink", "create"


class _Pending:
    __slots__ = ("parent", "name", "ino", "kind", "done", "answer", "written", "error",
                 "failure")

    def __init__(self, parent: int, name: bytes, ino: int, kind: str):
        self.parent = parent
        self.name = name
        self.ino = ino
        self.kind = kind
        self.done = trio.Event()  # the request ended (committed, or failed)
        self.answer = trio.Event()  # written to the shard's connection, or ended
        self.written = False
        self.error: errors.LoomError | None = None  # failed before it was written
        self.failure: errors.LoomError | None = None  # failed after

    def set(self) -> None:
        """Called by the RPC layer once the request is written (rpc.RpcClient.call)."""
        self.written = True
        self.answer.set()


class UnlinksBehind:
    """Removals and creates in flight; `window` 0 makes every unlink wait for its
    commit, `create_window` 0 every create."""

    def __init__(self, nursery, window: int, on_failure=None, create_window: int = 0):
        self.nursery = nursery
        self.window = window
        self.on_failure = on_failure  # async fn(item): the kernel's view of it is wrong
        self._slots = trio.Semaphore(window) if window > 0 else None
        self._create_slots = (trio.Semaphore(create_window)
                              if create_window > 0 and nursery is not None else None)
        self._by_name: dict[tuple[int, bytes], _Pending] = {}
        self._by_ino: dict[int, _Pending] = {}
        self._by_dir: dict[int, set[_Pending]] = {}
        self._failed: dict[int, errors.LoomError] = {}  # directory -> first failure
        self.ends = 0  # early unlinks ended so far: a clock for `stale`
        self._ended: OrderedDict[int, int] = OrderedDict()  # ino -> `ends` at its end
        self.failures = 0  # counted for tests and logs
        # (parent, name) -> (ino, mode), from this client's lookups, creates and
        # listings: what the kernel's dentry of the name holds, as far as we know.
        self._names: OrderedDict[tuple[int, bytes], tuple[int, int]] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    # -- names the kernel got from us -------------------------------------

    def saw(self, parent: int, name: bytes, ino: int, mode: int) -> None:
        if self._slots is None:
            return
        key = (parent, name)
        self._names[key] = (ino, mode)
        self._names.move_to_end(key)
        if len(self._names) > NAMES_KEPT:
            self._names.popitem(last=False)

    def gone(self, parent: int, name: bytes) -> None:
        self._names.pop((parent, name), None)

    def ino_at(self, parent: int, name: bytes) -> int | None:
        """The inode the kernel got from us for `name` in `parent`, if known."""
        known = self._names.get((parent, name))
        return None if known is None else known[0]

    def may_answer_early(self, parent: int, name: bytes, open_here, attrs) -> int | None:
        """The inode whose unlink may be answered before its commit, or None: a
        regular file or symlink the kernel got from us, with no other name (as
        `attrs`, this client's attribute cache, last heard) and not open here.
        Another name's lookup or listing would otherwise give its old link count."""
        if self._slots is None:
            return None
        known = self._names.get((parent, name))
        if known is None or known[0] in open_here or known[0] in self._by_ino:
            return None
        ino, mode = known
        attr = attrs.get(ino)
        if attr is None or attr["nlink"] != 1:
            return None
        return ino if stat.S_ISREG(mode) or stat.S_ISLNK(mode) else None

    async def reserve(self, parent: int, name: bytes) -> None:
        """Wait for a place in the window.  Then `may_answer_early` is asked
        again (things may have changed meanwhile), and `send` or `release`
        must follow with no await between (`send` awaits only after it took
        the place)."""
        await self.settle_name(parent, name)
        await self._slots.acquire()

    def release(self) -> None:
        """Give back a place taken by `reserve` and not used."""
        self._slots.release()

    @property
    def creates_early(self) -> bool:
        return self._create_slots is not None

    async def reserve_create(self) -> None:
        """A place for a create in its window (then as `reserve`)."""
        await self._create_slots.acquire()

    def release_create(self) -> None:
        self._create_slots.release()

    async def send(self, parent: int, name: bytes, ino: int, remove,
                   kind: str = UNLINK) -> None:
        """Send `remove(sent)`, the unlink (or create) request, in the background, and return
        once it is written to the shard's connection (`sent.set()`): a request
        about the name that anyone sends after the answer then reaches the shard
        after it, and waits there for its commit (mdsd.removals).  A request that
        fails before it could be written (its shard unreachable past mds_timeout)
        raises here, as an unlink answered after its commit does."""
        item = _Pending(parent, name, ino, kind)
        try:
            self.nursery.start_soon(self._send, item, remove)
        except BaseException:  # (the mount is ending): nothing was registered
            (self._slots if kind == UNLINK else self._create_slots).release()
            raise
        if kind == UNLINK:
            self._names.pop((parent, name), None)
        self._by_name[(parent, name)] = item
        self._by_ino[ino] = item
        self._by_dir.setdefault(parent, set()).add(item)
        await item.answer.wait()
        if item.error is not None:
            raise item.error

    async def _send(self, item: _Pending, remove):
        try:
            if not await self._request(item, remove) and self.on_failure is not None:
                try:  # (before `done`: an fsync of the directory waits for this, not
                    # for the kernel invalidations after a create, which run apart)
                    await self.on_failure(item)
                except Exception:
                    log.exception("after the failed %s of %r in %d", item.kind, item.name,
                                  item.parent)
        finally:
            self._finish(item)
            item.answer.set()

    async def _request(self, item: _Pending, remove) -> bool:
        """Whether the removal is done (or was done by someone else)."""
        try:
            await remove(item)
            return True
        except errors.NotFound as exc:
            if item.kind == UNLINK:
                log.debug("unlink of %r in %d: already gone", item.name, item.parent)
                return True
            self._fail(item, exc)  # the directory is gone
        except (errors.LoomError, trio.TooSlowError) as exc:
            self._fail(item, exc if isinstance(exc, errors.LoomError)
                       else errors.IOFailure("metadata server did not answer in time"))
        except Exception as exc:  # a background task: a bug must not end the mount
            log.exception("%s of %r in %d", item.kind, item.name, item.parent)
            self._fail(item, errors.IOFailure(f"{item.kind} failed: {exc!r}"))
        return False

    def _fail(self, item: _Pending, exc: errors.LoomError):
        if not item.written:  # the caller still waits, and gets the error
            item.error = exc
            return
        item.failure = exc
        self.failures += 1
        self._failed.setdefault(item.parent, exc)
        while len(self._failed) > FAILED_KEPT:  # (the error log keeps every one)
            del self._failed[next(iter(self._failed))]
        if item.kind == CREATE:
            log.error("create of %r in directory %d, answered before its commit, failed: "
                      "%s; the file may not be there (its close and fsync of the directory "
                      "report it)", item.name, item.parent, exc)
            return
        log.error("unlink of %r in directory %d, answered before its commit, failed: %s; "
                  "the name may still be there (fsync of the directory reports it)",
                  item.name, item.parent, exc)

    def _finish(self, item: _Pending):
        if self._by_name.get((item.parent, item.name)) is item:
            del self._by_name[(item.parent, item.name)]
        if self._by_ino.get(item.ino) is item:
            del self._by_ino[item.ino]
        in_dir = self._by_dir.get(item.parent)
        if in_dir is not None:
            in_dir.discard(item)
            if not in_dir:
                del self._by_dir[item.parent]
        item.done.set()
        if item.kind == CREATE:
            self._create_slots.release()
            return
        self.ends += 1
        self._ended[item.ino] = self.ends
        self._ended.move_to_end(item.ino)
        if len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)
        self._slots.release()

    # -- waits ------------------------------------------------------------

    async def settle_name(self, parent: int, name: bytes) -> None:
        item = self._by_name.get((parent, name))
        if item is not None:
            await item.done.wait()

    def pending_ino(self, ino: int) -> bool:
        return ino in self._by_ino

    def stale(self, ino: int, since: int) -> bool:
        """Whether a reply about `ino` to a request sent when `ends` was `since`
        may predate an unlink of it: one is on its way, or ended meanwhile (or so
        long ago that it is no longer known: then, too, the answer is yes)."""
        pending = self._by_ino.get(ino)
        if pending is not None:
            return pending.kind == UNLINK
        if since == self.ends:
            return False
        ended = self._ended.get(ino)
        if ended is not None:
            return ended > since
        return bool(self._ended) and next(iter(self._ended.values())) > since \
            and len(self._ended) >= ENDED_KEPT

    async def settle_ino(self, ino: int) -> None:
        """Wait for a pending removal of `ino`, and of names in it if a directory."""
        item = self._by_ino.get(ino)
        if item is not None:
            await item.done.wait()
        await self.settle_dir(ino)

    async def settle_dir(self, ino: int) -> None:
        """Wait for the changes in directory `ino` on their way now (not for those
        sent meanwhile: other threads may keep creating there)."""
        for item in list(self._by_dir.get(ino, ())):
            await item.done.wait()

    async def settle_dir_at(self, parent: int, name: bytes, place_of) -> None:
        """Wait for the pending unlinks in the directory named `name` in `parent`
        (an rmdir, or a rename that may replace it): in every directory whose
        place `place_of(ino)` (client.dirnames) is that name or unknown."""
        await self.settle_name(parent, name)
        for ino in list(self._by_dir):
            place = place_of(ino)
            if place is None or place == (parent, name):
                await self.settle_dir(ino)

    async def settle_all(self) -> None:
        """Wait for the unlinks pending now (not for those sent meanwhile)."""
        for item in list(self._by_name.values()):
            await item.done.wait()

    def take_failure(self, ino: int) -> errors.LoomError | None:
        """The first failed removal in directory `ino` since the last call."""
        return self._failed.pop(ino, None)
