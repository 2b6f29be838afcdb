"""osd.store.ChunkStore on its own: which reads skip the hop to an I/O thread, how
many hops a read of a chunk that is not open takes, which writes start their disk
writes at once."""

import os

import pytest
import trio.testing

from loomproto import errors
from osd import chunkfile, store as store_module, writeback
from osd.store import CACHED_READ_MAX, ChunkStore


@pytest.fixture
async def store(tmp_path):
    chunks = ChunkStore(str(tmp_path))
    await chunks.open()
    yield chunks
    chunks.close()


def _count_calls(monkeypatch, name):
    calls = []
    real = getattr(chunkfile, name)

    def counted(*args):
        calls.append(args[2:4])
        return real(*args)

    monkeypatch.setattr(chunkfile, name, counted)
    return calls


async def test_small_cached_read_skips_the_io_thread(store, monkeypatch):
    data = os.urandom(1 << 20)
    await store.write(5, 0, 0, data)
    threaded = _count_calls(monkeypatch, "read")

    assert await store.read(5, 0, 12345, 4096) == (data[12345:12345 + 4096], 1)
    assert await store.read(5, 0, 0, CACHED_READ_MAX) == (data[:CACHED_READ_MAX], 1)
    assert threaded == []
    assert await store.read(5, 0, 0, CACHED_READ_MAX + 1) == (data[:CACHED_READ_MAX + 1], 1)
    assert threaded == [(0, CACHED_READ_MAX + 1)]


async def test_small_read_needing_the_disk_goes_to_the_io_thread(store, monkeypatch):
    data = os.urandom(200_000)
    await store.write(5, 0, 0, data)
    monkeypatch.setattr(chunkfile, "read_cached", lambda *args: None)
    threaded = _count_calls(monkeypatch, "read")

    assert await store.read(5, 0, 70_000, 4096) == (data[70_000:74_096], 1)
    assert threaded == [(70_000, 4096)]


def _count_hops(monkeypatch, store):
    hops = []
    real = store._io

    async def counted(path, fn, *args):
        hops.append(fn.__name__)
        return await real(path, fn, *args)

    monkeypatch.setattr(store, "_io", counted)
    return hops


async def test_a_chunk_not_open_is_opened_and_read_in_one_hop(store, monkeypatch):
    data = os.urandom(128 << 10)
    await store.write(5, 0, 0, data)
    store._drop_handle((5, 0))  # as after a restart, or once the LRU closed it
    hops = _count_hops(monkeypatch, store)

    assert await store.read(5, 0, 0, len(data)) == (data, 1)
    assert hops == ["_open_and_read"]
    assert await store.read(5, 0, 1000, 4096) == (data[1000:5096], 1)  # now open, cached
    assert hops == ["_open_and_read"]
    assert await store.read(6, 0, 0, 4096) == (b"", 0)  # absent: no hop at all
    assert hops == ["_open_and_read"]


def _flip_a_byte_of_block_1(path):
    fd = os.open(path, os.O_RDWR)
    try:
        where = chunkfile.HEADER_SIZE + 70_000
        os.pwrite(fd, bytes([os.pread(fd, 1, where)[0] ^ 0xFF]), where)
    finally:
        os.close(fd)


async def test_a_chunk_not_open_is_opened_and_written_in_one_hop(store, monkeypatch):
    await store.write(5, 0, 0, b"a" * 1000)
    store._drop_handle((5, 0))
    hops = _count_hops(monkeypatch, store)

    assert await store.write(5, 0, 1000, b"b" * 1000) == 2  # the next version
    assert hops == ["_open_and_write"]
    assert await store.write(5, 0, 2000, b"c" * 1000, version=7) == 7  # as a replica
    assert hops == ["_open_and_write", "_write_chunk"]  # open now: one hop, no open
    store._drop_handle((5, 0))
    assert await store.read(5, 0, 0, 3000) == (b"a" * 1000 + b"b" * 1000 + b"c" * 1000, 7)
    assert store.meta(5, 0).version == 7


async def test_a_failed_open_and_read_keeps_no_fd(store):
    await store.write(5, 0, 0, os.urandom(100_000))
    store._drop_handle((5, 0))
    _flip_a_byte_of_block_1(store.chunk_path(5, 0))
    before = set(os.listdir("/proc/self/fd"))

    with pytest.raises(errors.Corrupt, match="block 1"):
        await store.read(5, 0, 69_000, 4096)
    assert (5, 0) not in store._handles
    assert set(os.listdir("/proc/self/fd")) <= before


async def test_cached_read_of_a_corrupt_block_is_corrupt(store):
    await store.write(5, 0, 0, os.urandom(100_000))
    _flip_a_byte_of_block_1(store.chunk_path(5, 0))

    with pytest.raises(errors.Corrupt, match="block 1"):
        await store.read(5, 0, 69_000, 4096)


async def test_large_writes_start_their_disk_writes(store, monkeypatch):
    """A write of at least writeback.MIN_BYTES, new chunk or existing, asks the
    kernel to begin writing that chunk file; a smaller one is left to the flusher."""
    started = []
    monkeypatch.setattr(store_module, "start_writeback", lambda fd, start, nbytes: started.append(
        (os.fstat(fd).st_ino, start - chunkfile.HEADER_SIZE, nbytes)))
    big, small = writeback.MIN_BYTES, writeback.MIN_BYTES - 1
    await store.write(5, 0, 0, os.urandom(big))  # a new chunk
    await store.write(5, 0, 4096, os.urandom(big))  # into it
    await store.write(5, 0, 0, os.urandom(small))
    await store.write(6, 0, 0, os.urandom(small))  # a new chunk, small
    inode = os.stat(store.chunk_path(5, 0)).st_ino
    assert started == [(inode, 0, big), (inode, 4096, big), (inode, 0, small), (os.stat(
        store.chunk_path(6, 0)).st_ino, 0, small)]


def test_start_writeback_calls_the_kernel_only_for_large_writes(tmp_path, monkeypatch):
    path = tmp_path / "chunk"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, os.urandom(writeback.MIN_BYTES))
        # The real call on a real file: accepted (returns without an error).
        assert writeback._sync_file_range is not None
        assert writeback._sync_file_range(fd, 0, 0, writeback._SYNC_FILE_RANGE_WRITE) == 0
        calls = []
        monkeypatch.setattr(writeback, "_sync_file_range",
                            lambda *args: calls.append(args) or 0)
        writeback.start_writeback(fd, 8192, writeback.MIN_BYTES - 1)
        assert calls == []
        writeback.start_writeback(fd, 8192, writeback.MIN_BYTES)
        assert calls == [(fd, 8192, writeback.MIN_BYTES, writeback._SYNC_FILE_RANGE_WRITE)]
    finally:
        os.close(fd)


async def test_truncate_again_names_the_chunks_cut_before(store):
    unit = 1 << 20
    for chunk in range(3):
        await store.write(5, chunk, 0, bytes([chunk + 1]) * 1000)
    assert await store.truncate_file(5, unit + 10, unit) == {1: 2, 2: 2}
    assert await store.truncate_file(5, unit + 10, unit) == {}  # nothing left to cut
    # The client's second round (osd.service, `again`): every chunk at or past the
    # size, cut now or before, with its version, for the missed-write record.
    assert await store.truncate_file(5, unit + 10, unit, every=True) == {1: 2, 2: 2}
    assert await store.truncate_file(5, 0, unit, every=True) == {0: 2, 1: 3, 2: 2}


async def test_open_drops_empty_chunk_files_and_names_a_swapped_one(tmp_path):
    """At open: an empty chunk file (a create cut short) is removed, not counted as a
    corrupt chunk that no replica could repair; a file holding another chunk than its
    path names is marked corrupt (a tester's reports)."""
    first = ChunkStore(str(tmp_path))
    await first.open()
    await first.write(5, 0, 0, b"zero" * 100)
    await first.write(5, 1, 0, b"one!" * 100)
    first.close()
    empty = os.path.join(os.path.dirname(first.chunk_path(5, 0)), "7")
    open(empty, "wb").close()
    with open(first.chunk_path(5, 1), "rb") as src:
        swapped = src.read()
    with open(first.chunk_path(5, 0), "wb") as dst:
        dst.write(swapped)

    again = ChunkStore(str(tmp_path))
    await again.open()
    try:
        assert not os.path.exists(empty) and again.meta(5, 7) is None
        assert again.meta(5, 0).corrupt and not again.meta(5, 1).corrupt
        with pytest.raises(errors.Corrupt, match="holds ino 5 chunk 1"):
            await again.read(5, 0, 0, 400)
        assert await again.verify(5, 0) is False
        assert await again.verify(5, 1)
    finally:
        again.close()


async def test_verify_reads_the_file_on_disk_not_an_fd_kept_open(store):
    """A chunk file removed while the OSD still had it open is found by scrub."""
    await store.write(5, 0, 0, b"data" * 100)
    assert await store.read(5, 0, 0, 400) == (b"data" * 100, 1)
    assert (5, 0) in store._handles
    os.unlink(store.chunk_path(5, 0))
    assert await store.verify(5, 0) is False
    assert store.meta(5, 0).corrupt


async def test_verify_of_a_chunk_that_cannot_be_read_neither_passes_nor_condemns_it(store):
    """A read failure other than a bad checksum or a gone file (here EISDIR) is not
    marked corrupt (a repair might put an older replica's copy in its place), nor
    counted as good (a reviewer's finding): verify answers None."""
    await store.write(5, 0, 0, b"data" * 100)
    store._drop_handle((5, 0))
    path = store.chunk_path(5, 0)
    os.unlink(path)
    os.mkdir(path)
    try:
        assert await store.verify(5, 0) is None
        assert not store.meta(5, 0).corrupt
    finally:
        os.rmdir(path)


async def test_operations_that_find_nothing_to_do_still_yield(store):
    """A free chunk lock is no checkpoint (osd.locks): the operations that then
    do no I/O yield themselves, so that a loop over many of them (a scrub, a
    delete, recovery's removals, a truncate of chunks cut before) lets the
    other tasks run."""
    unit = 4096
    await store.write(6, 0, 0, b"x" * 100)
    await store.write(6, 1, 0, b"y" * 100)
    assert await store.truncate_file(6, unit + 10, unit) == {1: 2}
    with trio.testing.assert_checkpoints():
        assert await store.read(7, 0, 0, 4096) == (b"", 0)      # an absent chunk
    with trio.testing.assert_checkpoints():
        await store.remove_chunk(7, 0)                           # already gone
    with trio.testing.assert_checkpoints():
        assert await store.truncate_file(6, unit + 10, unit) == {}   # cut before
