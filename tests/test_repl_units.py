"""Replication units (issue 6): host-aware placement, sequenced replica versions, a stale
primary catching up, fsync reaching the disk on every replica, read-time repair.

OSDs run in-process beside the stand-in mdsd 0 of test_osd_service.
"""

import os

import pytest

from loomproto.layout import Layout, osd_order, replicas_for_chunk
from osd import chunkfile
from osd import store as storemod
from test_osd_service import OsdRig  # noqa: F401  (the rig fixture's class)
from test_osd_service import rig  # noqa: F401  (fixture)


def test_replicas_prefer_distinct_hosts():
    layout = Layout(1 << 20, 4, 2)
    osds = list(range(8))
    hosts = {i: f"h{i // 2}" for i in osds}  # two OSDs per host
    for ino in range(2, 200):
        order = osd_order(ino, osds)
        for chunk in range(4):
            plain = replicas_for_chunk(layout, ino, chunk, order)
            spread = replicas_for_chunk(layout, ino, chunk, order, hosts)
            assert spread[0] == plain[0]  # the primary does not move
            assert len({hosts[o] for o in spread}) == 2, (ino, chunk, spread)
            # one host per OSD: the same as without hosts
            assert replicas_for_chunk(layout, ino, chunk, order,
                                      {i: f"x{i}" for i in osds}) == plain


def test_fewer_hosts_than_replicas_still_gives_distinct_osds():
    layout = Layout(1 << 20, 2, 3)
    hosts = {0: "a", 1: "a", 2: "b", 3: "b"}
    for ino in range(2, 50):
        got = replicas_for_chunk(layout, ino, 1, osd_order(ino, [0, 1, 2, 3]), hosts)
        assert len(set(got)) == 3 and {hosts[o] for o in got} == {"a", "b"}


async def test_replica_refuses_out_of_sequence_writes(rig):  # noqa: F811
    await rig.write(0, 40, 0, 0, b"a" * 100, [0, 1])
    args = {"ino": 40, "chunk": 0, "offset": 0, "version": 5}
    assert await rig.clients[1].call("replicate", args, b"zz") == {"applied": False, "have": 1}
    data, version = await rig.read(1, 40, 0)
    assert (data, version) == (b"a" * 100, 1)


async def test_stale_primary_catches_up_before_writing(rig):  # noqa: F811
    await rig.write(0, 41, 0, 0, b"a" * 100, [0, 1])
    await rig.write(1, 41, 0, 0, b"b" * 50, [1])  # osd 0 misses this one (v2)
    await rig.write(0, 41, 0, 60, b"c" * 10, [0, 1])
    want = b"b" * 50 + b"a" * 10 + b"c" * 10 + b"a" * 30
    assert await rig.read(0, 41, 0) == (want, 3)
    assert await rig.read(1, 41, 0) == (want, 3)


async def test_replica_that_missed_writes_gets_the_whole_chunk(rig):  # noqa: F811
    await rig.write(0, 42, 0, 0, b"a" * 100, [0, 1])
    await rig.write(0, 42, 0, 0, b"d", [0])  # osd 1 misses v2 and v3
    await rig.write(0, 42, 0, 1, b"d", [0])
    await rig.write(0, 42, 0, 90, b"e" * 10, [0, 1])
    want = b"dd" + b"a" * 88 + b"e" * 10
    assert await rig.read(1, 42, 0) == (want, 4)
    assert await rig.read(0, 42, 0) == (want, 4)


async def test_sync_file_fsyncs_every_replica(rig, monkeypatch):  # noqa: F811
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    await rig.write(0, 43, 0, 0, b"x" * 5000, [0, 1])
    for osd_id in (0, 1):
        synced.clear()
        await rig.clients[osd_id].call("sync_file", {"ino": 43})
        chunk = os.path.realpath(os.path.join(rig.data_dir(osd_id), "chunks", "2b", "2b", "0"))
        assert chunk in synced, (osd_id, synced)


async def test_read_repairs_a_corrupt_copy_from_another_replica(rig):  # noqa: F811
    data = os.urandom(3 * chunkfile.BLOCK_SIZE)
    await rig.write(0, 44, 0, 0, data, [0, 1])
    path = os.path.join(rig.data_dir(0), "chunks", "2c", "2c", "0")
    with open(path, "r+b") as fp:
        fp.seek(chunkfile.HEADER_SIZE + 100)
        flipped = bytes(b ^ 0xFF for b in fp.read(2))  # never the same
        fp.seek(chunkfile.HEADER_SIZE + 100)
        fp.write(flipped)
    rig.osds[0].store._drop_handle((44, 0))  # the cached header stays valid; data changed
    args = {"ino": 44, "chunk": 0, "offset": 0, "length": len(data), "replicas": [0, 1]}
    _, got = await rig.clients[0].call_payload("read", args)
    assert got == data
    assert await rig.read(0, 44, 0) == (data, 1)  # repaired on disk, same version


@pytest.mark.parametrize("size", [0, 1, chunkfile.BLOCK_SIZE + 7])
async def test_replace_installs_a_whole_chunk(tmp_path, size):
    store = storemod.ChunkStore(str(tmp_path))
    await store.open()
    try:
        await store.write(5, 0, 0, b"old" * 10)
        payload = os.urandom(size)
        assert await store.replace(5, 0, payload, 9)
        assert await store.read(5, 0, 0, 1 << 20) == (payload, 9)
        assert not await store.replace(5, 0, b"older", 3)  # not newer: refused
    finally:
        store.close()
