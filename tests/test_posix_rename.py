"""rename(2) and renameat2(2) as Linux does them, across shards, and link counts on
every name, handle and directory (nlink = 2 + subdirectories)."""

import errno
import os

import pytest

from posix_util import RENAME_EXCHANGE, RENAME_NOREPLACE, errno_of, renameat2

pytestmark = pytest.mark.mount


def test_rename_over_file_and_empty_dir(workdir):
    (workdir / "a").write_bytes(b"A")
    (workdir / "b").write_bytes(b"B")
    ino_a = os.stat(workdir / "a").st_ino
    os.rename(workdir / "a", workdir / "b")
    assert not (workdir / "a").exists()
    assert (workdir / "b").read_bytes() == b"A"
    assert os.stat(workdir / "b").st_ino == ino_a
    os.mkdir(workdir / "d1")
    os.mkdir(workdir / "d2")
    (workdir / "d1" / "inside").write_bytes(b"x")
    os.rename(workdir / "d1", workdir / "d2")
    assert sorted(os.listdir(workdir)) == ["b", "d2"]
    assert os.listdir(workdir / "d2") == ["inside"]
    assert os.stat(workdir).st_nlink == 3


def test_rename_errors(workdir):
    os.makedirs(workdir / "d" / "sub" / "deep")
    os.mkdir(workdir / "full")
    (workdir / "full" / "f").write_bytes(b"")
    os.mkdir(workdir / "empty")
    (workdir / "file").write_bytes(b"")
    assert errno_of(os.rename, workdir / "d", workdir / "d" / "sub" / "x") == errno.EINVAL
    assert errno_of(os.rename, workdir / "d", workdir / "d" / "sub" / "deep" / "y") \
        == errno.EINVAL
    assert errno_of(os.rename, workdir / "empty", workdir / "full") == errno.ENOTEMPTY
    assert errno_of(os.rename, workdir / "file", workdir / "empty") == errno.EISDIR
    assert errno_of(os.rename, workdir / "empty", workdir / "file") == errno.ENOTDIR
    assert errno_of(os.rename, workdir / "nothing", workdir / "x") == errno.ENOENT
    assert errno_of(os.rename, workdir / "file", workdir / "nodir" / "x") == errno.ENOENT
    assert errno_of(os.rename, workdir / "file", workdir / "file" / "x") == errno.ENOTDIR
    assert sorted(os.listdir(workdir)) == ["d", "empty", "file", "full"]


def test_rename_between_hard_links_is_a_noop(workdir):
    (workdir / "one").write_bytes(b"1")
    os.link(workdir / "one", workdir / "two")
    os.rename(workdir / "one", workdir / "two")
    assert sorted(os.listdir(workdir)) == ["one", "two"]
    assert os.stat(workdir / "one").st_nlink == 2
    os.rename(workdir / "one", workdir / "one")
    assert os.stat(workdir / "one").st_nlink == 2


def test_renameat2_noreplace_and_exchange(workdir):
    (workdir / "f").write_bytes(b"file")
    os.makedirs(workdir / "d" / "kid")
    (workdir / "g").write_bytes(b"g")
    assert errno_of(renameat2, workdir / "f", workdir / "g", RENAME_NOREPLACE) == errno.EEXIST
    renameat2(workdir / "f", workdir / "h", RENAME_NOREPLACE)
    assert (workdir / "h").read_bytes() == b"file"
    assert errno_of(renameat2, workdir / "h", workdir / "none", RENAME_EXCHANGE) \
        == errno.ENOENT
    # Exchange a file and a directory in different parents.
    os.mkdir(workdir / "other")
    renameat2(workdir / "h", workdir / "d" / "kid", RENAME_EXCHANGE)
    assert (workdir / "d" / "kid").read_bytes() == b"file"
    assert os.path.isdir(workdir / "h")
    assert os.stat(workdir / "d").st_nlink == 2
    assert os.stat(workdir).st_nlink == 2 + 3  # d, other, h
    assert os.stat(workdir / "h" / "..").st_ino == os.stat(workdir).st_ino
    assert errno_of(renameat2, workdir / "h", workdir / "d" / "kid",
                    RENAME_EXCHANGE | RENAME_NOREPLACE) == errno.EINVAL
    assert errno_of(renameat2, workdir / "d", workdir / "d" / "kid", RENAME_EXCHANGE) \
        == errno.EINVAL


def test_dotdot_follows_a_moved_directory(workdir):
    os.makedirs(workdir / "a" / "moving" / "child")
    os.mkdir(workdir / "b")
    os.rename(workdir / "a" / "moving", workdir / "b" / "moved")
    assert os.stat(workdir / "b" / "moved" / "..").st_ino == os.stat(workdir / "b").st_ino
    fd = os.open(workdir / "b" / "moved" / "child", os.O_RDONLY)
    try:
        assert os.stat("..", dir_fd=fd).st_ino == os.stat(workdir / "b" / "moved").st_ino
    finally:
        os.close(fd)
    assert os.stat(workdir / "a").st_nlink == 2
    assert os.stat(workdir / "b").st_nlink == 3
    os.chdir(workdir / "b" / "moved" / "child")
    try:
        assert os.path.samefile("../../..", workdir)
    finally:
        os.chdir("/")


def test_link_counts_across_shards(workdir):
    path = workdir / "f0"
    path.write_bytes(b"x")
    names = [workdir / f"link{i}" for i in range(20)]  # spread over both shards
    fd = os.open(path, os.O_RDONLY)
    try:
        for count, name in enumerate(names, start=2):
            os.link(path, name)
            assert os.stat(name).st_nlink == count
            assert os.fstat(fd).st_nlink == count
        for count, name in enumerate(reversed(names), start=1):
            os.unlink(name)
            assert os.stat(path).st_nlink == 20 - count + 1
        os.unlink(path)
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    for i in range(30):
        os.mkdir(workdir / f"dir{i}")
    assert os.stat(workdir).st_nlink == 32
    for i in range(0, 30, 2):
        os.rmdir(workdir / f"dir{i}")
    assert os.stat(workdir).st_nlink == 17
    os.mkdir(workdir / "dir1" / "inner")
    os.rename(workdir / "dir1" / "inner", workdir / "dir3" / "inner")
    assert (os.stat(workdir / "dir1").st_nlink, os.stat(workdir / "dir3").st_nlink) == (2, 3)
    assert errno_of(os.link, workdir / "dir1", workdir / "dirlink") == errno.EPERM
