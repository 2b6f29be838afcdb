"""Bytes a writer left past a file's size never show up when the file grows
(mdsd.tails), on a real cluster whose metadata servers expire a session after a
few seconds.

A client killed while writing had sent part of its data to the OSDs but never
committed the size that covers it: the file kept size 0, and a truncate up, or a
write past the end, on another mount showed those bytes where zeros belong (a
tester's report; fsck called the cluster clean).  Once the writer's session
expired, the shard flags the file, and the next size change (or open) with no
other holder cuts the OSDs' chunks at the committed size first.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import cluster_script
from repl_helpers import DOWN_AFTER, close_cluster, drop_page_cache, repl_cluster_fixture

pytestmark = pytest.mark.mount

SESSION_TIMEOUT = 3
MiB = 1 << 20
WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o644)
for _ in range(40):  # past the 16 MiB write window: at least 24 MiB reach the OSDs
    os.write(fd, b"S" * (1 << 20))
open(sys.argv[2], "w").close()
sys.stdin.read()  # held open until killed
"""


@pytest.fixture(scope="module")
def tail_cluster(tmp_path_factory):
    base, live = repl_cluster_fixture(tmp_path_factory, osds=2, replicas=1)
    try:
        live.run("up", "--mds", 2, "--osd", 2, "--replicas", 1, "--down-after", DOWN_AFTER,
                 "--session-timeout", SESSION_TIMEOUT, "--mount", live.mnt)
        yield live
    finally:
        problems = close_cluster(base, live)
        assert not problems, "\n".join(problems)


def _wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {seconds}s"
        time.sleep(0.1)  # polls the condition under the deadline


def _logs(live):
    return "".join(live.log_text(f"mds{i}") for i in range(2))


@pytest.mark.parametrize("grow", ["truncate", "pwrite"])
def test_a_dead_writers_bytes_past_the_size_never_show(tail_cluster, grow):
    live = tail_cluster
    name = f"crashed-{grow}"
    other = live.base / f"mnt-{grow}"
    other.mkdir()
    live.run("mount", other)
    client = [n for n, node in live.nodes().items()
              if node.get("mount") == str(other)][0]
    ready = live.base / f"ready-{grow}"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(other / name), str(ready)],
                              stdin=subprocess.PIPE)
    try:
        _wait_for(ready.exists, 120, "writer progress")
        flagged = _logs(live).count("tail flagged")
        live.run("kill", client)
    finally:
        writer.kill()
        writer.wait()
    live.run("umount", client)
    path = live.mnt / name
    assert os.stat(path).st_size == 0
    _wait_for(lambda: _logs(live).count("tail flagged") > flagged, 60,
              "flag after the writer's session expired")

    if grow == "truncate":
        os.truncate(path, 48 * MiB)
    else:
        with open(path, "r+b") as fp:
            fp.seek(48 * MiB - 1)
            fp.write(b"E")
    drop_page_cache()
    data = path.read_bytes()
    assert len(data) == 48 * MiB
    assert data[:48 * MiB - 1].count(0) == 48 * MiB - 1, "a dead writer's bytes showed"


def test_a_second_open_by_the_writer_cuts_nothing(tail_cluster):
    """The flag is set while a live writer has bytes past the size on the OSDs (a
    reader of the file died): an open of the file by the writer's own mount must
    not cut them, since that session held the file before (a reviewer's case: the
    writer's later commit covered zeros).  No process is started while the writer
    has unflushed data: closing an inherited descriptor would flush it."""
    live = tail_cluster
    other = live.base / "mnt-reader"
    other.mkdir()
    path = live.mnt / "held"
    second = None
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"W" * MiB)
        os.fsync(fd)
        live.run("mount", other)
        client = [n for n, node in live.nodes().items() if node.get("mount") == str(other)][0]
        reader = subprocess.Popen([sys.executable, "-c", "import sys; f = open(sys.argv[1], 'rb')"
                                   "; print('open', flush=True); sys.stdin.read()",
                                   str(other / "held")], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert reader.stdout.readline() == "open\n"
            flagged = _logs(live).count("tail flagged")
            live.run("kill", client)
        finally:
            reader.kill()
            reader.wait()
        for _ in range(39):  # past the write window: most of it is on the OSDs now
            os.write(fd, b"W" * MiB)
        _wait_for(lambda: _logs(live).count("tail flagged") > flagged, 60,
                  "flag after the reader's session expired")
        second = os.open(path, os.O_RDONLY)  # the writer's mount opens it again
    finally:
        os.close(fd)  # commits the size of all 40 MiB
        if second is not None:
            os.close(second)
    live.run("umount", client)
    drop_page_cache()
    data = path.read_bytes()
    assert len(data) == 40 * MiB and data.count(b"W") == 40 * MiB, "the writer's bytes were cut"


def _write_8_mib(live, path, byte: bytes) -> int:
    """8 MiB of `byte`, fsynced; returns the OSD that holds chunk 1."""
    with open(path, "wb") as fp:
        fp.write(byte * 8 * MiB)
        fp.flush()
        os.fsync(fp.fileno())
    slots = live.getstripe(path)
    return slots[1 % len(slots)][0]


def _grown_reads_zeros(path, byte: bytes):
    """The file cut to 1 MiB, grown back to 8: zeros past 1 MiB, not the old bytes."""
    os.truncate(path, 8 * MiB)
    drop_page_cache()
    data = path.read_bytes()
    assert data[:MiB] == byte * MiB
    assert data[MiB:].count(0) == 7 * MiB, "the cut OSD's old bytes came back"


def test_a_truncate_whose_only_replica_hangs_is_cut_when_it_returns(tail_cluster):
    """One replica: the OSD holding a chunk past the new size hangs during the
    truncate, so nobody cuts that chunk or records the cut as missed.  The truncate
    succeeded, and once the OSD was back a truncate up showed the old bytes (a
    reviewer's case).  The client now flags the file, and the size change that
    grows it cuts the returned OSD's copy first."""
    live = tail_cluster
    path = live.mnt / "hung-cut"
    victim = _write_8_mib(live, path, b"A")  # holds chunk 1, past the new size
    node = live.nodes()[f"osd{victim}"]
    assert cluster_script.send_signal(node, signal.SIGSTOP)
    try:
        os.truncate(path, MiB)  # ends once the map marks the OSD down
    finally:
        live.kill(victim)  # SIGKILL ends a stopped process too
    live.wait_osd(victim, False)
    live.restart(victim)
    _grown_reads_zeros(path, b"A")


def test_a_truncate_with_the_only_replica_down_is_cut_when_it_returns(tail_cluster):
    """The same with the OSD down before the truncate starts: it is not asked, and
    no other OSD holds the chunk to record the cut as missed."""
    live = tail_cluster
    path = live.mnt / "down-cut"
    victim = _write_8_mib(live, path, b"B")
    live.kill(victim)
    live.wait_osd(victim, False)
    os.truncate(path, MiB)
    live.restart(victim)
    _grown_reads_zeros(path, b"B")
