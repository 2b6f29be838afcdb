"""What `scripts/bench` and `scripts/bench-meta` share: the targets they measure.

Each target is a context manager that yields the directory to measure and stops
everything it started, by the pid recorded for it:

  Local     a directory on the local disk (the machine's ceiling)
  Gluster   a GlusterFS 4-brick volume on loopback (../shared/bench/peers.sh)
  Loom      a local LoomFS cluster through `scripts/cluster`, with its mount

Scratch data lives under a base folder outside the repository.
"""

import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.path.join(REPO, ".venv", "bin", "python")


def log(message):
    print(message, file=sys.stderr, flush=True)


def shared_dir() -> str:
    path = os.environ.get("LOOMFS_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
    if not os.path.isdir(os.path.join(path, "bench")):
        sys.exit(f"bench: no benchmark harness at {path}/bench (set LOOMFS_SHARED)")
    return path


def wait_until(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)  # polls the predicate, up to the deadline above


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, from /proc (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def machine_busy(before, after) -> float:
    """Share of every core that was busy (anyone's processes) between two samples."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else 0.0


def dirty_bytes() -> int:
    """Bytes of page cache waiting for or under writeback, from /proc/meminfo."""
    total = 0
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Dirty", "Writeback"):
                total += int(rest.split()[0]) * 1024
    return total


def settle(seconds: float = 60.0, busy_below: float = 0.10,
           dirty_below: int = 32 << 20) -> float:
    """Before a target is measured: sync, then wait (at most `seconds`) until the
    machine is quiet, that is under `busy_below` of its cores busy over half a
    second and under `dirty_below` bytes of page cache dirty.  The target run
    before may leave work behind that would be charged to this one: GlusterFS's
    bricks flushing their files, a cluster's processes winding down.  Returns
    the seconds waited; a machine that stays busy is measured anyway (logged)."""
    start = time.monotonic()
    os.sync()
    while True:
        before = machine_ticks()
        time.sleep(0.5)  # the span the busy share is measured over, not a wait for an event
        busy = machine_busy(before, machine_ticks())
        dirty = dirty_bytes()
        if busy < busy_below and dirty < dirty_below:
            return time.monotonic() - start
        if time.monotonic() - start > seconds:
            log(f"bench: the machine is still busy ({busy:.0%} of its cores, "
                f"{dirty >> 20} MiB dirty) after {seconds:.0f} s; measuring anyway")
            return time.monotonic() - start


class Local:
    def __init__(self, base):
        self.dir = os.path.join(base, "local")

    def __enter__(self):
        os.makedirs(self.dir, exist_ok=True)
        return self.dir

    def __exit__(self, *exc):
        shutil.rmtree(self.dir, ignore_errors=True)

    def processes(self) -> dict:
        return {}


class Gluster:
    PID_DIR = "/var/run/gluster/vols/loombench"

    def __init__(self, base, shared):
        self.base = base
        self.peers = os.path.join(shared, "bench", "peers.sh")

    def __enter__(self):
        subprocess.run(["bash", self.peers, "gluster-up", self.base], check=True)
        return os.path.join(self.base, "mnt_gl")

    def __exit__(self, *exc):
        subprocess.run(["bash", self.peers, "gluster-down", self.base], check=False)

    def processes(self) -> dict:
        """The brick daemons, by the pid files GlusterFS writes (peers.sh stops them so)."""
        found = {}
        if os.path.isdir(self.PID_DIR):
            for number, name in enumerate(sorted(os.listdir(self.PID_DIR))):
                with open(os.path.join(self.PID_DIR, name)) as f:
                    found[f"brick{number}"] = int(f.read().strip())
        return found


class Loom:
    """A LoomFS cluster of `mds` shards and `osd` OSDs, mounted with make up's options."""

    def __init__(self, base, replicas, mds=2, osd=4):
        self.name = f"loom_m{mds}_r{replicas}"
        self.state = os.path.join(base, self.name)
        self.mnt = os.path.join(base, f"mnt_{self.name}")
        self.replicas, self.mds, self.osd = replicas, mds, osd

    def _cluster(self, *args, check=True):
        cmd = [PYTHON, os.path.join(REPO, "scripts", "cluster"), *args, "--state", self.state]
        return subprocess.run(cmd, check=check)

    def __enter__(self):
        os.makedirs(self.mnt, exist_ok=True)
        self._cluster("up", "--mds", str(self.mds), "--osd", str(self.osd),
                      "--replicas", str(self.replicas), "--mount", self.mnt)
        return self.mnt

    def __exit__(self, *exc):
        self._cluster("down", check=False)
        shutil.rmtree(self.state, ignore_errors=True)

    def _recorded(self) -> dict:
        with open(os.path.join(self.state, "nodes.json")) as f:
            return json.load(f)

    @property
    def config(self) -> str:
        return self._recorded()["config"]

    def processes(self) -> dict:
        """Every metadata server and the FUSE client, by the pids the harness recorded."""
        nodes = self._recorded()["nodes"]
        return {("fuse" if name.startswith("client") else name): node["pid"]
                for name, node in nodes.items()
                if node.get("pid") and (name.startswith("mds") or name.startswith("client"))}
