"""Operations that remove a name: unlink and rmdir.

unlink of a file whose inode lives on the entry's shard is one local
transaction; otherwise, and always for rmdir (which tombstones the
directory's share on every shard so that a racing create into it fails), the
transaction spans shards.
"""

import contextlib
import logging
import stat

from loomproto import errors

from . import args as check
from .namespace import now_ns
from .removals import ARRIVAL

log = logging.getLogger(__name__)


async def _existing_entry(ns, tx, parent: int, name: bytes) -> tuple[int, int]:
    entry = await ns.read_entry(tx, parent, name)
    if entry is None:
        raise errors.NotFound(f"no entry {name!r} in {parent}")
    return entry


async def unlink(ns, args: dict) -> dict:
    parent = check.ino(args, "parent")
    name = check.name(args)
    rid = check.rid(args)
    early = check.boolean(args, "early")

    async def body(tx):
        ino, type_bits = await _existing_entry(ns, tx, parent, name)
        found(ino)
        if type_bits == stat.S_IFDIR:
            raise errors.IsDir(f"entry {name!r} in {parent} is a directory")
        now = now_ns()
        ns.remove_entry(tx, parent, name, type_bits, now)
        try:
            inode = await ns.read_inode(tx, ino)
        except errors.NotFound:
            log.warning("entry %r in %d names missing inode %d: removing the entry",
                        name, parent, ino)
            return {"ino": ino, "nlink": 0}
        ns.drop_link(tx, ino, inode, now)
        return {"ino": ino, "nlink": inode["nlink"]}

    # From its arrival to its end, requests about the name or inode wait for an
    # unlink its client answered already (client.behind; mdsd.removals).
    hold = ns.removals.removing(parent, name, args.get(ARRIVAL)) if early else _unheld()
    async with hold as found:
        result = await ns.engine.run(body, rid)
    if result["nlink"] == 0:
        ns.sessions.orphan_added(result["ino"])
    return result


@contextlib.asynccontextmanager
async def _unheld():
    yield lambda ino: None


async def rmdir(ns, args: dict) -> dict:
    parent = check.ino(args, "parent")
    name = check.name(args)
    rid = check.rid(args)
    remover, _ = check.lessee(args)

    async def body(tx):
        tx.adder = remover  # its own lease does not hold this client's rmdir back
        ino, type_bits = await _existing_entry(ns, tx, parent, name)
        if type_bits != stat.S_IFDIR:
            raise errors.NotDir(f"entry {name!r} in {parent} is not a directory")
        await ns.read_inode(tx, ino)
        await ns.check_empty(tx, ino)
        ns.remove_dir_inode(tx, ino)
        ns.remove_entry(tx, parent, name, type_bits, now_ns())
        return {}

    return await ns.engine.run(body, rid)
