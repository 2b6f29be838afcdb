"""A write that an OSD refuses as placed with a stale map (StaleMap: the
placement changed since the client's map) fetches the map at once and goes to
the chunk's primary under the new one, without the "fresh" flag: the file was
made under the old placement (client.data `_write_piece`, osd.replication).

Virtual time (trio's autojump clock), against a stand-in cluster of two OSDs.
tests/test_osd_service.py checks the OSD's side on real OSD services.
"""

import trio

from client.data import DataPath, FileData
from loomproto import errors
from loomproto.clustermap import ClusterMap, OsdInfo
from loomproto.layout import Layout

UNIT = 1 << 20


class StandInOsd:
    def __init__(self, osd_id: int, cluster):
        self.osd_id = osd_id
        self.cluster = cluster
        self.writes = []

    async def call_payload(self, op, args, payload):
        assert op == "write"
        if args["epoch"] < self.cluster.osd_epoch:
            raise errors.StaleMap(f"placed with map epoch {args['epoch']}")
        self.writes.append(args)
        return {"version": 1}, b""


class StandInCluster:
    """Both OSDs up and in; mdsd 0 already marked osd `leaving` out (epoch 6), a
    map this client fetches only when asked (`refresh_map`)."""

    def __init__(self, leaving: int):
        self.map = ClusterMap(5, {i: OsdInfo(i, f"127.0.0.1:{i + 1}") for i in (0, 1)})
        self.newer = ClusterMap(6, {i: OsdInfo(i, f"127.0.0.1:{i + 1}", in_=i != leaving)
                                    for i in (0, 1)})
        self.osd_epoch = 6
        self.map_changed = trio.Event()
        self.placement_changes = 0
        self.osds = {i: StandInOsd(i, self) for i in (0, 1)}
        self.fetches = 0

    def in_osds(self):
        return self.map.in_osds()

    def osd(self, osd_id):
        return self.osds[osd_id]

    async def refresh_map(self):
        self.fetches += 1
        if self.map.epoch < self.newer.epoch:
            self.map = self.newer
            self.placement_changes += 1


async def test_a_stale_map_answer_fetches_the_map_and_writes_to_the_new_primary(
        nursery, autojump_clock):
    layout = Layout(UNIT, 1, 1)
    probe = StandInCluster(leaving=0)
    old_primary = DataPath(probe, nursery, io_timeout=30.0).replicas(FileData(8, layout, 0), 0)[0]
    cluster = StandInCluster(leaving=old_primary)  # the chunk's primary is marked out
    data = DataPath(cluster, nursery, io_timeout=30.0)
    fd = FileData(8, layout, 0)
    fd.born_placement = cluster.placement_changes  # made under the (old) placement
    started = trio.current_time()
    await data._write_piece(fd, 0, 0, b"data")
    assert trio.current_time() - started < 0.5  # not a wait for the map watch
    assert cluster.fetches == 1 and cluster.map.epoch == 6
    new_primary = 1 - old_primary
    assert not cluster.osds[old_primary].writes
    [sent] = cluster.osds[new_primary].writes
    assert sent["epoch"] == 6 and sent["replicas"] == [new_primary]
    assert "fresh" not in sent  # made under the old placement: the OSD looks for copies
    assert fd.chunks_written == {0}
