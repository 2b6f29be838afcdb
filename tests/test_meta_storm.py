"""Metadata storm with metadata servers SIGKILLed and restarted at random moments.

A cluster of 3 shards and 2 OSDs is started with scripts/cluster; files with
random contents are written through the mount and their checksums kept.  Then
`STORM_CLIENTS` processes (tests/meta_storm_worker.py) run random cross-shard
mkdir/rmdir/create/link/unlink/rename/exchange on one shared pool of names
while this test kills and restarts a random metadata server every second or
two.  Afterwards `loomfs fsck` must find no fault, and every file written
before the storm must read back with its checksum.

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

from conftest import REPO, LiveCluster, mount_skip_reason, mounts_below

SEED = int(os.environ.get("LOOMFS_STORM_SEED", "20261204"))
SECONDS = float(os.environ.get("LOOMFS_STORM_SECONDS", "20"))
STORM_CLIENTS = 3
SHARDS = 3
LOOMFS = os.path.join(os.path.dirname(sys.executable), "loomfs")


@pytest.fixture
def storm_cluster(tmp_path):
    reason = mount_skip_reason()
    if reason:
        pytest.skip(reason)
    live = LiveCluster(tmp_path)
    try:
        live.run("up", "--mds", SHARDS, "--osd", 2, "--replicas", 1, "--mount", live.mnt)
        yield live
    finally:
        problems = live.close(tmp_path)
        assert not problems or mounts_below(tmp_path), "\n".join(problems)


def write_files(mnt, rng) -> dict:
    keep = mnt / "keep"
    keep.mkdir()
    sums = {}
    for i in range(8):
        data = rng.randbytes(rng.choice((0, 100, 70_000, 1 << 20, 2_500_000)))
        (keep / f"f{i}").write_bytes(data)
        sums[f"f{i}"] = hashlib.sha256(data).hexdigest()
    return sums


def start_workers(live, seed):
    worker = os.path.join(REPO, "tests", "meta_storm_worker.py")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return [subprocess.Popen([sys.executable, worker, str(live.config), str(seed * 100 + k),
                              str(SECONDS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=REPO, env=env)
            for k in range(STORM_CLIENTS)]


def kill_until_done(live, rng, workers) -> list:
    """Kill and restart random metadata servers until every worker exits."""
    kills = []
    while any(w.poll() is None for w in workers):
        # Pacing of the fault injection (not synchronisation): a kill every 0.5-2 s.
        time.sleep(rng.uniform(0.5, 2.0))
        node = f"mds{rng.randrange(SHARDS)}"
        live.run("kill", node)
        time.sleep(rng.uniform(0.0, 0.8))
        live.run("start", node)
        kills.append(node)
    return kills


def fsck_until_settled(live, deadline: float):
    """`loomfs fsck` until no transaction is pending (recovery still running)."""
    while True:
        done = subprocess.run([LOOMFS, "fsck", "-q", "--cluster", str(live.config)],
                              capture_output=True, text=True, timeout=300)
        if "PENDING transaction" not in done.stdout or time.monotonic() > deadline:
            return done
        time.sleep(0.5)  # polling the cluster's own recovery, with a deadline


@pytest.mark.slow
def test_storm_with_mds_kills(storm_cluster):
    live = storm_cluster
    print(f"storm seed {SEED} (LOOMFS_STORM_SEED={SEED} reproduces), {SECONDS:g}s")
    rng = random.Random(SEED)
    sums = write_files(live.mnt, rng)
    for i in range(4):
        (live.mnt / "storm" / f"d{i}").mkdir(parents=True)

    workers = start_workers(live, SEED)
    try:
        kills = kill_until_done(live, rng, workers)
    finally:
        outputs = [w.communicate(timeout=180) for w in workers]
    print(f"killed and restarted: {kills}")
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, f"storm worker failed:\n{err[-3000:]}"
        report = json.loads(out.strip().splitlines()[-1])
        print(report)
        assert not report["unexpected"], report
        assert sum(report["done"].values()) > 0, report

    done = fsck_until_settled(live, time.monotonic() + 60)
    assert done.returncode == 0, f"fsck exit {done.returncode}:\n{done.stdout}{done.stderr}"
    for name, digest in sums.items():
        data = (live.mnt / "keep" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, f"keep/{name} changed"
