"""Unlinked-but-open files: readable, writable, truncatable and chmod-able until the
last close, then their chunks leave the OSDs; when the client dies instead of closing,
within the session timeout.  fsync/fdatasync survive a client crash.

The crash tests run their own small cluster whose metadata servers have a short
``--session-timeout``, so that the session cluster of the other tests is not killed.
"""

import contextlib
import os
import stat
import time

import pytest

from conftest import LiveCluster, mount_skip_reason
from posix_util import osd_chunk_files, wait_until

pytestmark = pytest.mark.mount

MiB = 1 << 20
SESSION_TIMEOUT = 4.0
# Session timeout, the reclaimer's 2 s period, and room for a loaded 2-core machine.
RECLAIM_DEADLINE = SESSION_TIMEOUT + 30.0


def test_unlinked_open_file_lives_until_last_close(cluster, workdir):
    path = workdir / "doomed"
    data = os.urandom(3 * MiB + 123)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    other = os.open(path, os.O_RDONLY)
    ino = os.fstat(fd).st_ino
    assert osd_chunk_files(cluster, ino)
    os.unlink(path)
    assert not path.exists()
    assert os.fstat(fd).st_nlink == 0
    assert os.pread(fd, len(data) + 10, 0) == data
    assert os.pwrite(fd, b"tail", len(data)) == 4
    assert os.pread(other, 4, len(data)) == b"tail"
    os.ftruncate(fd, MiB + 5)
    assert os.fstat(fd).st_size == MiB + 5
    assert os.pread(other, 2 * MiB, 0) == data[:MiB + 5]
    os.fchmod(fd, 0o600)
    assert stat.S_IMODE(os.fstat(other).st_mode) == 0o600
    os.fsync(fd)
    os.close(fd)
    assert os.pread(other, 5, MiB) == data[MiB:MiB + 5]  # one handle still open
    assert osd_chunk_files(cluster, ino)
    os.close(other)
    wait_until(lambda: not osd_chunk_files(cluster, ino), RECLAIM_DEADLINE,
               f"the chunks of unlinked ino {ino} to leave the OSDs")


def test_renamed_over_open_file_keeps_working(cluster, workdir):
    old, new = workdir / "old", workdir / "new"
    old.write_bytes(b"old contents")
    new.write_bytes(b"new contents")
    with open(old, "r+b") as victim, open(new, "r+b") as mover:
        ino = os.fstat(victim.fileno()).st_ino
        os.rename(new, old)  # the open `victim` lost its last name
        assert os.fstat(victim.fileno()).st_nlink == 0
        victim.write(b"OLD")
        victim.flush()
        victim.seek(0)
        assert victim.read() == b"OLD contents"
        os.rename(old, workdir / "moved")  # an open file that is renamed
        mover.seek(0, os.SEEK_END)
        mover.write(b"!")
        mover.flush()
    assert (workdir / "moved").read_bytes() == b"new contents!"
    wait_until(lambda: not osd_chunk_files(cluster, ino), RECLAIM_DEADLINE,
               f"the chunks of renamed-over ino {ino} to leave the OSDs")


@pytest.fixture(scope="module")
def crash_cluster(tmp_path_factory):
    reason = mount_skip_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("crash")
    live = LiveCluster(base)
    try:
        live.up("--session-timeout", SESSION_TIMEOUT)
        yield live
    finally:
        problems = live.close(base)
        assert not problems, "\n".join(problems)


def _remount(live):
    live.run("start", "client0")
    wait_until(lambda: os.path.ismount(live.mnt), 30, "client0 to mount again")


@pytest.mark.allow_log_errors
def test_dead_client_orphans_reclaimed_within_session_timeout(crash_cluster):
    live = crash_cluster
    path = live.mnt / "orphan"
    with open(path, "wb") as fp:
        fp.write(os.urandom(2 * MiB))
    fd = os.open(path, os.O_RDWR)
    ino = os.fstat(fd).st_ino
    os.unlink(path)
    os.fsync(fd)
    assert osd_chunk_files(live, ino)
    killed_at = time.monotonic()
    live.run("kill", "client0")
    with contextlib.suppress(OSError):  # ENOTCONN: the mount is dead
        os.close(fd)
    wait_until(lambda: not osd_chunk_files(live, ino), RECLAIM_DEADLINE,
               f"the chunks of ino {ino}, open in a dead client, to be reclaimed")
    assert time.monotonic() - killed_at >= SESSION_TIMEOUT * 0.5  # not before expiry
    _remount(live)


@pytest.mark.parametrize("sync", [os.fsync, os.fdatasync], ids=["fsync", "fdatasync"])
def test_fsync_survives_client_crash(crash_cluster, sync):
    live = crash_cluster
    path = live.mnt / f"durable-{sync.__name__}"
    data = os.urandom(5 * MiB + 77)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, data[:MiB])
    os.pwrite(fd, data[MiB:], MiB)
    sync(fd)
    live.run("kill", "client0")
    with contextlib.suppress(OSError):  # ENOTCONN: the mount is dead
        os.close(fd)
    _remount(live)
    assert os.stat(path).st_size == len(data)
    assert path.read_bytes() == data
    # Every replica holds it: 2 replicas of 6 chunks.
    assert len(osd_chunk_files(live, os.stat(path).st_ino)) == 12
