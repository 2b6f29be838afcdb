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
MOVED = 3  # chunks whose whole set moves that the first test writes files until it has
CHUNKS = 4  # per file, of 1 MiB: one per slot of the default layout
VICTIM = 3
FORCE = tuple(os.environ.get("LOOMFS_TEST_OSD_FORCE", "").split())  # to see it fail


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


def moved_whole(path, osds: list[int]) -> list[int]:
    """Chunks of `path` whose replica set shares no OSD with what it is once
    VICTIM is out."""
    layout = Layout(MIB, CHUNKS, 2)
    hosts = {o: "h" for o in osds}  # one host: the hosts rule changes nothing here
    rest = [o for o in osds if o != VICTIM]
    ino = os.stat(path).st_ino
    return [chunk for chunk in range(CHUNKS)
            if not set(replicas_for_chunk(layout, ino, chunk, osd_order(ino, osds), hosts))
            & set(replicas_for_chunk(layout, ino, chunk, osd_order(ino, rest), hosts))]


def new_files(repl, prefix: str, count: int) -> dict:
    files = {}
    for i in range(count):
        path = repl.mnt / f"{prefix}{i}"
        data = os.urandom(CHUNKS * MIB)
        write_synced(path, data)
        files[path] = bytearray(data)
    return files


def test_writes_after_osd_out_and_in_keep_the_chunks_old_bytes(repl):
    repl.wait_healthy(60)
    osds = sorted(o["id"] for o in repl.status()["osds"])
    files, moved = {}, 0
    while moved < MOVED and len(files) < 16:  # about 2 in 5 files have one
        (path, data), = new_files(repl, f"moved{len(files)}-", 1).items()
        files[path] = data
        moved += len(moved_whole(path, osds))
    assert moved >= MOVED, "too few chunks' whole set moves: the test would prove little"

    # No waiting in between but `osd in`'s own: it waits until recovery has moved
    # everything the out moved (a tester's `in` right after lost the first writes).
    for action in ("out", "in"):
        drop_page_cache()
        repl.loomfs("osd", action, VICTIM, *FORCE)
        assert wrong_chunks(files) == [], f"read right after osd {action}"
        patch_every_chunk(files)
        assert wrong_chunks(files) == [], f"written right after osd {action}"
    repl.wait_healthy(180)
    assert wrong_chunks(files) == [], "once recovery moved the chunks back"
    for path in files:
        path.unlink()  # less for the next test's placement changes to move
    assert not repl.tracebacks(), repl.tracebacks()


def test_an_osd_back_from_an_outage_comes_in_only_without_its_old_copies(repl):
    """Out while down, it kept copies that the writes since have made old: `osd in`
    refuses it while it is down, and once it is up waits until its own recovery
    pass dropped them (the members hold the newest)."""
    repl.wait_healthy(60)
    files = new_files(repl, "outage", 3)
    repl.kill(VICTIM)
    repl.wait_osd(VICTIM, False)
    repl.loomfs("osd", "out", VICTIM)
    refused = repl.loomfs("osd", "in", VICTIM, check=False)
    assert refused.returncode == 1 and "is down" in refused.stderr, refused.stderr
    repl.wait_healthy(180)
    patch_every_chunk(files)  # the copies left on the victim are old now

    repl.restart(VICTIM)
    repl.loomfs("osd", "in", VICTIM)  # waits for the victim to drop its old copies
    patch_every_chunk(files)
    assert wrong_chunks(files) == [], "right after osd in"
    repl.wait_healthy(180)
    assert wrong_chunks(files) == [], "once recovery moved the chunks back"
    assert not repl.tracebacks(), repl.tracebacks()
