"""``fsck_repair {action, ...}``: the narrow fixes ``loomfs fsck --repair`` may apply.

Each action re-checks, inside its own transaction, the condition the checker
found (the checker's scan of a live cluster is not a snapshot), so a repair
racing a client operation fails with `Conflict` or `Invalid` instead of doing
harm.  Actions:

- ``entry_drop {parent, name, ino}``: remove the entry ``(parent, name) ->
  ino`` if inode `ino` does not exist (a dangling entry).
- ``set_nlink {ino, nlink, gen, ngen}``: set a non-directory's link count to the
  number of entries the checker counted, if the names of the inode have not
  changed since (its `ngen`; writes move `gen` but not that); 0 makes it an
  orphan that reclaim deletes.  Without `ngen` (an older checker): `gen`.
- ``relink {ino, parent, name, gen, ngen}``: give an inode that no entry names one
  name (in lost+found) with nlink 1, on the same condition.
- ``share_recount {dir_ino}`` (local to the shard asked): recompute this
  shard's ``dirstat`` count and subdirs of `dir_ino` from its entries, and
  drop ``dirseq`` rows whose entry is gone / add the ones missing.
"""

import logging
import stat
from functools import partial

from loomproto import errors

from . import apply
from . import args as check
from . import schema
from .namespace import now_ns

log = logging.getLogger(__name__)


async def repair(ns, args: dict) -> dict:
    action = args.get("action")
    handler = _ACTIONS.get(action)
    if handler is None:
        raise errors.BadRequest(f"unknown repair action {action!r}")
    result = await handler(ns, args)
    log.warning("fsck repair %s applied: %s", action, result)
    return result


async def _entry_drop(ns, args: dict) -> dict:
    parent, name, ino = check.ino(args, "parent"), check.name(args), check.ino(args)

    async def body(tx):
        entry = await ns.read_entry(tx, parent, name)
        if entry is None or entry[0] != ino:
            raise errors.Invalid(f"entry {name!r} of {parent} no longer names {ino}")
        if await tx.read(ns.ino_shard(ino), schema.inode_key(ino)) is not None:
            raise errors.Invalid(f"inode {ino} exists: entry {name!r} is not dangling")
        ns.remove_entry(tx, parent, name, entry[1], now_ns())
        return {"dropped": [parent, name, ino]}

    return await ns.engine.run(body)


async def _set_nlink(ns, args: dict) -> dict:
    ino = check.ino(args)
    nlink = check.integer(args, "nlink", 0, check.U32_MAX)
    seen = _seen(args)

    async def body(tx):
        inode = await _inode_at(ns, tx, ino, seen)
        old = inode["nlink"]
        inode["nlink"] = nlink + 1  # drop_link takes one off and records a new orphan
        ns.drop_link(tx, ino, inode, now_ns())
        return {"ino": ino, "nlink": [old, nlink]}

    result = await ns.engine.run(body)
    if nlink == 0:
        ns.sessions.orphan_added(ino)
    return result


async def _relink(ns, args: dict) -> dict:
    ino, parent, name = check.ino(args), check.ino(args, "parent"), check.name(args)
    seen = _seen(args)

    async def body(tx):
        inode = await _inode_at(ns, tx, ino, seen)
        if await ns.read_entry(tx, parent, name) is not None:
            raise errors.Exists(f"entry {name!r} exists in {parent}")
        await ns.check_parent_alive(tx, parent, name)
        now = now_ns()
        inode["nlink"], inode["ctime"] = 1, now
        if stat.S_ISDIR(inode["mode"]):
            inode["nlink"], inode["parent"] = 2, parent
        ns.write_inode(tx, ino, inode, names=True)
        tx.delete(ns.ino_shard(ino), schema.orphan_key(ino))
        ns.add_entry(tx, parent, name, ino, stat.S_IFMT(inode["mode"]), now)
        return {"relinked": [ino, parent, name]}

    return await ns.engine.run(body)


def _seen(args: dict) -> tuple[str, int]:
    """Which counter of the inode the checker saw: `ngen` (its names), or `gen`."""
    if args.get("ngen") is not None:
        return "ngen", check.integer(args, "ngen")
    return "gen", check.integer(args, "gen")


async def _inode_at(ns, tx, ino: int, seen: tuple[str, int]) -> dict:
    field, value = seen
    inode = await ns.read_inode(tx, ino)
    if inode.get(field, 0) != value:
        raise errors.Invalid(f"inode {ino} changed since it was checked")
    return inode


async def _share_recount(ns, args: dict) -> dict:
    dir_ino = check.ino(args, "dir_ino")
    return await ns.store.write(partial(_recount, ns.store, dir_ino))


def _recount(store, dir_ino: int, txn) -> dict:
    """Runs in the writer thread: this shard's share of `dir_ino` from its entries."""
    ap = apply.Applier(store, txn)
    prefix = schema.dentry_prefix(dir_ino)
    entries = {raw[len(prefix):]: schema.unpack_dentry(ap.get((schema.DENTRY, raw)))
               for raw in apply.keys_with_prefix(ap, schema.DENTRY, prefix)}
    seqs = {schema.dirseq_parse(raw)[1]: raw
            for raw in apply.keys_with_prefix(ap, schema.DIRSEQ, prefix)}
    share_key = schema.dirstat_key(dir_ino)
    share = schema.unpack_share(ap.get(share_key))
    fixed = _fix_seqs(ap, dir_ino, entries, seqs, share)
    count = len(entries)
    subdirs = sum(1 for _, type_bits, _ in entries.values() if type_bits == stat.S_IFDIR)
    before = [share["count"], share["subdirs"]]
    share["count"], share["subdirs"] = count, subdirs
    ap.put(share_key, schema.pack(share))
    return {"dir_ino": dir_ino, "count": [before[0], count], "subdirs": [before[1], subdirs],
            "seqs_fixed": fixed}


def _fix_seqs(ap, dir_ino, entries: dict, seqs: dict, share: dict) -> int:
    fixed = 0
    wanted = {seq: name for name, (_, _, seq) in entries.items()}
    for seq, raw in seqs.items():
        if ap.get((schema.DIRSEQ, raw)) != wanted.get(seq):
            ap.delete((schema.DIRSEQ, raw))
            fixed += 1
    for seq, name in wanted.items():
        key = schema.dirseq_key(dir_ino, seq)
        if ap.get(key) != name:
            ap.put(key, name)
            fixed += 1
        share["next_seq"] = max(share["next_seq"], seq + 1)
    return fixed


_ACTIONS = {"entry_drop": _entry_drop, "set_nlink": _set_nlink, "relink": _relink,
            "share_recount": _share_recount}
