"""Namespace operations against real in-process shards over loopback."""

import os
import stat

import pytest
import trio

from loomproto import errors
from test_mdsd_harness import ROOT, MdsCluster, name_on_shard, no_log_warnings  # noqa: F401


@pytest.fixture
async def mds(tmp_path, nursery):
    mds = MdsCluster(tmp_path, nursery, 2)
    await mds.start_all()
    return mds


async def test_create_lookup_getattr(mds):
    attr = await mds.create(ROOT, b"a.txt", 0o640)
    assert stat.S_ISREG(attr["mode"]) and attr["mode"] & 0o7777 == 0o640
    assert attr["nlink"] == 1 and attr["uid"] == 1000 and attr["size"] == 0
    assert attr["layout"] == mds.config.layout.to_wire()
    assert attr["ino"] % 2 == mds.entry_shard(ROOT, b"a.txt")
    found = await mds.lookup(ROOT, b"a.txt")
    # its place in the shard's listing, where the client's stat-ahead windows start
    assert found.pop("dir_seq") == 1
    assert found == attr
    assert await mds.getattr(attr["ino"]) == attr
    with pytest.raises(errors.Exists):
        await mds.create(ROOT, b"a.txt")
    with pytest.raises(errors.NotFound):
        await mds.lookup(ROOT, b"nope")


async def test_many_entries_over_both_shards(mds):
    dir_attr = await mds.mkdir(ROOT, b"big")
    names = {f"file-{i:04d}".encode() for i in range(1000)}
    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(mds.create, dir_attr["ino"], name)
    listed = await mds.listdir(dir_attr["ino"], limit=97)
    assert {name for name, _ in listed} == names
    assert len(listed) == 1000
    assert all(stat.S_ISREG(attr["mode"]) for _, attr in listed)
    shards = {mds.entry_shard(dir_attr["ino"], name) for name in names}
    assert shards == {0, 1}
    attr = await mds.getattr(dir_attr["ino"])
    assert attr["size"] == 1000 and attr["nlink"] == 2


async def test_a_lookup_tells_the_entrys_place_in_its_shards_listing(mds):
    """`dir_seq` of a lookup is the seq readdir gives the entry on its shard: a
    client reads ahead from there (client.statahead windows)."""
    d = await mds.mkdir(ROOT, b"seqs")
    names = [b"n%03d" % i for i in range(40)]
    for name in names:
        await mds.create(d["ino"], name)
    await mds.unlink(d["ino"], names[3])  # a gap: seqs are never reused
    await mds.create(d["ino"], names[3])
    for shard in range(mds.nshards):
        reply = await mds.client(shard).call("readdir", {"ino": d["ino"], "shard_after": 0,
                                                         "limit": 100})
        for name, seq, _ in reply["entries"]:
            assert (await mds.lookup(d["ino"], name))["dir_seq"] == seq


async def test_mkdir_rmdir_and_link_counts(mds):
    top = await mds.mkdir(ROOT, b"top")
    for shard in (0, 1):
        await mds.mkdir(top["ino"], name_on_shard(mds, top["ino"], shard, "d"))
    assert (await mds.getattr(top["ino"]))["nlink"] == 4
    assert (await mds.getattr(ROOT))["nlink"] == 3
    other = name_on_shard(mds, top["ino"], 1 - mds.entry_shard(ROOT, b"top"), "f")
    await mds.create(top["ino"], other)
    with pytest.raises(errors.NotEmpty):
        await mds.rmdir(ROOT, b"top")
    await mds.unlink(top["ino"], other)
    for shard in (0, 1):
        await mds.rmdir(top["ino"], name_on_shard(mds, top["ino"], shard, "d"))
    await mds.rmdir(ROOT, b"top")
    with pytest.raises(errors.NotFound):
        await mds.lookup(ROOT, b"top")
    with pytest.raises(errors.NotFound):
        await mds.getattr(top["ino"])
    assert (await mds.getattr(ROOT))["nlink"] == 2
    with pytest.raises(errors.NotFound):  # a create into a removed directory
        await mds.create(top["ino"], b"late")


async def test_rmdir_and_unlink_type_errors(mds):
    await mds.mkdir(ROOT, b"d")
    await mds.create(ROOT, b"f")
    with pytest.raises(errors.IsDir):
        await mds.unlink(ROOT, b"d")
    with pytest.raises(errors.NotDir):
        await mds.rmdir(ROOT, b"f")
    with pytest.raises(errors.NotFound):
        await mds.unlink(ROOT, b"zz")


async def test_hard_links_across_shards(mds):
    file_attr = await mds.create(ROOT, b"orig")
    home = mds.ino_shard(file_attr["ino"])
    remote_name = name_on_shard(mds, ROOT, 1 - home, "link")
    linked = await mds.call_entry("link", ROOT, remote_name, ino=file_attr["ino"])
    assert linked["nlink"] == 2 and linked["ctime"] >= file_attr["ctime"]
    assert (await mds.lookup(ROOT, remote_name))["ino"] == file_attr["ino"]
    dir_attr = await mds.mkdir(ROOT, b"adir")
    with pytest.raises(errors.NotPermitted):
        await mds.call_entry("link", ROOT, b"dirlink", ino=dir_attr["ino"])
    assert await mds.unlink(ROOT, b"orig") == {"ino": file_attr["ino"], "nlink": 1}
    assert await mds.unlink(ROOT, remote_name) == {"ino": file_attr["ino"], "nlink": 0}


async def test_symlink_and_mknod_types(mds):
    attr = await mds.call_entry("symlink", ROOT, b"sl", target=b"x" * 100, uid=5, gid=6,
                                    parent_mode=0o40755, parent_gid=0)
    assert stat.S_ISLNK(attr["mode"]) and attr["size"] == 100 and "layout" not in attr
    with pytest.raises(errors.NameTooLong):
        await mds.call_entry("symlink", ROOT, b"sl2", target=b"x" * 4096, uid=0, gid=0)
    fifo = await mds.call_entry("mknod", ROOT, b"fifo", mode=stat.S_IFIFO | 0o600,
                                    uid=0, gid=0, rdev=0)
    assert stat.S_ISFIFO(fifo["mode"])
    with pytest.raises(errors.Invalid):
        await mds.call_entry("mknod", ROOT, b"dd", mode=stat.S_IFDIR | 0o755, uid=0, gid=0)


async def test_setgid_parent(mds):
    args = dict(uid=1000, gid=1000, parent_mode=0o42775, parent_gid=77, layout=None)
    sub = await mds.call_entry("mkdir", ROOT, b"sg", mode=0o755, **args)
    assert sub["gid"] == 77 and sub["mode"] & stat.S_ISGID
    f = await mds.call_entry("mknod", ROOT, b"sgf", mode=stat.S_IFREG | 0o644, rdev=0,
                                 **args)
    assert f["gid"] == 77


async def test_names_validated(mds):
    for bad in (b"", b".", b"..", b"a/b", b"a\0b"):
        with pytest.raises(errors.Invalid):
            await mds.client(0).call("mknod", {"parent": ROOT, "name": bad, "mode": 0o644,
                                                   "uid": 0, "gid": 0, "rid": os.urandom(16)})
    with pytest.raises(errors.NameTooLong):
        await mds.create(ROOT, b"n" * 256)
    await mds.create(ROOT, b"n" * 255)


async def test_dotdot_lookup(mds):
    a = await mds.mkdir(ROOT, b"a")
    b = await mds.mkdir(a["ino"], b"b")
    up = await mds.lookup(b["ino"], b"..")
    assert up["ino"] == a["ino"]
    dotdot = await mds.lookup(ROOT, b"..")
    assert dotdot["ino"] == ROOT and "dir_seq" not in dotdot


async def test_retry_with_same_rid_is_not_applied_twice(mds):
    rid = os.urandom(16)
    await mds.create(ROOT, b"victim")
    first = await mds.call_entry("unlink", ROOT, b"victim", rid=rid)
    again = await mds.call_entry("unlink", ROOT, b"victim", rid=rid)
    assert first == again
    rid = os.urandom(16)
    made = await mds.call_entry("mkdir", ROOT, b"once", mode=0o755, uid=0, gid=0, rid=rid)
    made_again = await mds.call_entry("mkdir", ROOT, b"once", mode=0o755, uid=0, gid=0,
                                          rid=rid)
    assert made == made_again
    with pytest.raises(errors.Exists):
        await mds.mkdir(ROOT, b"once")


async def test_restart_keeps_data(mds):
    d = await mds.mkdir(ROOT, b"keep")
    names = [name_on_shard(mds, d["ino"], shard, "k") for shard in (0, 1)]
    made = [await mds.create(d["ino"], name) for name in names]
    for mds_id in (0, 1):
        await mds.stop(mds_id)
        await mds.start(mds_id)
    for name, attr in zip(names, made):
        assert (await mds.lookup(d["ino"], name))["ino"] == attr["ino"]
    fresh = await mds.create(d["ino"], b"after-restart")
    assert fresh["ino"] not in {attr["ino"] for attr in made}
    assert len(await mds.listdir(d["ino"])) == 3


async def test_malformed_requests_get_bad_request(mds):
    client = mds.client(0)
    bad_calls = [
        ("getattr", {}), ("getattr", {"ino": "x"}), ("getattr", {"ino": -1}),
        ("getattr", {"ino": True}), ("lookup", {"parent": 1, "name": "str"}),
        ("mknod", {"parent": 1, "name": b"x", "mode": 0o644, "uid": 0, "gid": 0}),
        ("mknod", {"parent": 1, "name": b"x", "mode": 0o644, "uid": 0, "gid": 0,
                   "rid": b"short"}),
        ("setattr", {"ino": 1, "fields": [], "rid": os.urandom(16)}),
        ("setattr", {"ino": 1, "fields": {"bogus": 1}, "rid": os.urandom(16)}),
        ("readdir", {"ino": 1, "shard_after": "x"}),
        ("peer_read", {"keys": [["nosuchdb", b"k"]]}),
        ("txn_prepare", {"txid": b"1" * 16, "coord": 1, "reads": [],
                         "mutations": [["rm_rf"]]}),
        # Each of these was a TypeError (EIO and a traceback in the log) before.
        ("scan", {"family": [], "after": b"", "limit": 10}),
        ("scan", {"family": {}, "after": b"", "limit": 10}),
        *[("txn_prepare", {"txid": os.urandom(16), "coord": 1, "reads": [],
                           "mutations": [mutation]})
          for mutation in (["dirent_add", 1], ["put", "inode", b"\0" * 8, 123],
                           ["put", "inode", b"\0" * 8], ["del", "inode", b"\0" * 8, b""],
                           ["dirstat_kill", -1], ["inode_drop", b"x"],
                           ["dirent_del", 1, 5, 0, 0], [["dirent_add"], 1],
                           ["dirent_add", 1, b"n/x", 5, 0o100000, 0, 1],
                           ["dirent_add", 1, b"n", 5, 0o100000, 0, 1, b"s", True, 9],
                           ["dirent_add", 1, b"n", 5, 0o100000, 0, 1, "s", True])],
        ("session_renew", {"session": None}),
        ("rename", {"parent": 1, "name": b"a", "new_parent": 1, "new_name": b"b",
                    "rid": 5}),
    ]
    for op, args in bad_calls:
        with pytest.raises(errors.BadRequest):
            await client.call(op, args)
    assert (await client.call("getattr", {"ino": ROOT}))["ino"] == ROOT


async def test_setattr_rules(mds):
    f = await mds.create(ROOT, b"s", 0o6755)
    ino = f["ino"]
    out = await mds.call_ino("setattr", ino, fields={"uid": 5}, rid=os.urandom(16))
    assert out["uid"] == 5 and not out["mode"] & (stat.S_ISUID | stat.S_ISGID)
    assert out["ctime"] >= f["ctime"] and out["gen"] > f["gen"]
    out = await mds.call_ino("setattr", ino, fields={"mode": 0o2755},
                                 caller={"uid": 5, "gid": 9, "groups": []},
                                 rid=os.urandom(16))
    assert out["mode"] & 0o7777 == 0o755
    out = await mds.call_ino("setattr", ino, fields={"size": 12345, "atime": 7},
                                 rid=os.urandom(16))
    assert out["size"] == 12345 and out["atime"] == 7 and out["blocks"] == 25
    out = await mds.call_ino("commit_size", ino, size=100, mtime=1)
    assert out["size"] == 12345
    out = await mds.call_ino("commit_size", ino, size=99999, mtime=1)
    assert out["size"] == 99999


async def test_directory_mtime_follows_shares(mds):
    d = await mds.mkdir(ROOT, b"times")
    out = await mds.call_ino("setattr", d["ino"], fields={"mtime": 1000, "atime": 1000},
                                 rid=os.urandom(16))
    assert out["mtime"] == 1000
    await mds.create(d["ino"], name_on_shard(mds, d["ino"], 1 - d["ino"] % 2))
    later = await mds.getattr(d["ino"])
    assert later["mtime"] > 1000 and later["size"] == 1


async def test_open_close_and_orphan_reclaim(tmp_path, nursery):
    mds = MdsCluster(tmp_path, nursery, 2, reclaim_grace=0)
    await mds.start_all()
    f = await mds.create(ROOT, b"tmp")
    ino = f["ino"]
    shard = mds.ino_shard(ino)
    await mds.call_ino("open", ino, session=b"s1", flags=0)
    assert (await mds.unlink(ROOT, b"tmp"))["nlink"] == 0
    assert (await mds.getattr(ino))["nlink"] == 0  # still there while open
    # The client's form: its queued closes ride on its next request to the shard.
    with pytest.raises(errors.BadRequest):
        await mds.call_ino("getattr", ino, closes={"session": b"s1", "inos": "x"})
    carried = {"session": b"s1", "inos": [ino, ino + 2]}
    assert (await mds.call_ino("getattr", ino, closes=carried))["nlink"] == 0
    with trio.fail_after(10):
        while True:
            try:
                await mds.getattr(ino)
            except errors.NotFound:
                break
            await trio.sleep(0.05)  # polls until the inode is gone, under fail_after
    info = await mds.client(shard).call("shard_info", {})
    assert info["mds_id"] == shard


async def _orphan_rows(mds, shard):
    reply = await mds.client(shard).call("scan", {"family": "orphan", "after": b"",
                                                  "limit": 100})
    return reply["rows"]


async def test_unlink_of_a_closed_file_with_data_drops_its_inode_at_once(tmp_path, nursery):
    mds = MdsCluster(tmp_path, nursery, 2, reclaim_grace=0)
    await mds.start_all()
    ino = (await mds.create(ROOT, b"data"))["ino"]
    await mds.call_ino("commit_size", ino, size=5, mtime=1)
    shard = mds.ino_shard(ino)
    with trio.fail_after(10):  # reclaim active (its grace of 0 passed) on that shard
        while not mds.handles[shard].shard.sessions.settled:
            await trio.sleep(0.01)  # polls the flag, under fail_after

    assert (await mds.unlink(ROOT, b"data"))["nlink"] == 0
    with pytest.raises(errors.NotFound):  # one commit: no second one by reclaim
        await mds.getattr(ino)
    with trio.fail_after(10):  # the record of the OSDs to clean goes once they are
        while await _orphan_rows(mds, shard):
            await trio.sleep(0.05)  # polls the rows, under fail_after


async def test_unlink_before_reclaim_is_active_leaves_an_orphan(tmp_path, nursery):
    """After a start clients may not have registered their opens again yet."""
    mds = MdsCluster(tmp_path, nursery, 2, reclaim_grace=3600)
    await mds.start_all()
    ino = (await mds.create(ROOT, b"empty"))["ino"]
    assert (await mds.unlink(ROOT, b"empty"))["nlink"] == 0
    assert (await mds.getattr(ino))["nlink"] == 0
    assert len(await _orphan_rows(mds, mds.ino_shard(ino))) == 1
