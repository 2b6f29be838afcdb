"""A coordinator that dies right after deciding a two-phase commit: after its
restart the participant gets the commit, and a retry of the request is
answered from the stored reply (real processes, LOOMFS_CRASH_AT)."""

import os
import subprocess
import sys

import pytest
import trio

from loomproto import errors, rpc
from loomproto.config import create as create_config
from loomproto.config import load as load_config
from loomproto.layout import Layout, shard_of_dentry
from test_mdsd_harness import ROOT, free_ports, no_log_warnings  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(cfg, mds_id, data, crash_at=None):
    env = dict(os.environ)
    env.pop("LOOMFS_CRASH_AT", None)
    if crash_at:
        env["LOOMFS_CRASH_AT"] = crash_at
    log = open(f"{data}.log", "a")
    cmd = [sys.executable, "-m", "mdsd.main", "--cluster", cfg, "--id", str(mds_id),
           "--data", data, "--log-level", "debug"]
    return subprocess.Popen(cmd, stderr=log, cwd=REPO, env=env)


async def _call_when_up(client, op, args, seconds=20.0):
    with trio.fail_after(seconds):
        while True:
            try:
                return await client.call(op, args)
            except errors.TransportError:
                await trio.sleep(0.05)  # polls until the shard answers, under fail_after


@pytest.mark.slow
async def test_coordinator_crash_after_decide(tmp_path, nursery):
    ports = free_ports(2)
    cfg = create_config(str(tmp_path / "cfg"), [f"127.0.0.1:{p}" for p in ports], Layout())
    config = load_config(cfg)
    data = [str(tmp_path / f"mds{i}") for i in range(2)]
    procs = [_start(cfg, 0, data[0]), _start(cfg, 1, data[1], "coord_after_decide")]
    try:
        clients = [rpc.RpcClient(nursery, a, config.cluster_id, config.key, "t")
                   for a in config.mds]
        name = next(f"f{i}".encode() for i in range(100)
                    if shard_of_dentry(ROOT, f"f{i}".encode(), 2) == 0)
        made = await _call_when_up(clients[0], "mknod", {
            "parent": ROOT, "name": name, "mode": 0o100644, "uid": 0, "gid": 0,
            "rid": os.urandom(16)})
        await _call_when_up(clients[1], "getattr", {"ino": ROOT})
        link_name = next(f"l{i}".encode() for i in range(100)
                         if shard_of_dentry(ROOT, f"l{i}".encode(), 2) == 1)
        link = {"ino": made["ino"], "parent": ROOT, "name": link_name, "rid": os.urandom(16)}
        with pytest.raises(errors.TransportError):
            await clients[1].call("link", link)  # shard 1 coordinates, decides, dies
        assert await trio.to_thread.run_sync(procs[1].wait, 20) == 137
        procs[1] = _start(cfg, 1, data[1])
        replay = await _call_when_up(clients[1], "link", link)
        assert replay["nlink"] == 2
        with trio.fail_after(20):
            while (await clients[0].call("getattr", {"ino": made["ino"]}))["nlink"] != 2:
                await trio.sleep(0.1)  # polls the nlink, under fail_after
        assert (await clients[1].call("lookup", {"parent": ROOT, "name": link_name}))[
            "ino"] == made["ino"]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(20)
