"""One client process of the metadata storm (tests/test_meta_storm.py).

    python tests/meta_storm_worker.py CFG SEED SECONDS
    python tests/meta_storm_worker.py --mount STORM_DIR SEED SECONDS

Runs random mkdir, rmdir, create, link, unlink and rename (across
directories, over existing names, RENAME_EXCHANGE, directories into other
directories) on the small shared name pool under /storm until SECONDS pass.
The first form goes through the real client's metadata path
(`client.meta.Meta`: request ids, retries of transport failures for
`mds_timeout`); with --mount, through a FUSE mount by syscalls (`MountStorm`).
Prints one JSON line: ops done, expected refusals by kind, and unexpected errors
(--mount also: errnos of failed calls and the slowest call's seconds).
"""

import errno
import json
import os
import random
import stat
import sys
import time
from collections import Counter

import trio

from posix_util import RENAME_EXCHANGE, renameat2

from client.cluster import Cluster
from client.meta import Meta
from loomproto import config as cluster_config
from loomproto import errors

NAMES = [f"n{i}".encode() for i in range(8)]
EXPECTED = (errors.NotFound, errors.Exists, errors.NotEmpty, errors.NotDir, errors.IsDir,
            errors.Invalid, errors.NotPermitted, errors.TryAgain)


class Storm:
    def __init__(self, meta: Meta, rng: random.Random, top: list[int]):
        self.meta = meta
        self.rng = rng
        self.dirs = list(top)  # candidate parents: the pool dirs and dirs made here
        self.top = top

    def place(self):
        return self.rng.choice(self.dirs), self.rng.choice(NAMES)

    async def step(self):
        op = self.rng.choice(("create", "create", "mkdir", "unlink", "rmdir", "link",
                              "rename", "rename", "exchange"))
        parent, name = self.place()
        if op == "create":
            await self.meta.mknod(parent, name, stat.S_IFREG | 0o644, 0, 0, 0)
        elif op == "mkdir":
            attr = await self.meta.mkdir(parent, name, 0o755, 0, 0)
            self.dirs.append(attr["ino"])
            del self.dirs[len(self.top):-16]
        elif op == "unlink":
            await self.meta.unlink(parent, name)
        elif op == "rmdir":
            await self.meta.rmdir(parent, name)
        elif op == "link":
            attr = await self.meta.lookup(parent, name)
            new_parent, new_name = self.place()
            await self.meta.link(attr["ino"], new_parent, new_name)
        else:
            new_parent, new_name = self.place()
            flags = 2 if op == "exchange" else 0
            await self.meta.rename(parent, name, new_parent, new_name, flags)
        return op


async def main(cfg: str, seed: int, seconds: float):
    config = cluster_config.load(cfg)
    rng = random.Random(seed)
    done, refused, unexpected = Counter(), Counter(), []
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, config, name=f"storm{seed}", mds_timeout=60.0)
        await cluster.start(connect_timeout=60.0)
        meta = Meta(cluster)
        storm_dir = (await meta.lookup(1, b"storm"))["ino"]
        top = [(await meta.lookup(storm_dir, f"d{i}".encode()))["ino"] for i in range(4)]
        storm = Storm(meta, rng, top)
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline:
            try:
                done[await storm.step()] += 1
            except EXPECTED as exc:
                refused[type(exc).__name__] += 1
            except errors.LoomError as exc:
                unexpected.append(f"{type(exc).__name__}: {exc.message}")
        nursery.cancel_scope.cancel()
    print(json.dumps({"seed": seed, "done": done, "refused": refused,
                      "unexpected": unexpected[:20]}))


# -- through a mount ------------------------------------------------------------

# What a namespace race between clients answers (two mounts also see stale names).
# ELOOP and ESTALE: the kernel's own answers (d_splice_alias) when a lookup finds a
# directory another mount moved while its old name on this mount is still in use
# (another worker walking through it; the dentry cache lags by entry_timeout): ELOOP
# when the old name is an ancestor of the new parent, ESTALE when it cannot be moved.
# An unused old name is dropped by the client first (client/dirnames.py).
REFUSED_ERRNOS = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR,
                  errno.EINVAL, errno.EPERM, errno.EMLINK, errno.EBUSY, errno.ESTALE,
                  errno.ELOOP}
# What a call may answer while a metadata server is down: clear, and only then.
FAULT_ERRNOS = {errno.EIO, errno.ETIMEDOUT, errno.EAGAIN}


class MountStorm:
    """The same random operations as `Storm`, by path through a mount."""

    def __init__(self, rng: random.Random, top: list[str]):
        self.rng = rng
        self.dirs = list(top)
        self.top = top

    def place(self) -> str:
        return os.path.join(self.rng.choice(self.dirs), self.rng.choice(NAMES).decode())

    def step(self) -> str:
        op = self.rng.choice(("create", "create", "mkdir", "unlink", "rmdir", "link",
                              "rename", "rename", "exchange"))
        path, other = self.place(), self.place()
        if op == "create":
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                os.write(fd, self.rng.randbytes(self.rng.choice((0, 64))))
            finally:
                os.close(fd)
        elif op == "mkdir":
            os.mkdir(path)
            self.dirs.append(path)
            del self.dirs[len(self.top):-16]
        elif op == "unlink":
            os.unlink(path)
        elif op == "rmdir":
            os.rmdir(path)
        elif op == "link":
            os.link(path, other)
        elif op == "rename":
            os.rename(path, other)
        else:
            renameat2(path, other, RENAME_EXCHANGE)
        return op


def mount_main(storm_dir: str, seed: int, seconds: float):
    rng = random.Random(seed)
    storm = MountStorm(rng, [os.path.join(storm_dir, f"d{i}") for i in range(4)])
    done, errnos, unexpected, slowest = Counter(), Counter(), [], 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            done[storm.step()] += 1
        except OSError as exc:
            errnos[errno.errorcode.get(exc.errno, str(exc.errno))] += 1
            if exc.errno not in REFUSED_ERRNOS | FAULT_ERRNOS:
                unexpected.append(f"{exc!r}")
        slowest = max(slowest, time.monotonic() - started)
    print(json.dumps({"seed": seed, "done": done, "errnos": errnos,
                      "slowest_call_s": round(slowest, 3), "unexpected": unexpected[:20]}))


if __name__ == "__main__":
    if sys.argv[1] == "--mount":
        mount_main(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        trio.run(main, sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
