"""`loomfs bench PATH`: a quick check of a mount, the way users check other
parallel filesystems.  It works in a private directory under PATH and removes
it afterwards.

Phases: one big file written with 8 MiB writes and fsync'd, then read back
(after dropping the page cache when run as root); many small files written and
read back; empty files created, stat'ed and unlinked in one directory.
"""

import os
import shutil
import time

MiB = 1 << 20


def _drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fp:
            fp.write("3\n")
        return True
    except OSError:
        return False


def _timed(func, *args):
    start = time.perf_counter()
    func(*args)
    return time.perf_counter() - start


def _write_big(path, size):
    block = os.urandom(8 * MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for offset in range(0, size, len(block)):
            os.write(fd, block[:min(len(block), size - offset)])
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_all(path):
    with open(path, "rb", buffering=0) as fp:
        while fp.read(8 * MiB):
            pass


def _write_small(names, data):
    for name in names:
        with open(name, "wb") as fp:
            fp.write(data)


def _read_small(names):
    for name in names:
        with open(name, "rb") as fp:
            fp.read()


def _create(names):
    for name in names:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))


def _stat(names):
    for name in names:
        os.stat(name)


def _unlink(names):
    for name in names:
        os.unlink(name)


def run(path: str, big_mib: int = 1024, small_files: int = 1000, small_kib: int = 128,
        md_files: int = 2000) -> list[tuple[str, float, str]]:
    work = os.path.join(path, f"loomfs-bench.{os.getpid()}")
    os.mkdir(work)
    rows = []
    try:
        big = os.path.join(work, "big")
        seconds = _timed(_write_big, big, big_mib * MiB)
        rows.append(("write (8 MiB writes + fsync)", big_mib / seconds, "MiB/s"))
        cold = _drop_caches()
        seconds = _timed(_read_all, big)
        rows.append((f"read ({'cold' if cold else 'warm'})", big_mib / seconds, "MiB/s"))
        os.unlink(big)

        names = [os.path.join(work, f"s{i:06d}") for i in range(small_files)]
        seconds = _timed(_write_small, names, os.urandom(small_kib * 1024))
        rows.append((f"small write ({small_kib} KiB)", small_files / seconds, "files/s"))
        _drop_caches()
        seconds = _timed(_read_small, names)
        rows.append((f"small read ({small_kib} KiB)", small_files / seconds, "files/s"))
        _unlink(names)

        names = [os.path.join(work, f"m{i:06d}") for i in range(md_files)]
        for label, func in [("create", _create), ("stat", _stat), ("unlink", _unlink)]:
            if label == "stat":
                _drop_caches()
            rows.append((label, md_files / _timed(func, names), "ops/s"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def render(rows) -> str:
    lines = [f"{'phase':<30} {'result':>12}  unit", "-" * 52]
    lines += [f"{label:<30} {value:>12,.1f}  {unit}" for label, value, unit in rows]
    return "\n".join(lines)
