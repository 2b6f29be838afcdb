"""A read-only open's prefetch (client f06bf10) must not pair bytes fetched before
another mount's write with the size that write committed.

The prefetch reads chunk 0 from the OSDs while the open request is on its way to
the shard.  When another client's write lands on the OSDs after that read and
its commit_size reaches the shard before the open does, the open's reply carries
the new size and mtime, but the adopted prefetch holds the old bytes: the reads
return the old bytes padded with zeros to the new size, a state the file was
never in.  Seen on a real cluster (two mounts, the shards stopped while the
writer closed): a 1-byte file rewritten in place as 4,095 bytes of b"Y" read
back as b"X" and 4,094 zero bytes, for as long as the reader kept it open (2 of
11 runs; 0 of 6 with the reader opening O_RDWR, which takes no prefetch).  Here
the order is fixed: the fetch answers before the open's reply, which is newer.
"""

import os
import stat

import trio
import trio.testing

from client.data import DataPath
from client.ops import LoomOperations
from loomproto.layout import Layout

UNIT = 1 << 20
INO = 8


class FakeCluster:
    def __init__(self):
        self.open_inos = {}


class FakeMeta:
    """The shard side of an open: `during_open` runs while the open is on its way."""

    def __init__(self, attr):
        self.cluster = FakeCluster()
        self.attrs = {INO: attr}
        self.during_open = None
        self.closed = []

    async def open(self, ino, flags):
        await trio.testing.wait_all_tasks_blocked()  # the prefetch has read the OSDs
        new_attr = self.during_open()
        self.attrs[ino] = new_attr
        return new_attr

    async def close(self, ino):
        self.closed.append(ino)


def attr(size, mtime):
    return {"ino": INO, "mode": stat.S_IFREG | 0o644, "nlink": 1, "uid": 0, "gid": 0,
            "size": size, "atime": 0, "mtime": mtime, "ctime": mtime, "gen": mtime,
            "layout": Layout(UNIT, 4, 2).to_wire()}


class Ctx:
    uid = gid = pid = 0


async def test_prefetch_older_than_the_opens_size_is_not_served(nursery):
    osd = {"chunk0": b"X"}  # what the OSDs hold: a 1-byte file

    data = DataPath(cluster=None, nursery=nursery)

    async def fetch(fd, chunk_index, offset, length):
        assert chunk_index == 0
        return osd["chunk0"][offset:offset + length]

    data._fetch = fetch
    meta = FakeMeta(attr(1, 1000))  # the reader last saw the file at size 1

    def other_mount_writes_and_closes():
        # Lands on the OSDs after the prefetch read them, and its commit_size
        # reaches the shard before this open does.
        osd["chunk0"] = b"Y" * 4095
        return attr(4095, 2000)

    meta.during_open = other_mount_writes_and_closes
    ops = LoomOperations(meta, data)
    fi = await ops.open(INO, os.O_RDONLY, Ctx())
    try:
        got = await ops.read(fi.fh, 0, 4096)
        # Size 4,095 is the rewrite's: the bytes must be the rewrite's too.
        assert got == b"Y" * 4095, (
            f"read {len(got)} bytes: {got[:1]!r} then {got[1:].count(0)} zero bytes")
    finally:
        await ops.release(fi.fh)


async def test_reopen_of_an_unchanged_file_starts_no_prefetch(nursery):
    """A file unchanged since a handle here released it is likely in the kernel's
    page cache (the open keeps it): its next read-only open fetches nothing."""
    fetches = []
    data = DataPath(cluster=None, nursery=nursery)

    async def fetch(fd, chunk_index, offset, length):
        fetches.append(chunk_index)
        return b"Z" * 100

    data._fetch = fetch
    meta = FakeMeta(attr(100, 1000))
    meta.during_open = lambda: attr(100, 1000)
    ops = LoomOperations(meta, data)
    fi = await ops.open(INO, os.O_RDONLY, Ctx())
    assert await ops.read(fi.fh, 0, 4096) == b"Z" * 100
    await ops.release(fi.fh)
    assert fetches == [0]
    fi = await ops.open(INO, os.O_RDONLY, Ctx())
    await trio.testing.wait_all_tasks_blocked()
    assert fetches == [0]
    await ops.release(fi.fh)
    meta.attrs[INO] = attr(100, 3000)  # changed elsewhere: the next open fetches again
    meta.during_open = lambda: attr(100, 3000)
    fi = await ops.open(INO, os.O_RDONLY, Ctx())
    await trio.testing.wait_all_tasks_blocked()
    assert fetches == [0, 0]
    await ops.release(fi.fh)
