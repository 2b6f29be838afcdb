"""readdir: the entries of one directory held on this shard, in seq order.

The client asks every shard in turn and builds its cookie from (shard, seq);
seqs are per (directory, shard) and never reused, so a cookie stays valid
while entries come and go.  Attributes of entries whose inode lives on
another shard are fetched from that shard in one batch.
"""

import logging
from functools import partial

from loomproto import errors

from . import args as check
from . import schema

log = logging.getLogger(__name__)

LIMIT_MAX = 4096


def _scan(dbs, ino: int, after: int, limit: int, txn):
    """``([(name, seq, child_ino)], more)`` from the dirseq index."""
    seq_db, start = schema.dirseq_key(ino, after + 1)
    prefix = schema.dentry_prefix(ino)
    found = []
    more = False
    with txn.cursor(db=dbs[seq_db]) as cursor:
        if not cursor.set_range(start):
            return found, more
        for key, name in cursor:
            if not key.startswith(prefix):
                break
            if len(found) >= limit:
                more = True
                break
            entry_db, entry_key = schema.dentry_key(ino, name)
            raw = txn.get(entry_key, db=dbs[entry_db])
            if raw is not None:
                child, _, seq = schema.unpack_dentry(raw)
                found.append((name, seq, child))
    return found, more


async def readdir(ns, args: dict) -> dict:
    ino = check.ino(args)
    after = check.integer(args, "shard_after", 0, check.U63_MAX, default=None)
    if after is None:
        after = check.integer(args, "after", 0, check.U63_MAX, default=0)
    limit = check.integer(args, "limit", 1, check.U32_MAX, default=1000)
    limit = min(limit, LIMIT_MAX)
    await ns.removals.settle_dir(ino)  # unlinks received here first (mdsd.removals)

    share = schema.unpack_share(ns.store.get(schema.dirstat_key(ino)))
    if share["dead"]:
        raise errors.NotFound(f"directory {ino} was removed")
    found, more = ns.store.read(partial(_scan, ns.store.dbs, ino, after, limit))
    attrs = await ns.attrs.attrs([child for _, _, child in found])
    entries = [[name, seq, attrs[child]] for name, seq, child in found if child in attrs]
    return {"entries": entries, "more": more}
