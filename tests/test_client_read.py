"""client.data's read path without a cluster: which reads fetch whole chunks."""

from client.data import DataPath, FileData
from loomproto.layout import Layout


async def test_random_small_reads_near_the_last_one_fetch_just_their_range(nursery):
    unit = 1 << 20
    data = DataPath(cluster=None, nursery=nursery)
    fetched = []

    async def fetch(fd, chunk_index, offset, length):
        fetched.append((chunk_index, offset, length))
        return bytes(length)

    data._fetch = fetch
    fd = FileData(7, Layout(unit, 4, 1), 256 * unit)

    await data.read(fd, 100 * unit, 4096)
    await data.read(fd, 100 * unit + 300_000, 4096)  # near, but not a stream
    assert fetched == [(100, 0, 4096), (100, 300_000, 4096)]

    fetched.clear()
    await data.read(fd, 100 * unit + 304_096, 4096)  # right where the last one ended
    assert sorted(fetched) == [(c, 0, unit) for c in range(100, 105)]  # chunk + read-ahead

    fetched.clear()
    for offset in (8 * unit + 131072, 8 * unit, 8 * unit + 393216, 8 * unit + 262144):
        await data.read(fd, offset, 131072)  # kernel read-ahead, out of order
    assert {length for _, _, length in fetched} == {unit}
