"""Sets of chunk indices kept as sorted, disjoint half-open ranges.

A regular file's inode records which chunk indices were ever written (field
``chunks``: ``[[start, end], ...]``), so that ``loomfs fsck``, a reader whose
replicas answer without a copy, and a write's primary (osd.replication) can tell
a chunk lost or out of reach from a hole of a sparse file.  (A read that no
replica answers fails with EIO after ``io_timeout``, hole or not.)  The client sends the indices it flushed with each
``commit_size``; the metadata server merges them.  A truncate keeps them: a
chunk past the new end still has copies (empty, at a higher version), and fsck
trims to the size itself.

The record may be a subset of what was written, never a superset: inodes from
before the record existed have none, and past `MAX_RANGES` ranges (a file
written in a scattered pattern) the highest ranges are dropped.  A subset
means fsck checks fewer chunks, and a write may start such a chunk anew when
no up OSD has a copy.
"""

MAX_RANGES = 512


def to_ranges(indices) -> list[list[int]]:
    """Chunk indices (any order, repeats allowed) as ``[[start, end], ...]``."""
    ranges: list[list[int]] = []
    for index in sorted(set(indices)):
        if ranges and ranges[-1][1] == index:
            ranges[-1][1] = index + 1
        else:
            ranges.append([index, index + 1])
    return ranges


def merge(ranges, more) -> list[list[int]]:
    """The union of two range lists, capped at `MAX_RANGES` ranges."""
    merged: list[list[int]] = []
    for start, end in sorted([list(r) for r in ranges] + [list(r) for r in more]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged[:MAX_RANGES]


def trim(ranges, count: int) -> list[list[int]]:
    """The ranges below chunk index `count` (a file cut to `count` chunks)."""
    return [[start, min(end, count)] for start, end in ranges if start < count]


def indices(ranges):
    for start, end in ranges:
        yield from range(start, end)


def valid(ranges, limit: int) -> bool:
    """Whether `ranges` (from the wire) is a list of at most `limit` [start, end] pairs
    of integers with 0 <= start < end."""
    if not isinstance(ranges, list) or len(ranges) > limit:
        return False
    return all(isinstance(pair, (list, tuple)) and len(pair) == 2
               and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
               and 0 <= pair[0] < pair[1] for pair in ranges)
