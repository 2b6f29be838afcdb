"""`loomfs mount`: connect to a cluster, mount it with pyfuse3, serve until unmounted.

Without ``--foreground`` the command forks; the parent returns 0 once the
mount is live, or prints the child's error and returns 1.  The child serves
until the filesystem is unmounted (``umount``/``fusermount3 -u``) or it gets
SIGTERM/SIGINT, which unmount it.

Mount options (``-o``): LoomFS's own, removed before the rest go to FUSE:
``attr_timeout=S``, ``entry_timeout=S`` (kernel cache lifetimes, default 1),
``negative_timeout=S`` (how long the kernel keeps "no such name", default 0),
``write_window=BYTES`` (dirty bytes gathered per file before they are sent,
default 16 MiB; 0 sends every write before it returns), ``readahead_kb=N``
(the mount's kernel read-ahead, default 4096), ``mds_timeout=S`` (how long a
metadata call retries an unreachable shard before EIO, and waits for a shard
that holds its connection open without answering before ETIMEDOUT; default 60),
``io_timeout=S`` (the same for OSDs, default 60), ``unlink_window=N`` (unlinks
of files answered before their commit, at most N in flight, default 64; 0
answers each after its commit; see client.behind), ``create_window=N`` (the
same for create(2) in a directory this client holds a lease on, default 64),
``statahead=0`` (lookups of
many names of one directory are no longer answered from a listing fetched
ahead; on by default, see client.statahead), ``writeback_cache`` (the
kernel's writeback cache: write() returns once the bytes are in the page
cache and the kernel sends them in the background; off by default, see
README "Kernel writeback cache" for the trade-off), ``fast_wait=0`` (pyfuse3's
workers wait for every request as pyfuse3 has them do; on by default, see
client.fuseloop).  With LOOMFS_PROFILE=FILE in
its environment the client runs under cProfile and writes the stats to FILE
at unmount (loomproto.profiling).  Everything else (allow_other,
default_permissions, ro, ...) is passed to FUSE.  The defaults used by
``make up``, ``make test`` and ``make bench`` are DEFAULT_OPTIONS.
"""

import logging
import os
import signal
import subprocess
import sys

import pyfuse3
import trio

from loomproto import config as cluster_config
from loomproto import errors, profiling
from loomproto.memory import keep_freed_memory

from . import fuseloop
from .cluster import Cluster
from .data import DataPath
from .meta import Meta
from .ops import LoomOperations

log = logging.getLogger(__name__)

UNMOUNT_CLOSES_SECONDS = 2.0  # at unmount, how long queued closes may take to leave
# At unmount, how long unlinks answered before their commit may take to land
# (client.behind).  Below the 20 s that scripts/cluster waits after its SIGTERM.
UNMOUNT_UNLINKS_SECONDS = 15.0

DEFAULT_OPTIONS = "allow_other,default_permissions"
_OWN_OPTIONS = {"attr_timeout": float, "entry_timeout": float, "negative_timeout": float,
                "write_window": int,
                "readahead_kb": int, "mds_timeout": float, "io_timeout": float,
                "debug_faults": bool, "writeback_cache": bool, "unlink_window": int,
                "create_window": int, "statahead": bool, "fast_wait": bool}
# Below these a setting makes no sense: every call would time out at once, or
# nothing could be gathered.  (attr_timeout and entry_timeout may be 0: no cache.)
_LEAST = {"attr_timeout": 0.0, "entry_timeout": 0.0, "negative_timeout": 0.0,
          "write_window": 0,
          "readahead_kb": 0, "mds_timeout": 0.1, "io_timeout": 0.1, "unlink_window": 0,
          "create_window": 0}
_DROPPED = {"rw", "defaults", "auto", "noauto", "user", "nouser", "nofail", "_netdev",
            "exec", "async"}


class MountError(Exception):
    pass


def parse_options(text: str) -> tuple[dict, set]:
    """Split ``-o`` text into LoomFS settings and the FUSE option set."""
    own = {"attr_timeout": 1.0, "entry_timeout": 1.0, "negative_timeout": 0.0,
           "write_window": 16 << 20,
           "readahead_kb": 4096, "mds_timeout": 60.0, "io_timeout": 60.0,
           "debug_faults": False, "writeback_cache": False, "unlink_window": 64,
           "create_window": 64, "statahead": True, "fast_wait": True}
    fuse = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        if key in _OWN_OPTIONS and _OWN_OPTIONS[key] is bool:
            own[key] = value in ("", "1", "yes", "true")
        elif key in _OWN_OPTIONS:
            try:
                own[key] = _OWN_OPTIONS[key](value)
            except ValueError:
                raise MountError(f"option {key} needs a number, got {value!r}") from None
            if not own[key] >= _LEAST[key]:  # (also refuses nan)
                raise MountError(f"option {key}={value} is below its least value "
                                 f"{_LEAST[key]:g}")
        elif key not in _DROPPED:
            fuse.add(item)
    return own, fuse


def check_mountpoint(path: str, options: set) -> None:
    if not os.path.isdir(path):
        raise MountError(f"mount point {path} does not exist or is not a directory")
    if os.path.ismount(path):
        raise MountError(f"{path} is already a mount point")
    if "nonempty" not in options and os.listdir(path):
        raise MountError(f"mount point {path} is not empty")


def run(cluster: str, mountpoint: str, opts: str, foreground: bool, debug: bool,
        logfile: str | None) -> int:
    try:
        config = cluster_config.load(cluster)
        own, fuse_options = parse_options(opts)
        mountpoint = os.path.abspath(mountpoint)
        check_mountpoint(mountpoint, fuse_options)
    except (MountError, cluster_config.ConfigError, ValueError) as exc:
        print(f"loomfs mount: {exc}", file=sys.stderr)
        return 1
    if foreground:
        _setup_logging(debug, logfile)
        return _serve(config, mountpoint, own, fuse_options, ready_fd=None)
    return _daemonize(config, mountpoint, own, fuse_options, debug, logfile)


def _setup_logging(debug: bool, logfile: str | None):
    handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler()
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def _daemonize(config, mountpoint, own, fuse_options, debug, logfile) -> int:
    read_fd, write_fd = os.pipe()
    if os.fork():
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            answer = pipe.read().decode(errors="replace")
        if answer == "ok":
            return 0
        print(f"loomfs mount: {answer or 'the mount process died before mounting'}",
              file=sys.stderr)
        return 1
    os.close(read_fd)
    os.setsid()
    _redirect_stdio()
    _setup_logging(debug, logfile)
    code = _serve(config, mountpoint, own, fuse_options, ready_fd=write_fd)
    os._exit(code)


def _redirect_stdio():
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def _report(ready_fd, message: str):
    if ready_fd is not None:
        os.write(ready_fd, message.encode())
        os.close(ready_fd)


def _serve(config, mountpoint, own, fuse_options, ready_fd) -> int:
    keep_freed_memory()  # each FUSE write arrives in a fresh 1 MiB bytes (loomproto.memory)
    failure = None
    try:
        _run_profiled(_main, config, mountpoint, own, fuse_options, ready_fd)
    except* MountError as group:
        failure = group.exceptions[0]
    if failure is None:
        return 0
    log.error("%s", failure)
    _report(ready_fd, str(failure))
    if ready_fd is None:
        print(f"loomfs mount: {failure}", file=sys.stderr)
    return 1


def _run_profiled(*args):
    """trio.run, under cProfile when LOOMFS_PROFILE names a file (loomproto.profiling)."""
    if profiling.target() is not None:
        # The harness unmounts and sends SIGTERM at once.  The mount's own signal
        # receiver ends with the mount, so the default action would kill the
        # process while trio winds down, before the stats are written: a profiled
        # mount ignores a SIGTERM that comes outside that receiver.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return profiling.run(*args)


async def _main(config, mountpoint, own, fuse_options, ready_fd):
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, config, name=f"client@{os.uname().nodename}",
                          mds_timeout=own["mds_timeout"], bound_calls=True)
        try:
            await cluster.start()
        except (errors.LoomError, trio.TooSlowError) as exc:
            raise MountError(f"cannot reach the cluster's metadata servers "
                             f"{', '.join(config.mds)}: {exc}") from None
        meta = Meta(cluster)
        data = DataPath(cluster, nursery, write_window=own["write_window"],
                        io_timeout=own["io_timeout"])
        ops = LoomOperations(meta, data, own["attr_timeout"], own["entry_timeout"],
                             on_init=lambda: nursery.start_soon(
                                 _tune_mount, mountpoint, own["readahead_kb"]),
                             debug_faults=own["debug_faults"],
                             unlink_window=own["unlink_window"],
                             create_window=own["create_window"],
                             statahead=own["statahead"],
                             negative_timeout=own["negative_timeout"])
        # Read by pyfuse3 when the kernel's INIT arrives.  The kernel then owns
        # size and mtime while it holds dirty pages, turns O_APPEND into writes
        # at its own size, and may read partial pages through write-only handles.
        ops.enable_writeback_cache = own["writeback_cache"]
        options = set(pyfuse3.default_options) | fuse_options
        options |= {"fsname=loomfs:" + config.cluster_id, "subtype=loomfs"}
        try:
            pyfuse3.init(ops, mountpoint, sorted(options))
        except RuntimeError as exc:
            raise MountError(f"cannot mount at {mountpoint}: {exc}") from None
        log.info("mounted %s at %s (options %s)", config.cluster_id, mountpoint,
                 ",".join(sorted(options)))
        _report(ready_fd, "ok")
        serving = {"fuse": True}
        nursery.start_soon(_stop_on_signal, serving, ops.behind)
        fast_wait = None
        try:
            if own["fast_wait"]:
                fast_wait = fuseloop.install()
            await pyfuse3.main(min_tasks=4, max_tasks=128)
        finally:
            serving["fuse"] = False  # no pyfuse3.terminate() after close: it has no session
            pyfuse3.close(unmount=True)
            fuseloop.uninstall(fast_wait)
            log.info("unmounted %s%s", mountpoint,
                     f" ({fast_wait.summary()})" if fast_wait else "")
            with trio.CancelScope(shield=True):
                await _drain_unlinks(ops.behind)
                with trio.move_on_after(UNMOUNT_CLOSES_SECONDS):
                    await meta.send_queued_closes()
            nursery.cancel_scope.cancel()


async def _drain_unlinks(behind):
    """Unlinks and creates answered before their commit (client.behind) may
    still be on their way: wait up to UNMOUNT_UNLINKS_SECONDS for them."""
    if behind:
        log.info("unmount: waiting for %d unlinks and creates on their way", len(behind))
        with trio.move_on_after(UNMOUNT_UNLINKS_SECONDS):
            while behind:
                await behind.settle_all()
    if behind:
        log.error("unmount: %d unlinks and creates answered before their commit did not "
                  "land within "
                  "%.0fs; they are lost", len(behind), UNMOUNT_UNLINKS_SECONDS)
    if behind.failures:
        log.error("%d unlinks and creates answered before their commit failed during "
                  "this mount",
                  behind.failures)


async def _stop_on_signal(serving: dict, behind):
    """SIGTERM or SIGINT unmounts; once unmounted (unlinks still landing, which
    is bounded), further ones are only logged, so they cannot cut that short."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if serving["fuse"]:
                log.info("signal %d: unmounting", signum)
                serving["fuse"] = False
                pyfuse3.terminate()
            else:
                log.info("signal %d: unmounted; %d unlinks and creates still landing", signum,
                         len(behind))


async def _tune_mount(mountpoint: str, readahead_kb: int):
    """Raise the mount's read-ahead, dirty-page share and background queue.

    Found through /proc/self/mountinfo, never by stat() of the mount point:
    that would send a request to this process from its own event loop.
    """
    dev = _mount_device(mountpoint)
    if dev is None:
        log.warning("cannot find %s in mountinfo; kernel tuning skipped", mountpoint)
        return
    minor = dev.split(":")[1]
    _mount_fusectl()
    settings = {f"/sys/class/bdi/{dev}/read_ahead_kb": str(readahead_kb),
                f"/sys/class/bdi/{dev}/max_ratio": "40",
                f"/sys/fs/fuse/connections/{minor}/max_background": "128",
                f"/sys/fs/fuse/connections/{minor}/congestion_threshold": "96"}
    for path, value in settings.items():
        try:
            with open(path, "w") as fp:
                fp.write(value)
        except OSError as exc:
            log.info("cannot set %s to %s: %s", path, value, exc)


def _mount_fusectl():
    """The per-connection knobs live in the fusectl filesystem; mount it if absent."""
    connections = "/sys/fs/fuse/connections"
    if not os.path.isdir(connections) or os.listdir(connections):
        return
    result = subprocess.run(["mount", "-t", "fusectl", "fusectl", connections],
                            capture_output=True, text=True)
    if result.returncode:
        log.info("cannot mount fusectl: %s", result.stderr.strip())


def _mount_device(mountpoint: str) -> str | None:
    """major:minor of the newest mount at `mountpoint` (the last listed)."""
    with open("/proc/self/mountinfo") as fp:
        devices = [line.split()[2] for line in fp if line.split()[4] == mountpoint]
    return devices[-1] if devices else None
