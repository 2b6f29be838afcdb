"""No acknowledged byte is lost when OSDs die (issue 6), on a real cluster of 2 metadata
servers and 4 OSDs with 2 replicas, OSDs marked down after 2 s of silence.

- an OSD SIGKILLed in the middle of a striped write and of a read: the calls succeed
  after a bounded pause and the data reads back with the right sha256; the OSD comes
  back and is caught up by version; then another OSD dies and everything still reads;
- with 1 replica a dead OSD gives EIO within io_timeout, never wrong data;
- bytes flipped in a chunk file: the read returns the right data and repairs the copy;
  `loomfs scrub` finds and repairs another flipped chunk;
- an OSD marked out: its chunks get their second copy elsewhere;
- an OSD added to the running cluster takes new chunks, and `loomfs rebalance` moves
  existing ones to it while a reader checks the data throughout.

``LOOMFS_REPL_MB`` sets the size of the big file (the issue asks for 1 GiB; the default
keeps this module well under a minute here).  Seeds are printed.
"""

import errno
import json
import os
import threading
import time

import pytest

from osd import chunkfile
from posix_util import wait_until
from repl_helpers import (DOWN_AFTER, IO_TIMEOUT, Progress, drop_page_cache, read_file,
                          running_cluster, sha_of, write_file, write_synced)

pytestmark = pytest.mark.mount

BIG_MB = int(os.environ.get("LOOMFS_REPL_MB", "192"))
SEED = int(os.environ.get("LOOMFS_REPL_SEED", "6061"))
# How long a write or read may stall on a dead OSD: marked down after DOWN_AFTER,
# then the next replica takes over.  Generous for a loaded 2-core machine.
FAILOVER_PAUSE = DOWN_AFTER + 10


@pytest.fixture(scope="module")
def repl(tmp_path_factory):
    yield from running_cluster(tmp_path_factory)


@pytest.fixture(autouse=True)
def _no_tracebacks(request):
    yield
    if "repl" in request.fixturenames:
        live = request.getfixturevalue("repl")
        assert not live.tracebacks(), f"tracebacks in {live.tracebacks()}"


def test_kill_osd_during_write_and_read_then_catch_up(repl):
    print(f"seed {SEED}, {BIG_MB} MiB")
    path = repl.mnt / "big"
    writer = Progress(write_file(path, SEED, BIG_MB))
    writer.start()
    writer.wait_progress(BIG_MB // 3, 120)
    repl.kill(1)
    digest = writer.finish(300)
    assert writer.error is None

    drop_page_cache()
    assert sha_of(path) == digest, "read back after a kill during the write"

    # The OSD returns and is caught up by version, not by a full copy.
    repl.restart(1)
    repl.wait_healthy(120)
    recovered = sum(o["stats"].get("recovered", 0) for o in repl.status()["osds"])
    assert 0 < recovered < 2 * BIG_MB, f"{recovered} copies recovered"

    # Kill another OSD in the middle of a read.
    drop_page_cache()
    reader = Progress(read_file(path))
    reader.start()
    reader.wait_progress(BIG_MB // 3, 120)
    repl.kill(2)
    assert reader.finish(300) == digest, "read with an OSD killed in the middle"
    repl.restart(2)
    repl.wait_healthy(120)

    # Now a replica that was caught up (osd 1) holds the only copy of some chunks.
    repl.kill(3)
    repl.wait_osd(3, False)
    drop_page_cache()
    assert sha_of(path) == digest, "read with osd 3 down after osd 1 caught up"
    repl.restart(3)
    repl.wait_healthy(120)


def test_write_pause_is_bounded_when_primary_dies(repl):
    """A small synchronous write right after its primary died returns within a few
    seconds (the map marks the OSD down, the next replica becomes primary)."""
    path = repl.mnt / "small"
    path.write_bytes(b"x" * 4096)
    slots = repl.getstripe(path)
    primary = slots[0][0]
    repl.kill(primary)
    start = time.monotonic()
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"after the kill", 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    paused = time.monotonic() - start
    assert paused < FAILOVER_PAUSE, f"write paused {paused:.1f}s"
    drop_page_cache()
    assert path.read_bytes()[:14] == b"after the kill"
    repl.restart(primary)
    repl.wait_healthy(60)
    # The returning primary was behind: reads from it must show the new bytes.
    drop_page_cache()
    assert path.read_bytes()[:14] == b"after the kill"


def test_one_replica_gives_eio_never_wrong_data(repl):
    single = repl.mnt / "single"
    single.mkdir()
    repl.loomfs("setstripe", "--count", 1, "--size", 1 << 20, "--replicas", 1, single)
    # The mount caches the directory's attributes (its layout with them) until the
    # kernel asks for them again after attr_timeout: poll until new files get R=1.
    path = single / "f"
    deadline = time.monotonic() + 20
    while True:
        os.stat(single)
        path.write_bytes(b"")
        if len(repl.getstripe(path)[0]) == 1:
            break
        assert time.monotonic() < deadline, "new files never got the directory's layout"
        path.unlink()
    data = os.urandom(3 << 20)
    path.write_bytes(data)
    (osd_id,) = repl.getstripe(path)[0]
    repl.kill(osd_id)
    repl.wait_osd(osd_id, False)
    drop_page_cache()
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        path.read_bytes()
    assert info.value.errno == errno.EIO
    # The first FUSE read fails after io_timeout.  The kernel retries a failed
    # read-ahead once with the page the application asked for; that retry tries
    # for QUICK_RETRY only (client.data), so EIO comes after one timeout, not two.
    took = time.monotonic() - start
    assert took < IO_TIMEOUT + 6, f"EIO after {took:.1f}s, io_timeout {IO_TIMEOUT}s"
    log = repl.log_text("client0")
    assert "chunk 0: no replica answered" in log and f"osds [{osd_id}]" in log
    repl.restart(osd_id)
    drop_page_cache()
    assert path.read_bytes() == data
    # Its only copy must not stay on an OSD that a later test kills and marks out:
    # fsck would then rightly report the lost chunks (missing-chunk) there.
    path.unlink()
    single.rmdir()


def _healthy_then_written(repl, name: str, size: int):
    """Once the cluster is healthy, a file of `size` random bytes, fsynced:
    ``(path, data, ino, {slot: [osd ids, primary first]})``."""
    repl.wait_healthy(60)
    path = repl.mnt / name
    data = os.urandom(size)
    write_synced(path, data)
    return path, data, os.stat(path).st_ino, repl.getstripe(path)


def test_flipped_bytes_are_repaired_on_read_and_by_scrub(repl):
    path, data, ino, slots = _healthy_then_written(repl, "flip", 4 << 20)

    def flip(chunk_index, osd_id):
        chunk = repl.chunk_path(osd_id, ino, chunk_index)
        with open(chunk, "r+b") as fp:
            fp.seek(chunkfile.HEADER_SIZE + 12345)
            byte = fp.read(1)
            fp.seek(chunkfile.HEADER_SIZE + 12345)
            fp.write(bytes([byte[0] ^ 0xFF]))
        return chunk

    def verified(chunk):
        fd = os.open(chunk, os.O_RDONLY)
        try:
            header = chunkfile.load(fd, str(chunk))
            chunkfile.read(fd, header, 0, header.length, str(chunk))
            return True
        except Exception:
            return False
        finally:
            os.close(fd)

    # Chunk 0's primary copy is damaged: the read repairs it from the other replica.
    bad = flip(0, slots[0][0])
    assert not verified(bad)
    drop_page_cache()
    assert path.read_bytes() == data
    assert verified(bad), "the read did not repair the damaged copy"

    # Chunk 1's second copy is damaged: scrub finds and repairs it.
    bad = flip(1, slots[1][1])
    done = repl.loomfs("scrub", "--json")
    totals = json.loads(done.stdout.strip().splitlines()[-1])
    assert totals["corrupt"] >= 1 and totals["repaired"] == totals["corrupt"], totals
    assert verified(bad)
    drop_page_cache()
    assert path.read_bytes() == data

    # The progress lines count each OSD's own finds: only the damaged copy's OSD
    # reports one (before, each line showed the running totals of every OSD so far).
    bad_osd = slots[2][1]
    bad = flip(2, bad_osd)
    lines = repl.loomfs("scrub").stdout.splitlines()
    last = {line.split(":")[0]: line for line in lines if line.startswith("osd")}
    for osd, line in last.items():
        want = "1 corrupt, 1 repaired" if osd == f"osd{bad_osd}" else "0 corrupt, 0 repaired"
        assert line.endswith(want), (osd, line, lines)
    assert verified(bad)


def test_a_chunk_file_swapped_or_removed_on_disk_is_repaired(repl):
    """A copy of another chunk put in a chunk's place is refused (its header names the
    chunk it holds), so it is neither read nor copied over the good replica; a chunk
    file removed from under an OSD is found by scrub and copied back, and the rest of
    that OSD is still scrubbed (a tester's reports)."""
    path, data, ino, slots = _healthy_then_written(repl, "swap", 8 << 20)
    count = len(slots)
    holders = {}
    for chunk_index in range(8):
        for osd_id in slots[chunk_index % count]:
            holders.setdefault(osd_id, []).append(chunk_index)
    osd_id, chunks = next((o, c) for o, c in sorted(holders.items()) if len(c) >= 2)
    victim, other = chunks[0], chunks[1]
    victim_path = repl.chunk_path(osd_id, ino, victim)

    repl.run("stop", f"osd{osd_id}")
    victim_path.write_bytes(repl.chunk_path(osd_id, ino, other).read_bytes())
    repl.restart(osd_id)
    assert "holds ino %d chunk %d, not this chunk" % (ino, other) in repl.log_text(f"osd{osd_id}")
    drop_page_cache()
    assert path.read_bytes() == data
    done = repl.loomfs("scrub", "--json", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    fd = os.open(victim_path, os.O_RDONLY)
    try:
        header = chunkfile.load(fd, chunkfile.ChunkName(ino, victim))
        start = victim * (1 << 20)
        assert chunkfile.read(fd, header, 0, header.length, "t") == data[start:start + (1 << 20)]
    finally:
        os.close(fd)

    victim_path.unlink()
    done = repl.loomfs("scrub", "--json", check=False)
    totals = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0 and totals["corrupt"] == 1 == totals["repaired"], done.stdout
    assert victim_path.exists()
    drop_page_cache()
    assert path.read_bytes() == data


def test_a_chunk_corrupt_on_every_copy_is_not_healthy(repl):
    """Both copies of a chunk damaged: the read fails (EIO, never wrong bytes), scrub
    names the chunk and exits 1, and status says DEGRADED, not HEALTHY, until the
    file is gone (a tester's report: HEALTHY, and --wait-healthy exited 0)."""
    path, data, ino, slots = _healthy_then_written(repl, "lost", 2 << 20)
    for osd_id in slots[1]:
        chunk = repl.chunk_path(osd_id, ino, 1)
        with open(chunk, "r+b") as fp:
            fp.seek(chunkfile.HEADER_SIZE + 777)
            flipped = bytes(b ^ 0xFF for b in fp.read(3))  # never the same
            fp.seek(chunkfile.HEADER_SIZE + 777)
            fp.write(flipped)
    drop_page_cache()
    with pytest.raises(OSError) as info, open(path, "rb") as fp:
        fp.seek(1 << 20)
        fp.read(4096)
    assert info.value.errno == errno.EIO
    scrubbed = repl.loomfs("scrub", check=False)
    assert scrubbed.returncode == 1, scrubbed.stdout + scrubbed.stderr
    assert f"ino {ino} chunk 1 is corrupt and no replica has a good copy" in scrubbed.stderr
    wait_until(lambda: repl.status()["recovery"]["unrepairable"] > 0, 60,
               "status to count the copies no replica can repair")
    waited = repl.loomfs("status", "--wait-healthy", 1, check=False)
    assert waited.returncode == 1 and "no good replica" in waited.stdout, waited.stdout
    # The test after this one scrubs: the damaged copies must be gone from the disks
    # (the inode reclaimed, then its chunks deleted), not only out of the count.
    path.unlink()
    damaged = [repl.chunk_path(osd_id, ino, 1) for osd_id in slots[1]]
    wait_until(lambda: not any(chunk.exists() for chunk in damaged), 90,
               "the deleted file's damaged copies to leave the OSDs")
    repl.wait_healthy(90)


def test_osd_out_gets_its_chunks_copied_elsewhere(repl):
    path, data, _, slots = _healthy_then_written(repl, "out", 8 << 20)
    victim = slots[0][0]
    repl.kill(victim)
    repl.wait_osd(victim, False)
    repl.loomfs("osd", "out", victim)
    took = repl.wait_healthy(120)
    print(f"re-replicated after osd{victim} out in {took:.1f}s")
    # fsck needs no OSD that is down and out once recovery copied its chunks: it
    # exited 2 (UNCHECKED) while status said HEALTHY (a tester's report).
    checked = repl.loomfs("fsck", "--quiet", check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SKIPPED osd {victim}: down and out\n" in checked.stdout
    scrubbed = repl.loomfs("scrub", "--json", check=False)  # it exited 1 here (a tester)
    assert scrubbed.returncode == 0, scrubbed.stdout + scrubbed.stderr
    assert json.loads(scrubbed.stdout.strip().splitlines()[-1])["skipped"] == [victim]
    # Every chunk now has 2 copies on the 3 remaining OSDs: any one more may die.
    others = [o for o in range(4) if o != victim]
    repl.kill(others[0])
    repl.wait_osd(others[0], False)
    drop_page_cache()
    assert path.read_bytes() == data
    repl.restart(others[0])
    repl.restart(victim)
    repl.loomfs("osd", "in", victim)
    repl.wait_healthy(120)
    drop_page_cache()
    assert path.read_bytes() == data


def test_added_osd_takes_new_chunks_and_rebalance_moves_old_ones(repl):
    repl.wait_healthy(60)
    path = repl.mnt / "rebalance"
    digest = Progress(write_file(path, SEED + 2, 48))
    digest.start()
    digest = digest.finish(120)
    repl.run("add-osd", "--host", "newhost")
    repl.wait_osd(4, True)

    # A reader checks the whole file again and again while chunks move.
    stop, seen = threading.Event(), []

    def reread(progress):
        while not stop.is_set():
            drop_page_cache()
            seen.append(sha_of(path))
    reader = Progress(reread)
    reader.start()
    try:
        done = repl.loomfs("rebalance", "--timeout", 120, timeout=180)
    finally:
        stop.set()
        reader.finish(120)
    print(done.stdout[-600:])
    assert seen and all(s == digest for s in seen), f"{len(seen)} reads, some wrong"
    osds = {o["id"]: o for o in repl.status()["osds"]}
    mean = sum(o["used"] for o in osds.values()) / len(osds)
    assert osds[4]["used"] > 0.3 * mean, {i: o["used"] for i, o in osds.items()}
    drop_page_cache()
    assert sha_of(path) == digest
    # New files take the new OSD too.
    fresh = repl.mnt / "after_add"
    fresh.write_bytes(os.urandom(4 << 20))
    placed = {o for osds in repl.getstripe(fresh).values() for o in osds}
    assert 4 in placed, placed
