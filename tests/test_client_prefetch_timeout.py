"""A read-only open's prefetch (client f06bf10) that fails must not make the first
read wait a second io_timeout.

When no replica of a small file's chunk answers, the prefetch gives up after
io_timeout; the first read, which waited for it, then fetches again and gives up
after another io_timeout.  README "Limitations": EIO after io_timeout.  Seen on a
4-OSD, R=2 cluster mounted with io_timeout=5, two OSDs SIGSTOPped, cold small
files opened read-only: the first FUSE read took 10.1-10.3 s ("slow request:
read(..., 0, 8192) took 10.1s"), and read(2), with the kernel's retry of the
page, failed with EIO after 15.4 s; opened O_RDWR (no prefetch), 10.2 s.
Virtual time here (trio's autojump clock): no dependence on speed.
"""

import pytest
import trio

from client.data import DataPath, FileData
from loomproto import errors
from loomproto.layout import Layout

UNIT = 1 << 20
IO_TIMEOUT = 5.0


async def test_failed_prefetch_costs_the_first_read_one_io_timeout(nursery, autojump_clock):
    data = DataPath(cluster=None, nursery=nursery, io_timeout=IO_TIMEOUT)
    fetches = []

    async def unreachable(fd, chunk_index, offset, length):
        # What DataPath._fetch does when no replica answers: retry until io_timeout.
        fetches.append(trio.current_time())
        with trio.move_on_after(IO_TIMEOUT):  # virtual clock
            await trio.Event().wait()  # an answer no replica will give
        raise errors.IOFailure(f"no replica of ino {fd.ino} chunk {chunk_index} answered")

    data._fetch = unreachable
    small = FileData(8, Layout(UNIT, 4, 2), 5000)
    opened = trio.current_time()
    data.adopt(data.prefetch(small.ino, small.layout, small.size), small)  # open(2)
    with pytest.raises(errors.IOFailure):
        await data.read(small, 0, 4096)  # the kernel's first read, right after the open
    waited = trio.current_time() - opened
    assert waited <= IO_TIMEOUT + 1, (
        f"the first read failed {waited:.1f}s after the open, io_timeout {IO_TIMEOUT:g}s "
        f"(fetches began at {[round(t - opened, 1) for t in fetches]})")
