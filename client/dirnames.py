"""Where the kernel knows each directory: the name this mount last gave it, so a
directory that another mount moved can have its old name dropped from the
kernel's dentry cache before the kernel meets it under the new one.

Why: Linux keeps one dentry per directory inode.  When a lookup answers with a
directory the kernel still holds under another parent (the other mount renamed
it; the old dentry stays cached until something walks that path again, whatever
entry_timeout is), the kernel moves the old dentry to the new place
(``d_splice_alias``).  It can only do so while no rename holds the superblock's
rename lock; inside a rename between two directories it gives up with ESTALE,
and rename(2) fails the same way on its one retry.  The lookup handler therefore
invalidates the old name first (`drop_old_name`), which lets the
kernel instantiate the directory at its new name.  A directory sent in a readdir
reply counts as told to the kernel as well: readdirplus makes its dentry there
without a lookup (client.ops `_listed_dir`).

Limitations:
- The invalidation needs the old parent's inode lock.  When the operation that
  waits for this lookup holds it (a rename between the old parent and the lookup's
  directory), the invalidation cannot run until that operation ends, so the
  handler waits at most `INVALIDATE_WAIT` and answers anyway: the kernel then
  answers ESTALE, as without this module, and the invalidation lands after.
- A lookup that walks through the old name itself (a cached path, a working
  directory or an open directory inside the moved tree) keeps the old dentry
  referenced; the kernel then answers ELOOP or ESTALE for names that put the
  directory inside itself in that stale view (README "POSIX behaviour").
"""

import logging

import pyfuse3
import trio

log = logging.getLogger(__name__)

INVALIDATE_WAIT = 2.0  # seconds a lookup waits for the old name to leave the kernel


class DirNames:
    """Directory ino <-> (parent_ino, name) as this mount last told the kernel."""

    def __init__(self):
        self._place: dict[int, tuple[int, bytes]] = {}
        self._ino_at: dict[tuple[int, bytes], int] = {}

    def place_of(self, ino: int) -> tuple[int, bytes] | None:
        return self._place.get(ino)

    def record(self, ino: int, parent_ino: int, name: bytes) -> None:
        self.forget(ino)
        self.forget_at(parent_ino, name)
        self._place[ino] = (parent_ino, name)
        self._ino_at[(parent_ino, name)] = ino

    def forget(self, ino: int) -> None:
        place = self._place.pop(ino, None)
        if place is not None:
            self._ino_at.pop(place, None)

    def forget_at(self, parent_ino: int, name: bytes) -> None:
        ino = self._ino_at.pop((parent_ino, name), None)
        if ino is not None:
            self._place.pop(ino, None)

    def renamed(self, old: tuple[int, bytes], new: tuple[int, bytes], exchange: bool) -> None:
        """This mount's own rename: the kernel moved its dentries itself."""
        moved = self._ino_at.get(old)
        other = self._ino_at.get(new)
        self.forget_at(*old)
        self.forget_at(*new)
        if moved is not None:
            self.record(moved, *new)
        if exchange and other is not None:
            self.record(other, *old)


async def drop_old_name(names: DirNames, ino: int, parent_ino: int, name: bytes) -> None:
    """Directory `ino` is at (parent_ino, name) now: make the kernel forget any other
    name this mount gave it, then record the new one."""
    old = names.place_of(ino)
    names.record(ino, parent_ino, name)
    if old is None or old[0] == parent_ino:
        # Unknown, or a move within one directory, which the kernel does without
        # the rename lock.
        return
    log.debug("directory %d moved from (%d, %r) to (%d, %r): invalidating the old name",
              ino, old[0], old[1], parent_ino, name)
    with trio.move_on_after(INVALIDATE_WAIT) as scope:
        await trio.to_thread.run_sync(_invalidate, old[0], old[1], abandon_on_cancel=True)
    if scope.cancelled_caught:
        log.info("old name of directory %d in %d still busy after %gs", ino, old[0],
                 INVALIDATE_WAIT)


def _invalidate(parent_ino: int, name: bytes) -> None:
    try:
        pyfuse3.invalidate_entry(parent_ino, name)
    except OSError as exc:
        # ENOENT: the kernel no longer has that name or its parent; nothing to drop.
        log.debug("invalidate of (%d, %r): %s", parent_ino, name, exc)
