"""client.data's read path without a cluster: which reads fetch whole chunks, and the
prefetch of a small file's chunk while its open is on its way."""

import types

import pytest
import trio
import trio.testing

from loomproto import errors

from client.data import READ_AHEAD_MAX, DataPath, FileData
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
    await trio.testing.wait_all_tasks_blocked()  # the read-ahead runs in the background
    # The chunk, and two stripes (4 chunks each) of read-ahead.
    assert sorted(fetched) == [(c, 0, UNIT) for c in range(100, 109)]

    fetched.clear()
    for offset in (8 * UNIT + 131072, 8 * UNIT, 8 * UNIT + 393216, 8 * UNIT + 262144):
        await data.read(fd, offset, 131072)  # kernel read-ahead, out of order
    assert {length for _, _, length in fetched} == {UNIT}


async def test_a_sequential_read_does_not_wait_for_its_read_ahead(nursery):
    """The read-ahead past a request goes on in the background: a slow fetch of a
    chunk ahead holds neither this read nor the next ones before that chunk."""
    data, fetched, fd = recording_path(nursery)
    plain_fetch = data._fetch
    release = trio.Event()

    async def slow_past_chunk_1(fd_, chunk_index, offset, length):
        if chunk_index > 1:
            await release.wait()
        return await plain_fetch(fd_, chunk_index, offset, length)

    data._fetch = slow_past_chunk_1
    with trio.fail_after(5):
        assert await data.read(fd, 0, UNIT) == b"\x00" * UNIT
        assert await data.read(fd, UNIT, UNIT) == b"\x01" * UNIT
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(c for c, _, _ in fetched) == [0, 1]  # chunks 2..9 are still on their way
    assert set(fd.fetching) == set(range(2, 10))
    release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert not fd.fetching and set(range(2, 10)) <= set(fd.read_cache)
    fetched.clear()
    assert await data.read(fd, 2 * UNIT, UNIT) == b"\x02" * UNIT
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(c for c, _, _ in fetched) == [10]  # the read-ahead moved one chunk on


async def test_a_failed_read_ahead_fails_only_a_read_that_reaches_it(nursery):
    data, fetched, fd = recording_path(nursery)
    plain_fetch = data._fetch
    broken = {3}

    async def fetch(fd_, chunk_index, offset, length):
        if chunk_index in broken:
            raise errors.IOFailure(f"chunk {chunk_index} unreadable")
        return await plain_fetch(fd_, chunk_index, offset, length)

    data._fetch = fetch
    assert await data.read(fd, 0, UNIT) == b"\x00" * UNIT
    await trio.testing.wait_all_tasks_blocked()
    assert await data.read(fd, UNIT, UNIT) == b"\x01" * UNIT
    assert await data.read(fd, 2 * UNIT, UNIT) == b"\x02" * UNIT
    with pytest.raises(errors.IOFailure):
        await data.read(fd, 3 * UNIT, UNIT)
    broken.clear()
    assert await data.read(fd, 3 * UNIT, UNIT) == b"\x03" * UNIT  # tried again


async def test_a_range_read_over_two_chunks_fetches_both_pieces(nursery):
    data, fetched, fd = recording_path(nursery)

    assert await data.read(fd, 10 * UNIT - 1000, 3000) == b"\x09" * 1000 + b"\x0a" * 2000
    assert sorted(fetched) == [(9, UNIT - 1000, 1000), (10, 0, 2000)]
    fetched.clear()
    assert await data.read(fd, 50 * UNIT + 7, 100) == b"\x32" * 100
    assert fetched == [(50, 7, 100)]


def held_prefetch(nursery):
    """A recording DataPath whose fetches wait for `release`, and a 5,000-byte
    file whose open started a prefetch and adopted it."""
    data, fetched, _ = recording_path(nursery)
    release = trio.Event()
    data.plain_fetch = data._fetch

    async def held_fetch(probe, chunk_index, offset, length):
        await release.wait()
        return await data.plain_fetch(probe, chunk_index, offset, length)

    data._fetch = held_fetch
    small = FileData(8, Layout(UNIT, 4, 1), 5000)
    fetch = data.prefetch(small.ino, small.layout, small.size)
    data.adopt(fetch, small)
    return data, fetched, release, small, fetch


async def test_prefetch_adopted_while_running_serves_the_first_read(nursery):
    """An open's prefetch of chunk 0: the read waits for it instead of fetching again."""
    data, fetched, release, small, fetch = held_prefetch(nursery)
    reader_done = []

    async def reader():
        reader_done.append(await data.read(small, 0, 4096))

    async with trio.open_nursery() as inner:
        inner.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert reader_done == []  # waiting for the prefetch, not fetching itself
        release.set()
    assert reader_done == [b"\0" * 4096]
    assert fetched == [(0, 0, UNIT)]


async def test_prefetch_done_before_adopt_fills_the_cache(nursery):
    data, fetched, fd = recording_path(nursery)
    small = FileData(8, Layout(UNIT, 4, 1), 5000)
    fetch = data.prefetch(small.ino, small.layout, small.size)
    await fetch.done.wait()
    data.adopt(fetch, small)
    assert await data.read(small, 0, 5000) == b"\0" * 5000
    assert fetched == [(0, 0, UNIT)]


async def test_prefetch_is_dropped_when_the_file_changed_meanwhile(nursery):
    """A write (or a newer open, or a truncate) after the adopt makes the prefetched
    bytes stale: they are not kept, and the read fetches anew."""
    data, fetched, release, small, fetch = held_prefetch(nursery)
    small.generation += 1  # what a write, truncate or second open does
    release.set()
    await fetch.done.wait()
    assert 0 not in small.read_cache
    assert 0 not in small.fetching
    data._fetch = data.plain_fetch
    await data.read(small, 0, 100)
    assert fetched == [(0, 0, UNIT), (0, 0, UNIT)]


async def test_read_ahead_is_bounded_and_given_up_when_the_file_closes(nursery):
    """Fetches ahead with an OSD that never answers: they are capped over all
    files, and the last release of a file cancels its own at once (with an OSD
    down each would otherwise retry for io_timeout, holding the closed file)."""
    data, fetched, _ = recording_path(nursery)
    plain_fetch = data._fetch

    async def hung_past_chunk_0(fd_, chunk_index, offset, length):
        if chunk_index > 0:
            await trio.sleep_forever()
        return await plain_fetch(fd_, chunk_index, offset, length)

    data._fetch = hung_past_chunk_0
    files = [FileData(100 + i, Layout(UNIT, 4, 1), 64 * UNIT) for i in range(20)]
    with trio.fail_after(5):
        for fd in files:
            assert await data.read(fd, 0, 128 << 10) == b"\x00" * (128 << 10)
    await trio.testing.wait_all_tasks_blocked()
    running = sum(len(fd.reading_ahead) for fd in files)
    assert running == data._reading_ahead == READ_AHEAD_MAX  # 8 per file wanted
    for fd in files:
        data.closed(fd)
    await trio.testing.wait_all_tasks_blocked()
    assert data._reading_ahead == 0
    assert not any(fd.reading_ahead or fd.fetching for fd in files)


async def test_a_truncate_drops_what_a_read_fetched_while_the_osds_cut(nursery):
    """A read racing a truncate fetches bytes from before the cut; they must not
    stay cached past it (a later sparse write would expose them)."""
    data, fetched, fd = recording_path(nursery)
    cutting = trio.Event()
    cut_done = trio.Event()

    async def slow_cut(args):
        cutting.set()
        await cut_done.wait()
        return []

    data._truncate_round = slow_cut
    data.cluster = types.SimpleNamespace(in_osds=lambda: [0, 1, 2, 3], map=None)
    data._cut_unreachable = lambda fd_, size: []
    async with trio.open_nursery() as inner:
        inner.start_soon(data.truncate, fd, UNIT // 2)
        await cutting.wait()
        await data.read(fd, 0, UNIT)  # sequential: chunk 0 and more, from before the cut
        await trio.testing.wait_all_tasks_blocked()
        assert fd.read_cache
        cut_done.set()
    assert not fd.read_cache
