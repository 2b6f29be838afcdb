"""Extended attributes, names, symlink targets, timestamps and statfs on the mount."""

import errno
import json
import os
import shutil
import subprocess
import time

import pytest

from posix_util import errno_of, wait_until
from repl_helpers import LOOMFS

pytestmark = pytest.mark.mount

XATTR_CREATE = getattr(os, "XATTR_CREATE", 1)
XATTR_REPLACE = getattr(os, "XATTR_REPLACE", 2)


# -- extended attributes -------------------------------------------------------

def test_xattr_names_beyond_what_linux_lists(workdir):
    """More names than listxattr(2) can return (64 KiB of names, as XFS allows):
    E2BIG for the listing, the names themselves still readable, the shard serving."""
    path = workdir / "many"
    path.write_bytes(b"")
    names = ["user.%04d%s" % (i, "n" * 240) for i in range(300)]  # 300 x 250 bytes
    for name in names[:200]:
        os.setxattr(path, name, b"v")
    assert sorted(os.listxattr(path)) == names[:200]  # 50,200 bytes: still listed
    for name in names[200:]:
        os.setxattr(path, name, b"v")
    assert errno_of(os.listxattr, path) == errno.E2BIG
    assert os.getxattr(path, names[299]) == b"v"
    for name in names[100:]:
        os.removexattr(path, name)
    assert sorted(os.listxattr(path)) == names[:100]


def test_xattrs(workdir):
    path = workdir / "f"
    path.write_bytes(b"")
    os.setxattr(path, "user.empty", b"")
    os.setxattr(path, "user.bin", b"\0a\0b\0\xff")
    assert os.getxattr(path, "user.empty") == b""
    assert os.getxattr(path, "user.bin") == b"\0a\0b\0\xff"
    assert errno_of(os.getxattr, path, "user.none") == errno.ENODATA
    assert errno_of(os.setxattr, path, "user.empty", b"x", XATTR_CREATE) == errno.EEXIST
    assert errno_of(os.setxattr, path, "user.none", b"x", XATTR_REPLACE) == errno.ENODATA
    os.setxattr(path, "user.empty", b"now", XATTR_REPLACE)
    assert os.getxattr(path, "user.empty") == b"now"
    os.setxattr(path, "user.new", b"1", XATTR_CREATE)
    assert sorted(os.listxattr(path)) == ["user.bin", "user.empty", "user.new"]
    big = os.urandom(65536)
    os.setxattr(path, "user.big", big)
    assert os.getxattr(path, "user.big") == big
    assert errno_of(os.setxattr, path, "user.toobig", bytes(65537)) in (errno.E2BIG,
                                                                         errno.ERANGE)
    assert errno_of(os.setxattr, path, "user." + "n" * 251, b"") == errno.ERANGE
    # A name outside the namespaces is refused, as ext4 does (it was stored).
    for name in ("foo.k", "system.foo", "userk"):
        assert errno_of(os.setxattr, path, name, b"v") == errno.EOPNOTSUPP
        assert errno_of(os.getxattr, path, name) == errno.EOPNOTSUPP
        assert errno_of(os.removexattr, path, name) == errno.EOPNOTSUPP
    assert errno_of(os.setxattr, path, "user.", b"v") == errno.EINVAL
    assert "foo.k" not in os.listxattr(path)
    os.setxattr(path, "user." + "n" * 250, b"longest name")
    os.removexattr(path, "user.new")
    assert errno_of(os.removexattr, path, "user.new") == errno.ENODATA
    os.rename(path, workdir / "g")
    os.mkdir(workdir / "d")
    os.rename(workdir / "g", workdir / "d" / "h")
    assert os.getxattr(workdir / "d" / "h", "user.bin") == b"\0a\0b\0\xff"
    os.setxattr(workdir / "d", "user.dir", b"on a dir")
    os.symlink("h", workdir / "d" / "ln")
    assert os.getxattr(workdir / "d" / "ln", "user.bin") == b"\0a\0b\0\xff"
    assert os.getxattr(workdir / "d", "user.dir") == b"on a dir"


# -- names -----------------------------------------------------------------------

def test_name_limits_everywhere(workdir):
    longest, too_long = b"n" * 255, b"n" * 256
    base = os.fsencode(workdir)
    for make in (lambda p: open(p, "wb").close(), os.mkdir, lambda p: os.symlink(b"t", p),
                 lambda p: os.mkfifo(p)):
        assert errno_of(make, base + b"/" + too_long) == errno.ENAMETOOLONG
    os.mkdir(base + b"/" + longest)
    inner = base + b"/" + longest + b"/" + longest
    open(inner, "wb").close()
    os.link(inner, base + b"/" + b"l" * 255)
    os.rename(base + b"/" + b"l" * 255, base + b"/" + b"r" * 255)
    assert errno_of(os.rename, base + b"/" + b"r" * 255, base + b"/" + too_long) \
        == errno.ENAMETOOLONG
    assert errno_of(os.link, inner, base + b"/" + too_long) == errno.ENAMETOOLONG
    assert errno_of(os.stat, base + b"/" + too_long) == errno.ENAMETOOLONG
    assert sorted(os.listdir(base)) == sorted([longest, b"r" * 255])


def test_any_bytes_but_slash_and_nul_come_back(workdir):
    base = os.fsencode(workdir)
    names = {bytes([b]) for b in range(1, 256) if b not in (ord("/"), ord("."))}
    names |= {b"\xff\xfe\x80", b"caf\xc3\xa9", b"\xe9t\xe9", b"..x", b"...", b" ", b"\n\t",
              b"a\\b", b"*?[", "日本語".encode()}
    for name in names:
        with open(base + b"/" + name, "wb") as fp:
            fp.write(name)
    assert set(os.listdir(base)) == names
    for name in names:
        with open(base + b"/" + name, "rb") as fp:
            assert fp.read() == name


def test_symlink_targets_verbatim(workdir):
    targets = [b"x", b"/abs/path", b"../rel", b"\xff\xfe odd", b"a" * 4095,
               b"/".join([b"d" * 255] * 15) + b"/e"]
    for i, target in enumerate(targets):
        os.symlink(target[:4095], os.path.join(os.fsencode(workdir), b"l%d" % i))
        assert os.readlink(os.path.join(os.fsencode(workdir), b"l%d" % i)) == target[:4095]
        assert os.lstat(os.path.join(workdir, f"l{i}")).st_size == len(target[:4095])
    assert errno_of(os.symlink, b"a" * 4096, os.path.join(workdir, "toolong")) \
        == errno.ENAMETOOLONG


# -- timestamps ----------------------------------------------------------------

def _times(path):
    st = os.lstat(path)
    return st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns


def _tick():
    """Let the clock move on, so that a changed time is visibly newer."""
    start = time.time_ns()
    wait_until(lambda: time.time_ns() > start + 2_000_000, 5, "the clock to move")


def test_times_set_and_kept(workdir):
    path = workdir / "f"
    path.write_bytes(b"data")
    os.utime(path, ns=(1_000_000_001, 2_000_000_002))
    assert _times(path)[:2] == (1_000_000_001, 2_000_000_002)
    before_ctime = _times(path)[2]
    _tick()
    os.utime(path, ns=(3_000_000_003, 2_000_000_002))
    assert _times(path)[2] > before_ctime  # utimens changes ctime
    # UTIME_OMIT / UTIME_NOW through touch.
    subprocess.run(["touch", "-a", "-d", "2001-02-03 04:05:06.123456789", str(path)], check=True)
    atime, mtime, _ = _times(path)
    assert mtime == 2_000_000_002 and atime % 10**9 == 123456789
    now = time.time_ns()
    subprocess.run(["touch", "-m", str(path)], check=True)
    assert _times(path)[0] == atime and abs(_times(path)[1] - now) < 5 * 10**9
    negative = -123_456_789
    os.utime(path, ns=(negative, 1 << 40))
    assert _times(path)[:2] == (negative, 1 << 40)
    # cp -p and cp -a keep them; a re-open keeps them.
    shutil.copy2(path, workdir / "copy")
    assert _times(workdir / "copy")[1] == 1 << 40
    subprocess.run(["cp", "-a", str(path), str(workdir / "copy2")], check=True)
    assert _times(workdir / "copy2")[:2] == (negative, 1 << 40)
    with open(path, "rb") as fp:
        fp.read()
    assert _times(path)[1] == 1 << 40


def test_which_operations_change_which_times(workdir):
    d, f = workdir / "d", workdir / "d" / "f"
    os.mkdir(d)
    f.write_bytes(b"x")
    os.mkdir(workdir / "e")

    def changed(action, *paths):
        before = [_times(p) for p in paths]
        _tick()
        action()
        after = [_times(p) for p in paths]
        return [tuple(int(a != b) for a, b in zip(x, y)) for x, y in zip(before, after)]

    def write():
        with open(f, "r+b") as fp:
            fp.write(b"y")

    # (atime, mtime, ctime) changed?
    assert changed(write, f, d) == [(0, 1, 1), (0, 0, 0)]
    assert changed(lambda: os.chmod(f, 0o600), f) == [(0, 0, 1)]
    assert changed(lambda: os.chown(f, 1, 1), f) == [(0, 0, 1)]
    assert changed(lambda: os.truncate(f, 0), f) == [(0, 1, 1)]
    assert changed(lambda: os.setxattr(f, "user.a", b"1"), f) == [(0, 0, 1)]
    assert changed(lambda: (d / "new").write_bytes(b""), d) == [(0, 1, 1)]
    assert changed(lambda: os.mkdir(d / "sub"), d) == [(0, 1, 1)]
    assert changed(lambda: os.link(f, workdir / "e" / "hard"), f, workdir / "e", d) \
        == [(0, 0, 1), (0, 1, 1), (0, 0, 0)]
    assert changed(lambda: os.unlink(workdir / "e" / "hard"), f, workdir / "e") \
        == [(0, 0, 1), (0, 1, 1)]
    # rename: both parents' mtime and ctime.
    assert changed(lambda: os.rename(f, workdir / "e" / "g"), d, workdir / "e") \
        == [(0, 1, 1), (0, 1, 1)]
    g = workdir / "e" / "g"
    assert changed(lambda: os.rename(g, workdir / "e" / "h"), workdir / "e") == [(0, 1, 1)]
    h = workdir / "e" / "h"
    before = _times(h)
    _tick()
    os.rename(h, workdir / "e" / "i")
    assert _times(workdir / "e" / "i")[2] > before[2]  # the moved inode's ctime
    assert _times(workdir / "e" / "i")[1] == before[1]
    assert changed(lambda: os.rmdir(d / "sub"), d) == [(0, 1, 1)]
    assert changed(lambda: os.symlink("t", d / "ln"), d) == [(0, 1, 1)]
    assert changed(lambda: os.mknod(d / "fifo", 0o10644), d) == [(0, 1, 1)]


# -- statfs --------------------------------------------------------------------

def test_statfs_counts_a_shared_disk_once_and_its_real_free_space(cluster):
    """The local cluster's four OSDs share the disk under the state directory: the
    mount's size is that disk's, and what it calls available is no more than the disk
    has left.  Before, both were the sum over the OSDs (four times the disk), and
    the free figure ignored what anything else had filled the disk with."""
    disk = os.statvfs(cluster.state)

    def figures():
        st = os.statvfs(cluster.mnt)
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

    slack = 256 << 20  # the disk moves between a heartbeat and this look
    wait_until(lambda: figures()[0] > 0, 30, "the OSDs to report their filesystems")
    total, avail = figures()
    assert total == disk.f_blocks * disk.f_frsize
    assert avail <= disk.f_bavail * disk.f_frsize + slack, (avail, disk.f_bavail)
    done = subprocess.run([str(LOOMFS), "df", "--json", "--cluster", str(cluster.config)],
                          capture_output=True, text=True, timeout=60, check=True,
                          stdin=subprocess.DEVNULL)
    shown = json.loads(done.stdout)  # loomfs df gives what the mount gives
    assert shown["bytes_total"] == total
    assert shown["bytes_free"] <= disk.f_bavail * disk.f_frsize + slack
    table = subprocess.run([str(LOOMFS), "df", "--cluster", str(cluster.config)],
                           capture_output=True, text=True, timeout=60, check=True,
                           stdin=subprocess.DEVNULL).stdout
    assert table.splitlines()[0].split()[:3] == ["size", "used", "avail"]


def test_statfs_totals_and_usage(workdir):
    first = os.statvfs(workdir)
    assert first.f_namemax == 255
    assert first.f_blocks > 0 and first.f_bfree <= first.f_blocks
    assert first.f_bavail <= first.f_bfree
    shown = shutil.disk_usage(workdir)
    assert shown.total == first.f_blocks * first.f_frsize
    path = workdir / "filler"
    with open(path, "wb") as fp:
        fp.write(os.urandom(64 << 20))
        fp.flush()
        os.fsync(fp.fileno())

    def used():
        st = os.statvfs(workdir)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    before = (first.f_blocks - first.f_bfree) * first.f_frsize
    wait_until(lambda: used() >= before + (64 << 20), 60, "statfs to count 64 MiB more")
    os.unlink(path)
