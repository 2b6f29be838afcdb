"""An fsx-style model-based test of one file's contents through the mount.

A seeded random sequence of write, read, truncate, mapread, mapwrite,
copy_file_range, fsync and close/reopen runs on one file; an in-memory model
follows every step, and after each step the file's size and the bytes the step
touched are compared with the model (the whole file every `FULL_CHECK` steps and
at the end).  The seed is printed and part of every failure message.

Knobs: ``LOOMFS_FSX_SEED`` (replay a failure), ``LOOMFS_FSX_OPS`` (steps, default 100000;
without it the run also stops after ``LOOMFS_FSX_SECONDS``, default 60, the
suite's budget on 2 cores, and reports how many steps it made), ``LOOMFS_FSX_MAXLEN`` (largest file, default 3 MiB: the
file spans several 1 MiB stripe units).
"""

import mmap
import os
import random
import time

import pytest

pytestmark = pytest.mark.mount

SEED = int(os.environ.get("LOOMFS_FSX_SEED", str(random.randrange(1 << 32))))
OPS = int(os.environ.get("LOOMFS_FSX_OPS", "100000"))
# Without an explicit LOOMFS_FSX_OPS the run stops after this many seconds (the
# suite's budget on 2 cores); with one it runs every step.
SECONDS = float(os.environ.get("LOOMFS_FSX_SECONDS",
                               "0" if "LOOMFS_FSX_OPS" in os.environ else "60"))
MAXLEN = int(os.environ.get("LOOMFS_FSX_MAXLEN", str(3 << 20)))
MAXOP = 128 << 10
FULL_CHECK = 1000
PAGE = mmap.PAGESIZE


class Fsx:
    def __init__(self, path, rng):
        self.path = path
        self.rng = rng
        self.model = bytearray()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.step = 0
        self.log = []

    def fail(self, what):
        recent = "\n".join(self.log[-15:])
        raise AssertionError(f"fsx seed {SEED} step {self.step}: {what}\nlast steps:\n{recent}")

    def expect(self, offset, got, what):
        want = bytes(self.model[offset:offset + len(got)])
        if got != want:
            first = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b) \
                if len(got) == len(want) else min(len(got), len(want))
            self.fail(f"{what}: {len(got)} bytes at {offset} differ from the model "
                      f"(first difference at {offset + first}; expected {len(want)} bytes)")

    def _range(self, end_limit):
        offset = self.rng.randrange(max(1, end_limit))
        length = self.rng.randrange(1, MAXOP)
        return offset, min(length, MAXLEN - offset)

    # -- operations ------------------------------------------------------

    def write(self):
        offset, length = self._range(MAXLEN)
        data = self.rng.randbytes(length)
        self.log.append(f"{self.step} write {offset}+{length}")
        if os.pwrite(self.fd, data, offset) != length:
            self.fail("short write")
        self._model_put(offset, data)

    def read(self):
        if not self.model:
            return
        offset, length = self._range(len(self.model))
        self.log.append(f"{self.step} read {offset}+{length}")
        self.expect(offset, os.pread(self.fd, length, offset), "read")

    def truncate(self):
        size = self.rng.randrange(MAXLEN)
        self.log.append(f"{self.step} truncate {size}")
        os.ftruncate(self.fd, size)
        self._model_resize(size)

    def mapread(self):
        if not self.model:
            return
        offset, length = self._range(len(self.model))
        length = min(length, len(self.model) - offset)
        self.log.append(f"{self.step} mapread {offset}+{length}")
        start = offset - offset % PAGE
        with mmap.mmap(self.fd, offset + length - start, offset=start,
                       access=mmap.ACCESS_READ) as mapped:
            got = mapped[offset - start:]
        self.expect(offset, got, "mapread")

    def mapwrite(self):
        offset, length = self._range(MAXLEN)
        data = self.rng.randbytes(length)
        self.log.append(f"{self.step} mapwrite {offset}+{length}")
        if offset + length > len(self.model):
            os.ftruncate(self.fd, offset + length)
            self._model_resize(offset + length)
        start = offset - offset % PAGE
        with mmap.mmap(self.fd, offset + length - start, offset=start) as mapped:
            mapped[offset - start:] = data
            mapped.flush()
        self._model_put(offset, data)

    def copy_range(self):
        if len(self.model) < 2:
            return
        length = self.rng.randrange(1, min(MAXOP, len(self.model) // 2 + 1))
        src = self.rng.randrange(len(self.model) - length + 1)
        dst = self.rng.randrange(MAXLEN - length)
        if src < dst + length and dst < src + length:
            return  # copy_file_range refuses overlapping ranges of one file
        self.log.append(f"{self.step} copy_range {src}+{length} -> {dst}")
        done = 0
        while done < length:
            n = os.copy_file_range(self.fd, self.fd, length - done, src + done, dst + done)
            if n <= 0:
                self.fail(f"copy_file_range returned {n} after {done} of {length}")
            done += n
        self._model_put(dst, bytes(self.model[src:src + length]))

    def fsync(self):
        self.log.append(f"{self.step} fsync")
        os.fsync(self.fd)

    def reopen(self):
        self.log.append(f"{self.step} close+open")
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR)

    # -- the model -------------------------------------------------------

    def _model_put(self, offset, data):
        if len(self.model) < offset:
            self.model.extend(bytes(offset - len(self.model)))
        self.model[offset:offset + len(data)] = data

    def _model_resize(self, size):
        if size < len(self.model):
            del self.model[size:]
        else:
            self.model.extend(bytes(size - len(self.model)))

    def check_size(self):
        size = os.fstat(self.fd).st_size
        if size != len(self.model):
            self.fail(f"size {size} != model size {len(self.model)}")

    def check_all(self):
        self.check_size()
        got = os.pread(self.fd, len(self.model) + 1, 0)
        if len(got) < len(self.model):  # reads may come back in pieces
            got += os.pread(self.fd, len(self.model) - len(got) + 1, len(got))
        self.expect(0, got, "whole-file check")
        if len(got) != len(self.model):
            self.fail(f"read {len(got)} bytes of a {len(self.model)}-byte file")


WEIGHTS = {"write": 30, "read": 25, "truncate": 6, "mapread": 10, "mapwrite": 10,
           "copy_range": 10, "fsync": 2, "reopen": 2}


@pytest.mark.deadline(1800)
def test_fsx(workdir):
    print(f"fsx seed {SEED} ops {OPS} maxlen {MAXLEN} (LOOMFS_FSX_SEED={SEED} to replay)")
    rng = random.Random(SEED)
    fsx = Fsx(workdir / "fsx-file", rng)
    names, weights = zip(*WEIGHTS.items())
    start = time.monotonic()
    try:
        for fsx.step in range(1, OPS + 1):
            op = rng.choices(names, weights)[0]
            getattr(fsx, op)()
            fsx.check_size()
            if fsx.step % FULL_CHECK == 0:
                fsx.check_all()
            if SECONDS and time.monotonic() - start > SECONDS:
                break
        fsx.check_all()
    finally:
        os.close(fsx.fd)
    print(f"fsx seed {SEED}: {fsx.step} ops in {time.monotonic() - start:.1f}s")
