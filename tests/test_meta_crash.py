"""Crash at each named step of the cross-shard protocol (`mdsd.txn.CRASH_POINTS`)
with real mdsd processes, and check recovery.

For each crash point, two shards run as processes; seven cross-shard operations
(link, rename across directories, rename over a file, directory move,
RENAME_EXCHANGE, rmdir, unlink of the last name whose inode is on the other
shard) are all coordinated by shard 1 with shard 0 as participant.  The shard
that owns the step is restarted with LOOMFS_CRASH_AT, the seven operations run
at once, the shard dies at the step (exit 137) and is restarted clean.  Then:

- once recovery finished (no prepared or decided records left), every operation
  is fully done or not done at all;
- the client's retry of each operation with its request id leaves each done
  exactly once (an exchange applied twice would swap back);
- `client.fsck` finds no fault.
"""

import os
import subprocess
import sys

import pytest
import trio

from client import fsck
from loomproto import errors
from mdsd.txn import CRASH_POINTS
from test_mdsd_harness import ROOT, MdsCluster, name_on_shard, no_log_warnings  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COORD, PART = 1, 0
EXCHANGE = 2


class Procs:
    """mdsd processes of `cluster`'s config, restarted at will with an environment."""

    def __init__(self, cluster: MdsCluster, tmp_path):
        self.cluster = cluster
        self.cfg = str(tmp_path / "cfg")
        self.tmp_path = tmp_path
        self.procs = {}

    def start(self, mds_id: int, crash_at: str | None = None):
        env = dict(os.environ)
        env.pop("LOOMFS_CRASH_AT", None)
        if crash_at:
            env["LOOMFS_CRASH_AT"] = crash_at
        data = str(self.tmp_path / f"mds{mds_id}")
        with open(f"{data}.log", "a") as log:
            self.procs[mds_id] = subprocess.Popen(
                [sys.executable, "-m", "mdsd.main", "--cluster", self.cfg, "--id", str(mds_id),
                 "--data", data, "--log-level", "info"], stderr=log, cwd=REPO, env=env)

    async def stop(self, mds_id: int) -> int:
        proc = self.procs[mds_id]
        if proc.poll() is None:
            proc.terminate()
        return await trio.to_thread.run_sync(proc.wait, 20)

    async def wait_exit(self, mds_id: int, seconds: float = 30.0) -> int:
        with trio.fail_after(seconds):
            while self.procs[mds_id].poll() is None:
                await trio.sleep(0.05)  # polls the exit, under fail_after
        return self.procs[mds_id].returncode

    async def wait_up(self, mds_id: int):
        with trio.fail_after(20):
            while True:
                try:
                    return await self.cluster.client(mds_id).call("getattr", {"ino": ROOT})
                except errors.TransportError:
                    await trio.sleep(0.05)  # polls until it answers, under fail_after

    def kill_all(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(20)


async def retrying(coro_fn, seconds: float = 40.0):
    """Call like the real client: retry transport failures and conflicts."""
    with trio.fail_after(seconds):
        while True:
            try:
                return await coro_fn()
            except (errors.TransportError, errors.Conflict, errors.TryAgain):
                await trio.sleep(0.1)  # polls until the call succeeds, under fail_after


async def entry_of(cluster, parent, name):
    try:
        return (await cluster.lookup(parent, name))["ino"]
    except errors.NotFound:
        return None


async def nlink_of(cluster, ino):
    try:
        return (await cluster.getattr(ino))["nlink"]
    except errors.NotFound:
        return None


class Scenario:
    """One operation: `setup` makes its state, `request` sends it (to COORD), `state`
    says "done" or "undone" and fails on anything in between."""

    def __init__(self, cluster, tag):
        self.c = cluster
        self.tag = tag
        self.rid = os.urandom(16)

    def name(self, parent, shard, stem):
        return name_on_shard(self.c, parent, shard, f"{self.tag}{stem}")

    def rename_args(self, parent, name, new_parent, new_name, flags=0):
        assert self.c.entry_shard(new_parent, new_name) == COORD
        return {"parent": parent, "name": name, "new_parent": new_parent, "new_name": new_name,
                "flags": flags, "rid": self.rid}

    async def request(self):
        return await self.c.client(COORD).call(self.op, self.args)


class Link(Scenario):
    op = "link"

    async def setup(self, a, b):
        self.src = self.name(ROOT, PART, "src")
        self.ino = (await self.c.create(ROOT, self.src))["ino"]
        self.dst = self.name(ROOT, COORD, "dst")
        self.args = {"ino": self.ino, "parent": ROOT, "name": self.dst, "rid": self.rid}

    async def state(self):
        linked, nlink = await entry_of(self.c, ROOT, self.dst), await nlink_of(self.c, self.ino)
        assert (linked, nlink) in ((self.ino, 2), (None, 1)), (linked, nlink)
        return "done" if linked else "undone"


class Move(Scenario):
    op = "rename"

    async def setup(self, a, b):
        self.a, self.b = a, b
        self.src, self.dst = self.name(a, PART, "s"), self.name(b, COORD, "d")
        self.ino = (await self.c.create(a, self.src))["ino"]
        self.args = self.rename_args(a, self.src, b, self.dst)

    async def state(self):
        old, new = await entry_of(self.c, self.a, self.src), await entry_of(self.c, self.b,
                                                                             self.dst)
        assert (old, new) in ((None, self.ino), (self.ino, None)), (old, new)
        assert await nlink_of(self.c, self.ino) == 1
        return "done" if new else "undone"


class Replace(Move):
    async def setup(self, a, b):
        await super().setup(a, b)
        self.victim = (await self.c.create(b, self.dst))["ino"]

    async def state(self):
        old, new = await entry_of(self.c, self.a, self.src), await entry_of(self.c, self.b,
                                                                             self.dst)
        victim = await nlink_of(self.c, self.victim)
        assert (old, new, victim) in ((None, self.ino, 0), (None, self.ino, None),
                                      (self.ino, self.victim, 1)), (old, new, victim)
        return "done" if old is None else "undone"


class MoveDir(Move):
    async def setup(self, a, b):
        self.a, self.b = a, b
        self.src, self.dst = self.name(a, PART, "ds"), self.name(b, COORD, "dd")
        self.ino = (await self.c.mkdir(a, self.src))["ino"]
        self.args = self.rename_args(a, self.src, b, self.dst)

    async def state(self):
        old, new = await entry_of(self.c, self.a, self.src), await entry_of(self.c, self.b,
                                                                             self.dst)
        assert (old, new) in ((None, self.ino), (self.ino, None)), (old, new)
        return "done" if new else "undone"


class Exchange(Scenario):
    op = "rename"

    async def setup(self, a, b):
        self.a, self.b = a, b
        self.p, self.q = self.name(a, PART, "xp"), self.name(b, COORD, "xq")
        self.one = (await self.c.create(a, self.p))["ino"]
        self.two = (await self.c.mkdir(b, self.q))["ino"]
        self.args = self.rename_args(a, self.p, b, self.q, EXCHANGE)

    async def state(self):
        at_p, at_q = await entry_of(self.c, self.a, self.p), await entry_of(self.c, self.b, self.q)
        assert (at_p, at_q) in ((self.two, self.one), (self.one, self.two)), (at_p, at_q)
        return "done" if at_p == self.two else "undone"


class Rmdir(Scenario):
    op = "rmdir"

    async def setup(self, a, b):
        self.dname = self.name(ROOT, COORD, "rm")
        self.ino = (await self.c.mkdir(ROOT, self.dname))["ino"]
        self.args = {"parent": ROOT, "name": self.dname, "rid": self.rid}

    async def state(self):
        named, exists = await entry_of(self.c, ROOT, self.dname), await nlink_of(self.c, self.ino)
        assert (named is None) == (exists is None), (named, exists)
        return "done" if named is None else "undone"


class UnlinkRemote(Scenario):
    op = "unlink"

    async def setup(self, a, b):
        first = self.name(ROOT, PART, "u")
        self.ino = (await self.c.create(ROOT, first))["ino"]
        self.fname = self.name(ROOT, COORD, "w")
        await self.c.rename(ROOT, first, ROOT, self.fname)
        self.args = {"parent": ROOT, "name": self.fname, "rid": self.rid}

    async def state(self):
        named, nlink = await entry_of(self.c, ROOT, self.fname), await nlink_of(self.c, self.ino)
        assert (named, nlink) in ((None, 0), (None, None), (self.ino, 1)), (named, nlink)
        return "done" if named is None else "undone"


SCENARIOS = (Link, Move, Replace, MoveDir, Exchange, Rmdir, UnlinkRemote)


async def drained(cluster):
    """Wait until no shard holds a prepared or decided record."""
    checker = fsck_checker(cluster)
    with trio.fail_after(40):
        while True:
            model = await retrying(checker.scan)
            if not model.txns:
                return
            await trio.sleep(0.2)  # polls the records, under fail_after


def fsck_checker(cluster):
    async def call_mds(shard, op, args):
        return await cluster.client(shard).call(op, args)

    return fsck.Checker(call_mds, cluster.nshards)


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_crash_at_step(tmp_path, nursery, point):
    cluster = MdsCluster(tmp_path, nursery, 2)
    procs = Procs(cluster, tmp_path)
    victim = COORD if point.startswith("coord") else PART
    try:
        for mds_id in (0, 1):
            procs.start(mds_id)
        for mds_id in (0, 1):
            await procs.wait_up(mds_id)
        a = (await cluster.mkdir(ROOT, b"a"))["ino"]
        b = (await cluster.mkdir(ROOT, b"b"))["ino"]
        scenarios = [cls(cluster, f"{i}") for i, cls in enumerate(SCENARIOS)]
        for scenario in scenarios:
            await scenario.setup(a, b)

        assert await procs.stop(victim) == 0
        procs.start(victim, crash_at=point)
        await procs.wait_up(victim)
        outcomes = {}

        async def first_try(scenario):
            try:
                outcomes[scenario.tag] = await scenario.request()
            except errors.LoomError as exc:
                outcomes[scenario.tag] = exc

        async with trio.open_nursery() as ops:
            for scenario in scenarios:
                ops.start_soon(first_try, scenario)
            assert await procs.wait_exit(victim) == 137, f"{point} was never reached"
            procs.start(victim)
        await procs.wait_up(victim)
        await drained(cluster)

        states = {s.tag: await s.state() for s in scenarios}
        print(point, {type(s).__name__: (states[s.tag], type(outcomes[s.tag]).__name__)
                      for s in scenarios})
        for scenario in scenarios:
            if not isinstance(outcomes[scenario.tag], errors.LoomError):
                assert states[scenario.tag] == "done", (scenario, outcomes[scenario.tag])
        for scenario in scenarios:  # the client's retry after a lost reply
            await retrying(scenario.request)
        await drained(cluster)
        assert {s.tag: await s.state() for s in scenarios} == {s.tag: "done" for s in scenarios}
        model, findings = await fsck_checker(cluster).check()
        faults = [f.line() for f in findings if not f.pending]
        assert not faults, faults
    finally:
        procs.kill_all()
