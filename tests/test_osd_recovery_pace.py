"""osd.recovery: how often an OSD walks its chunks when nothing asks it to.

The pace tests run `Recovery.run` against stand-in passes that the test itself
ends, on trio's MockClock with no rate and no autojump: virtual time moves
only when the test jumps it, and every step lets the loop run until all its
tasks block (`wait_all_tasks_blocked`) and then looks.  No step waits for a
time it guessed.  The walk itself is tested further down over stub peers,
and through the replication tests on real OSDs (test_repl_*.py)."""

import pytest
import trio
import trio.testing

from loomproto import errors
from osd import recovery as recovery_module
from osd.locks import KeyedLocks
from osd.recovery import PASS_DUTY, Recovery

INTERVAL = recovery_module.RECOVERY_INTERVAL


class _Maps:
    """A map that never changes."""

    class current:  # noqa: N801 (stands in for a ClusterMap)
        epoch = 1

    async def wait_changed(self):
        await trio.sleep_forever()


class _Rig:
    """A Recovery whose passes record when they start and run until the test
    ends them (`end_pass`); nothing else of it is used by `run`."""

    def __init__(self, clock):
        self.clock = clock
        self.starts = []
        self._end = None
        self._fail = False
        rec = self.rec = Recovery.__new__(Recovery)
        rec.interval = INTERVAL
        rec.last_pass_seconds = 0.0
        rec._kick = trio.Event()
        rec._waiting = None
        rec._wait_began = 0.0
        rec._count_soon = False
        rec._work_left = False
        rec.maps = _Maps()
        rec.watch_up_since = lambda current: None
        rec.run_pass = self._run_pass

    async def _run_pass(self):
        self.starts.append(trio.current_time())
        self._end = trio.Event()
        await self._end.wait()
        self._end = None
        if self._fail:
            raise errors.TransportError("no answer")  # a shard that did not answer
        return 0

    @staticmethod
    async def settle():
        """Until every task of the test blocks."""
        await trio.testing.wait_all_tasks_blocked()

    async def end_pass(self, took: float, fail: bool = False, work_left: bool = False):
        """End the running pass `took` virtual seconds after it began, having
        failed or left work (what osd.recovery's `run_pass` would find)."""
        assert self._end is not None, "no pass is running"
        self.clock.jump(self.starts[-1] + took - trio.current_time())
        self._fail = fail
        self.rec._work_left = work_left
        self._end.set()
        await self.settle()

    async def next_wait(self) -> float:
        """Run out the loop's wait for a reason to pass; check that a pass began
        at its end, and return how long the wait was."""
        assert self.rec._waiting is not None, "the loop is not waiting"
        began, count = trio.current_time(), len(self.starts)
        deadline = self.rec._waiting.deadline
        self.clock.jump(deadline - began)
        await self.settle()
        assert len(self.starts) == count + 1 and self.starts[-1] == deadline
        return deadline - began

    async def start(self, nursery):
        nursery.start_soon(self.rec.run)
        await self.settle()
        assert self.starts == [0.0]  # at once: the map's epoch is new to the loop


async def test_periodic_passes_keep_to_a_share_of_the_time(mock_clock):
    rig = _Rig(mock_clock)
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        waits = []
        # A small store (0.1 s a pass), then a big one (5 s), then small again.
        for took in (0.1, 0.1, 5.0, 5.0, 0.1):
            await rig.end_pass(took)
            waits.append(await rig.next_wait())
        nursery.cancel_scope.cancel()
    assert waits == pytest.approx([INTERVAL, INTERVAL, PASS_DUTY * 5.0, PASS_DUTY * 5.0,
                                   INTERVAL])


async def test_a_pass_asked_for_starts_at_once_however_long_the_last_took(mock_clock):
    rig = _Rig(mock_clock)
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        await rig.end_pass(30.0)  # the next periodic pass is 600 s off
        mock_clock.jump(10)
        await rig.settle()
        assert len(rig.starts) == 1
        kicked_at = trio.current_time()
        rig.rec.kick()
        await rig.settle()
        # (Before, a kick while the loop waited waited for the periodic pass.)
        assert rig.starts == [0.0, kicked_at]
        nursery.cancel_scope.cancel()


async def test_a_degraded_write_brings_the_next_pass_within_the_interval(mock_clock):
    """Not at once: writes go on degraded while a replica is down, and a pass per
    write would walk every chunk over and over."""
    rig = _Rig(mock_clock)
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        await rig.end_pass(30.0)  # the wait begins at 30 s; 600 s by the pace
        mock_clock.jump(5)
        for _ in range(100):
            rig.rec._degraded_write()
        await rig.settle()
        assert len(rig.starts) == 1  # not at once
        assert await rig.next_wait() == pytest.approx(INTERVAL - 5)  # from the wait's start
        # With nothing degraded since, the pace is that of a 0.1 s pass.
        await rig.end_pass(0.1)
        assert await rig.next_wait() == pytest.approx(INTERVAL)
        nursery.cancel_scope.cancel()


async def test_a_failed_pass_is_tried_again_within_the_interval(mock_clock):
    """However long it took to fail, and however long the pass before it took."""
    rig = _Rig(mock_clock)
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        await rig.end_pass(30.0)
        rig.rec.kick()
        await rig.settle()
        assert len(rig.starts) == 2
        await rig.end_pass(15.0, fail=True)
        assert await rig.next_wait() == pytest.approx(INTERVAL)
        nursery.cancel_scope.cancel()


async def test_a_pass_that_left_work_is_followed_within_the_interval(mock_clock):
    """Work a pass can do before the map changes (osd.recovery `run_pass` sets
    `_work_left`: failed pushes, copies outside their sets whose members are
    all up, this copy still suspect and behind a member that is up): the next
    pass within the interval, however long this one took."""
    rig = _Rig(mock_clock)
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        await rig.end_pass(30.0, work_left=True)
        assert await rig.next_wait() == pytest.approx(INTERVAL)
        await rig.end_pass(30.0)  # it left nothing: the pace of a 30 s pass again
        assert await rig.next_wait() == pytest.approx(PASS_DUTY * 30.0)
        nursery.cancel_scope.cancel()


async def test_a_kick_or_degraded_write_during_a_pass_is_not_lost(mock_clock):
    rig = _Rig(mock_clock)
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        rig.rec.kick()  # during the first pass: the next starts as it ends
        await rig.end_pass(30.0)
        assert rig.starts == [0.0, 30.0]
        rig.rec._degraded_write()  # during the second: the next within the interval
        await rig.end_pass(30.0)
        assert await rig.next_wait() == pytest.approx(INTERVAL)
        nursery.cancel_scope.cancel()


# -- what a pass counts as work left ------------------------------------------

class _Meta:
    def __init__(self, version):
        self.version, self.corrupt, self.length = version, False, 10


class _Store:
    def __init__(self, chunks):
        self.index = {ino: {c: None for c in cs} for ino, cs in chunks.items()}
        self.removed = []

    def meta(self, ino, chunk):
        return _Meta(1) if chunk in self.index.get(ino, {}) else None

    async def remove_chunk(self, ino, chunk):
        self.removed.append((ino, chunk))
        del self.index[ino][chunk]


def _pass_rig(osd_id, down=(), versions=None, push_fails=False, chunks=range(8)):
    """A Recovery of OSD `osd_id` in a map of 4 OSDs (those in `down` down),
    holding `chunks` of inode 5 at R=2, whose peers answer `versions`
    ({(osd, (ino, chunk)): version}; default: every up member at version 1)."""
    from loomproto.clustermap import ClusterMap, OsdInfo
    from loomproto.layout import Layout

    current = ClusterMap(3, {o: OsdInfo(o, f"127.0.0.1:{9000 + o}", f"h{o}", up=o not in down)
                             for o in range(4)})
    rec = Recovery.__new__(Recovery)
    rec.osd_id = osd_id
    rec.maps = type("Maps", (), {"current": current})()
    rec.store = _Store({5: chunks})
    rec.replicator = type("Replicator", (), {"order": KeyedLocks()})()
    rec.stats = {"degraded": 0, "recovering": 0, "recovered": 0, "misplaced": 0,
                 "removed": 0, "scan_epoch": 0, "passes": 0, "repaired": 0,
                 "unrepairable": 0}
    rec._stale_gen, rec._clean_gen = 2, 1  # suspect, as after a start
    rec._work_left = False
    layout = Layout(replicas=2).to_wire()

    async def attrs(inos):
        return {ino: {"layout": layout} for ino in inos}

    async def peer_versions(plans, current):
        if versions is not None:
            return versions
        return {(o, key): 1 for key, members in plans for o in members
                if o != osd_id and current.is_up(o)}

    async def nothing(*args):
        return None

    async def push_all(pushes):
        return 0 if push_fails else len(pushes)

    rec._attrs, rec._peer_versions = attrs, peer_versions
    rec._clear_missed, rec._push_all = nothing, push_all
    return rec


def _members(rec):
    from loomproto.layout import Layout, osd_order, replicas_for_chunk
    current = rec.maps.current
    order = osd_order(5, current.in_osds())
    return {c: replicas_for_chunk(Layout(replicas=2), 5, c, order, current.hosts())
            for c in range(8)}


async def test_a_pass_with_every_member_up_and_current_leaves_no_work():
    # An OSD that is a member of some chunks and holds copies of all 8: the
    # others are outside their sets and go, since every member has them.
    rec = _pass_rig(0)
    await rec.run_pass()
    assert not rec._work_left and not rec.suspect
    outside = [c for c, members in _members(rec).items() if 0 not in members]
    assert sorted(c for _, c in rec.store.removed) == outside


async def test_copies_outside_their_sets_are_work_left_while_their_members_are_up():
    # Members that lack the chunk: a member's push brings it, the next pass here
    # drops the copy.  With a member down, that waits for the map.
    members = _members(_pass_rig(0))
    outside = [c for c, m in members.items() if 0 not in m]
    assert outside
    # Every member answers, with no copy yet: this OSD pushes its copies (they
    # succeed) and is behind nobody, so only the copies outside count.
    none_there = {(o, (5, c)): 0 for c, m in members.items() for o in m if o != 0}
    rec = _pass_rig(0, versions=none_there)
    await rec.run_pass()
    assert rec.stats["misplaced"] == len(outside) and rec._work_left
    down = {o for c in outside for o in members[c]}  # every such chunk has a member down
    answered = {k: v for k, v in none_there.items() if k[0] not in down}
    rec = _pass_rig(0, down=down, versions=answered)
    await rec.run_pass()
    assert rec.stats["misplaced"] == len(outside) and not rec._work_left


async def test_behind_a_member_that_is_up_is_work_left_and_behind_a_down_one_not():
    rec = _pass_rig(1, versions={})  # no up member answered: maybe ahead of us
    await rec.run_pass()
    assert rec.suspect and rec._work_left
    others = [o for o in range(4) if o != 1]
    rec = _pass_rig(1, down=others, versions={})
    await rec.run_pass()
    assert rec.suspect and not rec._work_left  # the map bringing them back starts a pass
    # Not suspect: a member ahead of us (a write on its way between the copies
    # looks so) is that member's work, and the pace stays.  (Only chunks this
    # OSD is a member of: no copies outside their sets.)
    mine = [c for c, m in _members(rec).items() if 1 in m]
    rec = _pass_rig(1, versions={}, chunks=mine)
    rec._clean_gen = rec._stale_gen
    await rec.run_pass()
    assert not rec.suspect and not rec._work_left


async def test_failed_pushes_are_work_left():
    # OSD 2 holds only chunks it is a member of; the other members answer that
    # they have no copy, so OSD 2 is responsible and pushes to them.
    members = _members(_pass_rig(2))
    mine = [c for c, m in members.items() if 2 in m]
    none_there = {(o, (5, c)): 0 for c in mine for o in members[c] if o != 2}
    for fails in (True, False):
        rec = _pass_rig(2, versions=none_there, push_fails=fails, chunks=mine)
        await rec.run_pass()
        assert rec.stats["degraded"] == len(mine) and not rec.suspect
        assert rec._work_left == fails
