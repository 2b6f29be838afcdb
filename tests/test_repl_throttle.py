"""Recovery is throttled so client I/O goes on (issue 6: "The work is throttled so
client I/O continues"), on a real cluster of 2 metadata servers and 4 OSDs with 2
replicas, OSDs marked down after 2 s of silence.

One OSD is killed, a file of ``LOOMFS_REPL_MB`` MiB is written past it, and it
comes back.  While the others push it the chunks it missed (each OSD at most
``LOOMFS_RECOVERY_RATE`` bytes/s, by default a rate that makes the catch-up
last at least two io_timeouts), a client writes and fsyncs 1 MiB files and
reads back 1 MiB blocks of the missed file, over and over, until the cluster
is healthy.  Every operation must finish within the mount's io_timeout, one
must finish before the catch-up can have ended, and every byte read and
written is checked.  The catch-up rate and the client's throughput meanwhile
are printed (run with ``-s``).
"""

import hashlib
import os
import threading
import time

import pytest

from repl_helpers import (BLOCK, IO_TIMEOUT, drop_page_cache, running_cluster,
                          seeded_blocks)

pytestmark = pytest.mark.mount

BIG_MB = int(os.environ.get("LOOMFS_REPL_MB", "192"))
SEED = int(os.environ.get("LOOMFS_REPL_SEED", "6062"))
PUSHERS = 3  # the OSDs that share the chunks of the returning one
# About half the file is missed; spread over the pushers it must take at least
# FLOOR seconds at this rate, whatever the machine's speed.
FLOOR = 2 * IO_TIMEOUT
RATE = int(os.environ.get("LOOMFS_RECOVERY_RATE",
                          max(64 << 10, (BIG_MB << 20) // 2 // PUSHERS // FLOOR)))
VICTIM = 1
BASELINE_OPS = 20


@pytest.fixture(scope="module")
def repl(tmp_path_factory):
    yield from running_cluster(tmp_path_factory, env={"LOOMFS_RECOVERY_RATE": str(RATE)})


class ClientLoad(threading.Thread):
    """Alternates 1 MiB write+fsync of a new file and a 1 MiB read of `missed`
    until stopped; records ``(kind, start, end)`` of every operation."""

    def __init__(self, mnt, missed, digests, count=None):
        super().__init__(daemon=True)
        self.mnt, self.missed, self.digests = mnt, missed, digests
        self.count = count  # operations to do, None: until stopped
        self.stop = threading.Event()
        self.ops = []
        self.written = {}  # path -> sha256
        self.error = None

    def run(self):
        try:
            step = 0
            while not self.stop.is_set() and step != self.count:
                if step % 2 == 0:
                    self._write(step)
                else:
                    self._read(step)
                step += 1
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _timed(self, kind, fn):
        start = time.monotonic()
        fn()
        self.ops.append((kind, start, time.monotonic()))

    def _write(self, step):
        path = self.mnt / f"load-{step}"
        data = os.urandom(BLOCK)
        self.written[path] = hashlib.sha256(data).hexdigest()

        def work():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        self._timed("write", work)

    def _read(self, step):
        index = (step * 7) % len(self.digests)
        drop_page_cache()

        def work():
            fd = os.open(self.missed, os.O_RDONLY)
            try:
                data = os.pread(fd, BLOCK, index * BLOCK)
            finally:
                os.close(fd)
            assert hashlib.sha256(data).hexdigest() == self.digests[index], \
                f"block {index} of the missed file read back wrong"
        self._timed("read", work)


def _write_seeded(path, seed, nblocks):
    """A file of seeded 1 MiB blocks, fsynced; returns the sha256 of each block."""
    digests = []
    with open(path, "wb") as fp:
        for block in seeded_blocks(seed, nblocks):
            fp.write(block)
            digests.append(hashlib.sha256(block).hexdigest())
        fp.flush()
        os.fsync(fp.fileno())
    return digests


def _throughput(ops) -> float:
    """MiB/s of 1 MiB operations over the span they cover."""
    if not ops:
        return 0.0
    return len(ops) / max(1e-6, ops[-1][2] - ops[0][1])


def _baseline(repl) -> float:
    """The client's MiB/s with no recovery running, for comparison."""
    path = repl.mnt / "baseline"
    digests = _write_seeded(path, SEED - 1, BASELINE_OPS)
    load = ClientLoad(repl.mnt, path, digests, count=BASELINE_OPS)
    load.run()
    if load.error is not None:
        raise load.error
    return _throughput(load.ops)


def _recovered(repl):
    return sum(o["stats"].get("recovered", 0) for o in repl.status()["osds"])


def _wait_healthy_since(repl, deadline):
    """Poll until healthy; returns the time it was first seen so."""
    while time.monotonic() < deadline:
        if repl.status()["recovery"]["healthy"]:
            return time.monotonic()
    raise AssertionError("the cluster did not become healthy in time")


def test_client_io_goes_on_while_a_returning_osd_catches_up(repl):
    print(f"seed {SEED}, {BIG_MB} MiB, recovery rate {RATE} B/s per osd")
    repl.wait_healthy(60)
    baseline = _baseline(repl)
    path = repl.mnt / "missed"
    repl.kill(VICTIM)
    repl.wait_osd(VICTIM, False)
    digests = _write_seeded(path, SEED, BIG_MB)
    slots = repl.getstripe(path)
    missed = sum(1 for index in range(BIG_MB) if VICTIM in slots[index % len(slots)])
    recovered_before = _recovered(repl)

    load = ClientLoad(repl.mnt, path, digests)
    repl.restart(VICTIM)
    back = time.monotonic()
    load.start()
    try:
        healthy = _wait_healthy_since(repl, back + 600)
    finally:
        load.stop.set()
        load.join(IO_TIMEOUT * 4)
    assert not load.is_alive(), "a client operation hung"
    if load.error is not None:
        raise load.error
    pushed = _recovered(repl) - recovered_before

    window = healthy - back
    during = [op for op in load.ops if op[2] <= healthy]
    slowest = max(load.ops, key=lambda op: op[2] - op[1])
    moved = len(during) * BLOCK / (1 << 20)
    print(f"catch-up: {missed} chunks ({missed} MiB) missed, {pushed} pushed, "
          f"healthy {window:.1f}s after the return: {missed / window:.1f} MiB/s")
    print(f"client meanwhile: {len(during)} ops of 1 MiB "
          f"({sum(op[0] == 'write' for op in during)} write+fsync), "
          f"{moved / window:.1f} MiB/s (without recovery {baseline:.1f} MiB/s); "
          f"slowest {slowest[0]} {slowest[2] - slowest[1]:.2f}s")

    assert pushed > 0, "nothing was pushed to the returning osd"
    assert slowest[2] - slowest[1] < IO_TIMEOUT, f"a {slowest[0]} stalled during recovery"
    # What the throttle alone makes the catch-up last (reads pull chunks sooner,
    # but only by finishing).  A rate raised by hand may end it before any op.
    floor = (missed - 2 * PUSHERS) * BLOCK / (PUSHERS * RATE)
    if floor >= FLOOR:
        assert during, f"no client operation finished in the {window:.0f}s of the catch-up"
    for written, digest in load.written.items():
        drop_page_cache()
        assert hashlib.sha256(written.read_bytes()).hexdigest() == digest
