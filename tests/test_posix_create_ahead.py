"""Creates answered before their commit (client.behind), on a real mount.

A create(2) of a regular file, in a directory whose share this client holds a
lease on (client.absent: a directory it made, while it creates there), is
answered once its request is written to the shard's connection, numbered from
a block of inode numbers the shard reserved for the client.  What the kernel
got must be what the shard stores; other mounts told of the file find it;
writes, fsync and close of it wait for its commit; a create that then fails
is reported by fsync of the directory and by the file's close; unmount waits
for creates still on their way.

A test that must tell "answered at once" from "answered after the commit"
stops the shard that holds the names (mds1) right after a create of this
mount renewed its lease, and creates one more name there.  The lease lasts
0.1 s, so on a busy machine that create may come too late for it and wait for
the shard instead: such a test tries again, a bounded number of times.
"""

import errno
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import cluster_script
from loomproto.layout import shard_of_dentry
from posix_util import InThread, extra_mount, shard_may_die, shard_stopped, wait_until

pytestmark = pytest.mark.mount

LONG_CACHE = "allow_other,default_permissions,attr_timeout=30,entry_timeout=30"
BOUND = 60  # what a call may take on a loaded machine; far below any wait it must not do
EARLY = 5  # how long a create answered early may take here, loaded
TRIES = 20
CREATE = os.O_CREAT | os.O_EXCL | os.O_WRONLY


def _names_on_shard(parent_ino: int, shard: int, count: int, prefix: str) -> list[str]:
    names = (f"{prefix}{i:05d}" for i in range(1_000_000))
    return [n for n in names if shard_of_dentry(parent_ino, n.encode(), 2) == shard][:count]


def _early_creates(cluster) -> int:
    """Creates answered early that the shards committed so far (shard_info)."""
    loomfs = Path(os.environ.get("LOOMFS_BIN", cluster_script.DEFAULT_BIN)) / "loomfs"
    done = subprocess.run([str(loomfs), "status", "--json", "--cluster", str(cluster.config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return sum(shard["early_creates"] for shard in json.loads(done.stdout)["shards"])






def _touch(path) -> None:
    os.close(os.open(path, CREATE, 0o644))


def _create_with_shard_stopped(cluster, base, then=None):
    """In a new directory under `base`: creates with mds1 running (a lease for the
    share, inode numbers from the shard), committed (fsync of the directory), then
    one with mds1 stopped; again in another directory until one is answered while
    stopped.  `then(fd, path, dir_fd)` runs with the shard still stopped (dir_fd:
    the directory, opened before); returns (path, fd, dir_fd, then's result)."""
    for attempt in range(TRIES):
        directory = base / f"try{attempt}"
        directory.mkdir()
        *first, renew, last = _names_on_shard(os.stat(directory).st_ino, 1, 4, "n")
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        for name in first:
            _touch(directory / name)
        _touch(directory / renew)
        os.fsync(dir_fd)  # committed: the lease runs from the last create's send
        with shard_stopped(cluster, 1):
            creator = InThread(os.open, directory / last, CREATE, 0o640)
            creator.start()
            if creator.finished_within(EARLY) and creator.error is None:
                path, fd = directory / last, creator.result
                return path, fd, dir_fd, then and then(fd, path, dir_fd)
        # Answered after the commit, or failed past mds_timeout: try again.
        os.close(dir_fd)
        assert creator.finished_within(BOUND)
        if creator.error is None:
            os.close(creator.result)
    raise AssertionError(f"no create was answered with its shard stopped in {TRIES} tries")


def test_a_create_is_answered_before_its_commit(cluster, workdir, second_client):
    """With the name's shard stopped, a create returns; a listing of the directory
    started meanwhile waits for the commit and shows the file; what the kernel got
    at the create is what another mount reads from the shard."""
    with extra_mount(cluster, LONG_CACHE) as mnt:
        listed = {}

        def list_meanwhile(fd, path, dir_fd):
            lister = InThread(os.listdir, dir_fd)
            lister.start()
            listed["thread"] = lister
            return os.fstat(fd)

        path, fd, dir_fd, here = _create_with_shard_stopped(cluster, mnt / workdir.name,
                                                            list_meanwhile)
        os.close(fd)
        os.close(dir_fd)
        lister = listed["thread"]
        assert lister.finished_within(BOUND) and lister.error is None
        assert path.name in lister.result
        there = os.stat(second_client / path.relative_to(mnt))
        fields = ("st_ino", "st_mode", "st_uid", "st_gid", "st_nlink", "st_size",
                  "st_mtime_ns", "st_ctime_ns")
        assert {f: getattr(here, f) for f in fields} == {f: getattr(there, f) for f in fields}


def test_what_the_kernel_got_is_what_the_shard_stores(cluster, workdir, second_client):
    """Many creates in a directory this mount made, under a umask and in a
    set-group-ID directory: every file's attributes as this mount's kernel got
    them equal what another mount reads; at least some went early."""
    before = _early_creates(cluster)
    for sub, setgid in (("plain", False), ("setgid", True)):
        directory = workdir / sub
        directory.mkdir()
        if setgid:
            os.chown(directory, 0, 4321)
            os.chmod(directory, 0o2775)
        here = {}
        old = os.umask(0o027)
        try:
            for i in range(200):
                path = directory / f"f{i:04d}"
                fd = os.open(path, CREATE, 0o666 if i % 2 else 0o600)
                here[path.name] = os.fstat(fd)
                os.close(fd)
        finally:
            os.umask(old)
        other = second_client / workdir.name / sub
        for name, mine in here.items():
            theirs = os.stat(other / name)
            assert (mine.st_ino, mine.st_mode, mine.st_uid, mine.st_gid, mine.st_nlink,
                    mine.st_size, mine.st_mtime_ns, mine.st_ctime_ns) == (
                theirs.st_ino, theirs.st_mode, theirs.st_uid, theirs.st_gid, theirs.st_nlink,
                theirs.st_size, theirs.st_mtime_ns, theirs.st_ctime_ns), name
            assert mine.st_gid == (4321 if setgid else 0)
            assert mine.st_mode & 0o777 in (0o640, 0o600)
        assert sorted(os.listdir(other)) == sorted(here)
    assert _early_creates(cluster) - before >= 40  # most, unless the machine is loaded


def test_another_mount_told_of_a_create_finds_it(cluster, workdir):
    """Dataset writers across machines: once create(2) returns on one mount,
    another opens the name, or creates it (O_EXCL), which fails.  The request was
    written before the answer, and the shard holds the other's requests about the
    name until it commits (mdsd.removals).  The other mount caches no names, so
    each call reaches the shard."""
    before = _early_creates(cluster)
    with extra_mount(cluster, "allow_other,default_permissions,entry_timeout=0") as mnt:
        other = mnt / workdir.name
        missing, made_twice = [], []
        for i in range(150):
            name = f"c{i:04d}"
            _touch(workdir / name)
            if i % 2:
                try:
                    os.close(os.open(other / name, os.O_RDONLY))
                except FileNotFoundError:
                    missing.append(name)
            else:
                try:
                    os.close(os.open(other / name, CREATE, 0o644))
                    made_twice.append(name)
                except FileExistsError:
                    pass
    assert not missing and not made_twice, (missing, made_twice)
    assert _early_creates(cluster) - before >= 15  # most, unless the machine is loaded


def test_written_bytes_of_early_creates_land(cluster, workdir, second_client):
    """create, write, fsync or close: the bytes and the size are there for
    another mount (the write waits for the create's commit)."""
    for i in range(100):
        fd = os.open(workdir / f"w{i:03d}", CREATE, 0o644)
        try:
            os.write(fd, b"%d" % i * (1 + i * 37))
            if i % 3 == 0:
                os.fsync(fd)
        finally:
            os.close(fd)
    for i in range(100):
        assert (second_client / workdir.name / f"w{i:03d}").read_bytes() == b"%d" % i * (1 + i * 37)


def test_a_failed_early_create_is_reported(cluster, workdir):
    """The shard stays stopped past mds_timeout after a create was answered: fsync
    of the directory says EIO once, and so do the file's write and close; the
    mount keeps working."""
    with extra_mount(cluster, LONG_CACHE + ",mds_timeout=2") as mnt:
        def wait_for_the_failure(fd, path, dir_fd):
            syncer = InThread(os.fsync, dir_fd)
            syncer.start()
            return syncer.finished_within(BOUND), syncer.error

        path, fd, dir_fd, (synced, error) = _create_with_shard_stopped(
            cluster, mnt / workdir.name, wait_for_the_failure)
        directory = path.parent
        try:
            try:
                assert synced, "fsync of the directory did not end after mds_timeout"
                assert error is not None and error.errno == errno.EIO, error
                os.fsync(dir_fd)  # reported once
                with pytest.raises(OSError) as refused:
                    os.write(fd, b"lost")
                assert refused.value.errno == errno.EIO
            finally:
                with pytest.raises(OSError) as closed:
                    os.close(fd)
                assert closed.value.errno == errno.EIO
        finally:
            os.close(dir_fd)
        # (The shard may still make the file from the request it read late.)
        _touch(directory / "after")
        assert os.stat(directory / "after").st_size == 0


def test_with_create_window_0_a_create_waits_for_its_commit(cluster, workdir):
    with extra_mount(cluster, LONG_CACHE + ",mds_timeout=2,create_window=0") as mnt:
        directory = mnt / workdir.name / "made"
        directory.mkdir()
        before = _early_creates(cluster)
        *first, last = _names_on_shard(os.stat(directory).st_ino, 1, 50, "w")
        for name in first:
            _touch(directory / name)
        assert _early_creates(cluster) == before
        with shard_stopped(cluster, 1):
            with pytest.raises(OSError) as failed:
                _touch(directory / last)
        assert failed.value.errno in (errno.ETIMEDOUT, errno.EIO), failed.value




@pytest.mark.deadline(300)
def test_unmount_waits_for_creates_on_their_way(cluster, workdir, tmp_path):
    """A create answered, whose shard then died before it read the request, is
    sent again once the shard is back, though the mount is gone by then and a
    SIGTERM came: the client stays to finish it, and the file is there."""
    mnt = tmp_path / "leaving"
    mnt.mkdir()
    client = cluster.run("mount", mnt, "--mount-opts", LONG_CACHE).stdout.split()[-1]
    node = cluster.nodes()[client]
    try:
        with shard_may_die(cluster, 1):
            def kill_the_shard(fd, path, dir_fd):
                os.close(fd)
                os.close(dir_fd)
                cluster.run("kill", "mds1")  # the request dies unread in its socket
                return path.relative_to(mnt)

            *_, made = _create_with_shard_stopped(cluster, mnt / workdir.name,
                                                  kill_the_shard)
            cluster_script.unmount(mnt)
            assert cluster_script.send_signal(node, signal.SIGTERM)
        wait_until(lambda: not cluster_script.is_running(node), BOUND,
                   "the unmounted client to finish its creates and exit")
    finally:
        cluster.run("umount", client)
    assert made.name in os.listdir(cluster.mnt / made.parent)
