"""Operations that add a name: mknod, mkdir, symlink, link.

The new inode is allocated on the shard that runs the operation, which the
client picks as the shard of the new entry, so a create touches one shard.
All carry a request id: a retry returns the stored reply.

A create(2) its client answered before sending it (client.behind) is an
``early`` mknod: it names its inode, from a block this shard reserved for
that client (`reserve_inos`), and its time, both already in the kernel's
reply; from its arrival to its end, requests about the name, the inode or a
listing of the directory wait for it (mdsd.removals), as for an early unlink.
"""

import logging
import stat

from loomproto import errors

from . import apply, schema
from . import args as check
from .attrs import build_attr
from .namespace import new_inode, now_ns
from .removals import ARRIVAL

log = logging.getLogger(__name__)

_MKNOD_TYPES = (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)


def _owner(args: dict, setgid_parent: bool) -> tuple[int, int]:
    uid = check.integer(args, "uid", 0, check.U32_MAX)
    gid = check.integer(args, "gid", 0, check.U32_MAX)
    if setgid_parent:
        gid = check.integer(args, "parent_gid", 0, check.U32_MAX)
    return uid, gid


def _setgid_parent(args: dict) -> bool:
    parent_mode = check.integer(args, "parent_mode", 0, check.U32_MAX, default=0)
    return bool(parent_mode & stat.S_ISGID)


async def _create(ns, args: dict, inode: dict, early: int | None = None):
    """Shared body of every create: the entry must be free, the parent alive.
    `early`: the inode number an early create brings (see the module doc)."""
    parent = check.ino(args, "parent")
    name = check.name(args)
    rid = check.rid(args)
    adder, wants_lease = check.lessee(args)

    async def body(tx):
        tx.adder, tx.wants_lease = adder, wants_lease
        if await ns.read_entry(tx, parent, name) is not None:
            raise errors.Exists(f"entry {name!r} exists in {parent}")
        if early is None and ns.removals.holds_name(parent, name):
            # An early create or unlink of it arrived since (this one may have
            # waited for a lease): it goes first (mdsd.removals).
            raise errors.Conflict(f"a change of {name!r} in {parent} is on its way")
        await ns.check_parent_alive(tx, parent, name)
        if early is not None and await tx.read(ns.ino_shard(ino), schema.inode_key(ino)):
            raise errors.Invalid(f"inode {ino} is in use")  # a client's mistake
        fresh = dict(inode)
        if stat.S_ISDIR(fresh["mode"]):
            fresh["parent"] = parent
        ns.write_inode(tx, ino, fresh)
        ns.add_entry(tx, parent, name, ino, stat.S_IFMT(fresh["mode"]), fresh["ctime"])
        attr = build_attr(ino, fresh)  # a new directory has no shares yet
        if adder is not None:  # a client that keeps names (client.absent)
            attr[apply.ENTRY_SEQ] = None  # filled in at commit (apply.commit_local)
        return attr

    if early is None:
        await ns.removals.settle_name(parent, name)  # an unlink of the name first
        ino = await ns.inos.alloc()  # a retried request wastes one number: harmless
        return await ns.engine.run(body, rid)
    ino = early
    async with ns.removals.removing(parent, name, args.get(ARRIVAL)) as found:
        found(ino)
        attr = await ns.engine.run(body, rid)
    ns.early_creates += 1
    return attr


async def mknod(ns, args: dict) -> dict:
    mode = check.integer(args, "mode", 0, check.U32_MAX)
    if stat.S_IFMT(mode) == 0:
        mode |= stat.S_IFREG
    if stat.S_IFMT(mode) not in _MKNOD_TYPES:
        raise errors.Invalid(f"mknod cannot make file type {stat.S_IFMT(mode):o}")
    uid, gid = _owner(args, _setgid_parent(args))
    rdev = check.integer(args, "rdev", 0, check.U63_MAX, default=0)
    extra = {"rdev": rdev}
    if stat.S_ISREG(mode):
        extra["layout"] = _layout(ns, args)
    early = None
    if check.boolean(args, "early"):
        # Numbered and timed by the client, whose kernel has them already.
        early = check.ino(args)
        if not stat.S_ISREG(mode) or args.get("session") is None:
            raise errors.BadRequest("an early mknod makes a regular file it opens")
        if not ns.inos.reserved(early):
            raise errors.Invalid(f"inode {early} was not reserved on shard {ns.mds_id}")
        now = check.time_ns(args, "time")
    else:
        now = now_ns()
    inode = new_inode(stat.S_IFMT(mode) | (mode & 0o7777), uid, gid, now, **extra)
    return await _create(ns, args, inode, early)


async def reserve_inos(ns) -> dict:
    """A block of inode numbers of this shard for one client's early creates:
    ``shard + k * nshards`` for ``start <= k < limit``.  Numbers a client does
    not use are lost, which costs nothing (2**63 of them)."""
    start, limit = await ns.inos.reserve_block()
    return {"start": start, "limit": limit, "shard": ns.mds_id, "nshards": ns.nshards}


async def mkdir(ns, args: dict) -> dict:
    mode = check.integer(args, "mode", 0, check.U32_MAX)
    setgid = _setgid_parent(args)
    uid, gid = _owner(args, setgid)
    perm = (mode & 0o7777) | (stat.S_ISGID if setgid else 0)
    now = now_ns()
    inode = new_inode(stat.S_IFDIR | perm, uid, gid, now, nlink=2, layout=_layout(ns, args),
                      set_at=0)
    return await _create(ns, args, inode)


async def symlink(ns, args: dict) -> dict:
    target = args.get("target")
    if not isinstance(target, bytes):
        raise errors.BadRequest("argument 'target' must be bytes")
    if len(target) > check.TARGET_MAX:
        raise errors.NameTooLong(f"symlink target of {len(target)} bytes exceeds 4095")
    if not target:
        raise errors.NotFound("symlink target is empty")
    if b"\0" in target:
        raise errors.Invalid("symlink target contains NUL")
    uid, gid = _owner(args, _setgid_parent(args))
    inode = new_inode(stat.S_IFLNK | 0o777, uid, gid, now_ns(), size=len(target),
                      target=target)
    return await _create(ns, args, inode)


def _layout(ns, args: dict) -> list:
    layout = check.layout(args, default=None)
    return layout if layout is not None else ns.config.layout.to_wire()


async def link(ns, args: dict) -> dict:
    ino = check.ino(args)
    parent = check.ino(args, "parent")
    name = check.name(args)
    rid = check.rid(args)
    adder, _ = check.lessee(args)
    await ns.removals.settle_name(parent, name)
    await ns.removals.settle_ino(ino)

    async def body(tx):
        tx.adder = adder
        if await ns.read_entry(tx, parent, name) is not None:
            raise errors.Exists(f"entry {name!r} exists in {parent}")
        if ns.removals.holds_name(parent, name):
            raise errors.Conflict(f"a change of {name!r} in {parent} is on its way")
        await ns.check_parent_alive(tx, parent, name)
        inode = await ns.read_inode(tx, ino)
        if stat.S_ISDIR(inode["mode"]):
            raise errors.NotPermitted(f"inode {ino} is a directory: no hard links")
        if inode["nlink"] == 0:
            raise errors.NotFound(f"inode {ino} has no names left")
        now = now_ns()
        inode["nlink"] += 1
        inode["ctime"] = now
        ns.write_inode(tx, ino, inode, names=True)
        ns.add_entry(tx, parent, name, ino, stat.S_IFMT(inode["mode"]), now)
        return await ns.attr_of(ino, inode)

    return await ns.engine.run(body, rid)
