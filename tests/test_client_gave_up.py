"""A chunk read that found no replica within io_timeout is tried for only
QUICK_RETRY seconds by the reads that follow within GAVE_UP_FOR, while the
cluster map stays the same (client.data).

The kernel retries a failed read-ahead with a read of the one page the
application asked for.  Before, read(2) of a file whose only replica was down
waited two io_timeouts before it saw EIO (README "Limitations" says one).
Virtual time here (trio's autojump clock), against a stand-in cluster whose only
OSD refuses connections; tests/test_repl_failover.py checks the same on a real
cluster through the mount.
"""

import pytest
import trio

from client import data as data_module
from client.data import DataPath, FileData
from loomproto import errors
from loomproto.clustermap import ClusterMap, OsdInfo
from loomproto.layout import Layout

IO_TIMEOUT = 10.0
UNIT = 1 << 20


class StandInOsd:
    """Refuses connections until `back` is set; then serves a chunk of b"x"."""

    def __init__(self):
        self.calls = 0
        self.back = False

    async def call_payload(self, op, args, payload):
        self.calls += 1
        if not self.back:
            raise errors.TransportError("connection refused")
        return {"version": 1}, b"x" * args["length"]


class StandInCluster:
    """What DataPath asks of client.cluster.Cluster, with one OSD (down, unless
    `up`), `osd` (a StandInOsd unless given)."""

    def __init__(self, osd=None, up=False):
        self.map = ClusterMap(5, {0: OsdInfo(0, "127.0.0.1:1", up=up)})
        self.map_changed = trio.Event()
        self.placement_changes = 0
        self.osd0 = StandInOsd() if osd is None else osd

    def in_osds(self):
        return self.map.in_osds()

    def osd(self, osd_id):
        return self.osd0

    def new_epoch(self):
        self.map = ClusterMap(self.map.epoch + 1, self.map.osds)
        self.map_changed.set()
        self.map_changed = trio.Event()


@pytest.fixture
def setup(nursery):
    cluster = StandInCluster()
    return cluster, DataPath(cluster, nursery, io_timeout=IO_TIMEOUT)


async def _failing_read(data, fd) -> float:
    started = trio.current_time()
    with pytest.raises(errors.IOFailure, match="no replica of ino 8 chunk 0 answered"):
        await data.read(fd, 0, 4096)
    return trio.current_time() - started


async def test_the_kernels_retry_waits_quick_retry_only(setup, autojump_clock):
    cluster, data = setup
    fd = FileData(8, Layout(UNIT, 1, 1), 4096)
    assert await _failing_read(data, fd) >= IO_TIMEOUT
    asked = cluster.osd0.calls
    assert await _failing_read(data, fd) <= data_module.QUICK_RETRY  # the retry of the page
    assert cluster.osd0.calls > asked  # the OSD was asked again all the same
    # A quick retry that fails does not extend the memo: once it expires, a read
    # waits io_timeout again.
    autojump_clock.jump(data_module.GAVE_UP_FOR)
    assert await _failing_read(data, fd) >= IO_TIMEOUT


async def test_an_osd_back_before_the_map_says_so_is_read(setup, autojump_clock):
    cluster, data = setup
    fd = FileData(8, Layout(UNIT, 1, 1), 4096)
    assert await _failing_read(data, fd) >= IO_TIMEOUT
    cluster.osd0.back = True  # restarted; this client's map still shows it down
    assert await data.read(fd, 0, 4096) == b"x" * 4096


async def test_a_new_map_or_time_makes_the_read_try_again(setup, autojump_clock):
    cluster, data = setup
    fd = FileData(8, Layout(UNIT, 1, 1), 4096)
    assert await _failing_read(data, fd) >= IO_TIMEOUT
    cluster.new_epoch()  # e.g. the OSD was marked up (and died again)
    assert await _failing_read(data, fd) >= IO_TIMEOUT
    autojump_clock.jump(data_module.GAVE_UP_FOR)  # the memo expires
    assert await _failing_read(data, fd) >= IO_TIMEOUT


async def test_the_memo_is_bounded(setup, autojump_clock, monkeypatch):
    cluster, data = setup
    monkeypatch.setattr(data_module, "GAVE_UP_MAX", 3)
    for ino in range(10, 15):
        with pytest.raises(errors.IOFailure):
            await data.read(FileData(ino, Layout(UNIT, 1, 1), 4096), 0, 4096)
    assert sorted(ino for ino, _ in data._gave_up) == [12, 13, 14]
