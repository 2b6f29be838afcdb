"""Directories: O_EXCL create and mkdir races between processes have exactly one
winner; readdir returns every entry exactly once, also while entries come and go
(stable cookies); one directory of 100,000 entries is listed and removed by
`rm -rf` in one pass."""

import errno
import multiprocessing
import os
import subprocess
import time

import pytest
import trio

pytestmark = pytest.mark.mount

BIG = int(os.environ.get("LOOMFS_BIGDIR_N", "100000"))
WORKERS = 4


def _race(path, kind, start, queue):
    start.wait()
    try:
        if kind == "create":
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        else:
            os.mkdir(path)
        queue.put("won")
    except OSError as exc:
        queue.put(exc.errno)


@pytest.mark.parametrize("kind", ["create", "mkdir"])
def test_exclusive_create_races_have_one_winner(workdir, kind):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(10):
        path = workdir / f"{kind}-{round_}"
        start, queue = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(path, kind, start, queue)) for _ in range(6)]
        for proc in procs:
            proc.start()
        start.set()
        results = [queue.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(60)
        assert sorted(results, key=str) == [errno.EEXIST] * 5 + ["won"], results
    assert len(os.listdir(workdir)) == 10


def test_readdir_while_entries_come_and_go(workdir):
    names = {f"f{i:05d}" for i in range(3000)}
    for name in names:
        os.close(os.open(workdir / name, os.O_CREAT | os.O_WRONLY, 0o644))
    removed, added = set(), set()
    seen = []
    with os.scandir(workdir) as entries:
        for count, entry in enumerate(entries):
            seen.append(entry.name)
            if count % 10 == 0:  # remove one not yet seen, add a new one
                victim = f"f{2999 - count // 10:05d}"
                if victim not in seen:
                    os.unlink(workdir / victim)
                    removed.add(victim)
                new = f"new{count}"
                os.close(os.open(workdir / new, os.O_CREAT | os.O_WRONLY, 0o644))
                added.add(new)
    assert len(seen) == len(set(seen)), "an entry came back twice"
    assert names - removed <= set(seen), "an entry present all along was missed"
    assert set(seen) <= names | added
    assert sorted(os.listdir(workdir)) == sorted((names - removed) | added)


async def _make_entries(config_path, parent_ino, count):
    """Create `count` empty files in one directory with many mknod calls in
    flight: the metadata servers' group commit makes this far quicker than
    one create(2) at a time through FUSE.  What the test is about, listing
    and `rm -rf`, goes through the mount."""
    from client.cluster import Cluster
    from client.meta import Meta
    from loomproto import config as cluster_config

    cfg = cluster_config.load(config_path)
    in_flight = 64

    async def worker(meta, first):
        for i in range(first, count, in_flight):
            await meta.mknod(parent_ino, b"entry-%06d" % i, 0o100644, 0, 0, 0)

    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, cfg, name="bigdir-test")
        await cluster.start()
        meta = Meta(cluster)
        async with trio.open_nursery() as workers:
            for first in range(in_flight):
                workers.start_soon(worker, meta, first)
        nursery.cancel_scope.cancel()


@pytest.mark.deadline(1200)
def test_hundred_thousand_entries(cluster, workdir):
    big = workdir / "big"
    os.mkdir(big)
    began = time.monotonic()
    trio.run(_make_entries, str(cluster.config), os.stat(big).st_ino, BIG)
    created = time.monotonic()
    names = os.listdir(big)
    assert len(names) == BIG and len(set(names)) == BIG
    assert set(names) == {f"entry-{i:06d}" for i in range(BIG)}
    assert os.stat(big).st_nlink == 2
    listed = time.monotonic()
    subprocess.run(["rm", "-rf", str(big)], check=True, timeout=900)
    assert not big.exists()
    print(f"{BIG} entries: create {created - began:.1f}s, list {listed - created:.1f}s, "
          f"rm -rf {time.monotonic() - listed:.1f}s")
