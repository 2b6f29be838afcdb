"""One directory's entries spread evenly over the shards: with 4 shards and 100,000
entries every shard holds within 10 % of the mean (issue 5), decided by the real
`shard_of_dentry` for several name patterns and directories.  `make bench-meta`
reports the spread the running servers actually hold."""

import random

import pytest

from loomproto.layout import shard_of_dentry

ENTRIES = 100_000
SHARDS = 4
TOLERANCE = 0.10


def _names(pattern: str):
    rng = random.Random(5)
    for i in range(ENTRIES):
        if pattern == "numbered":
            yield f"file{i}".encode()
        elif pattern == "padded":
            yield f"{i:08d}.jpg".encode()
        elif pattern == "per-rank":  # bench-meta's names: r<rank>f<i>
            yield f"r{i % 4}f{i // 4}".encode()
        else:
            yield rng.randbytes(12).hex().encode()


@pytest.mark.parametrize("pattern", ["numbered", "padded", "per-rank", "random"])
@pytest.mark.parametrize("parent_ino", [1, 4_000_002])
def test_one_directory_spreads_within_ten_percent(pattern, parent_ino):
    counts = [0] * SHARDS
    for name in _names(pattern):
        counts[shard_of_dentry(parent_ino, name, SHARDS)] += 1
    mean = ENTRIES / SHARDS
    worst = max(abs(count - mean) for count in counts) / mean
    assert worst <= TOLERANCE, f"entries per shard {counts}: {worst:.1%} off the mean"
