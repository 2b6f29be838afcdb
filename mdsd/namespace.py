"""What every metadata operation shares: the shard's context (`Namespace`),
inode number allocation and the transactional helpers on inodes and entries.

Operations are written location-agnostic: each key is read from the shard that
owns it (`Namespace.ino_shard`, `Namespace.entry_shard`), so an operation is
correct whichever shard runs it; the client sends it where it touches one
shard when it can.
"""

import logging
import stat
import time
from functools import partial

from loomproto import errors
from loomproto.layout import shard_of_dentry

from . import schema
from .attrs import build_attr, is_dir
from .removals import PendingRemovals

log = logging.getLogger(__name__)

INO_BLOCK = 1024
MAX_DEPTH = 4096


class InoAllocator:
    """Hands out ``s + k*n``; reserves blocks of `INO_BLOCK` durably."""

    def __init__(self, store, mds_id: int, nshards: int):
        self.store = store
        self.mds_id = mds_id
        self.nshards = nshards
        self._next = 0
        self._limit = 0

    async def alloc(self) -> int:
        # No await between the check and the increment, except the reservation,
        # after which the check is repeated.
        while self._next >= self._limit:
            await self._reserve()
        k = self._next
        self._next += 1
        return self.mds_id + k * self.nshards

    async def _reserve(self):
        start, limit = await self.reserve_block()
        if limit > self._limit:
            self._next, self._limit = start, limit

    async def reserve_block(self) -> tuple[int, int]:
        """One more durable block ``[start, limit)`` of ``k``; also what a client
        gets to number the files it creates before their commit (client.behind)."""
        first_k = max(0, -(-(2 - self.mds_id) // self.nshards))
        return await self.store.write(partial(_reserve_block, self.store.dbs, first_k))

    def reserved(self, ino: int) -> bool:
        """Whether `ino` is this shard's and inside a block reserved so far."""
        if ino % self.nshards != self.mds_id:
            return False
        raw = self.store.get((schema.SYS, schema.SYS_NEXT_INO))
        return raw is not None and ino // self.nshards < schema.from_be64(raw)


def _reserve_block(dbs, first_k, txn):
    """Advance the durable counter by one block; returns the block ``[start, limit)``."""
    raw = txn.get(schema.SYS_NEXT_INO, db=dbs[schema.SYS])
    start = max(first_k, schema.from_be64(raw) if raw is not None else 0)
    limit = start + INO_BLOCK
    txn.put(schema.SYS_NEXT_INO, schema.be64(limit), db=dbs[schema.SYS])
    return start, limit


class Namespace:
    def __init__(self, config, mds_id, store, peers, engine, attrs, sessions):
        self.config = config
        self.mds_id = mds_id
        self.nshards = config.nshards
        self.store = store
        self.peers = peers
        self.engine = engine
        self.attrs = attrs
        self.sessions = sessions
        self.inos = InoAllocator(store, mds_id, config.nshards)
        self.map_source = lambda: None  # the shard's current ClusterMap (set by Shard)
        self.tails = None  # mdsd.tails.Tails (set by Shard)
        self.removals = PendingRemovals()  # unlinks received, not yet committed
        self.early_creates = 0  # committed creates their client answered first (shard_info)

    def ino_shard(self, ino: int) -> int:
        return ino % self.nshards

    def entry_shard(self, parent_ino: int, name: bytes) -> int:
        return shard_of_dentry(parent_ino, name, self.nshards)

    # -- inodes inside a transaction -----------------------------------------

    async def read_inode(self, tx, ino: int, peek: bool = False) -> dict:
        key = schema.inode_key(ino)
        read = tx.peek if peek else tx.read
        raw = await read(self.ino_shard(ino), key)
        if raw is None:
            raise errors.NotFound(f"no inode {ino}")
        return schema.unpack(raw)

    def write_inode(self, tx, ino: int, inode: dict, names: bool = False):
        """Store an inode, moving its `gen` (any change); `names` also moves its
        `ngen`, the count of changes to the names that lead to it (link, unlink,
        rename), which fsck uses to tell a torn scan from a fault."""
        inode["gen"] = inode.get("gen", 0) + 1
        if names:
            inode["ngen"] = inode.get("ngen", 0) + 1
        tx.put(self.ino_shard(ino), schema.inode_key(ino), schema.pack(inode))

    async def read_dir(self, tx, ino: int, peek: bool = False) -> dict:
        inode = await self.read_inode(tx, ino, peek)
        if not is_dir(inode):
            raise errors.NotDir(f"inode {ino} is not a directory")
        return inode

    async def read_entry(self, tx, parent_ino: int, name: bytes):
        """``(ino, type_bits)`` of an entry, or None; validated at commit."""
        key = schema.dentry_key(parent_ino, name)
        raw = await tx.read(self.entry_shard(parent_ino, name), key)
        if raw is None:
            return None
        ino, type_bits, _ = schema.unpack_dentry(raw)
        return ino, type_bits

    async def check_parent_alive(self, tx, parent_ino: int, name: bytes):
        """NotFound if the entry shard's share of the parent is dead; NotDir for a
        local parent that is not a directory."""
        shard = self.entry_shard(parent_ino, name)
        share = schema.unpack_share(await tx.peek(shard, schema.dirstat_key(parent_ino)))
        if share["dead"]:
            raise errors.NotFound(f"directory {parent_ino} was removed")
        if self.ino_shard(parent_ino) == self.mds_id:
            await self.read_dir(tx, parent_ino, peek=True)

    def add_entry(self, tx, parent_ino, name, ino, type_bits, now):
        subdirs = 1 if type_bits == stat.S_IFDIR else 0
        mutation = ["dirent_add", parent_ino, name, ino, type_bits, subdirs, now,
                    tx.adder, tx.wants_lease]
        tx.mutate(self.entry_shard(parent_ino, name), mutation)

    def remove_entry(self, tx, parent_ino, name, type_bits, now):
        subdirs = -1 if type_bits == stat.S_IFDIR else 0
        mutation = ["dirent_del", parent_ino, name, subdirs, now]
        tx.mutate(self.entry_shard(parent_ino, name), mutation)

    async def check_empty(self, tx, dir_ino: int):
        """NotEmpty unless every shard's share of `dir_ino` is empty (reads validated).
        The creates and unlinks in it that their client answered already and a
        shard has not committed yet (mdsd.removals) are waited for first, here and,
        through `peer_read`, on the other shards: their outcome decides.  Those
        that arrive later wait for the lease of the client sending them (mdsd.apply
        `dirstat_kill`), or find the prepare refused (`touched_by`)."""
        await self.removals.settle_dir(dir_ino)
        for shard in range(self.nshards):
            share = schema.unpack_share(await tx.read(shard, schema.dirstat_key(dir_ino)))
            if share["count"] > 0:
                raise errors.NotEmpty(f"directory {dir_ino} is not empty")

    def remove_dir_inode(self, tx, dir_ino: int):
        """Tombstone every share of a directory and drop its inode (a share that
        another session's lease holds waits until the lease ends: mdsd.leases)."""
        for shard in range(self.nshards):
            tx.mutate(shard, ["dirstat_kill", dir_ino, tx.adder])
        tx.mutate(self.ino_shard(dir_ino), ["inode_drop", dir_ino])

    def drop_link(self, tx, ino: int, inode: dict, now: int):
        """One name of a non-directory is gone: nlink-1, an orphan at 0.

        An inode of this shard that nobody has open goes at once, in this
        transaction (one commit instead of a second one for reclaim): one that
        never held data entirely (an empty file's unlink, the common case of
        `rm -rf` over many small files), one that did with an orphan record that
        lists the OSDs to clean, which reclaim then does.  Only once reclaim is
        active: before, clients may still be registering their opens again
        after this shard started.
        """
        inode["nlink"] = max(0, inode["nlink"] - 1)
        inode["ctime"] = now
        shard = self.ino_shard(ino)
        if inode["nlink"] == 0 and shard == self.mds_id and self.sessions.settled \
                and not self.sessions.is_open(ino) and self._drop_now(tx, ino, inode, now):
            # Until this commits, an open of the inode waits (Sessions.wait_drops).
            self.sessions.begin_drop(ino)
            tx.on_end.append(partial(self.sessions.end_drop, ino))
            return
        self.write_inode(tx, ino, inode, names=True)
        if inode["nlink"] == 0:
            record = {"since": now, "dropped": False, "pending": []}
            tx.put(shard, schema.orphan_key(ino), schema.pack(record))

    def _drop_now(self, tx, ino: int, inode: dict, now: int) -> bool:
        """Drop an unlinked inode nobody has open in `tx`; False when the OSDs to
        clean are not known yet (no cluster map): reclaim drops it later."""
        if not may_have_chunks(inode):
            tx.mutate(self.mds_id, ["inode_drop", ino])
            return True
        cluster_map = self.map_source()
        if cluster_map is None:
            return False
        tx.mutate(self.mds_id, ["inode_drop", ino])
        record = {"since": now, "dropped": True, "pending": sorted(cluster_map.osds),
                  "dropped_at": now}
        tx.put(self.mds_id, schema.orphan_key(ino), schema.pack(record))
        return True

    async def attr_of(self, ino: int, inode: dict) -> dict:
        """Client attributes; a directory's shares are gathered (not validated)."""
        if not is_dir(inode):
            return build_attr(ino, inode)
        shares = await self.attrs.shares([ino])
        return build_attr(ino, inode, shares[ino])


def now_ns() -> int:
    return time.time_ns()


def may_have_chunks(inode: dict) -> bool:
    """Whether OSDs may hold chunks of this inode.  `had_data` is set once a size
    above 0 is recorded; data written and never committed (a client that died
    first) is found by the OSDs' recovery pass, which removes chunks of inodes
    that no longer exist."""
    return stat.S_ISREG(inode["mode"]) and (inode["size"] > 0 or inode.get("had_data", False))


def new_inode(mode: int, uid: int, gid: int, now: int, **extra) -> dict:
    inode = {"mode": mode, "uid": uid, "gid": gid, "rdev": 0, "size": 0, "nlink": 1,
             "atime": now, "mtime": now, "ctime": now, "gen": 0}
    inode.update(extra)
    return inode
