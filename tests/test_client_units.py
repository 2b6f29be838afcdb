"""Units of the client that need no cluster: buffers, options, cookies, layout math."""

import os

import pytest

from client.data import ChunkBuffer
from client.dirnames import DirNames
from client.mount import MountError, parse_options
from client.ops import _cookie, _uncookie
from loomproto.layout import Layout, osd_order, replicas_for_chunk, shard_of_dentry


def test_chunk_buffer_merges_extents():
    buf = ChunkBuffer()
    buf.put(10, b"abc")
    buf.put(20, b"xyz")
    assert buf.extents == [[10, 13], [20, 23]]
    buf.put(13, b"1234567")
    assert buf.extents == [[10, 23]]
    assert bytes(buf.data[10:23]) == b"abc1234567xyz"
    assert buf.dirty_bytes == 13
    assert not buf.covers(64)
    buf.put(0, bytes(64))
    assert buf.covers(64)


def test_parse_options_splits_own_from_fuse():
    own, fuse = parse_options("allow_other,default_permissions,attr_timeout=5,rw,"
                              "write_window=0,nofail,unlink_window=0")
    assert own["attr_timeout"] == 5.0 and own["write_window"] == 0
    assert own["unlink_window"] == 0 and parse_options("")[0]["unlink_window"] == 64
    assert parse_options("")[0]["statahead"] and not parse_options("statahead=0")[0]["statahead"]
    assert parse_options("")[0]["fast_wait"] and not parse_options("fast_wait=0")[0]["fast_wait"]
    assert parse_options("")[0]["negative_timeout"] == 0.0
    assert parse_options("negative_timeout=2")[0]["negative_timeout"] == 2.0
    assert fuse == {"allow_other", "default_permissions"}
    with pytest.raises(MountError, match="needs a number"):
        parse_options("attr_timeout=soon")
    # Settings under which every call would time out at once were taken silently.
    for bad in ("mds_timeout=0", "mds_timeout=-5", "io_timeout=-1", "write_window=-5",
                "attr_timeout=-1", "io_timeout=nan", "unlink_window=-1",
                "negative_timeout=-1"):
        with pytest.raises(MountError, match="below its least value"):
            parse_options(bad)


@pytest.mark.parametrize("shard,seq", [(0, 1), (1, 7), (3, (1 << 48) - 1)])
def test_readdir_cookie_roundtrip(shard, seq):
    assert _uncookie(_cookie(shard, seq)) == (shard, seq)
    assert _cookie(shard, seq) > 2  # 1 and 2 belong to "." and ".."


def test_layout_chunks_and_placement():
    layout = Layout(unit=1 << 20, count=4, replicas=2)
    pieces = list(layout.chunks((1 << 20) - 10, 30))
    assert pieces == [(0, (1 << 20) - 10, 10), (1, 0, 20)]
    order = osd_order(12345, [0, 1, 2, 3])
    primaries = {replicas_for_chunk(layout, 12345, i, order)[0] for i in range(4)}
    assert primaries == {0, 1, 2, 3}  # one stripe touches every OSD
    for i in range(16):
        reps = replicas_for_chunk(layout, 12345, i, order)
        assert len(set(reps)) == 2
    with pytest.raises(ValueError):
        Layout(unit=3000)


def test_one_directory_spreads_over_shards():
    counts = [0, 0, 0, 0]
    for i in range(20000):
        counts[shard_of_dentry(77, b"file%d" % i, 4)] += 1
    mean = sum(counts) / 4
    assert all(abs(c - mean) < 0.05 * mean for c in counts)


def test_bench_command_measures_a_directory(tmp_path, capsys):
    from client import cli

    assert cli.main(["bench", str(tmp_path), "--size-mib", "8", "--small-files", "10",
                     "--md-files", "20"]) == 0
    out = capsys.readouterr().out
    for phase in ("write", "read", "small write", "create", "stat", "unlink"):
        assert phase in out
    assert os.listdir(tmp_path) == []  # its work directory is gone


def test_chunk_buffer_keeps_a_first_write_then_copies_once():
    first = b"a" * 32
    buf = ChunkBuffer()
    buf.put(0, first)
    assert buf.data is first  # no copy for a write that starts the chunk
    buf.put(16, b"b" * 32)
    assert bytes(buf.piece(0, 48)) == b"a" * 16 + b"b" * 32
    assert first == b"a" * 32  # the caller's bytes are untouched
    assert buf.extents == [[0, 48]]


def test_admin_commands_find_the_nearest_cluster(tmp_path, monkeypatch):
    import argparse

    from client.cli import find_cluster

    config = tmp_path / ".loomfs" / "cluster.json"
    config.parent.mkdir()
    config.write_text("{}")
    deep = tmp_path / "mnt" / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.delenv("LOOMFS_CLUSTER", raising=False)
    monkeypatch.chdir(deep)
    assert find_cluster(argparse.Namespace(cluster=None)) == str(config)
    monkeypatch.chdir("/")
    elsewhere = argparse.Namespace(cluster=None, path=str(deep / "file"))
    assert find_cluster(elsewhere) == str(config)
    monkeypatch.setenv("LOOMFS_CLUSTER", "/x/cluster.json")
    assert find_cluster(argparse.Namespace(cluster=None)) == "/x/cluster.json"
    assert find_cluster(argparse.Namespace(cluster="/y")) == "/y"


class _XattrShard:
    """A cluster stub whose one shard stores xattrs and counts the calls it gets."""

    def __init__(self):
        self.xattrs, self.calls = {}, []

    session = b"s" * 16

    def shard_of_ino(self, ino):
        return 0

    def shard_of_dentry(self, parent, name):
        return 0

    async def mds(self, shard, op, args, sent=None):
        from loomproto import errors

        self.calls.append(op)
        if op == "mknod":  # a new file, ino 9, in directory 1
            return {"ino": 9, "mode": 0o100644, "ctime": 1, "gid": 0}
        if op == "getattr":
            return {"ino": args["ino"], "mode": 0o40755, "gid": 0, "ctime": 1, "mtime": 1,
                    "nlink": 2, "size": 0}
        key = (args["ino"], args["name"])
        if op == "setxattr":
            self.xattrs[key] = args["value"]
        elif op == "removexattr":
            self.xattrs.pop(key, None)
        elif key not in self.xattrs:
            raise errors.NoData("no such xattr")
        return self.xattrs.get(key)


async def test_missing_capability_xattr_is_remembered_until_this_client_sets_one(
        monkeypatch):
    from client import meta as metamod
    from loomproto import errors

    clock = [100.0]
    monkeypatch.setattr(metamod.time, "monotonic", lambda: clock[0])
    shard = _XattrShard()
    meta = metamod.Meta(shard)
    for _ in range(3):  # what the kernel asks before each write()
        with pytest.raises(errors.NoData):
            await meta.getxattr(5, metamod.CAPS_XATTR)
    assert shard.calls == ["getxattr"]
    with pytest.raises(errors.NoData):
        await meta.getxattr(5, b"user.other")  # other names are never cached
    with pytest.raises(errors.NoData):
        await meta.getxattr(5, b"user.other")
    assert shard.calls.count("getxattr") == 3

    clock[0] += metamod.CAPS_TTL  # another client's setcap shows after the TTL
    shard.xattrs[(5, metamod.CAPS_XATTR)] = b"caps"
    assert await meta.getxattr(5, metamod.CAPS_XATTR) == b"caps"

    await meta.removexattr(5, metamod.CAPS_XATTR)
    with pytest.raises(errors.NoData):
        await meta.getxattr(5, metamod.CAPS_XATTR)
    await meta.setxattr(5, metamod.CAPS_XATTR, b"new")  # ours: seen at once
    assert await meta.getxattr(5, metamod.CAPS_XATTR) == b"new"


async def test_a_file_this_client_made_has_no_capability_without_asking():
    from client import meta as metamod
    from loomproto import errors

    shard = _XattrShard()
    meta = metamod.Meta(shard)
    attr = await meta.mknod(1, b"new", 0o100644, 0, 0, 0, open_it=True)
    with pytest.raises(errors.NoData):
        await meta.getxattr(attr["ino"], metamod.CAPS_XATTR)
    assert "getxattr" not in shard.calls


def test_dir_names_follow_own_renames_and_removals():
    names = DirNames()
    names.record(10, 1, b"a")
    names.record(11, 1, b"b")
    names.renamed((1, b"a"), (2, b"x"), exchange=False)
    assert names.place_of(10) == (2, b"x")
    names.renamed((2, b"x"), (1, b"b"), exchange=True)
    assert names.place_of(10) == (1, b"b") and names.place_of(11) == (2, b"x")
    names.renamed((1, b"b"), (2, b"x"), exchange=False)  # over the other directory
    assert names.place_of(10) == (2, b"x") and names.place_of(11) is None
    names.forget_at(2, b"x")
    assert names.place_of(10) is None
    names.record(12, 3, b"c")
    names.record(12, 4, b"d")  # seen at a new place: the old one is not kept
    names.forget_at(3, b"c")
    assert names.place_of(12) == (4, b"d")
    names.forget(12)
    assert names.place_of(12) is None


class _CloseShard:
    """One shard whose requests carrying closes wait for the test to let them through."""

    nshards = 1
    session = b"s"

    def __init__(self, nursery):
        import trio

        self.nursery = nursery
        self.calls = []
        self.let_through = trio.Event()

    def shard_of_ino(self, ino):
        return 0

    def shard_of_dentry(self, parent, name):
        return 0

    async def mds(self, shard, op, args, sent=None):
        self.calls.append((op, args.get("ino"), args.get("closes", {}).get("inos")))
        if "closes" in args:
            await self.let_through.wait()
        return {"ino": args.get("ino", 3), "mode": 0o100644, "size": 0, "mtime": 1}


async def test_closes_ride_on_the_next_request_and_an_open_takes_its_close_back(nursery):
    import trio
    import trio.testing

    from client import meta as metamod

    shard = _CloseShard(nursery)
    meta = metamod.Meta(shard)
    meta.close_linger = 3600  # no close leaves on its own in this test
    await meta.close(5)  # returns at once: queued
    await meta.close(7)
    nursery.start_soon(meta.open, 7, 0)  # takes its own close back, carries 5's
    await trio.testing.wait_all_tasks_blocked()
    await meta.close(9)
    nursery.start_soon(meta.open, 5, 0)  # its close is on its way: waits for the reply
    await trio.testing.wait_all_tasks_blocked()
    assert shard.calls == [("open", 7, [5])]

    shard.let_through.set()
    await trio.testing.wait_all_tasks_blocked()
    assert shard.calls[1] == ("open", 5, [9])  # and 9's close rides on it
    assert not meta.closing.get(0) and not meta.closes_sent[0]


async def test_a_close_no_request_carries_leaves_on_its_own(nursery, autojump_clock):
    import trio

    from client import meta as metamod

    shard = _CloseShard(nursery)
    shard.let_through.set()
    meta = metamod.Meta(shard)
    queued = trio.current_time()
    await meta.close(5)
    with trio.fail_after(1):  # virtual time (autojump clock)
        while not shard.calls:
            await trio.sleep(0.001)  # polls for the close, under fail_after
    assert trio.current_time() - queued >= metamod.CLOSE_LINGER  # it waited for a carrier
    assert shard.calls == [("close", None, [5])]
    assert not meta.closing.get(0) and not meta._close_senders


async def test_closes_still_queued_leave_at_unmount(nursery):
    from client import meta as metamod

    shard = _CloseShard(nursery)
    shard.let_through.set()
    meta = metamod.Meta(shard)
    meta.close_linger = 3600
    await meta.close(5)
    await meta.send_queued_closes()
    assert shard.calls == [("close", None, [5])]


async def test_placement_changes_count_a_change_and_its_undoing(nursery):
    """A file's writes say `fresh` only while the placement has not changed since
    its create; an OSD out and in again counts too (others may have written in
    between), a map that only marks an OSD down does not."""
    from client.cluster import Cluster
    from loomproto.clustermap import ClusterMap, OsdInfo
    from loomproto.config import ClusterConfig

    def cmap(epoch, out=(), down=()):
        return ClusterMap(epoch, {i: OsdInfo(i, f"127.0.0.1:{7000 + i}", in_=i not in out,
                                             up=i not in down) for i in range(3)})

    config = ClusterConfig("", "loom-test", b"k" * 32, ["127.0.0.1:1"], Layout())
    cluster = Cluster(nursery, config)
    cluster._set_map(cmap(1))
    born = cluster.placement_changes
    cluster._set_map(cmap(2, down=[1]))
    assert cluster.placement_changes == born
    cluster._set_map(cmap(3, out=[1]))
    cluster._set_map(cmap(4))
    assert cluster.placement_changes == born + 2


@pytest.mark.parametrize("change", [
    {"layout": {"unit": 0, "count": 1, "replicas": 1}},
    {"layout": {"unit": 1 << 20, "count": 2, "replicas": 1.5}},
    {"layout": {"unit": 1 << 20, "count": True, "replicas": 1}},
    {"layout": {"bogus": 1}},
    {"mds": "notalist"},
    {"mds": [1, 2]},
    {"mds": []},
    {"key_file": None},
])
def test_a_hand_edited_config_is_a_config_error(tmp_path, change):
    """Every loomfs command printed a traceback for a bad layout, and a float count
    loaded and failed later in placement (a tester's and a reviewer's reports)."""
    import json

    from loomproto import config as cluster_config

    path = cluster_config.create(str(tmp_path), ["127.0.0.1:1"], Layout(1 << 20, 2, 1))
    with open(path) as fp:
        raw = json.load(fp)
    raw.update(change)
    with open(path, "w") as fp:
        json.dump(raw, fp)
    with pytest.raises(cluster_config.ConfigError, match=str(path)):
        cluster_config.load(path)


def test_status_names_the_data_state_from_the_recovery_figures():
    from client.cli import data_state
    quiet = {"healthy": False, "down_in": [], "degraded": 0, "recovering": 0,
             "unrepairable": 0, "misplaced": 0, "scanning": [2]}
    assert data_state({**quiet, "healthy": True, "scanning": []}) == "HEALTHY"
    assert data_state(quiet) == "CHECKING"
    # Only old copies outside their sets left: every set is full (a copy whose set
    # lacks it counts as degraded on its holder), so not DEGRADED.
    assert data_state({**quiet, "misplaced": 3, "scanning": []}) == "REBALANCING"
    # An OSD yet to pass at this map reports the last map's figures: not known yet.
    assert data_state({**quiet, "misplaced": 3}) == "CHECKING"
    for wrong in ({"down_in": [1]}, {"degraded": 1}, {"recovering": 1},
                  {"unrepairable": 1}):
        assert data_state({**quiet, "misplaced": 3, **wrong}) == "DEGRADED"


def test_file_names_keep_what_the_kernel_holds_and_age_it():
    from client.filenames import FRESH, FileNames
    names = FileNames(limit=3)
    names.gave(10, 1, b"a", now=100.0)
    names.gave(10, 2, b"hard", now=100.0)
    assert names.to_check(10, 100.0 + FRESH / 2) == []  # one walk: not checked
    assert sorted(names.to_check(10, 101.0)) == [(1, b"a"), (2, b"hard")]
    names.confirmed(10, 1, b"a", now=101.0)
    assert names.to_check(10, 101.0) == [(2, b"hard")]
    # A name given to another inode is no longer this one's.
    names.gave(11, 2, b"hard", now=102.0)
    assert names.to_check(10, 103.0) == [(1, b"a")]
    # Our own rename moves the name; our unlink drops it.
    names.renamed((1, b"a"), (1, b"b"), exchange=False)  # keeps when it was given
    assert names.to_check(10, 101.0 + FRESH / 2) == []
    assert names.to_check(10, 104.0) == [(1, b"b")]
    names.gone(1, b"b")
    assert names.to_check(10, 200.0) == []
    # An exchange swaps the two inodes' names.
    names.gave(12, 3, b"x", now=105.0)
    names.gave(13, 3, b"y", now=105.0)
    names.renamed((3, b"x"), (3, b"y"), exchange=True)
    assert names.to_check(12, 107.0) == [(3, b"y")]
    assert names.to_check(13, 107.0) == [(3, b"x")]
    # Bounded: the oldest inodes go first; the kernel's forget drops an inode.
    assert len(names) == 3  # 11, 12, 13 (10 went when it had no name left)
    names.gave(14, 4, b"z", now=108.0)
    assert len(names) == 3 and names.to_check(11, 200.0) == []
    names.forget(14)
    assert names.to_check(14, 200.0) == [] and len(names) == 2
    names.gave(15, 4, b"z", now=109.0)  # the forgotten inode's place is free
    assert names.to_check(15, 200.0) == [(4, b"z")]
