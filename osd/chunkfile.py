"""One chunk on disk: the file format, its checksums, and blocking I/O on an open fd.

Every function here is synchronous and may block; `osd.store` calls them through
``trio.to_thread.run_sync``, except `read_cached`, which never waits for the disk.  Nothing here knows about trio, RPC or locking: the
caller holds the chunk's lock around every call that takes a `ChunkHeader`.

File layout (all integers little-endian)::

    offset  size  field
         0     8  magic b"LOOMCHK1"
         8     2  format version (u16, FORMAT_VERSION = 1)
        10     2  flags (u16); bit 0 is reserved for "zstd-compressed" (a later
                  cold tier); always 0 now, and a chunk with any flag set is refused
        12     4  block size (u32, BLOCK_SIZE = 65536)
        16     8  chunk version (u64): +1 on every write (the primary picks it, a
                  replica stores the primary's) and on every truncate that cuts it
        24     8  data length (u64, at most MAX_CHUNK = 64 MiB)
        32     4  CRC32 (zlib's polynomial, computed by `osd.checksum`) of bytes
                  0..31: detects a torn or damaged header
        36     8  inode number (u64)   the chunk the file holds, written when the
        44     8  chunk index (u64)    file is made and never rewritten; all 20
        52     4  CRC32 of 36..51      bytes are zero in files made before them
        56  4040  zero (reserved)
      4096  4096  CRC table: MAX_BLOCKS = 1024 u32 slots; slot i is the CRC32 of the
                  data bytes of block i, that is [i*64 KiB, min((i+1)*64 KiB, length));
                  slots at or past ceil(length / 64 KiB) are meaningless (left as is)
      8192     -  data: byte k of the chunk is at file offset HEADER_SIZE + k

The header is 8 KiB, not the 4 KiB the design sketch names: 1024 CRC slots for a
64 MiB chunk fill a whole 4 KiB page by themselves, so the fixed fields get their
own page.  Gaps left by writes past the end are holes (they read as zeros); after
a truncate the file is cut to HEADER_SIZE + length, so no stale bytes survive.

Update order, so that a header never claims data that is not there: a write puts
the data first, then the CRC slots it changed, then the fixed fields (new length
and version).  A truncate writes the header first, then shortens the file.  Every
write first preallocates its range (``posix_fallocate``), so a full disk fails
the write before any byte of it lands and the header is left as it was.  There
is no fsync here: durability is asked for by ``sync_file`` (`osd.store`).

The name (inode, index) is checked at every open: a file that holds another
chunk (put there by hand, by a restore of the wrong directory, by a filesystem
fault) reads as corrupt instead of serving, or replicating, the other chunk's
bytes.  `where` is that name (`ChunkName`) wherever a file is made or opened.

Limitations:
- A crash between the data and its CRC slots leaves blocks that read as corrupt;
  the client then reads another replica, and repair is a later issue.
- A file made before the name was recorded carries none and is not checked.
"""

import errno
import os
import struct
from dataclasses import dataclass
from typing import NamedTuple

from loomproto import errors

from .checksum import crc32

MAGIC = b"LOOMCHK1"
FORMAT_VERSION = 1
FLAG_ZSTD = 0x1
BLOCK_SIZE = 64 << 10
MAX_CHUNK = 64 << 20
MAX_BLOCKS = MAX_CHUNK // BLOCK_SIZE
CRC_TABLE_OFFSET = 4096
HEADER_SIZE = 8192

_FIXED = struct.Struct("<8sHHIQQ")
_FIXED_CRC = struct.Struct("<I")
_NAME = struct.Struct("<QQ")
_NAME_OFFSET = _FIXED.size + _FIXED_CRC.size
_NAME_END = _NAME_OFFSET + _NAME.size + _FIXED_CRC.size
_CRC = struct.Struct("<I")
_ZERO_BLOCK = bytes(BLOCK_SIZE)
_ZERO_BLOCK_CRC = crc32(_ZERO_BLOCK)
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", None)  # Linux 4.14+


class ChunkName(NamedTuple):
    """Which chunk a file holds; it reads as "ino N chunk I" in messages."""

    ino: int
    index: int

    def __str__(self) -> str:
        return f"ino {self.ino} chunk {self.index}"


def encode_name(name) -> bytes:
    """Bytes 36..55 of a new file's header: `name` and its CRC (zeros without one)."""
    if not isinstance(name, ChunkName):
        return bytes(_NAME_END - _NAME_OFFSET)
    raw = _NAME.pack(name.ino, name.index)
    return raw + _FIXED_CRC.pack(crc32(raw))


def _check_name(raw: bytes, where) -> None:
    """Refuse a header that names another chunk than `where` (when both name one)."""
    stored = raw[_NAME_OFFSET:_NAME_END]
    if not isinstance(where, ChunkName) or not any(stored):
        return  # a caller that does not know, or a file from before names were kept
    (crc,) = _FIXED_CRC.unpack_from(stored, _NAME.size)
    if crc32(stored[:_NAME.size]) != crc:
        raise errors.Corrupt(f"{where}: checksum mismatch in the header's chunk name")
    found = ChunkName(*_NAME.unpack_from(stored))
    if found != where:
        raise errors.Corrupt(f"{where}: the file holds {found}, not this chunk")


@dataclass
class ChunkHeader:
    """The decoded header of one chunk; `crcs` is the raw 4 KiB CRC table."""

    version: int
    length: int
    crcs: bytearray
    flags: int = 0

    def crc_of(self, block: int) -> int:
        return _CRC.unpack_from(self.crcs, block * 4)[0]

    def set_crc(self, block: int, crc: int) -> None:
        _CRC.pack_into(self.crcs, block * 4, crc)


def encode_fixed(header: ChunkHeader) -> bytes:
    fixed = _FIXED.pack(MAGIC, FORMAT_VERSION, header.flags, BLOCK_SIZE, header.version,
                        header.length)
    return fixed + _FIXED_CRC.pack(crc32(fixed))


def decode_header(raw: bytes, where: str) -> ChunkHeader:
    """Parse the first HEADER_SIZE bytes of a chunk file; `where` names it in errors."""
    if len(raw) < HEADER_SIZE:
        raise errors.Corrupt(f"{where}: header is {len(raw)} bytes, expected {HEADER_SIZE}")
    magic, fmt, flags, block_size, version, length = _FIXED.unpack_from(raw)
    if magic != MAGIC:
        raise errors.Corrupt(f"{where}: bad magic {magic!r}")
    (stored_crc,) = _FIXED_CRC.unpack_from(raw, _FIXED.size)
    if crc32(raw[:_FIXED.size]) != stored_crc:
        raise errors.Corrupt(f"{where}: header checksum mismatch")
    if fmt != FORMAT_VERSION:
        raise errors.Corrupt(f"{where}: chunk format {fmt}, this osd reads {FORMAT_VERSION}")
    if flags != 0:
        raise errors.Corrupt(f"{where}: unsupported chunk flags {flags:#x}")
    if block_size != BLOCK_SIZE or length > MAX_CHUNK:
        raise errors.Corrupt(f"{where}: block size {block_size} or length {length} out of range")
    _check_name(raw, where)
    crcs = bytearray(raw[CRC_TABLE_OFFSET:CRC_TABLE_OFFSET + MAX_BLOCKS * 4])
    return ChunkHeader(version, length, crcs, flags)


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    """pread that loops over short reads; a file shorter than asked reads as zeros."""
    parts = []
    while size > 0:
        data = os.pread(fd, size, offset)
        if not data:
            parts.append(bytes(size))  # past EOF of a sparse tail: zeros
            break
        parts.append(data)
        size -= len(data)
        offset += len(data)
    return b"".join(parts)


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _pwritev_all(fd: int, buffers: list, offset: int) -> None:
    views = [view for view in map(memoryview, buffers) if view.nbytes]
    while views:
        written = os.pwritev(fd, views, offset)
        offset += written
        while written:
            if written < len(views[0]):
                views[0] = views[0][written:]
                break
            written -= len(views.pop(0))


def _raw_header(header: ChunkHeader, name) -> bytearray:
    raw = bytearray(HEADER_SIZE)
    fixed = encode_fixed(header)
    raw[:len(fixed)] = fixed
    raw[_NAME_OFFSET:_NAME_END] = encode_name(name)
    raw[CRC_TABLE_OFFSET:CRC_TABLE_OFFSET + len(header.crcs)] = header.crcs
    return raw


def create(fd: int, name) -> ChunkHeader:
    """Give a new, empty file the header of an empty chunk (version 0, length 0)
    that holds chunk `name` (a `ChunkName`)."""
    header = ChunkHeader(0, 0, bytearray(MAX_BLOCKS * 4))
    _pwrite_all(fd, _raw_header(header, name), 0)
    return header


def create_with(fd: int, payload, version: int, where: str) -> ChunkHeader:
    """Fill a new, empty file with a chunk whose bytes are `payload`: what `create`
    then `write` at offset 0 leave, in two system calls.

    One pwritev lays down the header of an empty chunk and the data behind it,
    then the real header follows, so a crash in between leaves an empty chunk
    (bytes past a chunk's length are never read).
    """
    payload = memoryview(payload)
    if len(payload) > MAX_CHUNK:
        raise errors.Invalid(f"{where}: write of {len(payload)} bytes passes {MAX_CHUNK}")
    header = ChunkHeader(version, len(payload), bytearray(MAX_BLOCKS * 4))
    for block in _block_range(0, len(payload)) if payload else ():
        header.set_crc(block, crc32(payload[block * BLOCK_SIZE:(block + 1) * BLOCK_SIZE]))

    empty = ChunkHeader(0, 0, bytearray(MAX_BLOCKS * 4))
    _pwritev_all(fd, [_raw_header(empty, where), payload], 0)
    _pwrite_all(fd, _raw_header(header, where), 0)
    return header


def load(fd: int, where: str) -> ChunkHeader:
    return decode_header(_pread_exact(fd, HEADER_SIZE, 0), where)


def _block_range(offset: int, end: int) -> range:
    return range(offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE + 1)


def _verified_block(fd: int, header: ChunkHeader, block: int, where: str) -> bytes:
    """The stored bytes of one block, after checking them against their CRC."""
    start = block * BLOCK_SIZE
    data = _pread_exact(fd, min(BLOCK_SIZE, header.length - start), HEADER_SIZE + start)
    _check_block(header, block, data, where)
    return data


def _check_block(header: ChunkHeader, block: int, data, where: str) -> None:
    if crc32(data) != header.crc_of(block):
        raise errors.Corrupt(f"{where}: checksum mismatch in block {block}")


def read(fd: int, header: ChunkHeader, offset: int, length: int, where: str) -> bytes:
    """Bytes [offset, offset+length) of the chunk, short at its end; every block verified."""
    span = read_span(header, offset, length)
    if span is None:
        return b""
    data = _pread_exact(fd, span.stop - span.start, HEADER_SIZE + span.start)
    return _verified_range(header, data, span.start, offset, length, where)


def load_and_read(fd: int, offset: int, length: int, where: str):
    """``(header, bytes)`` of a chunk file just opened: `load`, then `read`.  A
    read that starts in the first block (a small file read whole, a chunk's
    first read) takes the header and its blocks in one pread: one system call
    and one disk request where two followed each other."""
    if offset >= BLOCK_SIZE or length <= 0:
        header = load(fd, where)
        return header, read(fd, header, offset, length, where)
    want = min(_block_range(offset, offset + length).stop * BLOCK_SIZE, MAX_CHUNK)
    raw = os.pread(fd, HEADER_SIZE + want, 0)
    header = decode_header(raw, where)
    span = read_span(header, offset, length)
    if span is None:
        return header, b""
    if HEADER_SIZE + span.stop > len(raw):  # a short read, or a sparse tail: `read` knows
        return header, read(fd, header, offset, length, where)
    with memoryview(raw) as view:
        data = view[HEADER_SIZE + span.start:HEADER_SIZE + span.stop]
        return header, _verified_range(header, data, span.start, offset, length, where)


def read_cached(fd: int, header: ChunkHeader, offset: int, length: int, where: str):
    """`read` for callers that must not wait for the disk: None, having read
    nothing, unless every byte it needs is in the page cache (``RWF_NOWAIT``)."""
    span = read_span(header, offset, length)
    if span is None:
        return b""
    if _RWF_NOWAIT is None:
        return None
    data = bytearray(span.stop - span.start)
    try:
        got = os.preadv(fd, [data], HEADER_SIZE + span.start, _RWF_NOWAIT)
    except BlockingIOError:
        return None  # some page is not cached: a disk read, for an I/O thread
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return None  # a filesystem that does not take the flag
        raise
    if got < len(data):  # partly cached, or a sparse tail past EOF: `read` knows
        return None
    return _verified_range(header, data, span.start, offset, length, where)


def read_span(header: ChunkHeader, offset: int, length: int) -> range | None:
    """The data bytes a read must fetch: whole blocks, so each can be verified;
    None when the read lies past the chunk's end."""
    end = min(offset + length, header.length)
    if end <= offset:
        return None
    blocks = _block_range(offset, end)
    return range(blocks.start * BLOCK_SIZE, min(blocks.stop * BLOCK_SIZE, header.length))


def _verified_range(header: ChunkHeader, data, span_start: int, offset: int, length: int,
                    where: str) -> bytes:
    """Check every block of `data` (the bytes of whole blocks from `span_start`)
    and return the part [offset, offset+length) of it."""
    view = memoryview(data)
    for rel in range(0, len(view), BLOCK_SIZE):
        block = (span_start + rel) // BLOCK_SIZE
        _check_block(header, block, view[rel:rel + BLOCK_SIZE], where)
    end = min(offset + length, header.length)
    if (isinstance(data, (bytes, bytearray)) and offset == span_start
            and end - span_start == len(data)):
        return data  # whole blocks asked for (a chunk read): no second copy
    return bytes(view[offset - span_start:end - span_start])


def _new_block_crc(fd, header: ChunkHeader, block: int, offset: int, payload, where) -> int:
    """CRC of `block` as it will be once `payload` lands at `offset`.

    Only blocks the payload covers partly are read back (and verified first, so a
    write never blesses damaged bytes with a fresh checksum).
    """
    old_len = header.length
    end = offset + len(payload)
    start = block * BLOCK_SIZE
    stop = min(start + BLOCK_SIZE, max(old_len, end))
    if offset <= start and stop <= end:
        return crc32(payload[start - offset:stop - offset])
    if start >= old_len and stop <= offset:
        return _ZERO_BLOCK_CRC if stop - start == BLOCK_SIZE else crc32(bytes(stop - start))

    content = bytearray(stop - start)
    if start < old_len:
        old = _verified_block(fd, header, block, where)
        content[:len(old)] = old
    lo, hi = max(start, offset), min(stop, end)
    if lo < hi:  # else the block only gains gap zeros
        content[lo - start:hi - start] = payload[lo - offset:hi - offset]
    return crc32(content)


def write(fd: int, header: ChunkHeader, offset: int, payload, version: int,
          where: str) -> ChunkHeader:
    """Write `payload` at `offset`, extending the chunk (the gap reads as zeros).

    Returns the new header; `header` itself is left untouched, so a failed write
    leaves the caller's cached view equal to what is on disk.
    """
    end = offset + len(payload)
    if end > MAX_CHUNK:
        raise errors.Invalid(f"{where}: write to [{offset}, {end}) passes {MAX_CHUNK}")
    payload = memoryview(payload)
    if not payload:  # nothing to store: an empty write neither extends nor rewrites
        new = ChunkHeader(version, header.length, header.crcs, header.flags)
        _pwrite_all(fd, encode_fixed(new), 0)
        return new
    new = ChunkHeader(version, max(header.length, end), bytearray(header.crcs), header.flags)

    touched = _block_range(min(offset, header.length), end)
    for block in touched:
        new.set_crc(block, _new_block_crc(fd, header, block, offset, payload, where))
    if offset > header.length:
        # A file left longer than its header says (crash inside a truncate) must
        # not leak stale bytes into the gap, which has to read as zeros.
        os.ftruncate(fd, HEADER_SIZE + header.length)
    os.posix_fallocate(fd, HEADER_SIZE + offset, len(payload))

    _pwrite_all(fd, payload, HEADER_SIZE + offset)
    table = slice(touched.start * 4, touched.stop * 4)
    _pwrite_all(fd, new.crcs[table], CRC_TABLE_OFFSET + table.start)
    _pwrite_all(fd, encode_fixed(new), 0)
    return new


def truncate(fd: int, header: ChunkHeader, size: int, version: int, where: str) -> ChunkHeader:
    """Cut the chunk to `size` bytes (never extends); returns the new header."""
    if size >= header.length:
        return header
    new = ChunkHeader(version, size, bytearray(header.crcs), header.flags)
    if size % BLOCK_SIZE:
        block = size // BLOCK_SIZE
        kept = _verified_block(fd, header, block, where)[:size - block * BLOCK_SIZE]
        new.set_crc(block, crc32(kept))
        _pwrite_all(fd, new.crcs[block * 4:block * 4 + 4], CRC_TABLE_OFFSET + block * 4)
    _pwrite_all(fd, encode_fixed(new), 0)
    os.ftruncate(fd, HEADER_SIZE + size)
    return new


def is_no_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)
