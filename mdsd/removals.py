"""Unlinks this shard has received and not yet committed, and the waits for them.

A client may answer an unlink before its commit (client.behind): its request
is on its way when the application learns of the removal, and may tell
another machine, whose mount then looks the name up, creates it again or
opens the old file through a name its kernel still caches.  So from the
moment an unlink request arrives here until its transaction ends, a request
of any client about the same name (lookup, create, link, rename), the same
inode (getattr, open, setattr) or a listing of the same directory waits for
it.  The order that the first client's answer implies then holds on this
shard for everyone, as long as its request arrives before the other's, which
the other needs a message from the application's side and its own kernel and
client to send, and the first sends at once.

Only what this shard knows is covered: a name's entry and the inodes named
here.  An inode whose name lives on another shard (after a rename across
shards) is waited for by name only.  Everything here runs on the trio thread.
"""

import contextlib

import trio


class PendingRemovals:
    def __init__(self):
        self._names: dict[tuple[int, bytes], trio.Event] = {}
        self._inos: dict[int, trio.Event] = {}
        self._dirs: dict[int, set[trio.Event]] = {}

    @contextlib.asynccontextmanager
    async def removing(self, parent: int, name: bytes):
        """Around an unlink of `name` in `parent`; yields a function to call with
        the inode once known.  An unlink of the same name already here goes first."""
        key = (parent, name)
        while key in self._names:
            await self._names[key].wait()
        done = trio.Event()
        inos: list[int] = []
        self._names[key] = done
        self._dirs.setdefault(parent, set()).add(done)

        def found(ino: int) -> None:
            if ino not in self._inos:
                self._inos[ino] = done
                inos.append(ino)

        try:
            yield found
        finally:
            del self._names[key]
            in_dir = self._dirs[parent]
            in_dir.discard(done)
            if not in_dir:
                del self._dirs[parent]
            for ino in inos:
                if self._inos.get(ino) is done:
                    del self._inos[ino]
            done.set()

    async def settle_name(self, parent: int, name: bytes) -> None:
        event = self._names.get((parent, name))
        if event is not None:
            await event.wait()

    async def settle_ino(self, ino: int) -> None:
        event = self._inos.get(ino)
        if event is not None:
            await event.wait()

    async def settle_dir(self, parent: int) -> None:
        for event in list(self._dirs.get(parent, ())):
            await event.wait()
