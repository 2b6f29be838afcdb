"""rename, with Linux semantics, RENAME_NOREPLACE and RENAME_EXCHANGE.

One transaction reads both entries, both inodes and (when a directory
changes parent) every ancestor of its new parent up to the root: those reads
are validated at commit, so two racing renames cannot build a loop.  The
moved entries are removed and added again (a new readdir seq); a directory
that moves carries its ``subdirs`` count from one parent share to the other.
"""

import logging
import stat

from loomproto import errors
from loomproto.layout import ROOT_INO

from . import args as check
from .namespace import MAX_DEPTH, now_ns

log = logging.getLogger(__name__)

NOREPLACE = 1
EXCHANGE = 2


class _Side:
    """One name of a rename and what it refers to."""

    def __init__(self, parent: int, name: bytes):
        self.parent = parent
        self.name = name
        self.ino = None
        self.type_bits = None
        self.inode = None

    @property
    def is_dir(self) -> bool:
        return self.type_bits == stat.S_IFDIR

    async def load(self, ns, tx):
        entry = await ns.read_entry(tx, self.parent, self.name)
        if entry is not None:
            self.ino, self.type_bits = entry
            self.inode = await ns.read_inode(tx, self.ino)


def _flags(args: dict) -> int:
    flags = check.integer(args, "flags", 0, check.U32_MAX, default=0)
    if flags & ~(NOREPLACE | EXCHANGE) or flags == NOREPLACE | EXCHANGE:
        raise errors.Invalid(f"rename flags {flags:#x} not supported")
    return flags


async def rename(ns, args: dict) -> dict:
    src_parent = check.ino(args, "parent")
    src_name = check.name(args)
    dst_parent = check.ino(args, "new_parent")
    dst_name = check.name(args, "new_name")
    flags = _flags(args)
    rid = check.rid(args)
    adder, _ = check.lessee(args)
    await ns.removals.settle_name(src_parent, src_name)  # unlinks received here first
    await ns.removals.settle_name(dst_parent, dst_name)

    async def body(tx):
        tx.adder = adder  # its own lease does not hold this client's rename back
        src, dst = _Side(src_parent, src_name), _Side(dst_parent, dst_name)
        await src.load(ns, tx)
        if src.ino is None:
            raise errors.NotFound(f"no entry {src_name!r} in {src_parent}")
        await dst.load(ns, tx)
        _check_flags(flags, dst)
        if src.ino == dst.ino:
            return {}  # two names of one inode (or the same name): nothing to do
        await ns.check_parent_alive(tx, dst.parent, dst.name)
        # The reply names the inodes that moved (their ctime changed), so a client
        # that caches directory attributes knows which ones to ask for again.
        if flags & EXCHANGE:
            await _exchange(ns, tx, src, dst)
            return {"moved": [src.ino, dst.ino]}
        await _move(ns, tx, src, dst)
        return {"moved": [src.ino]}

    result = await ns.engine.run(body, rid)
    return result


def _check_flags(flags: int, dst: _Side):
    if flags & NOREPLACE and dst.ino is not None:
        raise errors.Exists(f"entry {dst.name!r} exists in {dst.parent}")
    if flags & EXCHANGE and dst.ino is None:
        raise errors.NotFound(f"no entry {dst.name!r} in {dst.parent}")


async def _move(ns, tx, src: _Side, dst: _Side):
    if dst.ino is not None:
        await _check_replace(ns, tx, src, dst)
    if src.is_dir and src.parent != dst.parent:
        await _check_not_ancestor(ns, tx, src.ino, dst.parent)
    now = now_ns()
    ns.remove_entry(tx, src.parent, src.name, src.type_bits, now)
    if dst.ino is not None:
        ns.remove_entry(tx, dst.parent, dst.name, dst.type_bits, now)
        _drop_target(ns, tx, dst, now)
    ns.add_entry(tx, dst.parent, dst.name, src.ino, src.type_bits, now)
    _moved(ns, tx, src, dst.parent, now)


async def _check_replace(ns, tx, src: _Side, dst: _Side):
    if src.is_dir and not dst.is_dir:
        raise errors.NotDir(f"cannot replace non-directory {dst.name!r} by a directory")
    if not src.is_dir and dst.is_dir:
        raise errors.IsDir(f"cannot replace directory {dst.name!r} by a non-directory")
    if dst.is_dir:
        await ns.check_empty(tx, dst.ino)


def _drop_target(ns, tx, dst: _Side, now: int):
    if dst.is_dir:
        ns.remove_dir_inode(tx, dst.ino)
    else:
        ns.drop_link(tx, dst.ino, dst.inode, now)


def _moved(ns, tx, side: _Side, new_parent: int, now: int):
    side.inode["ctime"] = now
    if side.is_dir:
        side.inode["parent"] = new_parent
    ns.write_inode(tx, side.ino, side.inode, names=True)


async def _exchange(ns, tx, src: _Side, dst: _Side):
    if src.is_dir and src.parent != dst.parent:
        await _check_not_ancestor(ns, tx, src.ino, dst.parent)
    if dst.is_dir and src.parent != dst.parent:
        await _check_not_ancestor(ns, tx, dst.ino, src.parent)
    now = now_ns()
    ns.remove_entry(tx, src.parent, src.name, src.type_bits, now)
    ns.remove_entry(tx, dst.parent, dst.name, dst.type_bits, now)
    ns.add_entry(tx, dst.parent, dst.name, src.ino, src.type_bits, now)
    ns.add_entry(tx, src.parent, src.name, dst.ino, dst.type_bits, now)
    _moved(ns, tx, src, dst.parent, now)
    _moved(ns, tx, dst, src.parent, now)


async def _check_not_ancestor(ns, tx, dir_ino: int, start: int):
    """Invalid if `dir_ino` is `start` or one of its ancestors (a move into itself)."""
    current = start
    for _ in range(MAX_DEPTH):
        if current == dir_ino:
            raise errors.Invalid(f"cannot move directory {dir_ino} into its own subtree")
        if current == ROOT_INO:
            return
        inode = await ns.read_dir(tx, current)
        current = inode.get("parent", ROOT_INO)
    raise errors.Invalid(f"directory {start} is nested deeper than {MAX_DEPTH}")
