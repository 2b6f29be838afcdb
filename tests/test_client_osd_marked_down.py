"""A call to an OSD that hangs (a SIGSTOPped process keeps its connections open)
is given up as soon as a new cluster map marks the OSD down (client.data
`_call_osd`), not at the end of io_timeout.

Virtual time (trio's autojump clock), against a stand-in cluster whose only OSD
never answers; tests/test_repl_hung.py checks the same through a mount on a real
cluster.  The first case is a reviewer's: the map that marks the OSD down lands
right after the mount's first OSD call, before the task that gives calls up has
run once.
"""

import pytest
import trio

from client.data import DataPath, FileData
from loomproto import errors
from loomproto.clustermap import ClusterMap, OsdInfo
from loomproto.layout import Layout
from test_client_gave_up import StandInCluster as GaveUpStandIn

IO_TIMEOUT = 60.0
TRIES = 40
UNIT = 1 << 20


class HungOsd:
    def __init__(self):
        self.calls = 0
        self.asked_at = []
        self.asked = trio.Event()

    async def call_payload(self, op, args, payload):
        self.calls += 1
        self.asked_at.append(trio.current_time())
        self.asked.set()
        await trio.sleep_forever()  # a hung peer: the caller's cancel ends it


async def _until_asked(osd: HungOsd) -> None:
    """The first call reached the OSD.  Already so: no checkpoint, so the caller
    goes on in the same turn (the race below needs that)."""
    if not osd.calls:
        with trio.fail_after(5):  # virtual time (autojump clock)
            await osd.asked.wait()


class StandInCluster(GaveUpStandIn):
    """tests/test_client_gave_up.py's, with a hung OSD, up at first."""

    def __init__(self):
        super().__init__(HungOsd(), up=True)

    def set_up(self, up: bool):
        """What Cluster._set_map does with a map that changes the OSD's state."""
        self.map = ClusterMap(self.map.epoch + 1, {0: OsdInfo(0, "127.0.0.1:1", up=up)})
        self.map_changed.set()
        self.map_changed = trio.Event()


async def _read_while(cluster, data, change) -> float:
    """Seconds until a read of chunk 0 fails while `change(cluster)` runs beside it."""
    fd = FileData(8, Layout(UNIT, 1, 1), 4096)
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(change, cluster)
        with pytest.raises(errors.IOFailure):
            await data.read(fd, 0, 4096)
    return trio.current_time() - started


@pytest.mark.parametrize("settled", [False, True], ids=["as-the-watcher-starts", "later"])
async def test_a_hung_osd_marked_down_is_given_up_at_once(nursery, autojump_clock, settled):
    # Each try is a new DataPath, whose first call starts the task that gives calls
    # up; the order in which trio runs it and the map's change varies from try to
    # try, and half of the orders lost the map before a reviewer's fix.  `settled`:
    # the map changes once that task waits for maps (a later mark-down).
    for _ in range(1 if settled else TRIES):
        cluster = StandInCluster()
        data = DataPath(cluster, nursery, io_timeout=IO_TIMEOUT)

        async def mark_down(cluster):
            await _until_asked(cluster.osd0)
            if settled:
                with trio.fail_after(5):  # virtual time (autojump clock)
                    while not cluster.map_changed.statistics().tasks_waiting:
                        await trio.sleep(0.01)  # polls for the waiting task, under fail_after
            cluster.set_up(False)

        started = trio.current_time()
        await _read_while(cluster, data, mark_down)
        # Given up when marked down; the read then asks again within a second (the
        # map may be behind) and that call holds until io_timeout.  Without the
        # cancel the first call would hold until then, and there would be no second.
        assert cluster.osd0.calls >= 2, "the call to the hung OSD was not given up"
        assert cluster.osd0.asked_at[1] - started <= 1.5


async def test_an_osd_marked_down_and_up_again_is_not_given_up(nursery, autojump_clock):
    cluster = StandInCluster()
    data = DataPath(cluster, nursery, io_timeout=IO_TIMEOUT)

    async def flap(cluster):
        await _until_asked(cluster.osd0)
        cluster.set_up(False)
        cluster.set_up(True)  # both before the task that gives calls up runs

    await _read_while(cluster, data, flap)
    assert cluster.osd0.calls == 1  # one call, held until its deadline, as before
