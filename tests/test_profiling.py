"""loomproto.profiling: a daemon's trio loop under cProfile, by wall clock or CPU."""

import pstats

import trio

from loomproto import profiling


async def _idle():
    await trio.sleep(0.3)  # the profiled program: it waits and uses no CPU
    return "done"


def _profiled_seconds(path) -> float:
    """The total time the profile gives trio.run."""
    stats = pstats.Stats(str(path)).stats
    return max(cumulative for (_, _, _, cumulative, _) in stats.values())


def test_unprofiled_without_the_variable(monkeypatch):
    monkeypatch.delenv("LOOMFS_PROFILE", raising=False)
    assert profiling.target() is None
    assert profiling.run(_idle) == "done"


def test_wall_clock_by_default_and_cpu_when_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("LOOMFS_PROFILE", str(tmp_path / "{pid}-wall.prof"))
    monkeypatch.delenv("LOOMFS_PROFILE_CLOCK", raising=False)
    assert profiling.run(_idle) == "done"
    (wall,) = tmp_path.glob("*-wall.prof")
    assert _profiled_seconds(wall) >= 0.3  # the sleep counts

    monkeypatch.setenv("LOOMFS_PROFILE", str(tmp_path / "{pid}-cpu.prof"))
    monkeypatch.setenv("LOOMFS_PROFILE_CLOCK", "cpu")
    assert profiling.run(_idle) == "done"
    (cpu,) = tmp_path.glob("*-cpu.prof")
    assert _profiled_seconds(cpu) < 0.15  # waiting costs no CPU
