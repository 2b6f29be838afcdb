"""osd.chunkfile: the on-disk chunk format, synchronously on a temporary file."""

import errno
import os
import random
import struct
import zlib

import pytest

from loomproto import errors
from osd import checksum, chunkfile
from osd.chunkfile import BLOCK_SIZE, HEADER_SIZE, MAX_CHUNK


@pytest.fixture
def chunk(tmp_path):
    fd = os.open(tmp_path / "0", os.O_RDWR | os.O_CREAT, 0o644)
    yield fd
    os.close(fd)


class Model:
    """A chunk file next to the bytes it should hold."""

    def __init__(self, fd):
        self.fd = fd
        self.header = chunkfile.create(fd, "t")
        self.expect = bytearray()

    def write(self, offset, data):
        self.header = chunkfile.write(self.fd, self.header, offset, data,
                                      self.header.version + 1, "t")
        if data and offset > len(self.expect):
            self.expect += bytes(offset - len(self.expect))
        self.expect[offset:offset + len(data)] = data

    def truncate(self, size):
        self.header = chunkfile.truncate(self.fd, self.header, size, self.header.version + 1, "t")
        del self.expect[size:]

    def check(self):
        reloaded = chunkfile.load(self.fd, "t")
        assert reloaded == self.header
        assert chunkfile.read(self.fd, reloaded, 0, MAX_CHUNK, "t") == bytes(self.expect)
        for block in range((len(self.expect) + BLOCK_SIZE - 1) // BLOCK_SIZE):
            part = self.expect[block * BLOCK_SIZE:(block + 1) * BLOCK_SIZE]
            assert reloaded.crc_of(block) == zlib.crc32(part), block


def test_round_trip(chunk):
    model = Model(chunk)
    data = os.urandom(3 * BLOCK_SIZE + 123)
    model.write(0, data)
    model.check()
    assert model.header.version == 1 and model.header.length == len(data)
    assert chunkfile.read(chunk, model.header, 100, 50, "t") == data[100:150]
    assert chunkfile.read(chunk, model.header, len(data) - 10, 100, "t") == data[-10:]
    assert chunkfile.read(chunk, model.header, len(data) + 5, 100, "t") == b""


def test_empty_chunk_reads_empty(chunk):
    header = chunkfile.create(chunk, "t")
    assert chunkfile.read(chunk, header, 0, 4096, "t") == b""
    assert chunkfile.load(chunk, "t").length == 0


def test_hole_reads_as_zeros(chunk):
    model = Model(chunk)
    model.write(0, b"a" * 10)
    model.write(5 * BLOCK_SIZE + 7, b"b" * 100)
    model.check()
    gap = chunkfile.read(chunk, model.header, 10, 5 * BLOCK_SIZE - 3, "t")
    assert gap == bytes(5 * BLOCK_SIZE - 3)


def test_partial_block_writes_keep_crcs_right(chunk):
    model = Model(chunk)
    rng = random.Random(7)
    model.write(0, os.urandom(2 * BLOCK_SIZE))
    for _ in range(60):
        offset = rng.randrange(0, 4 * BLOCK_SIZE)
        model.write(offset, rng.randbytes(rng.randrange(1, BLOCK_SIZE + 500)))
    model.check()


def test_truncate_cuts_and_later_extension_reads_zeros(chunk):
    model = Model(chunk)
    model.write(0, b"x" * (2 * BLOCK_SIZE + 100))
    model.truncate(BLOCK_SIZE + 10)
    model.check()
    assert os.fstat(chunk).st_size == HEADER_SIZE + BLOCK_SIZE + 10
    model.write(3 * BLOCK_SIZE, b"y")
    model.check()
    model.truncate(10 ** 9)  # never extends
    model.check()


def damage(chunk, where: int, count: int = 1) -> None:
    """Flip every bit of `count` bytes at `where` (writing a fixed value instead
    changes nothing once in 256 runs of random data: a test failed so in CI)."""
    os.pwrite(chunk, bytes(b ^ 0xFF for b in os.pread(chunk, count, where)), where)


def test_bit_flip_in_data_detected(chunk):
    model = Model(chunk)
    model.write(0, os.urandom(3 * BLOCK_SIZE))
    where = HEADER_SIZE + 2 * BLOCK_SIZE + 17
    byte = os.pread(chunk, 1, where)[0]
    os.pwrite(chunk, bytes([byte ^ 0x10]), where)
    assert chunkfile.read(chunk, model.header, 0, BLOCK_SIZE, "t")  # other blocks still fine
    with pytest.raises(errors.Corrupt, match="block 2"):
        chunkfile.read(chunk, model.header, 2 * BLOCK_SIZE + 1, 10, "t")


def test_partial_write_over_damaged_block_refused(chunk):
    model = Model(chunk)
    model.write(0, os.urandom(BLOCK_SIZE))
    damage(chunk, HEADER_SIZE + 100, 2)
    with pytest.raises(errors.Corrupt):
        model.write(10, b"z")


@pytest.mark.parametrize("offset, patch", [
    (0, b"LOOMCHK2"),  # magic
    (8, struct.pack("<H", 9)),  # format version
    (24, b"\x01"),  # length, caught by the header checksum
])
def test_bad_header_detected(chunk, offset, patch):
    Model(chunk).write(0, b"data")
    os.pwrite(chunk, patch, offset)
    with pytest.raises(errors.Corrupt):
        chunkfile.load(chunk, "t")


def test_wrong_format_version_with_valid_checksum_named(chunk):
    header = chunkfile.create(chunk, "t")
    fixed = bytearray(chunkfile.encode_fixed(header))
    fixed[8:10] = struct.pack("<H", 2)
    fixed[32:36] = struct.pack("<I", zlib.crc32(bytes(fixed[:32])))
    os.pwrite(chunk, bytes(fixed), 0)
    with pytest.raises(errors.Corrupt, match="chunk format 2"):
        chunkfile.load(chunk, "t")


def test_write_past_chunk_limit_refused(chunk):
    header = chunkfile.create(chunk, "t")
    with pytest.raises(errors.Invalid):
        chunkfile.write(chunk, header, MAX_CHUNK - 1, b"ab", 1, "t")


def test_full_chunk_uses_every_crc_slot(chunk):
    model = Model(chunk)
    model.write(MAX_CHUNK - BLOCK_SIZE - 3, os.urandom(BLOCK_SIZE + 3))
    model.check()
    assert model.header.length == MAX_CHUNK


@pytest.mark.parametrize("seed", range(4))
def test_random_writes_and_truncates_match_a_model(chunk, seed):
    model = Model(chunk)
    rng = random.Random(seed)
    for _ in range(80):
        if rng.random() < 0.15:
            model.truncate(rng.randrange(0, 6 * BLOCK_SIZE))
        else:
            offset = rng.randrange(0, 8 * BLOCK_SIZE)
            model.write(offset, rng.randbytes(rng.randrange(0, 2 * BLOCK_SIZE)))
    model.check()


@pytest.mark.parametrize("size", [0, 1, BLOCK_SIZE, 3 * BLOCK_SIZE + 5, 1 << 20])
def test_create_with_equals_create_then_write(tmp_path, size):
    data = random.Random(size).randbytes(size)
    paths = tmp_path / "slow", tmp_path / "fast"
    fds = [os.open(path, os.O_RDWR | os.O_CREAT, 0o644) for path in paths]
    try:
        slow = chunkfile.write(fds[0], chunkfile.create(fds[0], "t"), 0, data, 3, "t")
        fast = chunkfile.create_with(fds[1], data, 3, "t")
        assert fast == slow
        assert chunkfile.load(fds[1], "t") == slow
        assert chunkfile.read(fds[1], fast, 0, size + 10, "t") == data
        later = chunkfile.write(fds[1], fast, size // 2, b"xyz", 4, "t")  # and it goes on
        expect = data[:size // 2] + b"xyz" + data[size // 2 + 3:]
        assert chunkfile.read(fds[1], later, 0, size + 10, "t") == expect
    finally:
        for fd in fds:
            os.close(fd)


def test_create_with_cut_short_leaves_an_empty_chunk(chunk, monkeypatch):
    """A crash between the data and the real header: the empty header went first."""
    real = chunkfile._pwrite_all

    def crash(fd, data, offset):
        raise OSError(5, "simulated crash before the header")

    monkeypatch.setattr(chunkfile, "_pwrite_all", crash)
    with pytest.raises(OSError):
        chunkfile.create_with(chunk, b"d" * (1 << 20), 1, "t")
    monkeypatch.setattr(chunkfile, "_pwrite_all", real)
    header = chunkfile.load(chunk, "t")
    assert (header.version, header.length) == (0, 0)
    assert chunkfile.read(chunk, header, 0, 100, "t") == b""


@pytest.mark.parametrize("size", [0, 1, 7, 4095, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 3])
def test_checksum_gives_zlib_values(size):
    data = random.Random(size).randbytes(size)
    for form in (data, bytearray(data), memoryview(data)):
        assert checksum.crc32(form) == zlib.crc32(data)
    assert checksum.crc32(data, 0x1234) == zlib.crc32(data, 0x1234)


def test_fast_checksum_is_installed():
    # pyproject.toml depends on isal; without it every block costs 15x more CPU.
    assert checksum.IMPLEMENTATION == "isal"


def test_chunk_checksummed_by_zlib_reads_back(chunk, monkeypatch):
    # Chunk files written before osd.checksum used zlib.crc32 directly.
    data = os.urandom(2 * BLOCK_SIZE + 5)
    monkeypatch.setattr(chunkfile, "crc32", zlib.crc32)
    chunkfile.write(chunk, chunkfile.create(chunk, "t"), 0, data, 1, "t")
    monkeypatch.undo()

    assert chunkfile.crc32 is checksum.crc32
    header = chunkfile.load(chunk, "t")
    assert chunkfile.read(chunk, header, 0, MAX_CHUNK, "t") == data


@pytest.mark.parametrize("offset,length", [(0, 4096), (5000, 100), (BLOCK_SIZE - 10, 20),
                                           (3 * BLOCK_SIZE, 4096), (0, 2 * BLOCK_SIZE + 7),
                                           (3 * BLOCK_SIZE + 100, 10), (4 * BLOCK_SIZE, 5)])
def test_read_cached_equals_read(chunk, offset, length):
    model = Model(chunk)
    model.write(0, os.urandom(3 * BLOCK_SIZE + 123))
    expect = chunkfile.read(chunk, model.header, offset, length, "t")
    assert chunkfile.read_cached(chunk, model.header, offset, length, "t") == expect


@pytest.mark.parametrize("offset,length", [(0, 4096), (5000, 100), (BLOCK_SIZE - 10, 20),
                                           (3 * BLOCK_SIZE, 4096), (0, 2 * BLOCK_SIZE + 7),
                                           (0, MAX_CHUNK), (3 * BLOCK_SIZE + 100, 10),
                                           (4 * BLOCK_SIZE, 5), (0, 0)])
def test_load_and_read_equals_load_then_read(chunk, offset, length):
    model = Model(chunk)
    model.write(0, os.urandom(3 * BLOCK_SIZE + 123))
    expect = chunkfile.read(chunk, model.header, offset, length, "t")
    header, data = chunkfile.load_and_read(chunk, offset, length, "t")
    assert (header.version, header.length) == (model.header.version, model.header.length)
    assert data == expect


def test_load_and_read_checks_crcs_and_pads_a_short_file(chunk):
    model = Model(chunk)
    data = os.urandom(2 * BLOCK_SIZE)
    model.write(0, data)
    damage(chunk, HEADER_SIZE + BLOCK_SIZE + 9)
    assert chunkfile.load_and_read(chunk, 0, 100, "t")[1] == data[:100]
    with pytest.raises(errors.Corrupt, match="block 1"):
        chunkfile.load_and_read(chunk, 0, MAX_CHUNK, "t")


def test_load_and_read_pads_a_file_shorter_than_its_header_says(chunk):
    # A header longer than the file (a sparse tail): zeros, as `read` gives them.
    model = Model(chunk)
    data = os.urandom(BLOCK_SIZE) + bytes(BLOCK_SIZE)
    model.write(0, data)
    os.ftruncate(chunk, HEADER_SIZE + BLOCK_SIZE)
    header, got = chunkfile.load_and_read(chunk, 0, MAX_CHUNK, "t")
    assert header.length == len(data)
    assert got == data


def test_load_and_read_refuses_a_torn_header(chunk):
    Model(chunk).write(0, b"x" * 100)
    os.ftruncate(chunk, 100)
    with pytest.raises(errors.Corrupt, match="header"):
        chunkfile.load_and_read(chunk, 0, 4096, "t")


def test_read_cached_checks_crcs(chunk):
    model = Model(chunk)
    model.write(0, os.urandom(2 * BLOCK_SIZE))
    damage(chunk, HEADER_SIZE + BLOCK_SIZE + 9)
    assert chunkfile.read_cached(chunk, model.header, 0, 100, "t") is not None
    with pytest.raises(errors.Corrupt, match="block 1"):
        chunkfile.read_cached(chunk, model.header, BLOCK_SIZE, 100, "t")


def test_read_cached_gives_none_when_a_page_needs_the_disk(chunk, monkeypatch):
    model = Model(chunk)
    model.write(0, os.urandom(BLOCK_SIZE))

    def not_cached(fd, buffers, offset, flags=0):
        assert flags & os.RWF_NOWAIT
        raise BlockingIOError(errno.EAGAIN, "would block")

    monkeypatch.setattr(chunkfile.os, "preadv", not_cached)
    assert chunkfile.read_cached(chunk, model.header, 0, 4096, "t") is None


def test_read_cached_gives_none_for_a_short_file(chunk):
    # A header longer than the file (a crash inside a write): `read` pads with zeros.
    model = Model(chunk)
    model.write(0, os.urandom(BLOCK_SIZE))
    os.ftruncate(chunk, HEADER_SIZE + 100)
    assert chunkfile.read_cached(chunk, model.header, 0, 4096, "t") is None


def test_a_file_holding_another_chunk_reads_as_corrupt(chunk, tmp_path):
    """The header names its chunk: a file put in another chunk's place (by hand, a
    wrong restore, a filesystem fault) is refused at open, not served (a tester's
    report: such a file was read, and replicated, as the chunk whose name it took)."""
    name = chunkfile.ChunkName(5, 1)
    chunkfile.create_with(chunk, b"one" * 1000, 3, name)
    assert chunkfile.load(chunk, name).length == 3000
    with pytest.raises(errors.Corrupt, match="holds ino 5 chunk 1, not this chunk"):
        chunkfile.load(chunk, chunkfile.ChunkName(5, 0))
    with pytest.raises(errors.Corrupt, match="holds ino 5 chunk 1"):
        chunkfile.load(chunk, chunkfile.ChunkName(6, 1))
    # A damaged name is corrupt too; a string `where` (no name known) checks nothing.
    os.pwrite(chunk, b"\xff", 40)
    with pytest.raises(errors.Corrupt, match="chunk name"):
        chunkfile.load(chunk, name)
    assert chunkfile.load(chunk, "t").length == 3000

    empty = os.open(tmp_path / "empty", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        chunkfile.create(empty, chunkfile.ChunkName(7, 2))
        with pytest.raises(errors.Corrupt):
            chunkfile.load(empty, chunkfile.ChunkName(7, 3))
        # Writes keep the name (they rewrite only the fixed fields before it).
        header = chunkfile.write(empty, chunkfile.load(empty, chunkfile.ChunkName(7, 2)), 0,
                                 b"x" * 10, 1, chunkfile.ChunkName(7, 2))
        chunkfile.truncate(empty, header, 4, 2, chunkfile.ChunkName(7, 2))
        assert chunkfile.load(empty, chunkfile.ChunkName(7, 2)).length == 4
    finally:
        os.close(empty)


def test_a_file_from_before_names_were_kept_still_opens(chunk):
    """Bytes 36..55 all zero (files made before the name was recorded): accepted."""
    chunkfile.create_with(chunk, b"old" * 100, 2, "t")  # a string: no name written
    assert os.pread(chunk, 20, 36) == bytes(20)
    assert chunkfile.load(chunk, chunkfile.ChunkName(9, 0)).length == 300
