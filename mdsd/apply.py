"""What runs inside a write transaction (always in the store's writer thread).

An operation's writes travel as *mutations*: small named, deterministic steps
that are evaluated against the current state where the key lives, so that
commutative updates (adding an entry to a directory share) need no read
validation and concurrent creates in one directory do not conflict:

- ``["put", db, key, value]`` / ``["del", db, key]``
- ``["dirent_add", parent, name, ino, type_bits, subdirs_delta, now, adder,
  wants_lease]``: NotFound if the share is dead, Exists if the name exists,
  Conflict while another client's lease on the share holds (mdsd.leases);
  takes the next seq, and a lease for session `adder` if it wants one.
- ``["dirent_del", parent, name, subdirs_delta, now]``: removes entry and seq.
- ``["dirstat_kill", dir_ino, remover]``: NotEmpty unless the share is empty;
  Conflict while a session other than `remover` holds a lease on it
  (mdsd.leases); marks it dead.
- ``["inode_drop", ino]``: deletes the inode record, its xattrs and its
  missed-write records (`mdsd.missed`).

Every write and every validated read checks the lock table: a key locked by
a prepared cross-shard transaction makes the operation fail with `Conflict`
(it is retried by `mdsd.txn`).
"""

import logging
import time

from loomproto import errors

from . import schema

log = logging.getLogger(__name__)


ENTRY_SEQ = "entry_seq"


class AlreadyDone(Exception):
    """The request id already has a stored reply: answer with it."""

    def __init__(self, stored):
        super().__init__("request already applied")
        self.stored = stored


class Applier:
    """Reads and writes of one write txn; respects locks and records writes."""

    def __init__(self, store, txn, txid: bytes | None = None):
        self.dbs = store.dbs
        self.txn = txn
        self.txid = txid
        self.written: list[list] = []
        self.leases = store.leases
        self.entry_seqs: list[list] = []  # [seq, lease] of each dirent_add, in order

    def get(self, key: schema.Key) -> bytes | None:
        db, raw = key
        return self.txn.get(raw, db=self.dbs[db])

    def check_lock(self, key: schema.Key):
        db, raw = schema.lock_key(key)
        holder = self.txn.get(raw, db=self.dbs[db])
        if holder is not None and holder != self.txid:
            raise errors.Conflict(f"{key[0]} key {key[1].hex()} locked by txn {holder.hex()}")

    def put(self, key: schema.Key, value: bytes):
        self.check_lock(key)
        db, raw = key
        self.txn.put(raw, value, db=self.dbs[db])
        self.written.append([db, raw, value])

    def delete(self, key: schema.Key):
        self.check_lock(key)
        db, raw = key
        self.txn.delete(raw, db=self.dbs[db])
        self.written.append([db, raw, None])

    def validate(self, reads):
        """`reads` is ``[[db, key, expected_value_or_None]]``."""
        for db, raw, expected in reads:
            self.check_lock((db, raw))
            if self.get((db, raw)) != expected:
                raise errors.Conflict(f"{db} key {raw.hex()} changed since read")

    def apply(self, mutations):
        for mutation in mutations:
            _MUTATIONS[mutation[0]](self, *mutation[1:])


# -- mutations -----------------------------------------------------------------

def _put(ap: Applier, db, raw, value):
    ap.put((db, raw), value)


def _del(ap: Applier, db, raw):
    ap.delete((db, raw))


def _dirent_add(ap: Applier, parent, name, ino, type_bits, subdirs_delta, now,
                adder=None, wants_lease=False):
    share_key = schema.dirstat_key(parent)
    share = schema.unpack_share(ap.get(share_key))
    if share["dead"]:
        raise errors.NotFound(f"directory {parent} was removed")
    ap.leases.admit(parent, adder)
    entry_key = schema.dentry_key(parent, name)
    if ap.get(entry_key) is not None:
        raise errors.Exists(f"entry {name!r} exists in {parent}")
    seq = share["next_seq"]
    ap.put(entry_key, schema.pack_dentry(ino, type_bits, seq))
    ap.put(schema.dirseq_key(parent, seq), name)
    share["next_seq"] = seq + 1
    share["count"] += 1
    _touch_share(share, subdirs_delta, now)
    ap.put(share_key, schema.pack(share))
    lease = ap.leases.grant(parent, adder) if wants_lease else 0.0
    ap.entry_seqs.append([seq, lease])


def _dirent_del(ap: Applier, parent, name, subdirs_delta, now):
    entry_key = schema.dentry_key(parent, name)
    raw = ap.get(entry_key)
    if raw is None:
        raise errors.Conflict(f"entry {name!r} of {parent} vanished")
    _, _, seq = schema.unpack_dentry(raw)
    ap.delete(entry_key)
    ap.delete(schema.dirseq_key(parent, seq))
    share_key = schema.dirstat_key(parent)
    share = schema.unpack_share(ap.get(share_key))
    share["count"] = max(0, share["count"] - 1)
    _touch_share(share, subdirs_delta, now)
    ap.put(share_key, schema.pack(share))


def _touch_share(share: dict, subdirs_delta: int, now: int):
    share["subdirs"] = max(0, share["subdirs"] + subdirs_delta)
    share["mtime"] = max(share["mtime"], now)
    share["ctime"] = max(share["ctime"], now)


def _dirstat_kill(ap: Applier, dir_ino, remover=None):
    share_key = schema.dirstat_key(dir_ino)
    share = schema.unpack_share(ap.get(share_key))
    if share["count"] > 0:
        raise errors.NotEmpty(f"directory {dir_ino} is not empty")
    # The lessee may be creating there, answering before the commit (client.behind).
    ap.leases.admit(dir_ino, remover)
    share["dead"] = True
    ap.put(share_key, schema.pack(share))


def _inode_drop(ap: Applier, ino):
    key = schema.inode_key(ino)
    if ap.get(key) is not None:
        ap.delete(key)
    for raw in keys_with_prefix(ap, schema.XATTR, schema.xattr_prefix(ino)):
        ap.delete((schema.XATTR, raw))
    for raw in keys_with_prefix(ap, schema.MISSED, schema.missed_prefix(ino)):
        ap.delete((schema.MISSED, raw))


def keys_with_prefix(ap: Applier, db: str, prefix: bytes) -> list[bytes]:
    keys = []
    with ap.txn.cursor(db=ap.dbs[db]) as cursor:
        if cursor.set_range(prefix):
            for raw in cursor.iternext(keys=True, values=False):
                if not raw.startswith(prefix):
                    break
                keys.append(raw)
    return keys


_MUTATIONS = {
    "put": _put,
    "del": _del,
    "dirent_add": _dirent_add,
    "dirent_del": _dirent_del,
    "dirstat_kill": _dirstat_kill,
    "inode_drop": _inode_drop,
}
MUTATION_NAMES = frozenset(_MUTATIONS)


# -- request replies -----------------------------------------------------------

def stored_reply(txn, dbs, rid: bytes | None):
    if rid is None:
        return None
    raw = txn.get(rid, db=dbs[schema.REPLY])
    return None if raw is None else schema.unpack(raw)


def put_reply(txn, dbs, rid: bytes, ok: bool, result):
    now = time.time_ns()
    txn.put(rid, schema.pack([now, ok, result]), db=dbs[schema.REPLY])
    db, raw = schema.replyage_key(now, rid)
    txn.put(raw, b"", db=dbs[db])


def expire_replies(txn, dbs, older_than_ns: int, limit: int = 10000) -> int:
    age_db = dbs[schema.REPLYAGE]
    doomed = []
    with txn.cursor(db=age_db) as cursor:
        for raw in cursor.iternext(keys=True, values=False):
            if schema.from_be64(raw[:8]) >= older_than_ns or len(doomed) >= limit:
                break
            doomed.append(raw)
    for raw in doomed:
        txn.delete(raw, db=age_db)
        txn.delete(raw[8:], db=dbs[schema.REPLY])
    return len(doomed)


# -- transaction steps ---------------------------------------------------------

def commit_local(store, reads, mutations, rid, result, txn):
    """One-shard transaction: validate reads, apply, store the reply.

    A result with an ``entry_seq`` key (a create's) gets ``[seq, lease]`` of its
    one new entry: the seq it took in its directory's share, from which the
    client learns whether anything else was added there since what it last
    knew, and the lease it got (mdsd.leases, client.absent)."""
    stored = stored_reply(txn, store.dbs, rid)
    if stored is not None:
        raise AlreadyDone(stored)
    ap = Applier(store, txn)
    ap.validate(reads)
    ap.apply(mutations)
    if isinstance(result, dict) and ENTRY_SEQ in result and len(ap.entry_seqs) == 1:
        result[ENTRY_SEQ] = ap.entry_seqs[0]
    if rid is not None:
        put_reply(txn, store.dbs, rid, True, result)
    return result


def decide(store, txid, participants, reads, mutations, rid, result, txn):
    """Coordinator: its own part plus the durable commit decision, atomically."""
    commit_local(store, reads, mutations, rid, result, txn)
    record = {"time": time.time_ns(), "participants": participants, "acked": []}
    txn.put(txid, schema.pack(record), db=store.dbs[schema.DECIDED])
    return result


def prepare(store, txid, coord, boot, reads, mutations, txn):
    """Participant: validate, compute the writes, lock the keys, record durably."""
    prepared_db = store.dbs[schema.PREPARED]
    if txn.get(txid, db=prepared_db) is not None:
        return  # a repeated prepare
    ap = Applier(store, txn, txid)
    ap.validate(reads)
    writes = _dry_run(store, txn, txid, mutations)
    locks = _unique_keys([[db, raw] for db, raw, _ in reads] + [w[:2] for w in writes])
    for db, raw in locks:
        lock_db, lock_raw = schema.lock_key((db, raw))
        txn.put(lock_raw, txid, db=store.dbs[lock_db])
    record = {"coord": coord, "boot": boot, "time": time.time_ns(), "writes": writes,
              "locks": locks}
    txn.put(txid, schema.pack(record), db=prepared_db)


def _dry_run(store, txn, txid, mutations) -> list[list]:
    nested = store.env.begin(write=True, parent=txn)
    try:
        ap = Applier(store, nested, txid)
        ap.apply(mutations)
        return ap.written
    finally:
        nested.abort()


def _unique_keys(keys: list[list]) -> list[list]:
    seen = set()
    unique = []
    for db, raw in keys:
        if (db, raw) not in seen:
            seen.add((db, raw))
            unique.append([db, raw])
    return unique


def finish_prepared(store, txid, commit: bool, txn) -> bool:
    """Participant: apply (commit) or drop (abort) a prepared txn; False if unknown."""
    prepared_db = store.dbs[schema.PREPARED]
    raw = txn.get(txid, db=prepared_db)
    if raw is None:
        return False
    record = schema.unpack(raw)
    if commit:
        for db, key, value in record["writes"]:
            if value is None:
                txn.delete(key, db=store.dbs[db])
            else:
                txn.put(key, value, db=store.dbs[db])
    for db, key in record["locks"]:
        lock_db, lock_raw = schema.lock_key((db, key))
        txn.delete(lock_raw, db=store.dbs[lock_db])
    txn.delete(txid, db=prepared_db)
    return True


def forget_decision(store, txid, txn):
    txn.delete(txid, db=store.dbs[schema.DECIDED])
