"""Fixtures that run LoomFS clusters through scripts/cluster.

- `Harness(state, bin_dir)` runs scripts/cluster verbs on one state directory and reads
  its nodes.json.  `cluster_script` is scripts/cluster loaded as a module, so the tests
  judge processes and mounts by exactly the harness's rules.
- `cluster` (session): 2 metadata servers, 4 OSDs, 2 replicas, one client mounted at
  ``<tmp>/mnt`` with the harness's default mount options.  Its teardown always runs
  `down`, fails if anything is left mounted or running, then deletes the state.
- `second_client`: another client of the same cluster, unmounted after the test.
- `workdir`: a fresh directory on the mount for one test.

Tests that need a mount skip, with the reason, when /dev/fuse, fusermount3 or the
LoomFS programs are missing.  While a test that uses `cluster` runs, a watchdog thread
checks twice a second that every daemon lives and that the test is within its deadline
(``LOOMFS_TEST_TIMEOUT`` seconds, default 900, or ``@pytest.mark.deadline(S)``).  On a
breach it SIGKILLs the clients, so a call hung on the mount returns an error instead of
hanging the run, and the test fails with the reason and the log tails; the next test
remounts.  A Python traceback written to a node's log during a test fails it too,
unless the test is marked ``allow_log_errors``.
"""

import contextlib
import importlib.machinery
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = REPO / "scripts" / "cluster"
TEST_TIMEOUT = float(os.environ.get("LOOMFS_TEST_TIMEOUT", "900"))
WATCH_INTERVAL = 0.5
TRACEBACK = "Traceback (most recent call last)"
COMPONENTS = ("mdsd/main.py", "osd/main.py", "client/cli.py")
PROGRAMS = ("loomfs", "loomfs-mdsd", "loomfs-osd")


def _load_cluster_script():
    loader = importlib.machinery.SourceFileLoader("loomfs_cluster_script", str(CLUSTER_SCRIPT))
    module = types.ModuleType(loader.name)
    module.__file__ = str(CLUSTER_SCRIPT)
    loader.exec_module(module)
    return module


cluster_script = _load_cluster_script()


def pytest_configure(config):
    config.addinivalue_line("markers", "deadline(seconds): per-test deadline of the watchdog")
    config.addinivalue_line("markers", "allow_log_errors: node logs may hold tracebacks")


def missing_components(components=COMPONENTS, programs=PROGRAMS):
    """Why these LoomFS programs cannot run here, or None."""
    missing = [path for path in components if not (REPO / path).exists()]
    if missing:
        return f"LoomFS components not written yet: {', '.join(missing)}"
    bin_dir = Path(os.environ.get("LOOMFS_BIN", cluster_script.DEFAULT_BIN))
    absent = [name for name in programs if not (bin_dir / name).exists()]
    if absent:
        return f"{', '.join(absent)} not in {bin_dir}: run scripts/install-deps"
    return None


def mount_skip_reason():
    """Why no FUSE mount of LoomFS can be tested here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse missing: no FUSE here (scripts/install-deps loads it as root)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 missing: install Debian's fuse3 (scripts/install-deps does)"
    return missing_components()


class HarnessFailed(Exception):
    pass


class Harness:
    """scripts/cluster on one state directory."""

    def __init__(self, state, bin_dir=None):
        self.state = Path(state)
        self.bin_dir = bin_dir
        self.config = self.state / "cluster.json"

    def run(self, verb, *args, timeout=300, check=True, env=None):
        argv = [sys.executable, str(CLUSTER_SCRIPT), verb, "--state", str(self.state)]
        if self.bin_dir:
            argv += ["--bin", str(self.bin_dir)]
        argv += [str(arg) for arg in args]
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=timeout, env=env)
        if check and done.returncode != 0:
            raise HarnessFailed(f"scripts/cluster {verb} {' '.join(argv[5:])} exited "
                                f"{done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def nodes(self):
        try:
            with open(self.state / "nodes.json") as fp:
                return json.load(fp)["nodes"]
        except FileNotFoundError:
            return {}

    def running(self, kinds=("mds", "osd", "client")):
        return [name for name, node in self.nodes().items()
                if node["kind"] in kinds and cluster_script.is_running(node)]

    def log_tail(self, name, lines=30):
        path = self.state / "logs" / f"{name}.log"
        return f"--- {path} ---\n{cluster_script.log_tail(str(path), lines)}"

    def kill_running(self, kinds):
        """SIGKILL the recorded pids of these kinds (each checked against its argv)."""
        for node in self.nodes().values():
            if node["kind"] in kinds:
                cluster_script.send_signal(node, signal.SIGKILL)

    def close(self, below):
        """`down`, then make sure nothing is left under `below`; report what was."""
        problems = []
        try:
            self.run("down", timeout=180)
        except (HarnessFailed, subprocess.TimeoutExpired) as exc:
            problems.append(str(exc))
        mounted = mounts_below(below)
        for path in mounted:
            subprocess.run(["fusermount3", "-uz", path], capture_output=True, timeout=60)
        running = self.running()
        self.kill_running(("mds", "osd", "client"))
        if mounted:
            problems.append(f"still mounted after down: {mounted}")
        if running:
            problems.append(f"still running after down: {running}")
        return problems


def mounts_below(path):
    prefix = os.path.realpath(path)
    return sorted(mount for mount in cluster_script.mount_points()
                  if mount == prefix or mount.startswith(prefix + "/"))


class LiveCluster(Harness):
    """A running cluster with one client mounted at `mnt`."""

    def __init__(self, base):
        super().__init__(base / "state")
        self.base = base
        self.mnt = base / "mnt"
        self.allowed_dead = set()
        self._mount_numbers = itertools.count(1)

    def up(self, *extra):
        """Start it; `extra` are more arguments of `scripts/cluster up`."""
        self.run("up", "--mds", 2, "--osd", 4, "--replicas", 2, "--mount", self.mnt, *extra)

    def dead_daemons(self):
        return [name for name, node in self.nodes().items()
                if node["kind"] != "client" and name not in self.allowed_dead
                and not cluster_script.is_running(node)]

    def ensure_healthy(self):
        """Fail if a daemon died; remount a client that an earlier watchdog killed."""
        dead = self.dead_daemons()
        if dead:
            tails = "\n".join(self.log_tail(name) for name in dead)
            pytest.fail(f"daemons died before this test: {', '.join(dead)}\n{tails}")
        client = self.nodes()["client0"]
        if not cluster_script.is_running(client):
            self.run("start", "client0")

    def mount_client(self):
        """Mount one more client of this cluster; returns (node name, mount point)."""
        mnt = self.base / f"mnt{next(self._mount_numbers)}"
        done = self.run("mount", mnt)
        return done.stdout.strip().splitlines()[-1], mnt

    def log_sizes(self):
        logs = self.state / "logs"
        return {path.name: path.stat().st_size for path in logs.glob("*.log")}

    def new_tracebacks(self, sizes):
        """Log lines written since `sizes` that start a Python traceback, with context."""
        found = []
        for path in sorted((self.state / "logs").glob("*.log")):
            with open(path, "rb") as fp:
                fp.seek(sizes.get(path.name, 0))
                text = fp.read().decode(errors="replace")
            if TRACEBACK in text:
                start = text.index(TRACEBACK)
                found.append(f"--- {path.name} ---\n{text[start:start + 3000]}")
        return found


@contextlib.contextmanager
def started_cluster(base, *up_args):
    """A LiveCluster under `base`, `scripts/cluster up --mount base/mnt *up_args`;
    skips without FUSE, and is brought down (and checked) afterwards."""
    reason = mount_skip_reason()
    if reason:
        pytest.skip(reason)
    live = LiveCluster(base)
    try:
        live.run("up", *up_args, "--mount", live.mnt)
        yield live
    finally:
        problems = live.close(base)
        assert not problems or mounts_below(base), "\n".join(problems)


class Watchdog(threading.Thread):
    """Kills the clients when the test passes its deadline or a daemon dies."""

    def __init__(self, cluster, seconds):
        super().__init__(name="loomfs-watchdog", daemon=True)
        self.cluster = cluster
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.finished = threading.Event()
        self.reason = None

    def run(self):
        while not self.finished.wait(WATCH_INTERVAL):
            reason = self.breach()
            if reason:
                self.reason = reason
                self.cluster.kill_running(("client",))
                return

    def breach(self):
        if time.monotonic() > self.deadline:
            return f"test still running after its deadline of {self.seconds:g}s"
        dead = self.cluster.dead_daemons()
        if dead:
            tails = "\n".join(self.cluster.log_tail(name) for name in dead)
            return f"daemons died during the test: {', '.join(dead)}\n{tails}"
        return None

    def stop(self):
        self.finished.set()
        self.join()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    reason = mount_skip_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("loomfs")
    live = LiveCluster(base)
    try:
        live.up()
        yield live
    finally:
        problems = live.close(base)
        if not mounts_below(base):
            shutil.rmtree(base, ignore_errors=True)
        assert not problems, "\n".join(problems)


@pytest.fixture(autouse=True)
def _cluster_guard(request):
    """Around each test that uses `cluster`: health check, watchdog, log check."""
    if "cluster" not in request.fixturenames:
        yield
        return
    live = request.getfixturevalue("cluster")
    live.ensure_healthy()
    marker = request.node.get_closest_marker("deadline")
    watchdog = Watchdog(live, marker.args[0] if marker else TEST_TIMEOUT)
    sizes = live.log_sizes()
    watchdog.start()
    yield
    watchdog.stop()
    if watchdog.reason:
        pytest.fail(watchdog.reason)
    tracebacks = live.new_tracebacks(sizes)
    if tracebacks and not request.node.get_closest_marker("allow_log_errors"):
        pytest.fail("node logs hold tracebacks:\n" + "\n".join(tracebacks))


@pytest.fixture
def second_client(cluster):
    """The mount point of another client of `cluster`."""
    name, mnt = cluster.mount_client()
    try:
        yield mnt
    finally:
        cluster.run("umount", name)


@pytest.fixture
def workdir(cluster, request):
    """A new directory on the mount, named after the test."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    path = cluster.mnt / name
    path.mkdir()
    return path
