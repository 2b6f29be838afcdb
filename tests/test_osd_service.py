"""OSD services in-process over loopback, beside a stand-in for mdsd 0.

`FakeMds` answers only ``osd_heartbeat``, ``get_map``, the missed-write
record (``missed_*``) and ``chunk_record``: just enough of mdsd 0 for OSDs to
register, find each other, write past a down replica and tell a hole from a
chunk out of reach.  These tests exercise osd/, not the
metadata server.
"""

import errno
import os

import pytest
import trio

from loomproto import errors, rpc
from loomproto.clustermap import ClusterMap, OsdInfo
from loomproto.config import ClusterConfig
from loomproto.layout import Layout
from osd import chunkfile
from osd.main import serve_osd

KEY = b"o" * 32
CLUSTER = "loom-osdtest"
MIB = 1 << 20
UNIT = 64 << 10


class FakeMds:
    """mdsd 0's map keeping, reduced to a dict: heartbeats add or revive OSDs."""

    def __init__(self):
        self.map = ClusterMap()
        self.heartbeats: dict[int, dict] = {}
        self.frozen: set[int] = set()  # ids whose heartbeats no longer revive them
        self.missed: set[tuple] = set()  # (ino, chunk, osd_id) recorded as missed
        self.records: dict[int, list] = {}  # ino -> chunk ranges recorded as written

    def _bump(self):
        self.map = ClusterMap(self.map.epoch + 1, dict(self.map.osds))

    async def rpc_osd_heartbeat(self, args, payload, peer):
        osd_id = args["id"]
        self.heartbeats[osd_id] = args
        info = self.map.osds.get(osd_id)
        if osd_id in self.frozen:
            return {"epoch": self.map.epoch}
        if info is None or info.addr != args["addr"] or not info.up:
            self.map.osds[osd_id] = OsdInfo(osd_id, args["addr"], args["host"],
                                            up_since=self.map.epoch + 1)
            self._bump()
        return {"epoch": self.map.epoch}

    async def rpc_get_map(self, args, payload, peer):
        return self.map.to_wire()

    async def rpc_missed_record(self, args, payload, peer):
        self.missed.update(tuple(entry) for entry in args["entries"])
        return {}

    async def rpc_missed_query(self, args, payload, peer):
        return [(ino, chunk, args["osd"]) in self.missed for ino, chunk in args["keys"]]

    async def rpc_missed_clear(self, args, payload, peer):
        gone = {(ino, chunk, args["osd"]) for ino, chunk, _ in args["keys"]} & self.missed
        self.missed -= gone
        return {"cleared": len(gone)}

    async def rpc_chunk_record(self, args, payload, peer):
        return self.records.get(args["ino"], [])

    async def rpc_missed_list(self, args, payload, peer):
        keys = sorted([ino, chunk] for ino, chunk, osd_id in self.missed if osd_id == args["osd"])
        return {"keys": keys, "more": False}

    def mark_down(self, osd_id):
        self.frozen.add(osd_id)
        old = self.map.osds[osd_id]
        self.map.osds[osd_id] = OsdInfo(osd_id, old.addr, old.host, up=False)
        self._bump()


async def wait_for(condition, timeout=10.0):
    """Wait until `condition()` is true, polling the trio loop, with a deadline."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.005)  # polls the condition, under fail_after


class OsdRig:
    def __init__(self, nursery, tmp_path):
        self.nursery = nursery
        self.tmp_path = tmp_path
        self.mds = FakeMds()
        self.config = None
        self.osds = {}
        self.clients = {}

    async def start_mds(self):
        server = rpc.RpcServer(self.mds, CLUSTER, KEY, "fake-mds")
        listeners = await self.nursery.start(server.serve, "127.0.0.1", 0)
        addr = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        self.config = ClusterConfig("", CLUSTER, KEY, [addr], Layout())

    async def start_osd(self, osd_id, **kwargs):
        running = await self.nursery.start(
            lambda task_status: serve_osd(self.config, osd_id, self.data_dir(osd_id),
                                          "127.0.0.1:0", host="testhost",
                                          heartbeat_interval=0.02, task_status=task_status,
                                          **kwargs))
        self.osds[osd_id] = running
        self.clients[osd_id] = rpc.RpcClient(self.nursery, running.addr, CLUSTER, KEY, "test")
        return running

    def data_dir(self, osd_id):
        return str(self.tmp_path / f"osd{osd_id}")

    async def wait_converged(self):
        """Every running OSD registered and holding the latest map."""
        def done():
            epoch = self.mds.map.epoch
            registered = all(self.mds.map.is_up(i) for i in self.osds
                             if i not in self.mds.frozen)
            return registered and all(o.maps.current.epoch == epoch for o in self.osds.values()
                                      if o.osd_id not in self.mds.frozen)
        await wait_for(done)

    async def write(self, primary, ino, chunk, offset, data, replicas):
        args = {"ino": ino, "chunk": chunk, "offset": offset, "replicas": replicas,
                "epoch": self.mds.map.epoch}
        return await self.clients[primary].call("write", args, data)

    async def read(self, osd_id, ino, chunk, offset=0, length=64 * MIB):
        args = {"ino": ino, "chunk": chunk, "offset": offset, "length": length}
        result, data = await self.clients[osd_id].call_payload("read", args)
        assert result["length"] == len(data)
        return data, result["version"]


@pytest.fixture
async def rig(nursery, tmp_path):
    rig = OsdRig(nursery, tmp_path)
    await rig.start_mds()
    for osd_id in (0, 1, 2):
        await rig.start_osd(osd_id)
    await rig.wait_converged()
    return rig


async def test_osds_register_with_heartbeats(rig):
    beat = rig.mds.heartbeats[1]
    assert beat["addr"] == rig.osds[1].addr and beat["host"] == "testhost"
    assert beat["capacity"] > 0 and beat["used"] == 0
    assert sorted(rig.osds[0].maps.current.osds) == [0, 1, 2]


async def test_write_reaches_every_replica(rig):
    data = os.urandom(300_000)
    assert await rig.write(0, 5, 0, 0, data, [0, 2]) == {"version": 1}
    assert await rig.read(0, 5, 0) == (data, 1)
    assert await rig.read(2, 5, 0) == (data, 1)
    assert await rig.read(1, 5, 0) == (b"", 0)

    assert await rig.write(0, 5, 0, 1000, b"patch", [0, 2]) == {"version": 2}
    expect = data[:1000] + b"patch" + data[1005:]
    for osd_id in (0, 2):
        assert await rig.read(osd_id, 5, 0) == (expect, 2)
        assert await rig.read(osd_id, 5, 0, 999, 7) == (expect[999:1006], 2)


async def test_single_copy_write_looks_elsewhere_unless_fresh(rig):
    """R = 1: a chunk new on its primary is looked for on the other OSDs (a
    placement change may have left the only copy there), except when the client
    says it made the inode under the current placement (`fresh`)."""
    await rig.write(1, 9, 0, 0, b"old", [1])  # the copy an earlier placement left on osd 1
    asked = rpc.SERVED["chunk_versions"]
    args = {"ino": 9, "chunk": 0, "offset": 3, "replicas": [0], "epoch": rig.mds.map.epoch}
    await rig.clients[0].call("write", args, b"new")
    assert rpc.SERVED["chunk_versions"] == asked + 2  # osds 1 and 2 asked
    assert await rig.read(0, 9, 0) == (b"oldnew", 2)  # located, copied, then written

    args = {**args, "ino": 10, "offset": 0, "fresh": True}
    await rig.clients[0].call("write", args, b"fresh")
    assert rpc.SERVED["chunk_versions"] == asked + 2
    assert await rig.read(0, 10, 0) == (b"fresh", 1)


async def test_a_write_takes_the_copy_a_moved_set_left_behind_first(rig):
    """A placement change can move a chunk's whole set: the new primary, which
    lacks the chunk, finds it outside the set and copies it before writing on
    top.  (Started from nothing, the chunk got version 1 with zeros around the
    write, and the old copy beat it later: fsynced writes lost after `osd out`.)"""
    old = os.urandom(200_000)
    await rig.write(2, 21, 0, 0, old, [2])  # what the earlier set left on osd 2
    assert await rig.write(0, 21, 0, 1000, b"patch", [0, 1]) == {"version": 2}
    expect = old[:1000] + b"patch" + old[1005:]
    for osd_id in (0, 1):
        assert await rig.read(osd_id, 21, 0) == (expect, 2)


async def test_a_corrupt_copy_on_a_moved_sets_primary_does_not_start_the_chunk_anew(rig):
    """The new primary holds a copy that failed its checksums (a stale one from
    long ago): it looks for the chunk as if it had none, and copies the newest
    before writing.  (Its version counted as 0, so the write landed at version 1
    on top of the bad copy, and the moved set's old copy, at a higher version,
    beat it later.)"""
    old = os.urandom(3 * chunkfile.BLOCK_SIZE)
    for _ in range(3):
        await rig.write(2, 25, 0, 0, old, [2])  # the earlier set's copy, version 3
    args = {"ino": 25, "chunk": 0, "offset": 0, "replicas": [0], "fresh": True,
            "epoch": rig.mds.map.epoch}
    await rig.clients[0].call("write", args, os.urandom(3 * chunkfile.BLOCK_SIZE))
    path = os.path.join(rig.data_dir(0), "chunks", "19", "19", "0")
    with open(path, "r+b") as fp:  # block 1 of osd 0's copy goes bad
        fp.seek(chunkfile.HEADER_SIZE + chunkfile.BLOCK_SIZE + 5)
        fp.write(b"\xff\x00\xff")
    rig.osds[0].store.close()
    with pytest.raises(errors.Corrupt):
        await rig.read(0, 25, 0)
    assert await rig.write(0, 25, 0, 1000, b"patch", [0, 1]) == {"version": 4}
    expect = old[:1000] + b"patch" + old[1005:]
    for osd_id in (0, 1):
        assert await rig.read(osd_id, 25, 0) == (expect, 4)


async def test_a_write_placed_with_a_map_from_before_the_placement_changed_is_stale(rig):
    """A client whose map lags a placement change would write through a primary
    that may no longer be the chunk's, making a copy outside its set: StaleMap,
    so that it fetches the map and asks the right primary.  Epochs that changed
    only up/down states, and maps newer than the OSD's, are taken."""
    before = rig.mds.map.epoch
    assert await rig.write(0, 26, 0, 0, b"one", [0, 1]) == {"version": 1}
    rig.mds.mark_down(2)  # not a placement change
    await wait_for(lambda: rig.osds[0].maps.current.epoch == rig.mds.map.epoch)
    args = {"ino": 26, "chunk": 0, "offset": 3, "replicas": [0, 1], "epoch": before}
    assert await rig.clients[0].call("write", args, b"two") == {"version": 2}

    old = rig.mds.map.osds[2]
    rig.mds.map.osds[2] = OsdInfo(2, old.addr, old.host, up=False, in_=False)
    rig.mds._bump()  # osd 2 out: the placement changed
    changed = rig.mds.map.epoch
    await wait_for(lambda: rig.osds[0].maps.current.epoch == changed)
    with pytest.raises(errors.StaleMap, match=f"placement changed at epoch {changed}"):
        await rig.clients[0].call("write", {**args, "epoch": changed - 1}, b"three")
    assert await rig.read(0, 26, 0) == (b"onetwo", 2)
    assert await rig.clients[0].call("write", {**args, "epoch": changed}, b"three") \
        == {"version": 3}


async def test_a_written_chunk_no_up_osd_has_is_not_started_anew(rig):
    """No up OSD has the chunk: a hole (not in the inode's record) starts from
    nothing; a chunk the record lists, or the client says it wrote, waits for
    its copies (TryAgain) and nothing is written."""
    rig.mds.records[22] = [[0, 1]]
    with pytest.raises(errors.TryAgain, match="was written, and no up OSD has a copy"):
        await rig.write(0, 22, 0, 1000, b"patch", [0, 1])
    args = {"ino": 23, "chunk": 0, "offset": 0, "replicas": [0, 1],
            "epoch": rig.mds.map.epoch, "written": True}
    with pytest.raises(errors.TryAgain):
        await rig.clients[0].call("write", args, b"patch")
    for osd_id in (0, 1, 2):
        assert await rig.read(osd_id, 22, 0) == (b"", 0)
        assert await rig.read(osd_id, 23, 0) == (b"", 0)
    assert await rig.write(0, 24, 0, 10, b"hole", [0, 1]) == {"version": 1}
    assert await rig.read(1, 24, 0) == (bytes(10) + b"hole", 1)


def test_placement_ignores_up_state_and_follows_in_and_hosts():
    def one(up=True, in_=True, host="a"):
        return ClusterMap(1, {0: OsdInfo(0, "x:1", "a"), 1: OsdInfo(1, "x:2", host, up, in_)})

    assert one().placement() == one(up=False).placement()
    assert one().placement() != one(in_=False).placement()
    assert one().placement() != one(host="b").placement()


async def test_write_past_end_leaves_zero_gap_everywhere(rig):
    await rig.write(1, 9, 3, 0, b"head", [1, 0, 2])
    await rig.write(1, 9, 3, 200_000, b"tail", [1, 0, 2])
    for osd_id in (0, 1, 2):
        data, version = await rig.read(osd_id, 9, 3)
        assert data == b"head" + bytes(200_000 - 4) + b"tail" and version == 2


async def test_concurrent_writes_to_one_chunk_apply_in_one_order(rig):
    async def one(i):
        # Each write covers the whole range, so the final content names the
        # last write applied, and must be the same on both replicas.
        await rig.write(0, 7, 0, 0, bytes([i]) * 100_000, [0, 1])

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(one, i)
    primary, version = await rig.read(0, 7, 0)
    assert version == 40 and len(set(primary)) == 1
    assert await rig.read(1, 7, 0) == (primary, 40)


async def test_concurrent_writes_to_different_chunks(rig):
    async def one(chunk):
        await rig.write(chunk % 3, 11, chunk, 0, bytes([chunk]) * 5000,
                            [chunk % 3, (chunk + 1) % 3])

    async with trio.open_nursery() as nursery:
        for chunk in range(30):
            nursery.start_soon(one, chunk)
    for chunk in range(30):
        for osd_id in (chunk % 3, (chunk + 1) % 3):
            assert await rig.read(osd_id, 11, chunk) == (bytes([chunk]) * 5000, 1)


async def test_truncate_file(rig):
    for chunk in range(4):
        await rig.write(0, 3, chunk, 0, bytes([chunk + 1]) * UNIT, [0, 1])
    size = UNIT + UNIT // 2
    for _ in range(2):  # idempotent
        for osd_id in (0, 1, 2):
            reply = await rig.clients[osd_id].call(
                "truncate_file", {"ino": 3, "size": size, "unit": UNIT})
            assert reply == {}
    for osd_id in (0, 1):
        assert await rig.read(osd_id, 3, 0) == (b"\x01" * UNIT, 1)
        assert await rig.read(osd_id, 3, 1) == (b"\x02" * (UNIT // 2), 2)
        assert (await rig.read(osd_id, 3, 2))[0] == b""
        rows = await rig.clients[osd_id].call("list_chunks", {"ino": 3})
        # Chunks past the size stay as empty copies one version up, so a copy
        # that missed the truncate is recognisably older.
        assert rows == [[3, 0, UNIT, 1], [3, 1, UNIT // 2, 2], [3, 2, 0, 2], [3, 3, 0, 2]]


async def test_truncate_to_zero_then_rewrite(rig):
    await rig.write(0, 4, 0, 0, b"a" * 1000, [0])
    await rig.clients[0].call("truncate_file", {"ino": 4, "size": 0, "unit": UNIT})
    assert await rig.read(0, 4, 0) == (b"", 2)
    await rig.write(0, 4, 0, 10, b"b", [0])
    assert await rig.read(0, 4, 0) == (bytes(10) + b"b", 3)


async def test_a_copy_that_missed_a_truncate_is_older_than_the_cut_one(rig):
    await rig.write(0, 5, 0, 0, b"old" * 100, [0, 1])
    # osd 1 is "down" for the truncate: only osd 0 gets it.
    await rig.clients[0].call("truncate_file", {"ino": 5, "size": 0, "unit": UNIT})
    (_, cut), (_, stale) = await rig.read(0, 5, 0), await rig.read(1, 5, 0)
    assert cut > stale  # recovery and read checks pick the empty copy


async def test_delete_file(rig):
    for chunk in range(3):
        await rig.write(0, 300, chunk, 0, b"x" * 10, [0, 1])
    await rig.write(0, 301, 0, 0, b"keep", [0, 1])
    for _ in range(2):
        for osd_id in (0, 1):
            assert await rig.clients[osd_id].call("delete_file", {"ino": 300}) == {}
    for osd_id in (0, 1):
        assert (await rig.read(osd_id, 300, 1))[0] == b""
        assert await rig.clients[osd_id].call("list_chunks", {"ino": 300}) == []
        assert (await rig.read(osd_id, 301, 0))[0] == b"keep"
        ino_dir = os.path.join(rig.data_dir(osd_id), "chunks", f"{300 % 256:02x}", "12c")
        assert not os.path.exists(ino_dir)
    stat = await rig.clients[0].call("stat")
    assert stat["chunks"] == 1 and stat["used"] == 4 and stat["osd_id"] == 0


async def test_delete_file_of_many_inodes_in_one_request(rig):
    for ino in (400, 401, 402):
        await rig.write(0, ino, 0, 0, b"x" * 10, [0])
    assert await rig.clients[0].call("delete_file", {"inos": [400, 402, 999]}) == {}
    assert await rig.clients[0].call("list_chunks", {}) == [[401, 0, 10, 1]]


async def test_sync_file_fsyncs_written_chunks_and_new_dirs(rig, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    await rig.write(0, 42, 0, 0, b"a", [0])
    await rig.write(0, 42, 5, 0, b"b", [0])
    assert await rig.clients[0].call("sync_file", {"ino": 42}) == {}
    root = os.path.realpath(os.path.join(rig.data_dir(0), "chunks"))
    assert synced == [f"{root}/2a/2a/0", f"{root}/2a/2a/5", f"{root}/2a/2a",
                      f"{root}/2a", root]

    synced.clear()
    await rig.clients[0].call("sync_file", {"ino": 42})
    assert synced == []
    await rig.write(0, 42, 5, 1, b"c", [0])
    await rig.clients[0].call("sync_file", {"ino": 42})
    assert synced == [f"{root}/2a/2a/5"]


async def test_a_failed_fsync_fails_every_sync_until_a_replica_replaces_the_copy(
        rig, monkeypatch):
    """Linux reports a writeback error to one fsync only: the next one returns 0
    although the bytes may never have reached the disk.  So the OSD keeps
    failing the file's syncs until the chunk is copied from another replica
    (which the next write, read or recovery pass does, as for a corrupt copy)."""
    data = os.urandom(200_000)
    await rig.write(0, 44, 0, 0, data, [0, 1])
    bad = os.path.realpath(rig.osds[0].store.chunk_path(44, 0))
    real_fsync = os.fsync

    def failing_fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}") == bad:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(errors.IOFailure, match="Input/output error"):
        await rig.clients[0].call("sync_file", {"ino": 44})
    monkeypatch.setattr(os, "fsync", real_fsync)
    for _ in range(2):  # the disk works again; its pages were marked clean anyway
        with pytest.raises(errors.IOFailure, match=r"an fsync of chunks \[0\] failed"):
            await rig.clients[0].call("sync_file", {"ino": 44})
    assert await rig.clients[1].call("sync_file", {"ino": 44}) == {}  # the replica's is fine

    # The next write takes osd 1's copy first (osd 0's version counts for nothing).
    assert await rig.write(0, 44, 0, 10, b"patch", [0, 1]) == {"version": 2}
    assert await rig.clients[0].call("sync_file", {"ino": 44}) == {}
    expect = data[:10] + b"patch" + data[15:]
    for osd_id in (0, 1):
        assert await rig.read(osd_id, 44, 0) == (expect, 2)

    # Failed again: a scrub's check fails the copy, although it reads back fine.
    await rig.write(0, 44, 0, 0, b"again", [0, 1])
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(errors.IOFailure):
        await rig.clients[0].call("sync_file", {"ino": 44})
    assert await rig.osds[0].store.verify(44, 0) is False
    assert await rig.osds[1].store.verify(44, 0) is True


async def test_a_sync_that_could_not_open_a_chunk_is_tried_again(rig, monkeypatch):
    """Out of file descriptors is not a failed fsync: nothing was reported lost,
    so the chunks stay to be synced and the next sync does it."""
    await rig.write(0, 48, 0, 0, b"data", [0])
    bad = rig.osds[0].store.chunk_path(48, 0)
    real_open = os.open

    def failing_open(path, *args, **kwargs):
        if path == bad:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", failing_open)
    with pytest.raises(errors.IOFailure, match="Too many open files"):
        await rig.clients[0].call("sync_file", {"ino": 48})
    monkeypatch.setattr(os, "open", real_open)
    synced = []

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", spy)
    assert await rig.clients[0].call("sync_file", {"ino": 48}) == {}
    assert os.path.realpath(bad) in synced


async def test_a_failed_fsync_with_one_replica_leaves_the_chunk_writable(rig, monkeypatch):
    """With no other copy to take, a write goes on top of the one whose fsync
    failed, at its next version (a reviewer: the search for a copy came back
    empty and the write waited for one until the client's io_timeout); the
    file's syncs keep failing.  A failed directory fsync fails every chunk."""
    args = {"ino": 47, "chunk": 0, "offset": 0, "replicas": [0], "epoch": rig.mds.map.epoch,
            "fresh": True}
    await rig.clients[0].call("write", args, b"first")
    await rig.clients[0].call("write", {**args, "chunk": 1}, b"second")
    store = rig.osds[0].store
    bad = os.path.realpath(store.ino_dir(47))
    real_fsync = os.fsync

    def failing_fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}") == bad:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)  # the inode's directory fails
    with pytest.raises(errors.IOFailure, match="Input/output error"):
        await rig.clients[0].call("sync_file", {"ino": 47})
    monkeypatch.setattr(os, "fsync", real_fsync)
    with pytest.raises(errors.IOFailure, match=r"chunks \[0, 1\] failed"):
        await rig.clients[0].call("sync_file", {"ino": 47})
    del args["fresh"]  # made under another placement: the OSD looks for copies first
    assert await rig.clients[0].call("write", {**args, "offset": 5}, b"+") == {"version": 2}
    assert await rig.read(0, 47, 0) == (b"first+", 2)
    with pytest.raises(errors.IOFailure):
        await rig.clients[0].call("sync_file", {"ino": 47})


@pytest.mark.parametrize("op, args", [
    ("read", {"ino": 0, "chunk": 0, "offset": 0, "length": 1}),
    ("read", {"ino": "1", "chunk": 0, "offset": 0, "length": 1}),
    ("read", {"ino": 1, "chunk": -1, "offset": 0, "length": 1}),
    ("read", {"ino": 1, "chunk": 0, "offset": True, "length": 1}),
    ("read", {"ino": 1, "chunk": 0, "offset": 0, "length": 64 * MIB + 1}),
    ("read", {"ino": 1, "chunk": 0, "offset": 0}),
    ("read", {"ino": 2 ** 64 - 1, "chunk": 0, "offset": 0, "length": 1}),
    ("write", {"ino": 1, "chunk": 0, "offset": 0, "replicas": [1, 0], "epoch": 0}),
    ("write", {"ino": 1, "chunk": 0, "offset": 0, "replicas": [0, 0], "epoch": 0}),
    ("write", {"ino": 1, "chunk": 0, "offset": 0, "replicas": "0", "epoch": 0}),
    ("write", {"ino": 1, "chunk": 0, "offset": 0, "replicas": [], "epoch": 0}),
    ("write", {"ino": 1, "chunk": 0, "offset": 0, "replicas": [0], "epoch": -1}),
    ("write", {"ino": 1, "chunk": 0.5, "offset": 0, "replicas": [0], "epoch": 0}),
    ("replicate", {"ino": 1, "chunk": 0, "offset": 0, "version": 0}),
    ("truncate_file", {"ino": 1, "size": 0, "unit": 100_000}),
    ("truncate_file", {"ino": 1, "size": -5, "unit": UNIT}),
    ("truncate_file", {"ino": 1, "size": 0, "unit": UNIT, "again": 1}),
    ("delete_file", {}),
    ("delete_file", {"inos": [1, 0]}),
    ("delete_file", {"inos": list(range(1, 2000))}),
    ("sync_file", {"ino": None}),
    ("list_chunks", {"after": [1]}),
    ("list_chunks", {"limit": 0}),
])
async def test_bad_arguments_refused_and_daemon_keeps_serving(rig, op, args):
    with pytest.raises(errors.BadRequest):
        await rig.clients[0].call(op, args, b"data")
    await rig.write(0, 1, 0, 0, b"ok", [0])
    assert (await rig.read(0, 1, 0))[0] == b"ok"


async def test_write_past_chunk_limit_is_invalid(rig):
    with pytest.raises(errors.Invalid):
        await rig.write(0, 1, 0, 64 * MIB - 2, b"abc", [0])
    assert (await rig.read(0, 1, 0))[0] == b""


async def test_degraded_write_skips_replica_marked_down(rig):
    rig.osds[2].stop()
    rig.mds.mark_down(2)
    await rig.wait_converged()
    assert await rig.write(0, 20, 0, 0, b"degraded", [0, 2]) == {"version": 1}
    assert await rig.read(0, 20, 0) == (b"degraded", 1)


async def test_dead_replica_still_up_in_map_asks_the_client_to_retry(rig):
    rig.osds[2].stop()
    rig.mds.frozen.add(2)  # mdsd 0 has not noticed yet: osd 2 stays up in the map
    # TryAgain: the client waits for a newer map (osd 2 down) and sends it again.
    args = {"ino": 21, "chunk": 0, "offset": 0, "replicas": [0, 2],
            "epoch": rig.mds.map.epoch, "fresh": True}
    with pytest.raises(errors.TryAgain, match="replica osd 2"):
        await rig.clients[0].call("write", args, b"x")
    # Not fresh, the chunk is looked for first: osd 2 does not answer that either.
    with pytest.raises(errors.TryAgain, match=r"osds \[2\] did not say"):
        await rig.write(0, 22, 0, 0, b"x", [0, 2])


async def test_dead_replica_marked_down_during_write_degrades(rig):
    rig.osds[2].stop()
    rig.mds.mark_down(2)  # the primary has not fetched this map yet
    args = {"ino": 22, "chunk": 0, "offset": 0, "replicas": [0, 2], "epoch": 0,
            "fresh": True}  # (not fresh, the search for the chunk would ask osd 2 first)
    assert await rig.clients[0].call("write", args, b"x") == {"version": 1}


async def test_replica_unknown_to_map_fails_the_write(rig):
    with pytest.raises(errors.IOFailure, match="not in cluster map"):
        await rig.write(0, 23, 0, 0, b"x", [0, 9])


async def test_bit_flip_on_one_replica_reads_corrupt(rig):
    data = os.urandom(3 * chunkfile.BLOCK_SIZE)
    await rig.write(0, 30, 2, 0, data, [0, 1])
    path = os.path.join(rig.data_dir(1), "chunks", "1e", "1e", "2")
    where = chunkfile.HEADER_SIZE + chunkfile.BLOCK_SIZE + 5
    with open(path, "r+b") as fp:
        fp.seek(where)
        byte = fp.read(1)[0]
        fp.seek(where)
        fp.write(bytes([byte ^ 1]))
    rig.osds[1].store.close()  # drop cached fds; the page cache has the flip anyway
    with pytest.raises(errors.Corrupt, match="ino 30 chunk 2: checksum mismatch in block 1"):
        await rig.read(1, 30, 2)
    assert await rig.read(0, 30, 2) == (data, 1)
    assert (await rig.read(1, 30, 2, 0, 100))[0] == data[:100]


async def test_full_disk_is_nospace_and_reads_go_on(rig, monkeypatch):
    await rig.write(0, 50, 0, 0, b"before", [0])

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(errors.NoSpace):
        await rig.write(0, 50, 0, 6, b"after", [0])
    assert await rig.read(0, 50, 0) == (b"before", 1)
    assert (await rig.clients[0].call("stat"))["used"] == 6


async def test_stat_and_list_chunks_paging(rig):
    for ino in (1, 2, 300):
        for chunk in (0, 1):
            await rig.write(0, ino, chunk, 0, b"z" * ino, [0])
    stat = await rig.clients[0].call("stat")
    assert stat["chunks"] == 6 and stat["used"] == 2 * (1 + 2 + 300) and stat["capacity"] > 0
    page = await rig.clients[0].call("list_chunks", {"limit": 4})
    assert page == [[1, 0, 1, 1], [1, 1, 1, 1], [2, 0, 2, 1], [2, 1, 2, 1]]
    rest = await rig.clients[0].call("list_chunks", {"after": page[-1][:2], "limit": 4})
    assert rest == [[300, 0, 300, 1], [300, 1, 300, 1]]


async def test_restart_rebuilds_index_from_disk(rig):
    await rig.write(0, 60, 1, 0, b"persist", [0, 1])
    rig.osds[1].stop()
    await rig.start_osd(1)
    assert await rig.read(1, 60, 1) == (b"persist", 1)
    assert await rig.clients[1].call("list_chunks", {}) == [[60, 1, 7, 1]]


async def test_many_chunks_beyond_open_file_limit(rig):
    rig.osds[0].store.max_open = 4
    for chunk in range(12):
        await rig.write(0, 70, chunk, 0, bytes([chunk]) * 10, [0, 1])
    for chunk in range(12):
        assert await rig.read(0, 70, chunk) == (bytes([chunk]) * 10, 1)
    assert len(rig.osds[0].store._handles) <= 4
