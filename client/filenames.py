"""Which names of files (not directories) this mount gave the kernel, and when,
so that a change through a name the kernel has cached can first check that the
name still leads to the file (client.ops `_verify_names`).

Why: the kernel keeps a name it got in a lookup, create or readdir reply for
entry_timeout and walks it without asking.  Another mount may meanwhile move the
file aside and put a new one under the name (`mv cfg cfg.bak` and a new `cfg`,
logrotate's `mv log log.1`): an open for writing, a truncate or a chmod through
the cached name then lands on the moved file, and `> cfg` emptied the backup (a
tester's report).  A name given less than `FRESH` seconds ago is not checked:
the change and the lookup that gave it are one walk, and a rename between them
races the change as it would on one machine.

Names are kept per inode, several for hard links, and at most `LIMIT` inodes
(the oldest go first: a name not kept is not checked, as before this module).
This mount's own unlinks and renames update them (`gone`, `renamed`), and the
kernel's forget of an inode drops its names (`forget`).
"""

from collections import OrderedDict

FRESH = 0.05  # seconds: a name given this recently needs no check
LIMIT = 65536  # inodes whose names are kept


class FileNames:
    def __init__(self, limit: int = LIMIT):
        self.limit = limit
        self._names: OrderedDict[int, dict[tuple[int, bytes], float]] = OrderedDict()
        self._ino_at: dict[tuple[int, bytes], int] = {}

    def __len__(self) -> int:
        return len(self._names)

    def gave(self, ino: int, parent: int, name: bytes, now: float) -> None:
        """A reply gave the kernel `name` in `parent` for `ino` at `now`."""
        place = (parent, name)
        other = self._ino_at.get(place)
        if other is not None and other != ino:
            self.drop(other, parent, name)
        self._names.setdefault(ino, {})[place] = now
        self._names.move_to_end(ino)
        self._ino_at[place] = ino
        while len(self._names) > self.limit:
            old, places = self._names.popitem(last=False)
            for old_place in places:
                self._ino_at.pop(old_place, None)

    def to_check(self, ino: int, now: float) -> list[tuple[int, bytes]]:
        """The names of `ino` given more than FRESH seconds before `now`."""
        return [place for place, given in self._names.get(ino, {}).items()
                if now - given > FRESH]

    def confirmed(self, ino: int, parent: int, name: bytes, now: float) -> None:
        """A shard said the name still leads to `ino`: fresh again."""
        places = self._names.get(ino)
        if places is not None and (parent, name) in places:
            places[(parent, name)] = now

    def drop(self, ino: int, parent: int, name: bytes) -> None:
        places = self._names.get(ino)
        if places is not None:
            places.pop((parent, name), None)
            if not places:
                del self._names[ino]
        if self._ino_at.get((parent, name)) == ino:
            del self._ino_at[(parent, name)]

    def gone(self, parent: int, name: bytes) -> None:
        """This mount removed the name (unlink, or a rename away or over it)."""
        ino = self._ino_at.get((parent, name))
        if ino is not None:
            self.drop(ino, parent, name)

    def renamed(self, old: tuple[int, bytes], new: tuple[int, bytes], exchange: bool) -> None:
        """This mount's own rename: the kernel moved its dentries itself.  A moved
        name keeps when it was given: the shard renamed what the name leads to
        there, which may not be the file the kernel's dentry holds (a tester's
        `mv f g` of a name another mount had replaced, then writes to g)."""
        moved = self._ino_at.get(old)
        other = self._ino_at.get(new)
        moved_at = self._names[moved][old] if moved is not None else 0.0
        other_at = self._names[other][new] if other is not None else 0.0
        self.gone(*old)
        self.gone(*new)
        if moved is not None:
            self.gave(moved, *new, moved_at)
        if exchange and other is not None:
            self.gave(other, *old, other_at)

    def forget(self, ino: int) -> None:
        """The kernel forgot the inode, and every name of it with it."""
        for place in self._names.pop(ino, {}):
            if self._ino_at.get(place) == ino:
                del self._ino_at[place]
