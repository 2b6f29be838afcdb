"""A fake metadata cluster for unit tests of client.statahead's wiring in
client.ops: the real `Meta` and `LoomOperations` over an in-memory namespace.
Replies are computed when the request arrives (a snapshot of the shard's state),
and may be held back by a gate per op before they are returned, to play races."""

import copy
import stat

import trio

from client.meta import Meta
from client.ops import LoomOperations
from loomproto.layout import Layout, shard_of_dentry

NSHARDS = 2
FILE = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755


class Ctx:
    uid = gid = pid = 0


class Attr:
    """What a chmod to 0600 passes to setattr."""
    st_mode = 0o100600


class ModeOnly:
    """The fields of a chmod."""
    update_mode = True
    update_uid = update_gid = update_atime = update_mtime = update_ctime = False
    update_size = False


class FakeCluster:
    def __init__(self, nursery):
        self.nursery = nursery
        self.nshards = NSHARDS
        self.session = b"s" * 16
        self.open_inos = {}
        self.placement_changes = 0
        self.inodes: dict[int, dict] = {}
        self.dirs: dict[int, dict[bytes, int]] = {}
        self.seqs: dict[tuple[int, bytes], int] = {}
        self.next_seq = 1
        self.calls: list[tuple[str, dict]] = []
        self.gates: dict[str, trio.Event] = {}
        self.clock = 1000
        self.entries_returned = 0

    # -- namespace setup ----------------------------------------------------

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def make_dir(self, ino: int) -> None:
        self.inodes[ino] = {"ino": ino, "mode": DIR, "nlink": 2, "uid": 0, "gid": 0,
                            "rdev": 0, "size": 0, "atime": 0, "mtime": 0, "ctime": 0,
                            "gen": 1}
        self.dirs[ino] = {}

    def make_file(self, parent: int, name: bytes, ino: int, size: int = 0) -> None:
        self.inodes[ino] = {"ino": ino, "mode": FILE, "nlink": 1, "uid": 0, "gid": 0,
                            "rdev": 0, "size": size, "atime": 0, "mtime": 0,
                            "ctime": 0, "gen": 1, "layout": Layout().to_wire()}
        self._add(parent, name, ino)

    def _add(self, parent, name, ino):
        self.dirs[parent][name] = ino
        self.seqs[(parent, name)] = self.next_seq
        self.next_seq += 1
        self.inodes[parent]["size"] = len(self.dirs[parent])

    def attr(self, ino):
        return copy.deepcopy(self.inodes[ino])

    # -- the cluster interface ------------------------------------------------

    def shard_of_ino(self, ino: int) -> int:
        return ino % NSHARDS

    def shard_of_dentry(self, parent: int, name: bytes) -> int:
        return shard_of_dentry(parent, name, NSHARDS)

    async def mds(self, shard, op, args, sent=None):
        self.calls.append((op, args))
        reply = getattr(self, "_" + op)(shard, args)
        if sent is not None:
            sent.set()
        gate = self.gates.get(op)
        if gate is not None:
            await gate.wait()
        else:
            await trio.lowlevel.checkpoint()
        return copy.deepcopy(reply)

    def count(self, op: str) -> int:
        return sum(1 for o, _ in self.calls if o == op)

    # -- ops ---------------------------------------------------------------

    def _lookup(self, shard, args):
        from loomproto import errors
        ino = self.dirs[args["parent"]].get(args["name"])
        if ino is None:
            raise errors.NotFound("no such entry")
        return dict(self.attr(ino), dir_seq=self.seqs[(args["parent"], args["name"])])

    def _getattr(self, shard, args):
        return self.attr(args["ino"])

    def _readdir(self, shard, args):
        ino, after, limit = args["ino"], args["shard_after"], args["limit"]
        mine = sorted((self.seqs[(ino, n)], n, c) for n, c in self.dirs[ino].items()
                      if self.shard_of_dentry(ino, n) == shard
                      and self.seqs[(ino, n)] > after)
        self.entries_returned += len(mine[:limit])
        return {"entries": [[n, s, self.attr(c)] for s, n, c in mine[:limit]],
                "more": len(mine) > limit}

    def _link(self, shard, args):
        ino = args["ino"]
        self.inodes[ino]["nlink"] += 1
        self.inodes[ino]["ctime"] = self.tick()
        self._add(args["parent"], args["name"], ino)
        return self.attr(ino)

    def _setattr(self, shard, args):
        ino = args["ino"]
        self.inodes[ino].update(args["fields"])
        self.inodes[ino]["ctime"] = self.tick()
        self.inodes[ino]["gen"] += 1
        return self.attr(ino)

    def _setxattr(self, shard, args):
        self.inodes[args["ino"]]["ctime"] = self.tick()
        return None

    def _rename(self, shard, args):
        """Files only, onto a free name."""
        ino = self.dirs[args["parent"]].pop(args["name"])
        self.seqs.pop((args["parent"], args["name"]))
        self.inodes[args["parent"]]["size"] = len(self.dirs[args["parent"]])
        self._add(args["new_parent"], args["new_name"], ino)
        self.inodes[ino]["ctime"] = self.tick()
        return {}

    def _unlink(self, shard, args):
        ino = self.dirs[args["parent"]].pop(args["name"])
        self.inodes[ino]["nlink"] -= 1
        self.inodes[args["parent"]]["size"] = len(self.dirs[args["parent"]])
        return {}


def make_ops(nursery, entry_timeout=5.0, attr_timeout=5.0, unlink_window=4):
    cluster = FakeCluster(nursery)
    meta = Meta(cluster)
    ops = LoomOperations(meta, data=None, attr_timeout=attr_timeout,
                         entry_timeout=entry_timeout, unlink_window=unlink_window)
    return cluster, meta, ops


def names_on_shard(parent: int, shard: int, count: int, prefix=b"f") -> list[bytes]:
    out, i = [], 0
    while len(out) < count:
        name = prefix + b"%05d" % i
        if shard_of_dentry(parent, name, NSHARDS) == shard:
            out.append(name)
        i += 1
    return out
