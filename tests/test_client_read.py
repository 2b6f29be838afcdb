"""client.data's read path without a cluster: which reads fetch whole chunks."""

from client.data import DataPath, FileData
from loomproto.layout import Layout

UNIT = 1 << 20


def recording_path(nursery):
    """A DataPath whose OSD fetches are recorded (chunk, offset, length) and
    answer bytes equal to the chunk index; and a 256-chunk file."""
    data = DataPath(cluster=None, nursery=nursery)
    fetched = []

    async def fetch(fd, chunk_index, offset, length):
        fetched.append((chunk_index, offset, length))
        return bytes([chunk_index % 256]) * length

    data._fetch = fetch
    return data, fetched, FileData(7, Layout(UNIT, 4, 1), 256 * UNIT)


async def test_random_small_reads_near_the_last_one_fetch_just_their_range(nursery):
    data, fetched, fd = recording_path(nursery)

    await data.read(fd, 100 * UNIT, 4096)
    await data.read(fd, 100 * UNIT + 300_000, 4096)  # near, but not a stream
    assert fetched == [(100, 0, 4096), (100, 300_000, 4096)]

    fetched.clear()
    await data.read(fd, 100 * UNIT + 304_096, 4096)  # right where the last one ended
    assert sorted(fetched) == [(c, 0, UNIT) for c in range(100, 105)]  # chunk + read-ahead

    fetched.clear()
    for offset in (8 * UNIT + 131072, 8 * UNIT, 8 * UNIT + 393216, 8 * UNIT + 262144):
        await data.read(fd, offset, 131072)  # kernel read-ahead, out of order
    assert {length for _, _, length in fetched} == {UNIT}


async def test_a_range_read_over_two_chunks_fetches_both_pieces(nursery):
    data, fetched, fd = recording_path(nursery)

    assert await data.read(fd, 10 * UNIT - 1000, 3000) == b"\x09" * 1000 + b"\x0a" * 2000
    assert sorted(fetched) == [(9, UNIT - 1000, 1000), (10, 0, 2000)]
    fetched.clear()
    assert await data.read(fd, 50 * UNIT + 7, 100) == b"\x32" * 100
    assert fetched == [(50, 7, 100)]
