"""osd.recovery: how often an OSD walks its chunks when nothing asks it to.

Virtual time (trio's autojump clock), against a Recovery whose pass is a
stand-in that takes a set time: the walk itself is tested through the
replication tests on real OSDs (test_repl_*.py)."""

import trio

from loomproto import errors
from osd import recovery as recovery_module
from osd.recovery import PASS_DUTY, Recovery


class _Maps:
    """A map that never changes."""

    class current:  # noqa: N801 (stands in for a ClusterMap)
        epoch = 1

    async def wait_changed(self):
        await trio.sleep_forever()


def _recovery(pass_seconds: list, starts: list) -> Recovery:
    """A Recovery whose passes take pass_seconds[i] (the last one repeats)
    and record when they start; nothing else of it is used by `run`."""
    rec = Recovery.__new__(Recovery)
    rec.interval = recovery_module.RECOVERY_INTERVAL
    rec.last_pass_seconds = 0.0
    rec._kick = trio.Event()
    rec._waiting = None
    rec._wait_began = 0.0
    rec._count_soon = False
    rec.maps = _Maps()
    rec._work_left = False
    rec.watch_up_since = lambda current: None

    async def run_pass():
        starts.append(trio.current_time())
        took = pass_seconds[min(len(starts), len(pass_seconds)) - 1]
        if took is None:  # this one fails after 15 s (a shard that did not answer)
            await trio.sleep(15)
            raise errors.TransportError("no answer")
        await trio.sleep(took)
        return 0

    rec.run_pass = run_pass
    return rec


async def _passes(starts: list, count: int, within: float) -> None:
    """Until `count` passes started, polled in virtual time under a deadline."""
    with trio.fail_after(within):
        while len(starts) < count:
            await trio.sleep(0.01)


async def test_periodic_passes_keep_to_a_share_of_the_time(autojump_clock):
    starts = []
    # A small store (0.1 s a pass), then a big one (5 s), then small again.
    rec = _recovery([0.1, 0.1, 5.0, 5.0, 0.1, 0.1], starts)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rec.run)
        await _passes(starts, 6, within=1000)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    interval = recovery_module.RECOVERY_INTERVAL
    # (the first pass comes at once: the map's epoch is new to it)
    assert abs(gaps[0] - (0.1 + interval)) < 0.01
    assert abs(gaps[1] - (0.1 + interval)) < 0.01
    assert abs(gaps[2] - (5.0 + PASS_DUTY * 5.0)) < 0.01  # after a 5 s pass: 100 s
    assert abs(gaps[3] - (5.0 + PASS_DUTY * 5.0)) < 0.01
    assert abs(gaps[4] - (0.1 + interval)) < 0.01  # small again: back to the interval


async def test_a_pass_asked_for_starts_at_once_however_long_the_last_took(autojump_clock):
    starts = []
    rec = _recovery([30.0, 0.1], starts)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rec.run)
        await _passes(starts, 1, within=1)
        await trio.sleep(40)  # the 30 s pass ended; the next periodic one is 600 s off
        assert len(starts) == 1
        kicked_at = trio.current_time()
        rec.kick()
        await _passes(starts, 2, within=1)
        nursery.cancel_scope.cancel()
    # (Before, a kick while the loop waited waited for the periodic pass.)
    assert starts[1] - kicked_at < 0.05


async def test_a_degraded_write_brings_the_next_pass_within_the_interval(autojump_clock):
    """Not at once: writes go on degraded while a replica is down, and a pass per
    write would walk every chunk over and over."""
    starts = []
    rec = _recovery([30.0, 0.1, 0.1], starts)
    interval = recovery_module.RECOVERY_INTERVAL
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rec.run)
        await _passes(starts, 1, within=1)
        await trio.sleep(35)  # the 30 s pass ended; the next periodic one is 600 s off
        written_at = trio.current_time()
        for _ in range(100):
            rec._degraded_write()
        await _passes(starts, 2, within=interval)
        # Not at once, and counted from the wait's start (at 30 s): at 40 s.
        assert 4 < starts[1] - written_at < interval - 4
        # ... and with nothing degraded since, the pace is the interval's (0.1 s pass).
        await _passes(starts, 3, within=interval + 1)
        nursery.cancel_scope.cancel()


async def test_a_failed_pass_is_tried_again_within_the_interval(autojump_clock):
    """However long it took to fail, and however long the pass before it took."""
    starts = []
    rec = _recovery([30.0, None, 0.1], starts)
    interval = recovery_module.RECOVERY_INTERVAL
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rec.run)
        await _passes(starts, 1, within=1)
        rec.kick()  # the second pass: it fails after 15 s
        await _passes(starts, 3, within=30 + 15 + interval + 1)
        nursery.cancel_scope.cancel()
    assert abs(starts[2] - (starts[1] + 15 + interval)) < 0.05


async def test_a_pass_that_left_work_is_followed_within_the_interval(autojump_clock):
    """Work a pass can do before the map changes (osd.recovery `run_pass` sets
    `_work_left`: failed pushes, copies outside their sets whose members are
    all up, this copy behind a member that is up): the next pass within the
    interval, however long this one took."""
    interval = recovery_module.RECOVERY_INTERVAL
    starts = []
    rec = _recovery([30.0, 30.0, 0.1], starts)
    first_pass = rec.run_pass

    async def run_pass():
        pushed = await first_pass()
        rec._work_left = len(starts) == 1  # the first pass leaves work, the second none
        return pushed

    rec.run_pass = run_pass
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rec.run)
        await _passes(starts, 3, within=30 + interval + 30 + PASS_DUTY * 30 + 1)
        nursery.cancel_scope.cancel()
    assert abs(starts[1] - starts[0] - (30 + interval)) < 0.05
    # The second left nothing: the pace of a 30 s pass again.
    assert abs(starts[2] - starts[1] - (30 + PASS_DUTY * 30)) < 0.05


async def test_a_kick_or_degraded_write_during_a_pass_is_not_lost(autojump_clock):
    interval = recovery_module.RECOVERY_INTERVAL
    starts = []
    rec = _recovery([30.0, 30.0, 0.1], starts)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rec.run)
        await _passes(starts, 1, within=1)
        await trio.sleep(5)
        rec.kick()  # during the first pass: the next starts as it ends
        await _passes(starts, 2, within=30)
        await trio.sleep(5)
        rec._degraded_write()  # during the second: the next within the interval
        await _passes(starts, 3, within=30 + interval)
        nursery.cancel_scope.cancel()
    assert abs(starts[1] - starts[0] - 30) < 0.05
    assert abs(starts[2] - starts[1] - (30 + interval)) < 0.05


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
