"""Layout math: where metadata and chunks live, computed, never stored per item.

Metadata sharding (the shard count is fixed when the cluster is created):

- an inode lives on shard ``ino % nshards``; shard ``s`` hands out inode numbers
  ``s, s + nshards, s + 2*nshards, ...`` so the owner of an inode is known from
  its number alone.  The root is inode 1 and lives on shard ``1 % nshards``.
- a directory entry ``(parent_ino, name)`` lives on shard
  ``hash(parent_ino, name) % nshards``: one directory's entries spread over every
  shard.  A new inode is allocated on the shard of the entry that names it, so
  a create touches one shard.

Data placement: a file's `Layout` is a stripe unit (the chunk size), a stripe
count and a replica count.  Byte ``off`` is in chunk ``off // unit``; that chunk
belongs to stripe slot ``chunk_index % count``.  The in-service OSDs of the
cluster map are ordered by a rendezvous hash of ``(ino, osd_id)``; slot ``k``
is stored on the OSDs at positions ``k, k+1, ..., k+replicas-1`` of that order
(wrapping), the first being the primary.  Different slots of one file
therefore start on different OSDs, and replicas of a chunk never share an OSD.

Failure domains: when the caller passes ``hosts`` (osd id -> host name, from
the cluster map), the replicas after the primary are taken walking the order
from position ``k+1`` and skipping OSDs whose host already holds a replica of
the chunk; only when there are fewer distinct hosts than replicas are the
skipped OSDs used, in walking order.  Without ``hosts`` (or with one host per
OSD) the result is exactly positions ``k..k+replicas-1``.
"""

import hashlib
import struct
from dataclasses import dataclass

ROOT_INO = 1
MIN_UNIT = 64 << 10
MAX_UNIT = 64 << 20
MAX_COUNT = 256
MAX_REPLICAS = 8

_U64 = struct.Struct(">Q")
_U64_PAIR = struct.Struct(">QQ")


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def shard_of_ino(ino: int, nshards: int) -> int:
    return ino % nshards


def shard_of_dentry(parent_ino: int, name: bytes, nshards: int) -> int:
    return _hash64(_U64.pack(parent_ino) + name) % nshards


@dataclass(frozen=True)
class Layout:
    unit: int = 1 << 20
    count: int = 4
    replicas: int = 2

    def __post_init__(self):
        if not (MIN_UNIT <= self.unit <= MAX_UNIT) or self.unit & (self.unit - 1):
            raise ValueError(f"stripe unit {self.unit} is not a power of two in "
                             f"[{MIN_UNIT}, {MAX_UNIT}]")
        if not 1 <= self.count <= MAX_COUNT:
            raise ValueError(f"stripe count {self.count} not in [1, {MAX_COUNT}]")
        if not 1 <= self.replicas <= MAX_REPLICAS:
            raise ValueError(f"replica count {self.replicas} not in [1, {MAX_REPLICAS}]")

    def to_wire(self) -> list:
        return [self.unit, self.count, self.replicas]

    @classmethod
    def from_wire(cls, value) -> "Layout":
        unit, count, replicas = value
        return cls(int(unit), int(count), int(replicas))

    def chunks(self, offset: int, length: int):
        """Split a byte range into ``(chunk_index, offset_in_chunk, length)`` pieces."""
        end = offset + length
        while offset < end:
            chunk_index, in_chunk = divmod(offset, self.unit)
            piece = min(self.unit - in_chunk, end - offset)
            yield chunk_index, in_chunk, piece
            offset += piece

    def chunk_count(self, size: int) -> int:
        """How many chunks a file of `size` bytes can have."""
        return (size + self.unit - 1) // self.unit


def osd_order(ino: int, osd_ids) -> list[int]:
    """The in-service OSDs ordered for one file (rendezvous hashing)."""
    return sorted(osd_ids, key=lambda osd_id: _hash64(_U64_PAIR.pack(ino, osd_id)),
                  reverse=True)


def replicas_for_chunk(layout: Layout, ino: int, chunk_index: int, order: list[int],
                       hosts: dict | None = None) -> list[int]:
    """OSD ids holding one chunk, primary first; `order` is `osd_order` for the file.

    `hosts` (osd id -> host name) makes replicas prefer distinct hosts.
    """
    if not order:
        return []
    slot = chunk_index % layout.count
    want = min(layout.replicas, len(order))
    walk = [order[(slot + j) % len(order)] for j in range(len(order))]
    if not hosts:
        return walk[:want]
    chosen, skipped, used = [], [], set()
    for osd_id in walk:
        host = hosts.get(osd_id) or f"osd:{osd_id}"
        if host in used:
            skipped.append(osd_id)
            continue
        chosen.append(osd_id)
        used.add(host)
        if len(chosen) == want:
            return chosen
    return chosen + skipped[:want - len(chosen)]
