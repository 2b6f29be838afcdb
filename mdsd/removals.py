"""Unlinks (and creates) this shard has received and not yet committed, and the
waits for them.

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

Creates a client answered early (``early`` mknod, mdsd.ops_create) are held
the same way from their arrival: the name, the new inode and the directory.
A plain create or link of a held name that waits for a lease meanwhile looks
again before it adds its entry (`holds_name`), and an rmdir, or a rename onto
the directory, waits for the held changes in it before it counts its entries
(mdsd.namespace `check_empty`, and `peer_read` on the other shards; a prepare
that kills a share with changes that arrived since is refused: `touched_by`).

Only unlinks that their client answered early (``early``) are held: the
client sends those only for an inode that lives on the name's shard, so both
are here.  A transaction coordinated by another shard (a rename whose source
is here, a link to the inode) reaches this shard as a prepare, which
`touched_by` turns into a Conflict that its coordinator retries, until the
unlink is over.  Everything here runs on the trio thread.
"""

import contextlib

import trio

from . import schema

ARRIVAL = "\0arrival"  # the args key under which `announce` leaves its function


class PendingRemovals:
    def __init__(self):
        self._names: dict[tuple[int, bytes], list[trio.Event]] = {}  # in order of arrival
        self._inos: dict[int, trio.Event] = {}
        self._dirs: dict[int, set[trio.Event]] = {}
        self.refused = 0  # prepares turned away by `touched_by` (for tests and logs)
        # Early unlinks read from their connections whose handlers have not yet
        # registered them: every wait here waits for those first.  (Handlers start
        # in any order within one turn of the loop; the connections are read in
        # the order their data came.)
        self._arriving = 0
        self._registered = trio.Event()

    def announce(self, args: dict):
        """An early unlink was read (MdsService.request_received).  Returns the
        function that uncounts it, which `removing` calls once it registered and
        the RPC layer once the request is over (whichever comes first counts)."""
        if not self._arriving:
            self._registered = trio.Event()
        self._arriving += 1
        counted = [True]

        def arrived() -> None:
            if counted[0]:
                counted[0] = False
                self._arriving -= 1
                if not self._arriving:
                    self._registered.set()

        args[ARRIVAL] = arrived
        return arrived

    async def arrivals(self) -> None:
        """Until every early unlink read so far has registered (at once, in its
        handler's first step)."""
        while self._arriving:
            await self._registered.wait()

    @contextlib.asynccontextmanager
    async def removing(self, parent: int, name: bytes, arrived=None):
        """Around an announced unlink of `name` in `parent` (`arrived` uncounts
        it, at once: it is registered); yields a function to call with the inode
        once known.  Unlinks of the same name queue in the order they came, and
        the name stays held until the last of them ends."""
        key = (parent, name)
        done = trio.Event()
        queue = self._names.setdefault(key, [])
        ahead = list(queue)
        queue.append(done)
        self._dirs.setdefault(parent, set()).add(done)
        inos: list[int] = []
        if arrived is not None:
            arrived()

        def found(ino: int) -> None:
            if ino not in self._inos:
                self._inos[ino] = done
                inos.append(ino)

        try:
            for earlier in ahead:
                await earlier.wait()
            yield found
        finally:
            queue.remove(done)
            if not queue:
                del self._names[key]
            in_dir = self._dirs[parent]
            in_dir.discard(done)
            if not in_dir:
                del self._dirs[parent]
            for ino in inos:
                if self._inos.get(ino) is done:
                    del self._inos[ino]
            done.set()

    def holds_name(self, parent: int, name: bytes) -> bool:
        return (parent, name) in self._names

    def touched_by(self, reads: list, mutations: list) -> bool:
        """Whether a prepared transaction's reads (``[db, key, value]``) or
        mutations (mdsd.apply) touch a name or inode with an unlink or create on
        its way, or the share of a directory with one in it (an rmdir's count)."""
        if not self._names:
            return False
        held = {schema.dentry_key(parent, name) for parent, name in self._names}
        held.update(schema.inode_key(ino) for ino in self._inos)
        held.update(schema.dirstat_key(parent) for parent in self._dirs)
        keys = [(db, raw) for db, raw, _ in reads]
        for mutation in mutations:
            if mutation[0] in ("put", "del"):
                keys.append((mutation[1], mutation[2]))
            elif mutation[0] in ("dirent_add", "dirent_del"):
                keys.append(schema.dentry_key(mutation[1], mutation[2]))
            elif mutation[0] == "dirstat_kill":
                keys.append(schema.dirstat_key(mutation[1]))
        if any(key in held for key in keys):
            self.refused += 1
            return True
        return False

    async def settle_name(self, parent: int, name: bytes) -> None:
        if self._arriving:
            await self.arrivals()
        for event in list(self._names.get((parent, name), ())):
            await event.wait()

    async def settle_ino(self, ino: int) -> None:
        if self._arriving:
            await self.arrivals()
        event = self._inos.get(ino)
        if event is not None:
            await event.wait()

    async def settle_dir(self, parent: int) -> None:
        if self._arriving:
            await self.arrivals()
        for event in list(self._dirs.get(parent, ())):
            await event.wait()
