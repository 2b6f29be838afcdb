"""Sizes between two mounts of one cluster while handles stay open (close-to-open,
README "POSIX behaviour"): a client commits the end of its own writes, never a size
it read before another client changed the file, and an open handle takes up a size
another client committed at its next stat."""

import contextlib
import os
import stat

import pytest

from posix_util import extra_mount

pytestmark = pytest.mark.mount

NO_CACHE = "allow_other,default_permissions,attr_timeout=0,entry_timeout=0"


@pytest.fixture
def two_mounts(cluster, request):
    """Two more clients with no kernel attribute cache; yields one directory as seen
    through each."""
    with extra_mount(cluster, NO_CACHE) as one, extra_mount(cluster, NO_CACHE) as two:
        name = f"coherence-{request.node.name}"
        os.mkdir(one / name)
        try:
            yield one / name, two / name
        finally:
            for entry in os.listdir(one / name):
                os.unlink(one / name / entry)
            os.rmdir(one / name)


def test_write_after_other_mounts_truncate_keeps_its_size(two_mounts):
    one, two = two_mounts
    (one / "f").write_bytes(b"x" * 10_000)
    fd = os.open(two / "f", os.O_RDWR)  # this client learns size 10,000 here
    try:
        os.truncate(one / "f", 0)
        os.pwrite(fd, b"hello", 100)
        assert os.fstat(fd).st_size == 105
    finally:
        os.close(fd)
    # The write came after the truncate: nothing of the old 10,000 bytes comes back.
    assert (one / "f").read_bytes() == bytes(100) + b"hello"
    assert os.stat(two / "f").st_size == 105


def test_open_handle_sees_size_committed_by_other_mount(two_mounts):
    one, two = two_mounts
    (one / "f").write_bytes(b"")
    fd = os.open(two / "f", os.O_RDWR)  # size 0 here
    try:
        with open(one / "f", "r+b") as fp:
            fp.write(b"z" * 10_000)
        os.pwrite(fd, b"ab", 0)  # unflushed, and below the other client's end
        assert os.fstat(fd).st_size == 10_000
        assert os.pread(fd, 20_000, 0) == b"ab" + b"z" * 9_998
    finally:
        os.close(fd)
    assert (one / "f").read_bytes() == b"ab" + b"z" * 9_998


def test_open_handle_rereads_data_other_mount_rewrote(two_mounts):
    one, two = two_mounts
    (one / "f").write_bytes(b"a" * 5_000)
    fd = os.open(two / "f", os.O_RDWR)
    try:
        assert os.pread(fd, 5_000, 0) == b"a" * 5_000  # now cached by this client
        with open(one / "f", "r+b") as fp:
            fp.write(b"b" * 6_000)
        assert os.fstat(fd).st_size == 6_000
        assert os.pread(fd, 6_000, 0) == b"b" * 6_000
    finally:
        os.close(fd)


def test_small_file_reopened_after_other_mount_rewrote_it(cluster, request):
    """A read-only open of a one-chunk file fetches the chunk while the open goes to
    the shard, chosen by what this client knew of the file before: what another mount
    wrote and closed before the open is what the reads return, whatever the size
    the file has become (README "POSIX behaviour", close-to-open).  The reader keeps
    names cached (its opens reach the client without a lookup, so with the old
    size), but not attributes: with them cached, its kernel would end reads at the
    old size for up to attr_timeout, as documented."""
    with extra_mount(cluster, NO_CACHE) as writer_root, \
            extra_mount(cluster, "allow_other,default_permissions,attr_timeout=0") \
            as reader_root:
        name = f"coherence-{request.node.name}"
        os.mkdir(writer_root / name)
        writer, reader = writer_root / name / "f", reader_root / name / "f"
        try:
            versions = [os.urandom(10_000), os.urandom(20_000), os.urandom(3 << 20),
                        os.urandom(700), b""]
            writer.write_bytes(versions[0])
            assert reader.read_bytes() == versions[0]  # the reader now knows size 10,000
            for data in versions[1:]:
                writer.write_bytes(data)
                assert reader.read_bytes() == data
                assert reader.read_bytes() == data  # again, with the reader's cache warm
        finally:
            writer.unlink(missing_ok=True)
            os.rmdir(writer_root / name)


@pytest.mark.parametrize("size", [8192, 3 << 20])  # one chunk (prefetched), several
def test_rewrite_with_the_old_mtime_put_back_is_read_at_the_next_open(two_mounts, size):
    """tar -x, cp -p, touch -r and rsync -t --inplace rewrite a file and set its old
    mtime again: size and mtime are as before, so the other mount kept its page
    cache at the next open and served the old bytes for up to a few seconds (a
    tester's report).  The ctime moved on, and the open looks at it too."""
    one, two = two_mounts
    old, new = os.urandom(size), os.urandom(size)
    (one / "f").write_bytes(old)
    before = os.stat(one / "f")
    assert (two / "f").read_bytes() == old  # now in the other mount's page cache
    with open(one / "f", "r+b") as fp:
        fp.write(new)
    os.utime(one / "f", ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(one / "f")
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert (two / "f").read_bytes() == new


@pytest.mark.parametrize("old_kept_open", [False, True])
def test_a_file_replaced_by_rename_on_another_mount_opens_as_the_new_one(
        cluster, request, old_kept_open):
    """`write tmp; mv tmp cfg` on one mount, then open(cfg) on another that cached the
    name (entry_timeout, 1 s by default): the open failed with ENOENT when the old
    inode was gone and returned the old contents while it lingered, unlinked (a
    tester's report: 9 and 11 of 20 rounds).  The client answers ESTALE for an inode
    that is gone or unlinked and not open here, and the kernel looks the name up
    again.  With `old_kept_open` the writer holds the old file open, so it stays."""
    with _writer_and_reader(cluster, request) as (writer, reader):
        for round_ in range(5):
            (writer / "cfg").write_bytes(b"v1 %d" % round_)
            assert (reader / "cfg").read_bytes() == b"v1 %d" % round_  # name cached
            with open(writer / "cfg", "rb") if old_kept_open else contextlib.nullcontext():
                (writer / "cfg.tmp").write_bytes(b"v2 %d" % round_)
                os.rename(writer / "cfg.tmp", writer / "cfg")
                assert (reader / "cfg").read_bytes() == b"v2 %d" % round_


def test_stat_of_a_name_another_mount_replaced_finds_the_new_file(cluster, request):
    """`write ref.lock; mv ref.lock ref` on one mount (git's ref update), then lstat
    and stat of ref on another that had made ref the same way: they failed with
    ENOENT, the old inode being gone, and git fell back to packed-refs and lost
    commits (a tester's report: 5 and 10 of 20 rounds).  The client answers ESTALE
    for a gone inode reached by name, and the kernel looks the name up again."""
    with _writer_and_reader(cluster, request) as (writer, reader):
        for round_ in range(10):
            # The reader's own rename leaves it the name cached and the moved
            # file's attributes dropped (its ctime moved), as git's does.
            (reader / "ref.lock").write_bytes(b"old %d" % round_)
            os.rename(reader / "ref.lock", reader / "ref")
            (writer / "ref.lock").write_bytes(b"newer %d" % round_)
            os.rename(writer / "ref.lock", writer / "ref")
            assert os.lstat(reader / "ref").st_size == len(b"newer %d" % round_)
            assert os.stat(reader / "ref").st_size == len(b"newer %d" % round_)
            assert (reader / "ref").read_bytes() == b"newer %d" % round_


@contextlib.contextmanager
def _writer_and_reader(cluster, request):
    """One directory seen through two more mounts: a writer's without caches and a
    reader's with make up's (1 s entry and attribute caching)."""
    with extra_mount(cluster, NO_CACHE) as writer_root, \
            extra_mount(cluster, "allow_other,default_permissions") as reader_root:
        name = f"coherence-{request.node.name}"
        os.mkdir(writer_root / name)
        writer = writer_root / name
        try:
            yield writer, reader_root / name
        finally:
            for entry in os.listdir(writer):
                os.unlink(writer / entry)
            os.rmdir(writer)


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_create_over_a_name_another_mount_made_something_else(cluster, request, kind):
    """open(O_CREAT) without O_EXCL through a name this mount's kernel holds as
    absent, which another mount has meanwhile made a symlink or a FIFO: the
    open follows the symlink, or opens the FIFO, as on a local disk.  Before,
    the create handed the kernel the symlink's or FIFO's inode, which it takes
    only as a regular file: open(2) failed with EIO."""
    opts = "allow_other,default_permissions,entry_timeout=30"
    with extra_mount(cluster, opts) as one, extra_mount(cluster, opts) as two:
        name = f"create-over-{kind}"
        os.mkdir(one / name)
        try:
            assert not os.path.lexists(two / name / "x")  # cached absent for 30 s
            if kind == "symlink":
                (one / name / "target").write_bytes(b"")
                os.symlink("target", one / name / "x")
                flags = os.O_CREAT | os.O_WRONLY
            else:
                os.mkfifo(one / name / "x")
                flags = os.O_CREAT | os.O_RDWR  # a FIFO opened for both ends: no wait
            fd = os.open(two / name / "x", flags, 0o644)
            try:
                if kind == "symlink":
                    os.write(fd, b"through the link")
                else:
                    assert stat.S_ISFIFO(os.fstat(fd).st_mode)
            finally:
                os.close(fd)
            if kind == "symlink":
                assert (one / name / "target").read_bytes() == b"through the link"
        finally:
            for entry in os.listdir(one / name):
                os.unlink(one / name / entry)
            os.rmdir(one / name)
