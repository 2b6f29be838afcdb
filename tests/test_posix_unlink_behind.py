"""Unlinks answered before their commit (client.behind), on a real mount.

An unlink of a file the kernel got from this client, not open here, is
answered once its request is on its way; up to `unlink_window` travel at once
and the shard commits them together.  This client's own view stays exact
(the name is gone for its next lookup, listing, create and rmdir); fsync of
the directory waits for the commits and reports one that failed; unmount
waits for all of them.

The shard that holds the names (mds1: not mds0, which keeps the cluster map)
is stopped where a test must tell "answered at once" from "answered after the
commit".  Those mounts keep the kernel's entries and attributes for 30 s, so
that nothing else the kernel asks for during the test needs the stopped shard.
"""

import errno
import os
import signal
import stat

import pytest

from conftest import cluster_script
from loomproto.layout import shard_of_dentry
from posix_util import (InThread, extra_mount, shard_may_die, shard_stopped, unlink_and_publish,
                        wait_until)

pytestmark = pytest.mark.mount

LONG_CACHE = "allow_other,default_permissions,attr_timeout=30,entry_timeout=30"
BOUND = 60  # what a call may take on a loaded machine; far below any wait it must not do


def _names_on_shard(parent_ino: int, shard: int, count: int, prefix: str) -> list[str]:
    names = (f"{prefix}{i:04d}" for i in range(100_000))
    return [n for n in names if shard_of_dentry(parent_ino, n.encode(), 2) == shard][:count]


def _make_files(directory, names):
    """Regular files made with mknod: no open, so no release still on its way."""
    for name in names:
        os.mknod(directory / name, stat.S_IFREG | 0o644)
    for name in names:
        os.stat(directory / name)  # (looked up: the kernel and this client know it)






def test_this_mount_sees_its_unlinks_at_once(cluster, workdir):
    """Right after each unlink: the name is gone, can be made again (O_EXCL), a
    listing leaves it out, and the emptied directory can be removed."""
    inner = workdir / "inner"
    inner.mkdir()
    names = [f"f{i:04d}" for i in range(300)]
    for where in (workdir, inner):
        for name in names:
            os.close(os.open(where / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    remade = set()
    for i, name in enumerate(names):
        os.unlink(workdir / name)
        with pytest.raises(FileNotFoundError):
            os.stat(workdir / name)
        if i % 3 == 0:
            os.close(os.open(workdir / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            remade.add(name)
    assert set(os.listdir(workdir)) == remade | {"inner"}
    for name in names:
        os.unlink(inner / name)
    os.rmdir(inner)  # ENOTEMPTY if an unlink in it had not landed
    assert {os.stat(workdir / name).st_mode & 0o777 for name in remade} == {0o600}


def test_unlink_is_answered_before_its_commit(cluster, workdir):
    """With the names' shard stopped, unlinks still return; a listing of the
    directory waits until they are committed, and does not show them."""
    with extra_mount(cluster, LONG_CACHE) as mnt:
        directory = mnt / workdir.name
        parent = os.stat(directory).st_ino
        names = _names_on_shard(parent, 1, 20, "e")
        _make_files(directory, names)
        lister = None
        with shard_stopped(cluster, 1):
            unlinker = InThread(lambda: [os.unlink(directory / n) for n in names])
            unlinker.start()
            answered = unlinker.finished_within(BOUND)
            if answered:
                lister = InThread(os.listdir, directory)
                lister.start()
        assert answered, "unlink waited for the stopped shard's commit"
        assert unlinker.error is None
        assert lister.finished_within(BOUND) and lister.error is None
        assert lister.result == []


def test_fsync_of_the_directory_reports_a_failed_unlink(cluster, workdir):
    """An unlink answered early whose request then times out (mds_timeout) makes
    the next fsync of its directory fail with EIO, once."""
    with extra_mount(cluster, LONG_CACHE + ",mds_timeout=2") as mnt:
        directory = mnt / workdir.name
        parent = os.stat(directory).st_ino
        [name] = _names_on_shard(parent, 1, 1, "x")
        _make_files(directory, [name])
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with shard_stopped(cluster, 1):
                os.unlink(directory / name)  # answered at once
                syncer = InThread(os.fsync, dir_fd)
                syncer.start()
                synced = syncer.finished_within(BOUND)  # ends when the request times out
            assert synced, "fsync of the directory did not end after mds_timeout"
            assert syncer.error is not None and syncer.error.errno == errno.EIO
            os.fsync(dir_fd)  # reported once
        finally:
            os.close(dir_fd)


def test_unlinks_show_on_other_mounts_after_fsync_of_the_directory(cluster, workdir):
    """fsync of the directory makes the unlinks visible to a mount that never saw
    the names."""
    names = [f"g{i:04d}" for i in range(300)]
    with extra_mount(cluster, "allow_other,default_permissions") as mnt:
        directory = mnt / workdir.name
        _make_files(directory, names)
        for name in names[:199]:
            os.unlink(directory / name)
        unlink_and_publish(directory / names[199])
        assert sorted(os.listdir(workdir)) == names[200:]  # the cluster's first mount




@pytest.mark.deadline(300)
def test_unmount_waits_for_unlinks_on_their_way(cluster, workdir, tmp_path):
    """Unlinks answered, whose shard then died before it read them, are sent
    again once it is back, though the mount is gone by then and a SIGTERM came:
    the client stays to finish them."""
    mnt = tmp_path / "leaving"
    mnt.mkdir()
    client = cluster.run("mount", mnt, "--mount-opts", LONG_CACHE).stdout.split()[-1]
    node = cluster.nodes()[client]
    try:
        directory = mnt / workdir.name
        names = _names_on_shard(os.stat(directory).st_ino, 1, 50, "u")
        _make_files(directory, names)
        with shard_may_die(cluster, 1):
            with shard_stopped(cluster, 1):
                for name in names:
                    os.unlink(directory / name)  # answered once written to mds1's socket
                cluster.run("kill", "mds1")  # the requests die unread in its socket
            cluster_script.unmount(mnt)  # the kernel's mount is gone, the client stays
            # What scripts/cluster sends next: it must not cut the wait short (it
            # reached pyfuse3.terminate() on a closed session before).
            assert cluster_script.send_signal(node, signal.SIGTERM)
        wait_until(lambda: not cluster_script.is_running(node), BOUND,
                   "the unmounted client to finish its unlinks and exit")
    finally:
        cluster.run("umount", client)
    assert os.listdir(workdir) == []


def test_an_unlink_that_cannot_be_sent_fails_as_before(cluster, workdir):
    """With the name's shard down, the unlink is not answered until its request
    is written: past mds_timeout it fails, and the name stays."""
    with extra_mount(cluster, LONG_CACHE + ",mds_timeout=2") as mnt:
        directory = mnt / workdir.name
        [name] = _names_on_shard(os.stat(directory).st_ino, 1, 1, "d")
        _make_files(directory, [name])
        [absent] = _names_on_shard(os.stat(directory).st_ino, 1, 1, "never")
        with shard_may_die(cluster, 1):
            cluster.run("stop", "mds1")
            with pytest.raises(OSError):  # (the client has seen its connection go)
                os.stat(directory / absent)
            with pytest.raises(OSError) as failed:
                os.unlink(directory / name)
        assert failed.value.errno in (errno.EIO, errno.ETIMEDOUT, errno.ENOTCONN), failed.value
        assert os.listdir(workdir) == [name]


def test_another_mount_told_of_an_unlink_finds_it_done(cluster, workdir, second_client):
    """A checkpoint rotation across machines: one mount removes a file, and once
    unlink(2) returns, another makes the name again (O_EXCL) and writes it.  The
    unlink's request was written before it returned, and the shard holds the
    other's requests about the name until it commits (mdsd.removals).  Before, the
    create failed with EEXIST in 142 of 150 tries (a tester's report), and an
    O_TRUNC open instead reached the old file, whose name the commit then took:
    its bytes were lost.  (Handlers start in any order within one turn of the
    shard's loop: the unlink is counted as it is read, and the other requests wait
    until it registered.  85 of 100 failed without the shard's waits.)"""
    names = [f"c{i:03d}" for i in range(100)]
    _make_files(workdir, names)
    other = second_client / workdir.name
    failures = []
    for name in names:
        os.unlink(workdir / name)
        try:
            fd = os.open(other / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            failures.append(name)
            continue
        try:
            os.write(fd, b"new")
        finally:
            os.close(fd)
    assert not failures, f"O_EXCL creates after the unlink returned failed: {failures}"
    kept = [n for n in names if n not in failures]
    assert all((workdir / n).read_bytes() == b"new" for n in kept)


def test_a_link_made_elsewhere_shows_the_right_count_after_the_unlink(
        cluster, workdir, second_client):
    """This mount counted one link; another mount added a second name; this mount's
    unlink of the first goes early.  A stat of the second name here must then say
    one link, not the two from before the commit (a tester saw 2 in 25 of 30)."""
    other = second_client / workdir.name
    for i in range(20):
        first, second = f"a{i:02d}", f"b{i:02d}"
        (workdir / first).write_bytes(b"x")
        assert os.stat(workdir / first).st_nlink == 1
        os.link(other / first, other / second)
        os.unlink(workdir / first)
        assert os.stat(workdir / second).st_nlink == 1, f"round {i}"


def test_a_failed_early_unlink_leaves_no_wrong_directory_size(cluster, workdir):
    """The name became a directory on another mount before this mount's unlink
    (answered early) reached the shard: the unlink fails there, fsync of the
    directory says EIO, and the directory's size that the kernel caches here is
    its real entry count again (it stayed one short before: a tester's report)."""
    with extra_mount(cluster, LONG_CACHE) as mnt:
        directory = mnt / workdir.name
        names = _names_on_shard(os.stat(directory).st_ino, 1, 4, "f")
        _make_files(directory, names)  # this mount knows names[0] as a file, one link
        os.unlink(workdir / names[0])
        os.mkdir(workdir / names[0])
        with shard_stopped(cluster, 1):
            os.unlink(directory / names[0])  # answered once written
            assert os.stat(directory).st_size == 3  # the kernel keeps this for 30 s
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(OSError) as failed:
                os.fsync(dir_fd)
            assert failed.value.errno == errno.EIO
        finally:
            os.close(dir_fd)
        assert os.path.isdir(directory / names[0])
        assert os.stat(directory).st_size == len(os.listdir(directory)) == 4


def test_a_file_renamed_to_another_shard_is_unlinked_after_its_commit(cluster, workdir):
    """Its inode stayed on the shard it was made on, so the name's shard could not
    hold requests about the inode (an open through another mount's cached name
    would reach the old file): such an unlink waits for its commit.  With the
    name's shard stopped it times out instead of answering."""
    with extra_mount(cluster, LONG_CACHE + ",mds_timeout=2") as mnt:
        directory = mnt / workdir.name
        parent = os.stat(directory).st_ino
        [made] = _names_on_shard(parent, 0, 1, "m")
        [moved] = _names_on_shard(parent, 1, 1, "r")
        [plain] = _names_on_shard(parent, 1, 1, "p")
        _make_files(directory, [made, plain])
        os.rename(directory / made, directory / moved)
        assert moved in os.listdir(directory)  # (the listing tells the client its type)
        with shard_stopped(cluster, 1):
            os.unlink(directory / plain)  # made on its name's shard: answered at once
            with pytest.raises(OSError) as failed:
                os.unlink(directory / moved)
        assert failed.value.errno in (errno.ETIMEDOUT, errno.EIO), failed.value
