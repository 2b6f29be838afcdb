"""Helpers shared by the tests/test_posix_*.py mount tests.

- `as_user(uid, gid, fn, *args, groups=())` runs `fn(*args)` in a forked child that
  switched to an unprivileged identity; returns its result, or raises the OSError
  it raised (same errno), so permission checks read like ordinary calls.
- `wait_until(predicate, timeout, what)` polls a condition with a deadline.
- `errno_of(fn, *args)` is 0 when the call succeeds, else its errno.
- `renameat2(old, new, flags)` is renameat2(2) (Python has no binding).
- `InThread(fn, *args)` runs a call that may block in a thread; `shard_stopped(cluster,
  shard)` holds a metadata server SIGSTOPped for a with block, and in
  `shard_may_die(cluster, shard)` it may be stopped or killed (it runs again after).
"""

import contextlib
import ctypes
import itertools
import os
import pickle
import signal
import threading
import time

USER = 4321
GROUP = 4321
OTHER_USER = 4322
OTHER_GROUP = 4322
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old, new, flags):
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))


def as_user(uid, gid, fn, *args, groups=()):
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: switch identity, run, report, exit without cleanup
        os.close(read_fd)
        try:
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            result = ("ok", fn(*args))
        except OSError as exc:
            result = ("oserror", exc.errno, str(exc))
        except BaseException as exc:  # report, never run the parent's code
            result = ("error", repr(exc))
        try:
            data = pickle.dumps(result)
        except Exception as exc:  # an unpicklable result
            data = pickle.dumps(("error", repr(exc)))
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(data)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    result = pickle.loads(data)
    if result[0] == "ok":
        return result[1]
    if result[0] == "oserror":
        raise OSError(result[1], result[2])
    raise AssertionError(f"child as uid {uid} failed: {result[1]}")


def errno_of(fn, *args, **kwargs) -> int:
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno
    return 0


def user_errno(uid, gid, fn, *args, groups=()) -> int:
    def call():
        result = fn(*args)
        if hasattr(result, "close"):
            result.close()

    try:
        as_user(uid, gid, call, groups=groups)
    except OSError as exc:
        return exc.errno
    return 0


def wait_until(predicate, timeout, what, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout:g}s for {what}")
        time.sleep(interval)  # polling a condition, not ordering events


def osd_chunk_files(cluster, ino=None) -> list[str]:
    """Chunk files on every OSD of `cluster` (of one inode when `ino` is given)."""
    found = []
    for name, node in cluster.nodes().items():
        if node["kind"] != "osd":
            continue
        root = os.path.join(node["data"], "chunks")
        if ino is not None:
            root = os.path.join(root, f"{ino % 256:02x}", f"{ino:x}")
        for dirpath, _, files in os.walk(root):
            found.extend(os.path.join(dirpath, f) for f in files)
    return found


def let_others_through(path):
    """Give everyone search permission on the directories above `path` (pytest makes
    its temporary directories 0700), so an unprivileged child can reach the mount."""
    path = os.path.realpath(path)
    parent = os.path.dirname(path)
    while parent not in ("/", ""):
        mode = os.stat(parent).st_mode
        if mode & 0o011 != 0o011:
            os.chmod(parent, (mode & 0o7777) | 0o011)
        parent = os.path.dirname(parent)
    os.chmod(path, (os.stat(path).st_mode & 0o7777) | 0o011)


@contextlib.contextmanager
def extra_mount(cluster, opts):
    """One more client of `cluster` mounted with mount options `opts`; yields its path."""
    mnt = cluster.base / f"mnt-{os.getpid()}-{next(_mount_numbers)}"
    done = cluster.run("mount", mnt, "--mount-opts", opts)
    name = done.stdout.strip().splitlines()[-1]
    try:
        yield mnt
    finally:
        cluster.run("umount", name)


_mount_numbers = itertools.count(1)


def unlink_and_publish(path):
    """unlink(2), then fsync(2) of the directory: what makes an unlink answered
    before its commit (client.behind) visible to other mounts at once."""
    os.unlink(path)
    fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class InThread(threading.Thread):
    """`fn(*args)` in a daemon thread: its result, or the OSError it raised."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.result = self.error = None

    def run(self):
        try:
            self.result = self.fn(*self.args)
        except OSError as exc:
            self.error = exc

    def finished_within(self, seconds: float) -> bool:
        self.join(seconds)
        return not self.is_alive()


@contextlib.contextmanager
def shard_stopped(cluster, shard: int):
    """Metadata server `shard` of `cluster` SIGSTOPped for the body of a with block."""
    from conftest import cluster_script

    node = cluster.nodes()[f"mds{shard}"]
    assert cluster_script.send_signal(node, signal.SIGSTOP)
    try:
        yield
    finally:
        cluster_script.send_signal(node, signal.SIGCONT)


@contextlib.contextmanager
def shard_may_die(cluster, shard: int):
    """Metadata server `shard` may be stopped or killed in the body of a with block;
    it runs again afterwards."""
    from conftest import cluster_script

    name = f"mds{shard}"
    cluster.allowed_dead.add(name)
    try:
        yield
    finally:
        if not cluster_script.is_running(cluster.nodes()[name]):
            cluster.run("start", name)
        cluster.allowed_dead.discard(name)
