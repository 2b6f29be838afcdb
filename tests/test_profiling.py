"""loomproto.profiling: a daemon's trio loop under cProfile, by wall clock or CPU."""

import pstats
import sys
import time

import trio

from loomproto import profiling

# A child that works for about half a second of its own CPU, then exits.
CHILD_WORK = "sum(range(20_000_000))"


async def _wait_for_a_child():
    """The profiled program: its trio thread waits (for a child process's exit,
    under a deadline) and uses almost no CPU meanwhile.  Returns how long the
    wait took."""
    start = time.monotonic()
    with trio.fail_after(60):
        await trio.run_process([sys.executable, "-c", CHILD_WORK])
    return time.monotonic() - start


def _profiled_seconds(path) -> float:
    """The total time the profile gives trio.run."""
    stats = pstats.Stats(str(path)).stats
    return max(cumulative for (_, _, _, cumulative, _) in stats.values())


def test_unprofiled_without_the_variable(monkeypatch):
    monkeypatch.delenv("LOOMFS_PROFILE", raising=False)
    assert profiling.target() is None
    assert profiling.run(_wait_for_a_child) > 0


def test_wall_clock_by_default_and_cpu_when_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("LOOMFS_PROFILE", str(tmp_path / "{pid}-wall.prof"))
    monkeypatch.delenv("LOOMFS_PROFILE_CLOCK", raising=False)
    waited = profiling.run(_wait_for_a_child)
    (wall,) = tmp_path.glob("*-wall.prof")
    assert _profiled_seconds(wall) >= waited  # the wait counts

    monkeypatch.setenv("LOOMFS_PROFILE", str(tmp_path / "{pid}-cpu.prof"))
    monkeypatch.setenv("LOOMFS_PROFILE_CLOCK", "cpu")
    waited = profiling.run(_wait_for_a_child)
    (cpu,) = tmp_path.glob("*-cpu.prof")
    assert waited > 0.2  # (the child's work took that long, so the check below means something)
    assert _profiled_seconds(cpu) < waited / 2  # waiting costs no CPU
