"""Extended attributes, stored beside the inode on its shard.

Names are 1..255 bytes and values at most 64 KiB (both Range otherwise);
empty values and values holding NUL bytes are kept as they are.  A change sets
the inode's ctime.  A file may hold more names than Linux can list at once
(LIST_MAX bytes, each name with its NUL, as XFS allows): listxattr then fails
with E2BIG, as listxattr(2) does there.
"""

import logging

from loomproto import errors

from . import args as check
from . import schema
from .namespace import now_ns
from .ops_attr import refuse_unlinked

log = logging.getLogger(__name__)

XATTR_CREATE = 1
XATTR_REPLACE = 2
VALUE_MAX = 65536
NAME_MAX = 255
LIST_MAX = 65536  # Linux's XATTR_LIST_MAX


def _xattr_name(args: dict) -> bytes:
    name = args.get("name")
    if isinstance(name, str):
        name = name.encode()
    if not isinstance(name, bytes):
        raise errors.BadRequest("argument 'name' must be bytes")
    if not 1 <= len(name) <= NAME_MAX:
        raise errors.Range(f"xattr name of {len(name)} bytes not in 1..{NAME_MAX}")
    return name


async def getxattr(ns, args: dict) -> bytes:
    ino = check.ino(args)
    name = _xattr_name(args)
    shard = ns.ino_shard(ino)
    inode_raw, value = await ns.engine.fetch(shard, [schema.inode_key(ino),
                                                     schema.xattr_key(ino, name)])
    if inode_raw is None:
        raise errors.NotFound(f"no inode {ino}")
    if value is None:
        raise errors.NoData(f"no xattr {name!r} on {ino}")
    return value


async def listxattr(ns, args: dict) -> list:
    ino = check.ino(args)
    shard = ns.ino_shard(ino)
    if shard != ns.mds_id:
        return await ns.peers.call(shard, "listxattr", {"ino": ino})
    if ns.store.get(schema.inode_key(ino)) is None:
        raise errors.NotFound(f"no inode {ino}")
    return ns.store.read(lambda txn: _names(ns.store.dbs, ino, txn))


def _names(dbs, ino, txn) -> list[bytes]:
    prefix = schema.xattr_prefix(ino)
    names = []
    listed = 0
    with txn.cursor(db=dbs[schema.XATTR]) as cursor:
        if cursor.set_range(prefix):
            for raw in cursor.iternext(keys=True, values=False):
                if not raw.startswith(prefix):
                    break
                names.append(raw[len(prefix):])
                listed += len(names[-1]) + 1
                if listed > LIST_MAX:
                    raise errors.TooBig(f"xattr names of inode {ino} exceed {LIST_MAX} bytes")
    return names


async def setxattr(ns, args: dict) -> dict:
    ino = check.ino(args)
    name = _xattr_name(args)
    value = args.get("value")
    if not isinstance(value, bytes):
        raise errors.BadRequest("argument 'value' must be bytes")
    if len(value) > VALUE_MAX:
        raise errors.Range(f"xattr value of {len(value)} bytes exceeds {VALUE_MAX}")
    flags = check.integer(args, "flags", 0, check.U32_MAX, default=0)
    if flags & ~(XATTR_CREATE | XATTR_REPLACE) or flags == XATTR_CREATE | XATTR_REPLACE:
        raise errors.Invalid(f"setxattr flags {flags:#x} not supported")
    rid = _optional_rid(args)
    linked = check.boolean(args, "linked")

    async def body(tx):
        present = await _load(ns, tx, ino, name, linked)
        if flags & XATTR_CREATE and present:
            raise errors.Exists(f"xattr {name!r} exists on {ino}")
        if flags & XATTR_REPLACE and not present:
            raise errors.NoData(f"no xattr {name!r} on {ino}")
        tx.put(ns.ino_shard(ino), schema.xattr_key(ino, name), value)
        return {}

    return await ns.engine.run(body, rid)


async def removexattr(ns, args: dict) -> dict:
    ino = check.ino(args)
    name = _xattr_name(args)
    rid = _optional_rid(args)
    linked = check.boolean(args, "linked")

    async def body(tx):
        if not await _load(ns, tx, ino, name, linked):
            raise errors.NoData(f"no xattr {name!r} on {ino}")
        tx.delete(ns.ino_shard(ino), schema.xattr_key(ino, name))
        return {}

    return await ns.engine.run(body, rid)


async def _load(ns, tx, ino: int, name: bytes, linked: bool) -> bool:
    """Read the inode and the attribute; touches the inode's ctime.  `linked`:
    see mdsd.ops_attr `refuse_unlinked`."""
    inode = await ns.read_inode(tx, ino)
    if linked:
        refuse_unlinked(ino, inode)
    present = await tx.read(ns.ino_shard(ino), schema.xattr_key(ino, name)) is not None
    inode["ctime"] = now_ns()
    ns.write_inode(tx, ino, inode)
    return present


def _optional_rid(args: dict) -> bytes | None:
    return check.rid(args) if args.get("rid") is not None else None
