"""Mounts with ``-o writeback_cache`` (opt-in; README "Kernel writeback cache").

With the kernel's writeback cache the kernel owns size and mtime while it holds
dirty pages, turns O_APPEND into plain writes at its own size, reads partial
pages through write-only handles and sends setattr(mtime) on its own, even
after an unlink.  Two clients of one cluster, both with the option, check the
cases that depends on: appends from two processes, sizes after writes and
truncates, mmap, partial pages on O_WRONLY, close-to-open between the mounts,
an unlinked open file, and fsync surviving a SIGKILL of the client.  The
second mount reads only files whose size it has not cached or that kept their
size: its kernel trusts its own cached size of a regular file over the server's.
"""

import mmap
import os
import subprocess
import sys

import pytest

from client.mount import parse_options
from conftest import started_cluster

MIB = 1 << 20
OPTS = "allow_other,default_permissions,writeback_cache"
CALL_TIMEOUT = 120  # a bound on every helper process, never a speed expectation

APPENDER = """
import os, sys
path, tag, count, size = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4])
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
for i in range(count):
    record = (tag + b"%06d" % i).ljust(size - 1, b".") + b"\\n"
    assert os.write(fd, record) == size
os.close(fd)
"""


@pytest.fixture(scope="module")
def wb(tmp_path_factory):
    """A cluster whose first client and a second one both mount with writeback_cache."""
    base = tmp_path_factory.mktemp("writeback")
    with started_cluster(base, "--mds", 2, "--osd", 4, "--replicas", 2,
                         "--mount-opts", OPTS) as live:
        other = base / "mnt2"
        live.run("mount", other, "--mount-opts", OPTS)
        live.other = other
        yield live


def test_writeback_cache_is_an_own_option_off_by_default():
    own, fuse = parse_options("allow_other,writeback_cache")
    assert own["writeback_cache"] is True and fuse == {"allow_other"}
    assert parse_options("allow_other")[0]["writeback_cache"] is False
    assert parse_options("writeback_cache=0")[0]["writeback_cache"] is False


def test_appends_from_two_processes_interleave_whole(wb):
    path = wb.mnt / "appended"
    count, size = 300, 100
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), tag, str(count),
                               str(size)]) for tag in ("A", "B")]
    for proc in procs:
        assert proc.wait(timeout=CALL_TIMEOUT) == 0

    data = path.read_bytes()
    assert len(data) == 2 * count * size
    records = [data[i:i + size] for i in range(0, len(data), size)]
    for tag in (b"A", b"B"):
        mine = [r for r in records if r.startswith(tag)]
        assert mine == [(tag + b"%06d" % i).ljust(size - 1, b".") + b"\n"
                        for i in range(count)]
    assert (wb.other / "appended").read_bytes() == data  # after close, on the other mount


def test_size_after_writes_and_truncates(wb):
    path = wb.mnt / "sized"
    body = os.urandom(3 * MIB + 100)
    with open(path, "wb") as f:
        f.write(body)
        assert os.fstat(f.fileno()).st_size == len(body)
        f.truncate(MIB + MIB // 2)
        assert os.fstat(f.fileno()).st_size == MIB + MIB // 2
        f.seek(5 * MIB)
        f.write(b"tail")
    assert os.stat(path).st_size == 5 * MIB + 4
    assert os.stat(wb.other / "sized").st_size == 5 * MIB + 4

    data = (wb.other / "sized").read_bytes()
    assert data[:MIB + MIB // 2] == body[:MIB + MIB // 2]
    assert data[MIB + MIB // 2:5 * MIB] == bytes(5 * MIB - (MIB + MIB // 2))
    assert data[5 * MIB:] == b"tail"

    os.truncate(path, 100)  # by path, no open handle
    assert os.stat(path).st_size == 100
    assert path.read_bytes() == body[:100]
    # Not checked on the other mount: with the writeback cache its kernel keeps
    # the size it cached for this inode (README "Kernel writeback cache").


def test_partial_pages_through_a_write_only_handle(wb):
    path = wb.mnt / "partial"
    body = os.urandom(3 * 4096 + 10)
    path.write_bytes(body)

    # Writes that cover pages only partly make the kernel read those pages
    # first, through this O_WRONLY handle.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"XYZ", 4000)
        os.pwrite(fd, b"Q" * 5, len(body) + 3)
    finally:
        os.close(fd)

    expect = bytearray(body)
    expect[4000:4003] = b"XYZ"
    expect += bytes(3) + b"Q" * 5
    assert path.read_bytes() == bytes(expect)
    assert (wb.other / "partial").read_bytes() == bytes(expect)


def test_mmap_writes_land(wb):
    path = wb.mnt / "mapped"
    path.write_bytes(bytes(2 * MIB))
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 2 * MIB) as view:
        view[10:15] = b"hello"
        view[MIB + 7:MIB + 12] = b"world"
        view.flush()
    data = (wb.other / "mapped").read_bytes()
    assert data[10:15] == b"hello" and data[MIB + 7:MIB + 12] == b"world"
    assert len(data) == 2 * MIB


def test_close_to_open_both_ways(wb):
    first, second = wb.mnt / "shared", wb.other / "shared"
    one, two = os.urandom(MIB + 17), os.urandom(MIB // 3)
    first.write_bytes(one)
    assert second.read_bytes() == one

    with open(second, "r+b") as f:
        f.write(two)
    expect = two + one[len(two):]
    assert first.read_bytes() == expect
    assert os.stat(first).st_size == len(one)


def test_unlinked_open_file_keeps_working(wb):
    path = wb.mnt / "unlinked"
    with open(path, "w+b") as f:
        f.write(b"a" * 5000)
        os.unlink(path)
        f.write(b"b" * 100)  # the kernel may send setattr(mtime) after the unlink
        f.flush()
        os.fsync(f.fileno())
        f.seek(0)
        assert f.read() == b"a" * 5000 + b"b" * 100
    assert not path.exists()


def test_fsync_survives_a_killed_client(wb):
    path = wb.mnt / "synced"
    body = os.urandom(2 * MIB + 1)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert os.write(fd, body) == len(body)
        os.fsync(fd)
        wb.run("kill", "client0")
    finally:
        try:
            os.close(fd)
        except OSError:
            pass  # ENOTCONN: the client is gone, which is the point
    wb.run("start", "client0")
    assert path.read_bytes() == body
    assert (wb.other / "synced").read_bytes() == body
