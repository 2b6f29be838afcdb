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
    rec.stats = {"degraded": 0, "misplaced": 0, "recovering": 0}
    rec._clean_gen = rec._stale_gen = 1  # not suspect
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
        assert starts[1] - written_at < interval - 4  # counted from the wait's start
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
    """Copies left outside their sets (after a rebalance), degraded chunks, failed
    pushes or a copy still suspect: the next pass within the interval, however
    long this one took."""
    interval = recovery_module.RECOVERY_INTERVAL
    for left in ({"misplaced": 3}, {"degraded": 1}, {"recovering": 2}, {"suspect": True}):
        starts = []
        rec = _recovery([30.0, 0.1], starts)
        first_pass = rec.run_pass

        async def run_pass(left=left, first_pass=first_pass, rec=rec):
            pushed = await first_pass()
            if len(starts) == 1:
                if left.get("suspect"):
                    rec._stale_gen += 1
                else:
                    rec.stats.update(left)
            else:
                rec.stats.update(degraded=0, misplaced=0, recovering=0)
                rec._clean_gen = rec._stale_gen
            return pushed

        rec.run_pass = run_pass
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rec.run)
            await _passes(starts, 2, within=30 + interval + 1)
            nursery.cancel_scope.cancel()
        assert abs(starts[1] - starts[0] - (30 + interval)) < 0.05, left


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
