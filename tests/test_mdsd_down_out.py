"""mds 0 marks out an OSD that stayed down (mdsd.clustermap `down_out`), and in again.

A `MapKeeper` in virtual time (trio's autojump clock): the OSDs are heartbeat
calls from the test, and an OSD goes silent when the test stops calling for
it.  The map is kept by `MemStore`, a stand-in for mdsd.store that runs each
write at once: the real store's writer thread would let the virtual clock run
on while a write waits for it.  tests/test_repl_down_out.py does the same to a
live cluster and checks that recovery then restores every chunk's copies.
"""

import logging

import pytest
import trio

from mdsd import schema
from mdsd.clustermap import MapKeeper

DOWN_AFTER = 1.0
DOWN_OUT = 10.0


class MemStore:
    """What MapKeeper uses of mdsd.store.Store, in memory."""

    def __init__(self):
        self.dbs = {name: name for name in schema.DATABASES}
        self.data: dict[tuple, bytes] = {}

    def put(self, key: bytes, value: bytes, db):
        self.data[(db, key)] = value

    def get(self, key):
        db, raw = key
        return self.data.get((db, raw))

    async def write(self, fn):
        await trio.lowlevel.checkpoint()
        return fn(self)  # `self` stands in for the transaction: fn calls put()


@pytest.fixture
def store():
    return MemStore()


class Osds:
    """The OSDs the test keeps alive heartbeat every 0.25 s (of virtual time)."""

    def __init__(self, keeper):
        self.keeper = keeper
        self.alive: set[int] = set()

    async def beat(self, osd_id: int):
        await self.keeper.heartbeat({"id": osd_id, "addr": f"127.0.0.1:{9000 + osd_id}",
                                     "host": f"h{osd_id}"})

    async def run(self):
        while True:
            for osd_id in sorted(self.alive):
                await self.beat(osd_id)
            await trio.sleep(0.25)


async def start(nursery, store, osds: int, *, down_out=DOWN_OUT, min_in=1, silent=(),
                **kwargs):
    """A keeper and the heartbeats of `osds` OSDs, but those in `silent`."""
    keeper = MapKeeper(store, DOWN_AFTER, down_out=down_out, min_in=min_in, **kwargs)
    await keeper.load()
    beats = Osds(keeper)
    for osd_id in set(range(osds)) - set(silent):
        await beats.beat(osd_id)
        beats.alive.add(osd_id)
    nursery.start_soon(keeper.down_loop)
    nursery.start_soon(beats.run)
    return keeper, beats


def state(keeper, osd_id) -> tuple:
    """(up, in, auto_out) of one OSD."""
    osd = keeper.map.osds[osd_id]
    return osd.up, osd.in_, osd.auto_out


async def test_an_osd_down_for_down_out_goes_out_and_comes_back_in(store, nursery,
                                                                   autojump_clock):
    keeper, beats = await start(nursery, store, 4)
    beats.alive.discard(2)
    await trio.sleep(DOWN_AFTER + 1)
    assert state(keeper, 2) == (False, True, False)
    down_at = keeper.down_since[2]
    await trio.sleep(down_at + DOWN_OUT - 0.5 - trio.current_time())
    assert state(keeper, 2) == (False, True, False)  # not yet
    await trio.sleep(1.5)
    assert state(keeper, 2) == (False, False, True)
    assert keeper.map.in_osds() == [0, 1, 3]
    assert all(state(keeper, osd_id) == (True, True, False) for osd_id in (0, 1, 3))

    # The flag is in the persisted map: a restarted mds 0 still brings it back in.
    again = MapKeeper(store, DOWN_AFTER)
    await again.load()
    assert state(again, 2) == (False, False, True)

    epoch = keeper.map.epoch
    beats.alive.add(2)
    await trio.sleep(1)
    assert state(keeper, 2) == (True, True, False)
    assert keeper.map.in_osds() == [0, 1, 2, 3]
    assert keeper.map.epoch > epoch


async def test_guards_keep_enough_osds_in(store, nursery, autojump_clock, caplog):
    # 4 OSDs, at least 3 in (75 %): of two OSDs down, only the first goes out.
    keeper, beats = await start(nursery, store, 4, min_in=2)
    beats.alive -= {1, 2}
    with caplog.at_level(logging.ERROR, logger="mdsd.clustermap"):
        await trio.sleep(DOWN_AFTER + DOWN_OUT + 2)
        assert state(keeper, 1) == (False, False, True)
        assert state(keeper, 2) == (False, True, False)
        await trio.sleep(DOWN_OUT)  # more time changes nothing, and logs nothing more
        assert state(keeper, 2) == (False, True, False)
    held = [r.getMessage() for r in caplog.records if "osd 2 down for" in r.getMessage()]
    assert len(held) == 1 and "would leave 2 of 4 OSDs in, fewer than 3" in held[0], held

    # Once osd 1 is back in, osd 2 may go: 3 of 4 stay in.
    beats.alive.add(1)
    await trio.sleep(2)
    assert state(keeper, 1) == (True, True, False)
    assert state(keeper, 2) == (False, False, True)


async def test_never_below_the_default_replica_count(store, nursery, autojump_clock):
    keeper, beats = await start(nursery, store, 2, min_in=2, min_in_ratio=0.0)
    beats.alive.discard(1)
    await trio.sleep(DOWN_AFTER + 3 * DOWN_OUT)
    assert state(keeper, 1) == (False, True, False)


async def test_down_out_zero_keeps_a_down_osd_in(store, nursery, autojump_clock):
    keeper, beats = await start(nursery, store, 4, down_out=0)
    beats.alive.discard(3)
    await trio.sleep(DOWN_AFTER + 3 * DOWN_OUT)
    assert state(keeper, 3) == (False, True, False)


async def test_an_operators_choice_stands(store, nursery, autojump_clock):
    keeper, beats = await start(nursery, store, 4)
    beats.alive.discard(0)
    await trio.sleep(DOWN_AFTER + DOWN_OUT + 2)
    assert state(keeper, 0) == (False, False, True)

    # Marked out by hand as well: it stays out when it comes back.
    await keeper.set_in({"id": 0, "in": False})
    assert state(keeper, 0) == (False, False, False)
    beats.alive.add(0)
    await trio.sleep(1)
    assert state(keeper, 0) == (True, False, False)

    # Down long, then marked in by hand while still down: another whole down_out
    # before it goes out again.
    beats.alive.discard(0)
    await trio.sleep(DOWN_AFTER + DOWN_OUT + 2)
    assert state(keeper, 0) == (False, False, False)
    await keeper.set_in({"id": 0, "in": True})
    put_back = trio.current_time()
    await trio.sleep(1)
    assert state(keeper, 0) == (False, True, False)
    await trio.sleep(DOWN_OUT - 1)
    assert state(keeper, 0) == (False, True, False)
    await trio.sleep(put_back + DOWN_OUT + 1 - trio.current_time())
    assert state(keeper, 0) == (False, False, True)


async def test_a_restarted_keeper_gives_every_osd_the_whole_time(store, autojump_clock):
    async with trio.open_nursery() as first:
        keeper, beats = await start(first, store, 4)
        beats.alive.discard(1)
        await trio.sleep(DOWN_AFTER + DOWN_OUT - 2)  # down for most of down_out
        assert state(keeper, 1) == (False, True, False)
        first.cancel_scope.cancel()

    async with trio.open_nursery() as second:
        # load() marks every OSD down until it beats; osd 1 never does.
        keeper, beats = await start(second, store, 4, silent={1})
        loaded = trio.current_time()
        await trio.sleep(DOWN_OUT - 1)
        assert state(keeper, 1) == (False, True, False)
        await trio.sleep(loaded + DOWN_OUT + 1.5 - trio.current_time())
        assert state(keeper, 1) == (False, False, True)
        assert [state(keeper, osd_id)[:2] for osd_id in (0, 2, 3)] == [(True, True)] * 3
        second.cancel_scope.cancel()
