"""A full disk on one OSD (issue 6): the writer gets ENOSPC, nothing already stored is
damaged, and the daemon keeps serving reads.

osd2's data directory is a 48 MiB tmpfs this test mounts before the cluster starts
and unmounts at the end.  Needs root (mount) besides what every mount test needs.
"""

import errno
import os
import shutil
import subprocess

import pytest

from conftest import cluster_script, mounts_below
from posix_util import wait_until
from repl_helpers import drop_page_cache, repl_cluster_fixture, seeded_blocks

pytestmark = pytest.mark.mount

SEED = int(os.environ.get("LOOMFS_REPL_SEED", "6061"))
SMALL_FS_MB = 48
MiB = 1 << 20


@pytest.fixture
def full_cluster(tmp_path_factory):
    base, live = repl_cluster_fixture(tmp_path_factory, osds=3, replicas=2)
    small = live.state / "osd2"
    small.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_FS_MB}m", "tmpfs",
                           str(small)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        live.up()
        yield live
    finally:
        problems = []
        try:
            live.run("down", timeout=180)
        except Exception as exc:  # reported below, after the cleanup
            problems.append(str(exc))
        running = live.running()
        live.kill_running(("mds", "osd", "client"))
        subprocess.run(["umount", str(small)], capture_output=True)
        mounted = mounts_below(base)
        if running:
            problems.append(f"still running after down: {running}")
        if mounted:
            problems.append(f"still mounted after down: {mounted}")
        else:
            shutil.rmtree(base, ignore_errors=True)
        assert not problems, "\n".join(problems)


def test_full_osd_gives_enospc_and_keeps_serving(full_cluster):
    live = full_cluster
    print(f"seed {SEED}")
    early = live.mnt / "early"
    early_data = b"".join(seeded_blocks(SEED, 6))
    with open(early, "wb") as fp:
        fp.write(early_data)
        fp.flush()
        os.fsync(fp.fileno())

    big = live.mnt / "big"
    with pytest.raises(OSError) as info:
        with open(big, "wb") as fp:
            for block in seeded_blocks(SEED + 1, 4 * SMALL_FS_MB):
                fp.write(block)
            fp.flush()
            os.fsync(fp.fileno())
    assert info.value.errno == errno.ENOSPC, info.value

    # Two handles of one file: a failed write is reported at each one's fsync, not
    # only at the first flush or fsync of either (a tester's report: the other
    # fsync succeeded over bytes that were never stored).
    shared = live.mnt / "shared"
    first = os.open(shared, os.O_WRONLY | os.O_CREAT, 0o644)
    second = os.open(shared, os.O_WRONLY)
    reader = os.open(shared, os.O_RDONLY)
    try:
        slot = next(s for s, osds in sorted(live.getstripe(shared).items()) if 2 in osds)
        os.pwrite(second, b"x", 0)
        # A whole chunk, sent at once: the write returns before osd2 refuses it.
        os.pwrite(first, next(seeded_blocks(SEED + 3, 1)), slot * MiB)
        for fd in (second, first):
            with pytest.raises(OSError) as failed:
                os.fsync(fd)
            assert failed.value.errno in (errno.ENOSPC, errno.EIO), failed.value
        os.fsync(second)  # reported once to each
        closing, reader = reader, None  # (close releases the descriptor even when it fails)
        os.close(closing)  # a reader's close is not failed for another's write
    finally:
        if reader is not None:
            os.close(reader)
        os.close(second)
        os.close(first)
    shared.unlink()

    # A file written while the full osd2 was down: back up, osd2 has no room to catch
    # up on its chunks, and reads of those go to the other copy, not fail with
    # ENOSPC (a tester's report; getstripe names the chunks osd2 is primary of).
    live.kill(2)
    live.wait_osd(2, False)
    missed = live.mnt / "missed"
    missed_data = b"".join(seeded_blocks(SEED + 2, 6))
    with open(missed, "wb") as fp:
        fp.write(missed_data)
        fp.flush()
        os.fsync(fp.fileno())
    assert any(osds[0] == 2 for osds in live.getstripe(missed).values())
    live.restart(2)
    drop_page_cache()
    assert missed.read_bytes() == missed_data

    # The chunks that did land stay past the committed size until the next open,
    # which cuts them (mdsd.tails): the file grown again reads as zeros there,
    # not as the failed writes' bytes (a tester's report).
    full = os.statvfs(live.state / "osd2")
    size = os.stat(big).st_size
    wait_until(lambda: "tail flagged" in live.log_text("mds0") + live.log_text("mds1"),
               60, "the shard to record the failed flush")
    with open(big, "r+b") as fp:
        fp.seek(size + 8 * MiB)
        fp.write(b"E")
    drop_page_cache()
    with open(big, "rb") as fp:
        fp.seek(size)
        assert fp.read() == bytes(8 * MiB) + b"E"

    # osd2 is full and still serves: the early file reads back right, the daemon lives.
    drop_page_cache()
    assert early.read_bytes() == early_data
    assert cluster_script.is_running(live.nodes()["osd2"])
    status = live.status()
    assert next(o for o in status["osds"] if o["id"] == 2)["up"]
    assert "Traceback" not in live.log_text("osd2")

    # Space comes back once the big file is gone, and writes work again.
    big.unlink()
    wait_until(lambda: os.statvfs(live.state / "osd2").f_bfree > full.f_bfree + 256, 60,
               "the deleted file's chunks to leave osd2")  # free space has no event
    after = live.mnt / "after"
    after.write_bytes(early_data)
    drop_page_cache()
    assert after.read_bytes() == early_data
