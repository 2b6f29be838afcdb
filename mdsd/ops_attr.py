"""Operations on one inode's attributes: lookup, getattr, setattr,
commit_size, setstripe, open and close.

setattr follows Linux: any change sets ctime (unless given); a size change
sets mtime and ctime; chown of a non-directory clears set-user-ID, and
set-group-ID when group-execute is set, unless the same call sets the mode;
chmod by a caller outside the file's group (and not root) clears
set-group-ID.  Permission checks are the kernel's (default_permissions).
"""

import logging
import stat

from loomproto import chunkset, errors
from loomproto.layout import ROOT_INO

from . import args as check
from . import schema
from .attrs import is_dir
from .namespace import now_ns

log = logging.getLogger(__name__)

CLOSE_BATCH_MAX = 4096  # inodes one close request may name
_FIELDS = {"mode": (0, check.U32_MAX), "uid": (0, check.U32_MAX), "gid": (0, check.U32_MAX),
           "size": (0, check.U63_MAX), "atime": (check.I64_MIN, check.U63_MAX),
           "mtime": (check.I64_MIN, check.U63_MAX), "ctime": (check.I64_MIN, check.U63_MAX)}


async def getattr(ns, args: dict) -> dict:
    ino = check.ino(args)
    await ns.removals.settle_ino(ino)  # an unlink of it on its way (mdsd.removals)
    found = await ns.attrs.attrs([ino])
    if ino not in found:
        raise errors.NotFound(f"no inode {ino}")
    return found[ino]


async def _inode(ns, ino: int) -> dict:
    (raw,) = await ns.engine.fetch(ns.ino_shard(ino), [schema.inode_key(ino)])
    if raw is None:
        raise errors.NotFound(f"no inode {ino}")
    return schema.unpack(raw)


async def chunk_record(ns, args: dict) -> list:
    """The chunk index ranges a file is recorded to have had written (`chunkset`):
    a client reading a chunk that no replica holds asks, to tell a lost chunk
    (EIO) from a hole (zeros)."""
    return (await _inode(ns, check.ino(args))).get("chunks", [])


async def readlink(ns, args: dict) -> bytes:
    ino = check.ino(args)
    inode = await _inode(ns, ino)
    if not stat.S_ISLNK(inode["mode"]):
        raise errors.Invalid(f"inode {ino} is not a symbolic link")
    return inode["target"]


LOOKUP_TRIES = 4  # a name replaced again and again while it is looked up


async def lookup(ns, args: dict) -> dict:
    parent = check.ino(args, "parent")
    name = args.get("name")
    if name == b"..":
        return await _lookup_dotdot(ns, parent)
    name = check.name(args)
    await ns.removals.settle_name(parent, name)  # mdsd.removals
    shard = ns.entry_shard(parent, name)
    dentry = schema.dentry_key(parent, name)
    seen = None
    for attempt in range(LOOKUP_TRIES):
        share_raw, entry_raw = await ns.engine.fetch_settled(
            shard, [schema.dirstat_key(parent), dentry], dentry)
        if entry_raw is None or schema.unpack_share(share_raw)["dead"]:
            raise errors.NotFound(f"no entry {name!r} in {parent}")
        ino, _, seq = schema.unpack_dentry(entry_raw)
        # A rename or unlink of the name may commit between the two reads (the
        # inode's read yields, and may be another shard's): the inode is then gone,
        # or left with no name while someone holds it open, and the name leads
        # elsewhere or nowhere.  Its open answered ESTALE, and again after the
        # kernel's retry when the retry met the same race; an lstat of a symlink
        # answered ENOENT (a tester's churn run).  So the name is read again.
        try:
            attr = await getattr(ns, {"ino": ino})
        except errors.NotFound:
            if ino == seen or attempt == LOOKUP_TRIES - 1:
                raise
            seen = ino
            continue
        if attr["nlink"] or is_dir(attr) or ino == seen or attempt == LOOKUP_TRIES - 1:
            # The entry's place in the directory's listing of this shard: the
            # client reads ahead from it (client.statahead windows).
            return dict(attr, dir_seq=seq)
        seen = ino


async def _lookup_dotdot(ns, parent: int) -> dict:
    (raw,) = await ns.engine.fetch(ns.ino_shard(parent), [schema.inode_key(parent)])
    if raw is None:
        raise errors.NotFound(f"no inode {parent}")
    inode = schema.unpack(raw)
    if not is_dir(inode):
        raise errors.NotDir(f"inode {parent} is not a directory")
    return await getattr(ns, {"ino": inode.get("parent", ROOT_INO)})


def _fields(args: dict) -> dict:
    fields = args.get("fields")
    if not isinstance(fields, dict):
        raise errors.BadRequest("argument 'fields' must be a map")
    unknown = set(fields) - set(_FIELDS)
    if unknown:
        raise errors.BadRequest(f"unknown setattr fields {sorted(map(str, unknown))}")
    return {key: check.integer(fields, key, lo, hi) for key, (lo, hi) in _FIELDS.items()
            if fields.get(key) is not None}


def apply_setattr(inode: dict, fields: dict, caller_uid: int, caller_gids: set, now: int):
    """Change `inode` in place as setattr with `fields` does."""
    if "uid" in fields or "gid" in fields:
        inode["uid"] = fields.get("uid", inode["uid"])
        inode["gid"] = fields.get("gid", inode["gid"])
        if not is_dir(inode) and "mode" not in fields:
            inode["mode"] &= ~stat.S_ISUID
            if inode["mode"] & stat.S_IXGRP:
                inode["mode"] &= ~stat.S_ISGID
    if "mode" in fields:
        inode["mode"] = stat.S_IFMT(inode["mode"]) | (fields["mode"] & 0o7777)
        if caller_uid != 0 and inode["gid"] not in caller_gids:
            inode["mode"] &= ~stat.S_ISGID
    if "size" in fields:
        inode["size"] = fields["size"]
        inode["mtime"] = now
        if inode["size"]:
            inode["had_data"] = True
        # The record of written chunks is not trimmed: a chunk past the new end
        # keeps an empty copy at a higher version on its OSDs, and a write that
        # started it anew elsewhere while those are down would lose to it once
        # they return (osd.replication `_never_written`; a reviewer's finding).
    for key in ("atime", "mtime"):
        if key in fields:
            inode[key] = fields[key]
    if "mtime" in fields and is_dir(inode):
        inode["set_at"] = now
    inode["ctime"] = fields.get("ctime", now)


async def setattr(ns, args: dict) -> dict:
    ino = check.ino(args)
    fields = _fields(args)
    caller_uid, caller_gids = check.caller(args)
    rid = check.rid(args)
    linked = check.boolean(args, "linked")
    await ns.removals.settle_ino(ino)
    if "size" in fields:
        # An extension must not show what a failed writer left past the size.
        await ns.tails.settle(ino, ns.sessions.is_open(ino))

    async def body(tx):
        inode = await ns.read_inode(tx, ino)
        if linked:
            refuse_unlinked(ino, inode)
        if "size" in fields and is_dir(inode):
            raise errors.IsDir(f"inode {ino} is a directory: no size change")
        apply_setattr(inode, fields, caller_uid, caller_gids, now_ns())
        ns.write_inode(tx, ino, inode)
        return await ns.attr_of(ino, inode)

    return await ns.engine.run(body, rid)


def refuse_unlinked(ino: int, inode: dict) -> None:
    """For a change that its client made by a name (``linked`` in the request):
    a file with no name left lives on only because someone holds it open, and
    the name the client's kernel went by now leads elsewhere (another client
    replaced it).  NotFound, which the client turns into ESTALE, so that its
    kernel looks the name up again and the change lands on the file there now."""
    if inode["nlink"] == 0 and not is_dir(inode):
        raise errors.NotFound(f"inode {ino} has no name left")


def _chunk_ranges(args: dict) -> list:
    ranges = args.get("chunks", [])
    if not chunkset.valid(ranges, chunkset.MAX_RANGES):
        raise errors.BadRequest(f"argument 'chunks' must be at most {chunkset.MAX_RANGES} "
                                f"[start, end] chunk index ranges")
    return ranges


async def commit_size(ns, args: dict) -> dict:
    """Grow the size and mtime to what a client flushed, and record the chunk
    index ranges it wrote (`chunks`, optional)."""
    ino = check.ino(args)
    size = check.integer(args, "size", 0, check.U63_MAX)
    mtime = check.time_ns(args, "mtime", default=0)
    ranges = _chunk_ranges(args)

    async def body(tx):
        inode = await ns.read_inode(tx, ino)
        chunks = chunkset.merge(inode.get("chunks", []), ranges)
        if stat.S_ISREG(inode["mode"]) and chunks != inode.get("chunks", []):
            inode["chunks"] = chunks
        elif size <= inode["size"] and mtime <= inode["mtime"]:
            # Nothing written: the gen in this reply is not a step of this call's
            # (the client's page cache check, client.ops._own_change).
            return dict(await ns.attr_of(ino, inode), unchanged=True)
        inode["size"] = max(inode["size"], size)
        inode["mtime"] = max(inode["mtime"], mtime)
        if inode["size"]:
            inode["had_data"] = True
        inode["ctime"] = max(inode["ctime"], now_ns())
        ns.write_inode(tx, ino, inode)
        return await ns.attr_of(ino, inode)

    return await ns.engine.run(body)


async def setstripe(ns, args: dict) -> dict:
    ino = check.ino(args)
    layout = check.layout(args)
    if layout is None:
        raise errors.Invalid("setstripe needs a layout")
    rid = args.get("rid")
    rid = check.rid(args) if rid is not None else None

    async def body(tx):
        inode = await ns.read_dir(tx, ino)
        inode["layout"] = layout
        inode["ctime"] = now_ns()
        ns.write_inode(tx, ino, inode)
        return await ns.attr_of(ino, inode)

    return await ns.engine.run(body, rid)


async def open_(ns, args: dict) -> dict:
    ino = check.ino(args)
    session = check.session(args)
    check.integer(args, "flags", 0, check.U32_MAX, default=0)
    await ns.removals.settle_ino(ino)  # its unlink may drop it: then this open fails
    await ns.sessions.wait_drops(ino)  # a drop decided before this open commits first
    held_before = ns.sessions.is_open(ino)
    ns.sessions.open(ino, session)  # before the read: a reclaim must not slip between
    try:
        await ns.tails.settle(ino, held_before)  # what a failed writer left past the size
        return await getattr(ns, {"ino": ino})
    except errors.LoomError:
        ns.sessions.close(ino, session)
        raise


async def mark_tail(ns, args: dict) -> dict:
    """A client's flush of `ino` failed, or its truncate could not reach every copy
    of a chunk: bytes past the size may stay on the OSDs; the next open or size
    change with nobody holding the file cuts them (mdsd.tails)."""
    ino = check.ino(args)
    if ns.ino_shard(ino) != ns.mds_id:
        raise errors.Invalid(f"inode {ino} does not live on shard {ns.mds_id}")
    await ns.tails.mark([ino])
    return {}


async def close(ns, args: dict) -> dict:
    """The open registrations of `ino`, or of each of `inos` (a client sends the
    closes that queued while its previous close request was in flight)."""
    inos = check.ino_list(args, max_len=CLOSE_BATCH_MAX) if "inos" in args else [check.ino(args)]
    session = check.session(args)
    for ino in inos:
        ns.sessions.close(ino, session)
    return {}
