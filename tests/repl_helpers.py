"""Helpers of the replication tests (tests/test_repl_*.py): a cluster whose OSDs the
test kills and restarts, seeded data streams, and reads that bypass the page cache.

The clusters run with ``--down-after 2`` and the mount option ``io_timeout=IO_TIMEOUT``
so that a failover takes a few seconds.  Every wait polls with a deadline.
"""

import hashlib
import json
import os
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import Harness, cluster_script, mount_skip_reason, mounts_below

LOOMFS = Path(os.environ.get("LOOMFS_BIN", cluster_script.DEFAULT_BIN)) / "loomfs"
IO_TIMEOUT = 12
DOWN_AFTER = 2
BLOCK = 1 << 20


class ReplCluster(Harness):
    """A cluster run by scripts/cluster whose OSDs the test may kill."""

    def __init__(self, base, osds=4, replicas=2, env=None):
        super().__init__(base / "state")
        self.base = base
        self.mnt = base / "mnt"
        self.osds = osds
        self.replicas = replicas
        # Extra environment of every daemon (e.g. LOOMFS_RECOVERY_RATE), None: ours.
        self.env = dict(os.environ, **env) if env else None

    def up(self):
        self.run("up", "--mds", 2, "--osd", self.osds, "--replicas", self.replicas,
                 "--down-after", DOWN_AFTER, "--mount", self.mnt, "--mount-opts",
                 f"allow_other,default_permissions,io_timeout={IO_TIMEOUT}", env=self.env)

    def loomfs(self, *args, timeout=120, check=True):
        done = subprocess.run([str(LOOMFS), *map(str, args), "--cluster", str(self.config)],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(f"loomfs {' '.join(map(str, args))} exited "
                                 f"{done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def status(self):
        return json.loads(self.loomfs("status", "--json", check=False).stdout)

    def wait_osd(self, osd_id, up, timeout=30):
        def state():
            osd = next(o for o in self.status()["osds"] if o["id"] == osd_id)
            return osd["up"] == up
        cluster_script.wait_for(state, timeout, f"osd{osd_id} to be {'up' if up else 'down'}")

    def kill(self, osd_id):
        self.run("kill", f"osd{osd_id}")

    def restart(self, osd_id):
        self.run("start", f"osd{osd_id}", env=self.env)
        self.wait_osd(osd_id, True)

    def wait_healthy(self, seconds=90):
        start = time.monotonic()
        done = self.loomfs("status", "--wait-healthy", seconds, timeout=seconds + 60,
                           check=False)
        assert done.returncode == 0, f"not healthy after {seconds}s:\n{done.stdout}{done.stderr}"
        return time.monotonic() - start

    def chunk_path(self, osd_id, ino, chunk_index):
        return (self.state / f"osd{osd_id}" / "chunks" / f"{ino % 256:02x}" / f"{ino:x}"
                / str(chunk_index))

    def getstripe(self, path):
        """{slot: [osd ids, primary first]} of a file."""
        out = self.loomfs("getstripe", path).stdout
        slots = {}
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("slot "):
                head, osds = line.split(": osds ")
                slots[int(head.split()[1])] = [int(x) for x in osds.split(" (")[0].split()]
        return slots

    def log_text(self, name):
        return (self.state / "logs" / f"{name}.log").read_text(errors="replace")

    def tracebacks(self):
        return [p.name for p in (self.state / "logs").glob("*.log")
                if "Traceback (most recent call last)" in p.read_text(errors="replace")]


def repl_cluster_fixture(tmp_path_factory, **kwargs):
    reason = mount_skip_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("repl")
    live = ReplCluster(base, **kwargs)
    return base, live


def close_cluster(base, live):
    problems = live.close(base)
    if not mounts_below(base):
        shutil.rmtree(base, ignore_errors=True)
    return problems


def running_cluster(tmp_path_factory, **kwargs):
    """The body of a module-scoped fixture: a started ReplCluster, always closed."""
    base, live = repl_cluster_fixture(tmp_path_factory, **kwargs)
    try:
        live.up()
        yield live
    finally:
        problems = close_cluster(base, live)
        assert not problems, "\n".join(problems)


def drop_page_cache():
    """Reads must reach the OSDs, not the kernel's cache of the mount (needs root)."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fp:
            fp.write("1\n")
    except OSError as exc:
        pytest.skip(f"cannot drop the page cache: {exc}")


def seeded_blocks(seed, nblocks):
    rng = random.Random(seed)
    for _ in range(nblocks):
        yield rng.randbytes(BLOCK)


class Progress(threading.Thread):
    """Runs `work(progress)` in a thread; `progress[0]` counts blocks done."""

    def __init__(self, work):
        super().__init__(daemon=True)
        self.work = work
        self.progress = [0]
        self.result = None
        self.error = None
        self.elapsed = None

    def run(self):
        start = time.monotonic()
        try:
            self.result = self.work(self.progress)
        except BaseException as exc:  # reported by the test
            self.error = exc
        self.elapsed = time.monotonic() - start

    def wait_progress(self, blocks, timeout):
        cluster_script.wait_for(lambda: self.progress[0] >= blocks or not self.is_alive(),
                                timeout, f"{blocks} blocks of progress")

    def finish(self, timeout):
        self.join(timeout)
        assert not self.is_alive(), f"still running after {timeout}s"
        if self.error is not None:
            raise self.error
        return self.result


def write_synced(path, data: bytes) -> None:
    """Write `data` to a new file at `path` and fsync it before closing."""
    with open(path, "wb") as fp:
        fp.write(data)
        fp.flush()
        os.fsync(fp.fileno())


def write_file(path, seed, nblocks, fsync=True):
    """A writer for `Progress`: seeded blocks, fsync, close; returns the sha256."""
    def work(progress):
        digest = hashlib.sha256()
        with open(path, "wb") as fp:
            for block in seeded_blocks(seed, nblocks):
                fp.write(block)
                digest.update(block)
                progress[0] += 1
            fp.flush()
            if fsync:
                os.fsync(fp.fileno())
        return digest.hexdigest()
    return work


def read_file(path):
    """A reader for `Progress`: returns the sha256 of the file."""
    def work(progress):
        digest = hashlib.sha256()
        with open(path, "rb") as fp:
            while block := fp.read(BLOCK):
                digest.update(block)
                progress[0] += 1
        return digest.hexdigest()
    return work


def sha_of(path, timeout=120):
    reader = Progress(read_file(path))
    reader.start()
    return reader.finish(timeout)
