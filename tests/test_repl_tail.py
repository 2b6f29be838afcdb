"""Bytes left on the OSDs past a file's size never show up when the file grows
(mdsd.tails), on a real cluster with one replica: those of a truncate whose only
replica of a chunk was down or hung (it was neither cut nor recorded, and a truncate
up brought the old bytes back), and never at the cost of a live writer's bytes (the
flag does not make a second open on the writer's own mount cut them).  A failed
flush's are in test_repl_enospc.py."""

import errno
import os
import signal

import pytest
import trio

from conftest import cluster_script
from loomproto import config as cluster_config
from loomproto import rpc
from posix_util import wait_until
from repl_helpers import (DOWN_AFTER, close_cluster, drop_page_cache, repl_cluster_fixture,
                          write_synced)

pytestmark = pytest.mark.mount

MiB = 1 << 20


@pytest.fixture(scope="module")
def tail_cluster(tmp_path_factory):
    base, live = repl_cluster_fixture(tmp_path_factory, osds=2, replicas=1)
    try:
        live.run("up", "--mds", 2, "--osd", 2, "--replicas", 1, "--down-after", DOWN_AFTER,
                 "--mount", live.mnt)
        yield live
    finally:
        problems = close_cluster(base, live)
        assert not problems, "\n".join(problems)


def _logs(live):
    return "".join(live.log_text(f"mds{i}") for i in range(2))


def _mark_tail(live, ino: int):
    """What a client sends after a failed flush, sent from this process (starting
    another one would flush the writer's descriptor: see below)."""
    config = cluster_config.load(str(live.config))

    async def call():
        async with trio.open_nursery() as nursery:
            client = rpc.RpcClient(nursery, config.mds[ino % len(config.mds)],
                                   config.cluster_id, config.key, "test")
            await client.call("mark_tail", {"ino": ino})
            nursery.cancel_scope.cancel()

    trio.run(call)


def test_a_second_open_by_the_writer_cuts_nothing(tail_cluster):
    """The flag is set while a live writer has bytes past the size on the OSDs: an
    open of the file by the writer's own mount must not cut them, since that session
    held the file before (a reviewer's case: the writer's later commit covered
    zeros).  No process is started while the writer has unflushed data: closing an
    inherited descriptor would flush it."""
    live = tail_cluster
    path = live.mnt / "held"
    second = None
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"W" * MiB)
        os.fsync(fd)
        for _ in range(39):  # past the write window: most of it is on the OSDs now
            os.write(fd, b"W" * MiB)
        flagged = _logs(live).count("tail flagged")
        _mark_tail(live, os.fstat(fd).st_ino)
        wait_until(lambda: _logs(live).count("tail flagged") > flagged, 60, "the flag")
        second = os.open(path, os.O_RDONLY)  # the writer's mount opens it again
    finally:
        os.close(fd)  # commits the size of all 40 MiB
        if second is not None:
            os.close(second)
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


def test_a_failed_write_does_not_stay_in_the_writers_page_cache(tail_cluster):
    """A write that failed at close (its only OSD down) left its bytes in the writing
    mount's page cache, which the next opens there kept, so that mount read bytes no
    OSD had while every other mount read the old ones (a tester's report)."""
    live = tail_cluster
    quick = live.base / "quick"
    quick.mkdir()
    live.run("mount", quick, "--mount-opts", "allow_other,default_permissions,io_timeout=3")
    try:
        path = quick / "failed-write"
        old = b"o" * (256 << 10)
        write_synced(path, old)
        assert path.read_bytes() == old  # now in this mount's page cache
        victim = live.getstripe(path)[0][0]
        live.kill(victim)
        live.wait_osd(victim, False)
        with pytest.raises(OSError) as info:
            with open(path, "r+b") as fp:
                fp.write(b"z" * 100_000)
        assert info.value.errno == errno.EIO, info.value
        live.restart(victim)
        assert path.read_bytes() == old
        assert (live.mnt / "failed-write").read_bytes() == old
    finally:
        live.run("umount", quick)
