"""Attributes as clients see them, built from inode records and directory shares.

A directory's attributes combine its inode with every shard's `dirstat`
share: nlink = 2 + sum(subdirs), size = sum(count), mtime = the latest of the
inode's and of every share's mtime newer than the inode's ``set_at`` (the
last explicit utimens), ctime = the latest of all.  The shard owning the inode
gathers the shares from its peers concurrently (`AttrReader.shares`); that is
the single place where a cache of shares would go.
"""

import logging
import stat
from functools import partial

from . import schema
from .peers import run_all

log = logging.getLogger(__name__)


def is_dir(inode: dict) -> bool:
    return stat.S_ISDIR(inode["mode"])


def build_attr(ino: int, inode: dict, shares=()) -> dict:
    attr = {key: inode[key] for key in ("mode", "nlink", "uid", "gid", "rdev", "size",
                                        "atime", "mtime", "ctime", "gen")}
    attr["ino"] = ino
    if inode.get("layout") is not None:
        attr["layout"] = inode["layout"]
    if is_dir(inode):
        _merge_shares(attr, inode, shares)
    attr["blocks"] = (attr["size"] + 511) // 512
    return attr


def _merge_shares(attr: dict, inode: dict, shares):
    set_at = inode.get("set_at", 0)
    attr["nlink"] = 2
    attr["size"] = 0
    for share in shares:
        if share is None:
            continue
        attr["nlink"] += share["subdirs"]
        attr["size"] += share["count"]
        if share["mtime"] > set_at:
            attr["mtime"] = max(attr["mtime"], share["mtime"])
        attr["ctime"] = max(attr["ctime"], share["ctime"])


def _local_inodes(dbs, inos, txn) -> dict[int, dict]:
    found = {}
    for ino in inos:
        db, raw = schema.inode_key(ino)
        value = txn.get(raw, db=dbs[db])
        if value is not None:
            found[ino] = schema.unpack(value)
    return found


def _local_shares(dbs, inos, txn) -> list[dict | None]:
    shares = []
    for ino in inos:
        db, raw = schema.dirstat_key(ino)
        value = txn.get(raw, db=dbs[db])
        shares.append(None if value is None else schema.unpack_share(value))
    return shares


class AttrReader:
    def __init__(self, store, peers, mds_id: int, nshards: int):
        self.store = store
        self.peers = peers
        self.mds_id = mds_id
        self.nshards = nshards

    def local_inodes(self, inos) -> dict[int, dict]:
        return self.store.read(partial(_local_inodes, self.store.dbs, inos))

    def local_shares(self, inos) -> list[dict | None]:
        return self.store.read(partial(_local_shares, self.store.dbs, inos))

    async def shares(self, inos: list[int]) -> dict[int, list]:
        """Every shard's share of each directory in `inos`, gathered concurrently."""
        gathered = {ino: [] for ino in inos}
        if not inos:
            return gathered
        replies = await self.peers.call_all("peer_dirstat", {"inos": inos})
        replies[self.mds_id] = self.local_shares(inos)
        for per_shard in replies.values():
            for ino, share in zip(inos, per_shard):
                gathered[ino].append(share)
        return gathered

    async def local_attrs(self, inos) -> dict[int, dict]:
        """Attributes of inodes stored on this shard; absent ones are left out."""
        inodes = self.local_inodes(inos)
        dirs = [ino for ino, inode in inodes.items() if is_dir(inode)]
        shares = await self.shares(dirs)
        return {ino: build_attr(ino, inode, shares.get(ino, ())) for ino, inode in inodes.items()}

    async def attrs(self, inos) -> dict[int, dict]:
        """Attributes of inodes on any shard (peers asked in one batch each)."""
        by_shard: dict[int, list[int]] = {}
        for ino in dict.fromkeys(inos):
            by_shard.setdefault(ino % self.nshards, []).append(ino)
        found: dict[int, dict] = {}

        async def one(shard, group):
            if shard == self.mds_id:
                found.update(await self.local_attrs(group))
            else:
                reply = await self.peers.call(shard, "peer_attrs", {"inos": group})
                found.update({ino: attr for ino, attr in reply})

        await run_all([partial(one, shard, group) for shard, group in by_shard.items()])
        return found
