"""rename across shards, with three shards so that entries, inodes and
parents spread over different servers."""

import os
import stat

import pytest
import trio

from loomproto import errors
from test_mdsd_harness import ROOT, MdsCluster, name_on_shard, no_log_warnings  # noqa: F401

NOREPLACE, EXCHANGE = 1, 2


@pytest.fixture
async def mds(tmp_path, nursery):
    cluster = MdsCluster(tmp_path, nursery, 3)
    await cluster.start_all()
    return cluster


async def test_rename_file_across_shards(mds):
    f = await mds.create(ROOT, b"src")
    src_shard = mds.entry_shard(ROOT, b"src")
    dst = name_on_shard(mds, ROOT, (src_shard + 1) % 3, "dst")
    await mds.rename(ROOT, b"src", ROOT, dst)
    with pytest.raises(errors.NotFound):
        await mds.lookup(ROOT, b"src")
    moved = await mds.lookup(ROOT, dst)
    assert moved["ino"] == f["ino"] and moved["ctime"] >= f["ctime"]
    assert [name for name, _ in await mds.listdir(ROOT)] == [dst]


async def test_rename_over_existing_file_orphans_it(mds):
    a = await mds.create(ROOT, b"a")
    b = await mds.create(ROOT, b"b")
    await mds.rename(ROOT, b"a", ROOT, b"b")
    assert (await mds.lookup(ROOT, b"b"))["ino"] == a["ino"]
    # Nobody has the replaced file open and it never held data: it is gone at once.
    with pytest.raises(errors.NotFound):
        await mds.getattr(b["ino"])
    assert len(await mds.listdir(ROOT)) == 1


async def test_rename_dir_over_empty_and_nonempty_dir(mds):
    d1 = await mds.mkdir(ROOT, b"d1")
    d2 = await mds.mkdir(ROOT, b"d2")
    d3 = await mds.mkdir(ROOT, b"d3")
    await mds.create(d3["ino"], name_on_shard(mds, d3["ino"], (d3["ino"] + 1) % 3))
    with pytest.raises(errors.NotEmpty):
        await mds.rename(ROOT, b"d1", ROOT, b"d3")
    await mds.rename(ROOT, b"d1", ROOT, b"d2")
    assert (await mds.lookup(ROOT, b"d2"))["ino"] == d1["ino"]
    with pytest.raises(errors.NotFound):
        await mds.getattr(d2["ino"])
    assert (await mds.getattr(ROOT))["nlink"] == 4  # d2 (was d1) and d3
    f = await mds.create(ROOT, b"plain")
    with pytest.raises(errors.IsDir):
        await mds.rename(ROOT, b"plain", ROOT, b"d2")
    with pytest.raises(errors.NotDir):
        await mds.rename(ROOT, b"d2", ROOT, b"plain")
    assert (await mds.lookup(ROOT, b"plain"))["ino"] == f["ino"]


async def test_noreplace_and_exchange(mds):
    a = await mds.create(ROOT, b"a")
    d = await mds.mkdir(ROOT, b"d")
    with pytest.raises(errors.Exists):
        await mds.rename(ROOT, b"a", ROOT, b"d", NOREPLACE)
    with pytest.raises(errors.NotFound):
        await mds.rename(ROOT, b"a", ROOT, b"missing", EXCHANGE)
    with pytest.raises(errors.Invalid):
        await mds.rename(ROOT, b"a", ROOT, b"d", NOREPLACE | EXCHANGE)
    with pytest.raises(errors.Invalid):
        await mds.rename(ROOT, b"a", ROOT, b"d", 8)
    sub = await mds.mkdir(d["ino"], b"sub")
    await mds.rename(ROOT, b"a", d["ino"], b"sub", EXCHANGE)
    assert (await mds.lookup(ROOT, b"a"))["ino"] == sub["ino"]
    assert (await mds.lookup(d["ino"], b"sub"))["ino"] == a["ino"]
    assert (await mds.lookup(sub["ino"], b".."))["ino"] == ROOT
    assert (await mds.getattr(d["ino"]))["nlink"] == 2
    assert (await mds.getattr(ROOT))["nlink"] == 4
    await mds.rename(ROOT, b"a", ROOT, b"fresh", NOREPLACE)
    assert (await mds.lookup(ROOT, b"fresh"))["ino"] == sub["ino"]


async def test_move_into_own_subtree_is_invalid(mds):
    a = await mds.mkdir(ROOT, b"a")
    b = await mds.mkdir(a["ino"], b"b")
    c = await mds.mkdir(b["ino"], b"c")
    with pytest.raises(errors.Invalid):
        await mds.rename(ROOT, b"a", c["ino"], b"x")
    with pytest.raises(errors.Invalid):
        await mds.rename(ROOT, b"a", a["ino"], b"x")
    await mds.rename(b["ino"], b"c", ROOT, b"c")
    assert (await mds.lookup(c["ino"], b".."))["ino"] == ROOT
    assert (await mds.getattr(b["ino"]))["nlink"] == 2
    assert (await mds.getattr(ROOT))["nlink"] == 4


async def test_racing_renames_cannot_build_a_loop(mds):
    a = await mds.mkdir(ROOT, b"a")
    b = await mds.mkdir(ROOT, b"b")
    outcomes = []

    async def move(src, dst_parent):
        try:
            await mds.rename(ROOT, src, dst_parent, src)
            outcomes.append("ok")
        except (errors.Invalid, errors.NotFound) as exc:
            outcomes.append(type(exc).__name__)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(move, b"a", b["ino"])
        nursery.start_soon(move, b"b", a["ino"])
    assert outcomes.count("ok") == 1
    names = {name for name, _ in await mds.listdir(ROOT)}
    assert len(names) == 1


async def test_rename_between_hard_links_is_a_noop(mds):
    f = await mds.create(ROOT, b"one")
    await mds.call_entry("link", ROOT, b"two", ino=f["ino"])
    await mds.rename(ROOT, b"one", ROOT, b"two")
    assert (await mds.lookup(ROOT, b"one"))["ino"] == f["ino"]
    assert (await mds.lookup(ROOT, b"two"))["ino"] == f["ino"]
    assert (await mds.getattr(f["ino"]))["nlink"] == 2
    await mds.rename(ROOT, b"one", ROOT, b"one")


async def test_rename_retry_with_rid_applies_once(mds):
    await mds.create(ROOT, b"x")
    rid = os.urandom(16)
    await mds.rename(ROOT, b"x", ROOT, b"y", rid=rid)
    await mds.create(ROOT, b"x")
    await mds.rename(ROOT, b"x", ROOT, b"y", rid=rid)  # answered from the stored reply
    assert {name for name, _ in await mds.listdir(ROOT)} == {b"x", b"y"}


async def test_many_concurrent_cross_shard_renames(mds):
    d1 = await mds.mkdir(ROOT, b"from")
    d2 = await mds.mkdir(ROOT, b"to")
    names = [f"f{i}".encode() for i in range(60)]
    for name in names:
        await mds.create(d1["ino"], name)
    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(mds.rename, d1["ino"], name, d2["ino"], name)
    assert await mds.listdir(d1["ino"]) == []
    moved = await mds.listdir(d2["ino"])
    assert sorted(name for name, _ in moved) == sorted(names)
    assert all(stat.S_ISREG(attr["mode"]) for _, attr in moved)
