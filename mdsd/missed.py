"""Missed writes: which chunks an OSD missed while it was down (issue 6).

An OSD that acknowledges a write (or a truncate) of a chunk while a member of
the chunk's replica set did not take it, because the map shows that member
down, first records ``(ino, chunk_index) missed by osd_id`` on the shard that
owns the inode, and answers only once the record is durable.  The returning
OSD, while it is *suspect* (`osd.recovery`) and some member that may hold a
newer copy does not answer, asks whether its copy was missed: recorded means
its copy is old or absent, and it answers EIO rather than serve it; not
recorded means nothing was written past it, and its copy is current.  It
clears its records once every member answered with nothing newer than its
own copy.  Dropping an inode drops its records (``inode_drop`` in
`mdsd.apply`).

RPCs, each sent to the shard of the inode (``ino % n``); the key layout is in
`mdsd.schema` (family ``missed``):

- ``missed_record {entries: [[ino, chunk, osd_id]], by, version}`` -> ``{}``
  once durable; a row that exists keeps the higher of the two versions;
- ``missed_query {osd, keys: [[ino, chunk]]}`` -> ``[bool]``: recorded or not;
- ``missed_clear {osd, keys: [[ino, chunk, version]]}`` -> ``{cleared}``: drops
  each row whose version is at most `version`, the newest version every member
  of the set confirmed the OSD holds.  A write missed after that confirmation
  has a higher version, so its row survives a clear that arrives late;
- ``missed_list {osd, after: [ino, chunk] | nil, limit}`` -> ``{keys, more}``:
  the records of one OSD on this shard, in key order.

A record is idempotent and small, so a primary that dies after recording but
before acknowledging leaves a harmless row: the returning OSD checks with
its peers as it would anyway, and clears it.
"""

import logging
import time
from functools import partial

from loomproto import errors

from . import args as check
from . import schema

log = logging.getLogger(__name__)

ENTRIES_MAX = 10000
LIST_LIMIT_MAX = 10000


class MissedWrites:
    """The ``missed_*`` RPCs of one shard."""

    def __init__(self, store, mds_id: int, nshards: int):
        self.store = store
        self.mds_id = mds_id
        self.nshards = nshards

    async def record(self, args: dict) -> dict:
        keys = [schema.missed_key(*triple)[1]
                for triple in self._triples(args.get("entries"), "entries")]
        row = {"time": time.time_ns(), "by": check.integer(args, "by", default=-1, lo=-1),
               "version": check.integer(args, "version", default=0)}

        added = await self.store.write(partial(_put_max, self.store.dbs, keys, row))
        if added:
            log.info("recorded %d missed chunk copies (of %d asked)", added, len(keys))
        return {}

    def query(self, args: dict) -> list[bool]:
        osd_id = check.integer(args, "osd")
        keys = [schema.missed_key(ino, chunk, osd_id)[1] for ino, chunk in self._pairs(args)]

        db = self.store.dbs[schema.MISSED]
        return self.store.read(lambda txn: [txn.get(key, db=db) is not None for key in keys])

    async def clear(self, args: dict) -> dict:
        osd_id = check.integer(args, "osd")
        keys = [(schema.missed_key(ino, chunk, osd_id)[1], version)
                for ino, chunk, version in self._triples(args.get("keys"), "keys")]

        cleared = await self.store.write(partial(_delete_upto, self.store.dbs, keys))
        if cleared:
            log.info("osd %d caught up %d missed chunk copies", osd_id, cleared)
        return {"cleared": cleared}

    def listing(self, args: dict) -> dict:
        osd_id = check.integer(args, "osd")
        limit = check.integer(args, "limit", 1, LIST_LIMIT_MAX, default=1000)
        after = args.get("after")
        start = b""
        if after is not None:
            ino, chunk = self._pair(after)
            start = schema.missed_key(ino, chunk + 1, 0)[1]

        db = self.store.dbs[schema.MISSED]
        keys, more = self.store.read(lambda txn: _list(txn, db, start, osd_id, limit))
        return {"keys": keys, "more": more}

    # -- arguments ------------------------------------------------------------

    def _pair(self, item) -> tuple[int, int]:
        if not (isinstance(item, list) and len(item) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in item)):
            raise errors.BadRequest("a chunk key must be [ino, chunk]")
        ino, chunk = item
        if not (0 < ino <= check.U63_MAX and 0 <= chunk <= check.U63_MAX):
            raise errors.BadRequest(f"chunk key {item} out of range")
        if ino % self.nshards != self.mds_id:
            raise errors.BadRequest(f"ino {ino} belongs to shard {ino % self.nshards}, "
                                    f"not {self.mds_id}")
        return ino, chunk

    def _pairs(self, args: dict) -> list[tuple[int, int]]:
        keys = args.get("keys")
        if not isinstance(keys, list) or len(keys) > ENTRIES_MAX:
            raise errors.BadRequest(f"argument 'keys' must be a list of at most "
                                    f"{ENTRIES_MAX} [ino, chunk]")
        return [self._pair(item) for item in keys]

    def _triples(self, items, name: str) -> list[tuple[int, int, int]]:
        """``[[ino, chunk, n]]`` with n an osd id or a version."""
        if not isinstance(items, list) or len(items) > ENTRIES_MAX:
            raise errors.BadRequest(f"argument {name!r} must be a list of at most "
                                    f"{ENTRIES_MAX} [ino, chunk, n]")
        triples = []
        for item in items:
            if not isinstance(item, list) or len(item) != 3:
                raise errors.BadRequest(f"an item of {name!r} must be [ino, chunk, n]")
            ino, chunk = self._pair(item[:2])
            triples.append((ino, chunk, check.integer({name: item[2]}, name)))
        return triples


# -- in the writer thread / a read transaction ---------------------------------

def _put_max(dbs, keys: list[bytes], row: dict, txn) -> int:
    """Add the rows, or raise the version of those that exist; returns how many
    were new.  None for an inode that is gone: its drop took the rows with it,
    and nothing is left to protect."""
    db = dbs[schema.MISSED]
    added = 0
    for key in keys:
        ino = schema.missed_parse(key)[0]
        inode_db, inode_raw = schema.inode_key(ino)
        if txn.get(inode_raw, db=dbs[inode_db]) is None:
            continue
        raw = txn.get(key, db=db)
        if raw is None:
            added += 1
        elif schema.unpack(raw)["version"] >= row["version"]:
            continue
        txn.put(key, schema.pack(row), db=db)
    return added


def _delete_upto(dbs, keys: list[tuple[bytes, int]], txn) -> int:
    """Drop each row whose version is at most the one given with it."""
    db = dbs[schema.MISSED]
    cleared = 0
    for key, version in keys:
        raw = txn.get(key, db=db)
        if raw is not None and schema.unpack(raw)["version"] <= version:
            txn.delete(key, db=db)
            cleared += 1
    return cleared


def _list(txn, db, start: bytes, osd_id: int, limit: int):
    """Records of `osd_id` from `start` on: ``([[ino, chunk]], more)``."""
    keys = []
    with txn.cursor(db=db) as cursor:
        if not cursor.set_range(start):
            return keys, False
        for raw in cursor.iternext(keys=True, values=False):
            ino, chunk, owner = schema.missed_parse(raw)
            if owner != osd_id:
                continue
            if len(keys) == limit:
                return keys, True
            keys.append([ino, chunk])
    return keys, False
