"""The record of written chunks (loomproto.chunkset) and fsck's missing-chunk check:
range arithmetic, the checker on a model, and on a live cluster a chunk file
deleted from every replica on disk is reported while a sparse file's holes are
not; a read of that chunk through the mount gives EIO, not zeros, and a chunk
whose every copy fails its checksums gives EIO at once."""

import errno
import os
import stat
import subprocess
import sys
import time

import pytest

from client import fsck
from conftest import started_cluster
from repl_helpers import drop_page_cache
from loomproto import chunkset
from mdsd import schema
from osd.chunkfile import HEADER_SIZE
from test_mdsd_harness import ROOT, MdsCluster  # noqa: F401

LOOMFS = os.path.join(os.path.dirname(sys.executable), "loomfs")
MIB = 1 << 20


def test_ranges_merge_and_trim():
    assert chunkset.to_ranges([5, 0, 1, 2, 2, 7, 6]) == [[0, 3], [5, 8]]
    assert chunkset.merge([[0, 3]], [[3, 4], [9, 10]]) == [[0, 4], [9, 10]]
    assert chunkset.merge([[0, 5]], [[1, 2]]) == [[0, 5]]
    assert chunkset.trim([[0, 4], [9, 10]], 2) == [[0, 2]]
    assert chunkset.trim([[0, 4], [9, 10]], 0) == []
    assert list(chunkset.indices([[1, 3], [7, 8]])) == [1, 2, 7]
    scattered = chunkset.to_ranges(range(0, 4 * chunkset.MAX_RANGES, 2))
    kept = chunkset.merge([], scattered)
    assert len(kept) == chunkset.MAX_RANGES and kept[0] == [0, 1]  # a subset, lowest first
    assert chunkset.valid([[0, 1], [3, 9]], 4)
    assert not chunkset.valid([[2, 2]], 4) and not chunkset.valid([[0, 1]] * 5, 4)
    assert not chunkset.valid([["a", 1]], 4) and not chunkset.valid({"x": 1}, 4)


def _file(size, chunks, unit=MIB):
    return {"mode": stat.S_IFREG | 0o644, "nlink": 1, "size": size, "gen": 1,
            "layout": [unit, 2, 2], "chunks": chunks}


def _model(inodes, present, unchecked=()):
    model = fsck.Model(2)
    model.inodes = {ROOT: (1, {"mode": stat.S_IFDIR | 0o755, "nlink": 2, "gen": 1})}
    model.inodes.update({ino: (ino % 2, inode) for ino, inode in inodes.items()})
    model.entries = [(0, ROOT, f"f{ino}".encode(), ino, stat.S_IFREG, ino) for ino in inodes]
    model.present = present
    model.osds_scanned = True
    model.unchecked = list(unchecked)
    return model


def _missing(model):
    return {(f.key, f.message.split(": ")[-1]) for f in fsck._check_missing_chunks(
        model, fsck.Names(model))}


def test_model_missing_chunk_but_not_holes_or_past_the_size():
    inodes = {4: _file(5 * MIB, [[0, 2], [4, 5]]),   # chunks 2, 3 are holes
              6: _file(MIB, [[0, 3]]),               # cut to 1 chunk: 1, 2 not checked
              8: _file(3 * MIB, [])}                 # nothing recorded: nothing checked
    present = {4: {0, 4}, 6: {0}}
    assert _missing(_model(inodes, present)) == {(("inode", 4), "1")}
    assert _missing(_model(inodes, {4: {0, 1, 4}, 6: {0}})) == set()
    assert _missing(_model(inodes, present, unchecked=["osd 1: down"])) == set()


async def test_commit_size_records_and_truncate_keeps(tmp_path, nursery):
    cluster = MdsCluster(tmp_path, nursery, 2)
    await cluster.start_all()
    ino = (await cluster.create(ROOT, b"f"))["ino"]
    shard = cluster.ino_shard(ino)
    call = cluster.client(shard).call

    await call("commit_size", {"ino": ino, "size": 3 * MIB, "mtime": 1, "chunks": [[0, 2]]})
    await call("commit_size", {"ino": ino, "size": 3 * MIB, "mtime": 1, "chunks": [[2, 3]]})
    assert _stored(cluster, shard, ino)["chunks"] == [[0, 3]]
    await call("setattr", {"ino": ino, "fields": {"size": MIB + 1},
                           "rid": os.urandom(16)})
    # Chunk 2 keeps an empty copy past the end: still recorded (loomproto.chunkset).
    assert _stored(cluster, shard, ino)["chunks"] == [[0, 3]]
    with pytest.raises(Exception, match="chunk index ranges"):
        await call("commit_size", {"ino": ino, "size": 1, "mtime": 1, "chunks": [[3, 1]]})


def _stored(cluster, shard, ino) -> dict:
    store = cluster.handles[shard].shard.store
    return schema.unpack(store.get(schema.inode_key(ino)))


# -- on a live cluster ----------------------------------------------------------

@pytest.fixture
def two_osd_cluster(tmp_path):
    with started_cluster(tmp_path, "--mds", 2, "--osd", 2, "--replicas", 2) as live:
        yield live


def fsck_run(live):
    return subprocess.run([LOOMFS, "fsck", "-q", "--cluster", str(live.config)],
                          capture_output=True, text=True, timeout=300)


def test_chunk_lost_from_every_replica_is_found(two_osd_cluster):
    live = two_osd_cluster
    path = live.mnt / "sparse"
    expected = os.urandom(2 * MIB) + bytes(2 * MIB) + os.urandom(MIB // 2)
    with open(path, "wb") as f:  # chunks 0, 1 and 4 of 1 MiB; 2 and 3 are holes
        f.write(expected[:2 * MIB])
        f.seek(4 * MIB)
        f.write(expected[4 * MIB:])
    ino = os.stat(path).st_ino
    clean = fsck_run(live)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    for osd in ("osd0", "osd1"):
        live.run("stop", osd)
        chunk = live.state / osd / "chunks" / f"{ino % 256:02x}" / f"{ino:x}" / "1"
        assert chunk.exists(), f"{osd} has no copy of chunk 1 at {chunk}"
        chunk.unlink()
        live.run("start", osd)
    found = fsck_run(live)
    assert found.returncode == 1, found.stdout + found.stderr
    lines = [line for line in found.stdout.splitlines() if "missing-chunk" in line]
    assert len(lines) == 1 and f"inode {ino}," in lines[0], found.stdout
    assert lines[0].endswith("1 written chunks on no OSD: 1"), lines[0]
    repaired = subprocess.run([LOOMFS, "fsck", "-q", "--repair", "--cluster", str(live.config)],
                              capture_output=True, text=True, timeout=300)
    assert repaired.returncode == 1, repaired.stdout + repaired.stderr
    assert "no safe repair for missing-chunk" in repaired.stdout, repaired.stdout

    # The mount refuses the lost chunk (EIO), still serves the rest, and reads the
    # holes as zeros.
    drop_page_cache()
    fd = os.open(path, os.O_RDONLY)
    try:
        # No kernel read-ahead: each request covers only the range asked for.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        assert os.pread(fd, MIB, 0) == expected[:MIB]
        with pytest.raises(OSError) as lost:
            os.pread(fd, MIB, MIB)
        assert lost.value.errno == errno.EIO
        assert os.pread(fd, 2 * MIB, 2 * MIB) == bytes(2 * MIB)
        assert os.pread(fd, MIB, 4 * MIB) == expected[4 * MIB:]
    finally:
        os.close(fd)
    # A sequential reader gets EIO too, never a file that ends early.
    drop_page_cache()
    with pytest.raises(OSError) as lost:
        path.read_bytes()
    assert lost.value.errno == errno.EIO


def test_every_copy_corrupt_gives_eio_without_waiting_out_io_timeout(two_osd_cluster):
    live = two_osd_cluster
    path = live.mnt / "rotten"
    data = os.urandom(2 * MIB)
    path.write_bytes(data)
    ino = os.stat(path).st_ino
    for osd in ("osd0", "osd1"):
        live.run("stop", osd)
        chunk = live.state / osd / "chunks" / f"{ino % 256:02x}" / f"{ino:x}" / "0"
        with open(chunk, "r+b") as f:
            f.seek(HEADER_SIZE + 1000)
            byte = f.read(1)
            f.seek(HEADER_SIZE + 1000)
            f.write(bytes([byte[0] ^ 0xFF]))
        live.run("start", osd)
    drop_page_cache()
    started = time.monotonic()
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as bad:
            os.pread(fd, MIB, 0)
        assert bad.value.errno == errno.EIO
        assert os.pread(fd, MIB, MIB) == data[MIB:]  # the other chunk is intact
    finally:
        os.close(fd)
    # Both replicas answered "corrupt": the client does not retry until its
    # io_timeout (60 s) runs out.
    assert time.monotonic() - started < 45
