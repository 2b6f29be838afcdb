"""Run a daemon's trio loop under cProfile when LOOMFS_PROFILE asks for it.

``LOOMFS_PROFILE=FILE`` in a daemon's environment (client, OSD or metadata
server) makes it run under cProfile and write the stats to FILE when it stops
cleanly (unmount, SIGTERM, SIGINT).  ``{pid}`` in FILE is replaced by the
process id, so one setting can cover every daemon that ``scripts/cluster up``
starts: ``LOOMFS_PROFILE=/tmp/prof/{pid}.prof``.  Read the stats with
``python -m pstats FILE``.  A killed daemon writes nothing.

By default the times are wall-clock, as cProfile's are: on a busy machine a
call that was merely preempted looks slow.  ``LOOMFS_PROFILE_CLOCK=cpu``
times with the CPU the trio thread itself used (`time.thread_time`), which
says where that thread's CPU goes; waits (epoll, a lock) then cost nothing.
"""

import logging
import os

import trio

log = logging.getLogger(__name__)


def target() -> str | None:
    """Where this process's stats go, or None when it is not profiled."""
    value = os.environ.get("LOOMFS_PROFILE")
    return value.replace("{pid}", str(os.getpid())) if value else None


def run(*args):
    """trio.run(*args), profiled when target() names a file."""
    path = target()
    if path is None:
        return trio.run(*args)
    import cProfile
    import time

    clock = os.environ.get("LOOMFS_PROFILE_CLOCK", "wall")
    if clock not in ("cpu", "wall"):
        log.warning("LOOMFS_PROFILE_CLOCK=%s: not cpu or wall; profiling by wall clock", clock)
    if clock == "cpu":
        profiler = cProfile.Profile(time.thread_time)
    else:
        profiler = cProfile.Profile()
    try:
        return profiler.runcall(trio.run, *args)
    finally:
        try:
            profiler.dump_stats(path)
        except OSError as exc:  # a missing directory must not hide how the run ended
            log.error("cannot write the profile to %s: %s", path, exc)
