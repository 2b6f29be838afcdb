"""File contents through the mount: holes, truncation, files past 4 GiB, the kernel's
fallbacks for calls pyfuse3 has no handler for (copy_file_range, fallocate, SEEK_DATA,
flock and POSIX record locks), O_APPEND from several writers, coherent handles and
mmap MAP_SHARED."""

import errno
import fcntl
import mmap
import multiprocessing
import os
import threading
import time

import pytest

from posix_util import errno_of, wait_until

pytestmark = pytest.mark.mount

MiB = 1 << 20
GiB = 1 << 30


def test_holes_read_zeros(workdir):
    path = workdir / "sparse"
    with open(path, "wb") as fp:
        fp.seek(3 * MiB + 17)
        fp.write(b"end")
    assert os.stat(path).st_size == 3 * MiB + 20
    data = path.read_bytes()
    assert data == bytes(3 * MiB + 17) + b"end"
    with open(path, "r+b") as fp:
        fp.truncate(10 * MiB)
        fp.seek(MiB)
        fp.write(b"middle")
    data = path.read_bytes()
    assert len(data) == 10 * MiB and data[MiB:MiB + 6] == b"middle"
    assert data.count(0) == len(data) - 6 - 3
    os.truncate(path, MiB + 3)
    os.truncate(path, 2 * MiB)  # truncating up again must not resurrect old bytes
    data = path.read_bytes()
    assert data == bytes(MiB) + b"mid" + bytes(MiB - 3)


def test_file_past_4gib_exact_size(workdir):
    path = workdir / "huge"
    with open(path, "wb") as fp:
        fp.seek(5 * GiB)
        fp.write(b"at five gib")
    assert os.stat(path).st_size == 5 * GiB + 11
    with open(path, "rb") as fp:
        fp.seek(5 * GiB - 5)
        assert fp.read() == bytes(5) + b"at five gib"
        fp.seek(4 * GiB)
        assert fp.read(4096) == bytes(4096)
    os.truncate(path, 4 * GiB + 1)
    assert os.stat(path).st_size == 4 * GiB + 1
    os.unlink(path)


def test_copy_file_range_exact(workdir):
    src, dst = workdir / "src", workdir / "dst"
    data = os.urandom(3 * MiB + 4321)
    src.write_bytes(data)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        left = len(data)
        while left:
            done = os.copy_file_range(fin.fileno(), fout.fileno(), left)
            assert done > 0
            left -= done
    assert dst.read_bytes() == data
    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        assert os.copy_file_range(fin.fileno(), fout.fileno(), 1000, 5, MiB + 7) == 1000
    assert dst.read_bytes()[MiB + 7:MiB + 1007] == data[5:1005]


def test_fallocate_and_seek_data(workdir):
    path = workdir / "f"
    path.write_bytes(b"abc")
    fd = os.open(path, os.O_RDWR)
    try:
        code = errno_of(os.posix_fallocate, fd, 0, MiB)
        # glibc's posix_fallocate emulates by writing zeros when the call is refused.
        assert code in (0, errno.EOPNOTSUPP)
        code = errno_of(os.fallocate, fd, 0, 0, 2 * MiB) if hasattr(os, "fallocate") else 0
        assert code in (0, errno.EOPNOTSUPP)
        size = os.fstat(fd).st_size
        assert os.pread(fd, 3, 0) == b"abc"
        assert os.pread(fd, size, 3) == bytes(size - 3)
        # Without a lseek handler the kernel treats the whole file as data.
        assert os.lseek(fd, 0, os.SEEK_DATA) == 0
        assert os.lseek(fd, 0, os.SEEK_HOLE) == size
    finally:
        os.close(fd)


def _lock_probe(path, kind, queue):
    with open(path, "r+b") as fp:
        try:
            if kind == "flock":
                fcntl.flock(fp, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                fcntl.lockf(fp, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
            queue.put("locked")
        except OSError as exc:
            queue.put(exc.errno)


def _probe(path, kind):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_lock_probe, args=(path, kind, queue))
    proc.start()
    result = queue.get(timeout=60)
    proc.join(60)
    return result


def test_flock_and_record_locks_between_processes(workdir):
    path = workdir / "locked"
    path.write_bytes(bytes(100))
    with open(path, "r+b") as fp:
        fcntl.flock(fp, fcntl.LOCK_EX)
        assert _probe(path, "flock") in (errno.EAGAIN, errno.EWOULDBLOCK)
        fcntl.flock(fp, fcntl.LOCK_UN)
        assert _probe(path, "flock") == "locked"
        fcntl.lockf(fp, fcntl.LOCK_EX, 10, 0)
        assert _probe(path, "lockf") in (errno.EAGAIN, errno.EACCES)
        fcntl.lockf(fp, fcntl.LOCK_UN, 10, 0)
        fcntl.lockf(fp, fcntl.LOCK_EX, 10, 50)  # a range that does not overlap
        assert _probe(path, "lockf") == "locked"


RECORD = 100


def _append_records(path, tag, count):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(count):
            line = f"{tag}:{i}:".encode()
            os.write(fd, line + b"x" * (RECORD - len(line) - 1) + b"\n")
    finally:
        os.close(fd)


def test_o_append_from_threads_and_processes(workdir):
    path = workdir / "log"
    path.write_bytes(b"")
    count = 300
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_records, args=(path, f"p{i}", count)) for i in range(3)]
    threads = [threading.Thread(target=_append_records, args=(path, f"t{i}", count))
               for i in range(3)]
    for worker in procs + threads:
        worker.start()
    for worker in procs + threads:
        worker.join(300)
    assert all(p.exitcode == 0 for p in procs)
    data = path.read_bytes()
    assert len(data) == 6 * count * RECORD
    records = [data[i:i + RECORD] for i in range(0, len(data), RECORD)]
    seen = set()
    for record in records:
        assert record.endswith(b"\n") and record.count(b"\n") == 1, record
        tag, number, _ = record.split(b":", 2)
        assert (tag, number) not in seen
        seen.add((tag, number))
    assert len(seen) == 6 * count


def test_two_handles_and_another_process_see_writes(workdir):
    path = workdir / "shared"
    path.write_bytes(bytes(8192))
    a = os.open(path, os.O_RDWR)
    b = os.open(path, os.O_RDWR)
    try:
        os.pwrite(a, b"from a", 100)
        assert os.pread(b, 6, 100) == b"from a"
        os.pwrite(b, b"from b", 5000)
        assert os.pread(a, 6, 5000) == b"from b"
        os.pwrite(a, b"grow", 9000)
        assert os.fstat(b).st_size == 9004
        ctx = multiprocessing.get_context("fork")
        child = ctx.Process(target=lambda: os.pwrite(os.open(path, os.O_WRONLY), b"child", 0))
        child.start()
        child.join(60)
        assert os.pread(a, 5, 0) == b"child" and os.pread(b, 5, 0) == b"child"
    finally:
        os.close(a)
        os.close(b)


def test_mmap_shared_writes_reach_the_file(workdir):
    path = workdir / "mapped"
    size = 3 * MiB
    path.write_bytes(bytes(size))
    with open(path, "r+b") as fp:
        with mmap.mmap(fp.fileno(), size, mmap.MAP_SHARED) as mapped:
            mapped[10:15] = b"hello"
            mapped[2 * MiB:2 * MiB + 5] = b"world"
            mapped.flush()
            with open(path, "rb") as other:  # another handle, same client
                other.seek(10)
                assert other.read(5) == b"hello"
            mapped[size - 3:size] = b"end"
    data = path.read_bytes()
    assert data[10:15] == b"hello" and data[2 * MiB:2 * MiB + 5] == b"world"
    assert data[-3:] == b"end" and len(data) == size
    with open(path, "r+b") as fp, mmap.mmap(fp.fileno(), 0) as mapped:
        assert mapped[2 * MiB:2 * MiB + 5] == b"world"


def test_open_o_trunc_empties_the_file(workdir):
    path = workdir / "f"
    path.write_bytes(os.urandom(3 * MiB))
    before = os.stat(path)
    wait_until(lambda: time.time_ns() > before.st_mtime_ns + 2_000_000, 5, "the clock")
    fd = os.open(path, os.O_RDWR | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        assert os.pread(fd, 100, 0) == b""
        os.pwrite(fd, b"new", 2 * MiB)
    finally:
        os.close(fd)
    after = os.stat(path)
    assert after.st_size == 2 * MiB + 3 and after.st_mtime_ns > before.st_mtime_ns
    assert path.read_bytes() == bytes(2 * MiB) + b"new"
    with open(path, "w") as fp:  # the shell's `>`
        fp.write("short")
    assert path.read_bytes() == b"short"


def test_read_ahead_never_caches_unsent_writes(workdir):
    """Bytes still in the client's write buffers must win over the OSDs' older copy,
    also for chunks that a read-ahead fetched while they were dirty (found by fsx)."""
    path = workdir / "f"
    path.write_bytes(os.urandom(3 * MiB))
    with open(path, "r+b", buffering=0) as fp:
        fp.seek(2 * MiB - 1000)
        fp.write(b"\xab" * 5000)  # partial chunks 1 and 2: they stay buffered
        fp.seek(0)
        fp.read(MiB)  # sequential: reads ahead over chunks 1 and 2
        fp.seek(2 * MiB - 1000)
        assert fp.read(5000) == b"\xab" * 5000
    os.system("sync")
    with open(path, "rb") as fp:
        fp.seek(2 * MiB - 1000)
        assert fp.read(5000) == b"\xab" * 5000
