"""Metadata storms with metadata servers SIGKILLed and restarted at random moments.

A cluster of 3 shards and 2 OSDs is started with scripts/cluster; files with
random contents are written through the mount and their checksums kept.  Then
`STORM_CLIENTS` processes (tests/meta_storm_worker.py) run random cross-shard
mkdir/rmdir/create/link/unlink/rename/exchange on one shared pool of names
while this test kills and restarts a random metadata server every second or
two: once through the client's RPC path (`client.meta.Meta`), once by
syscalls through two FUSE mounts of the cluster (the workers alternate between
them).  Afterwards `loomfs fsck` must find no fault, and every file written
before the storm must read back with its checksum (through each mount).

Through the mounts, a failed call must fail with an errno a namespace race
gives (ENOENT, EEXIST, ...) or one that says the metadata service was
unreachable (EIO, ETIMEDOUT, EAGAIN), and no call may take longer than
`CALL_BOUND` (the mounts' mds_timeout plus recovery): a longer one is a hang.

The seed is printed; LOOMFS_STORM_SEED=N reproduces a run, LOOMFS_STORM_SECONDS
sets its length (default 20).
"""

import hashlib
import json
import os
import random
import subprocess
import sys
import time

import pytest

from conftest import REPO, started_cluster

SEED = int(os.environ.get("LOOMFS_STORM_SEED", "20261204"))
SECONDS = float(os.environ.get("LOOMFS_STORM_SECONDS", "20"))
STORM_CLIENTS = 3
SHARDS = 3
MDS_TIMEOUT = 20
CALL_BOUND = 3 * MDS_TIMEOUT
MOUNT_OPTS = f"allow_other,default_permissions,mds_timeout={MDS_TIMEOUT}"
LOOMFS = os.path.join(os.path.dirname(sys.executable), "loomfs")
WORKER = os.path.join(REPO, "tests", "meta_storm_worker.py")


@pytest.fixture
def storm_cluster(tmp_path):
    with started_cluster(tmp_path, "--mds", SHARDS, "--osd", 2, "--replicas", 1,
                         "--mount-opts", MOUNT_OPTS) as live:
        yield live


def write_files(mnt, rng) -> dict:
    keep = mnt / "keep"
    keep.mkdir()
    sums = {}
    for i in range(8):
        data = rng.randbytes(rng.choice((0, 100, 70_000, 1 << 20, 2_500_000)))
        (keep / f"f{i}").write_bytes(data)
        sums[f"f{i}"] = hashlib.sha256(data).hexdigest()
    for i in range(4):
        (mnt / "storm" / f"d{i}").mkdir(parents=True)
    return sums


def start_workers(seed, targets):
    """One worker per target: argv before the seed (CFG, or --mount DIR)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.path.join(REPO, "tests")]))
    return [subprocess.Popen([sys.executable, WORKER, *target, str(seed * 100 + k),
                              str(SECONDS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=REPO, env=env)
            for k, target in enumerate(targets)]


def kill_until_done(live, rng, workers) -> list:
    """Kill and restart random metadata servers until every worker exits (or, for
    workers that hang, until the storm's time bound passes)."""
    kills = []
    deadline = time.monotonic() + SECONDS + CALL_BOUND + 30
    while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
        # A kill every 0.5-2 s, and down for up to 0.8 s, unless the workers end first.
        if workers_done(workers, rng.uniform(0.5, 2.0)):
            break
        node = f"mds{rng.randrange(SHARDS)}"
        live.run("kill", node)
        workers_done(workers, rng.uniform(0.0, 0.8))
        live.run("start", node)  # restarted also when the workers just ended
        kills.append(node)
    return kills


def workers_done(workers, seconds: float) -> bool:
    """Wait up to `seconds` for the first running worker to exit; True if all have."""
    running = [w for w in workers if w.poll() is None]
    if running:
        try:
            running[0].wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return False
    return all(w.poll() is not None for w in workers)


def reports_of(workers) -> list[dict]:
    """Each worker's JSON report; a worker still running now hangs."""
    reports = []
    for worker in workers:
        try:
            out, err = worker.communicate(timeout=CALL_BOUND)
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            pytest.fail(f"storm worker {worker.pid} still running {CALL_BOUND}s after the "
                        f"storm: a call hangs")
        assert worker.returncode == 0, f"storm worker failed:\n{err[-3000:]}"
        reports.append(json.loads(out.strip().splitlines()[-1]))
        print(reports[-1])
    return reports


def fsck_until_settled(live, deadline: float):
    """`loomfs fsck` until no transaction is pending (recovery still running)."""
    while True:
        done = subprocess.run([LOOMFS, "fsck", "-q", "--cluster", str(live.config)],
                              capture_output=True, text=True, timeout=300)
        if "PENDING transaction" not in done.stdout:
            return done
        assert time.monotonic() < deadline, \
            f"transactions still pending when the deadline passed:\n{done.stdout}"
        time.sleep(0.5)  # polling the cluster's own recovery, with a deadline


def check_after_storm(live, sums, mounts):
    done = fsck_until_settled(live, time.monotonic() + 60)
    assert done.returncode == 0, f"fsck exit {done.returncode}:\n{done.stdout}{done.stderr}"
    for mnt in mounts:
        for name, digest in sums.items():
            data = (mnt / "keep" / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == digest, f"{mnt}/keep/{name} changed"


def storm(live, rng, targets) -> list[dict]:
    """Run one worker per target while metadata servers are killed; their reports,
    each checked for unexpected errors and for having done something."""
    workers = start_workers(SEED, targets)
    try:
        print(f"killed and restarted: {kill_until_done(live, rng, workers)}")
        reports = reports_of(workers)
    finally:
        for worker in workers:
            worker.kill()
    for report in reports:
        assert not report["unexpected"], report
        assert sum(report["done"].values()) > 0, report
    return reports


@pytest.mark.slow
def test_storm_with_mds_kills(storm_cluster):
    live = storm_cluster
    print(f"storm seed {SEED} (LOOMFS_STORM_SEED={SEED} reproduces), {SECONDS:g}s")
    rng = random.Random(SEED)
    sums = write_files(live.mnt, rng)
    storm(live, rng, [[str(live.config)]] * STORM_CLIENTS)
    check_after_storm(live, sums, [live.mnt])


@pytest.mark.slow
def test_mount_storm_with_mds_kills(storm_cluster):
    live = storm_cluster
    print(f"mount storm seed {SEED} (LOOMFS_STORM_SEED={SEED} reproduces), {SECONDS:g}s")
    rng = random.Random(SEED + 1)
    sums = write_files(live.mnt, rng)
    second = live.base / "mnt1"
    live.run("mount", second, "--mount-opts", MOUNT_OPTS)
    mounts = [live.mnt, second]

    targets = [["--mount", str(mounts[k % 2] / "storm")] for k in range(STORM_CLIENTS)]
    for report in storm(live, rng, targets):
        assert report["slowest_call_s"] < CALL_BOUND, report
    check_after_storm(live, sums, mounts)
