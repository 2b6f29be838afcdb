"""Writes right after a placement change land on top of the chunk's old copies.

Marking one OSD out (or in) can move some chunks' whole replica set to OSDs
that hold none of it, until recovery copies it over.  A write to such a chunk
in between used to start it anew on the new primary (version 1, zeros around
the written bytes); recovery then kept the old copies, a higher version, and
the fsynced write was gone for good, with status HEALTHY and fsck clean.  The
primary now copies the chunk from wherever it is first (osd.replication).

A live cluster: 2 shards, 4 OSDs, R=2, recovery throttled to 1 MB/s per OSD
so that the writes come before recovery has moved the chunks.
"""

import mmap
import os

import pytest

from loomproto.layout import Layout, osd_order, replicas_for_chunk
from repl_helpers import drop_page_cache, running_cluster, write_synced

pytestmark = pytest.mark.mount

MIB = 1 << 20
FILES = 12
CHUNKS = 4  # per file, of 1 MiB: one per slot of the default layout
VICTIM = 3


@pytest.fixture(scope="module")
def repl(tmp_path_factory):
    yield from running_cluster(tmp_path_factory, env={"LOOMFS_RECOVERY_RATE": "1000000"})


def read_direct(path) -> bytes:
    """The file as the OSDs have it (O_DIRECT: no page cache of the mount)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        with mmap.mmap(-1, CHUNKS * MIB) as buf:
            got = os.readv(fd, [buf])
            return bytes(buf[:got])
    finally:
        os.close(fd)


def patch_every_chunk(files: dict) -> None:
    """4 KiB written into every chunk of every file, then fsync, without reading
    first (a read would have the chunk copied over already)."""
    for path, expect in files.items():
        fd = os.open(path, os.O_WRONLY)
        try:
            for chunk in range(CHUNKS):
                patch, at = os.urandom(4096), chunk * MIB + 100
                os.pwrite(fd, patch, at)
                expect[at:at + len(patch)] = patch
            os.fsync(fd)
        finally:
            os.close(fd)


def wrong_chunks(files: dict) -> list:
    drop_page_cache()
    wrong = []
    for path, expect in files.items():
        got = read_direct(path)
        wrong += [(path.name, c) for c in range(CHUNKS)
                  if got[c * MIB:(c + 1) * MIB] != expect[c * MIB:(c + 1) * MIB]]
    return wrong


def moved_whole(files: dict, osds: list[int]) -> list:
    """Chunks whose replica set shares no OSD with what it is once VICTIM is out."""
    layout = Layout(MIB, CHUNKS, 2)
    hosts = {o: "h" for o in osds}  # one host: the hosts rule changes nothing here
    rest = [o for o in osds if o != VICTIM]
    moved = []
    for path in files:
        ino = os.stat(path).st_ino
        for chunk in range(CHUNKS):
            before = replicas_for_chunk(layout, ino, chunk, osd_order(ino, osds), hosts)
            after = replicas_for_chunk(layout, ino, chunk, osd_order(ino, rest), hosts)
            if not set(before) & set(after):
                moved.append((path.name, chunk))
    return moved


def test_writes_after_osd_out_and_in_keep_the_chunks_old_bytes(repl):
    repl.wait_healthy(60)
    files = {}
    for i in range(FILES):
        path = repl.mnt / f"moved{i}"
        data = os.urandom(CHUNKS * MIB)
        write_synced(path, data)
        files[path] = bytearray(data)
    osds = sorted(o["id"] for o in repl.status()["osds"])
    moved = moved_whole(files, osds)
    assert moved, "no chunk's whole set moves: the test would prove nothing"
    print(f"{len(moved)} chunks change their whole replica set with osd{VICTIM} out")

    for action in ("out", "in"):
        drop_page_cache()
        repl.loomfs("osd", action, VICTIM)
        patch_every_chunk(files)
        assert wrong_chunks(files) == [], f"right after osd {action}"
        repl.wait_healthy(180)
        assert wrong_chunks(files) == [], f"once recovery moved the chunks (osd {action})"
    assert not repl.tracebacks(), repl.tracebacks()
