"""In-process metadata shards for the mdsd tests (no tests of its own here
beyond the harness smoke test).

`MdsCluster` writes a cluster config with free loopback ports, starts every
shard with `mdsd.main.serve_shard` in the test's nursery on LMDB dirs under
tmp_path, and can stop and restart one shard on the same data.
"""

import logging
import os
import socket
import stat

import pytest
import trio

from loomproto import config as cluster_config
from loomproto import rpc
from loomproto.layout import Layout, shard_of_dentry
from mdsd.main import serve_shard

ROOT = 1


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class MdsCluster:
    def __init__(self, tmp_path, nursery, nshards: int, **shard_options):
        self.tmp_path = tmp_path
        self.nursery = nursery
        self.nshards = nshards
        self.options = shard_options
        addrs = [f"127.0.0.1:{port}" for port in free_ports(nshards)]
        path = cluster_config.create(str(tmp_path / "cfg"), addrs, Layout(1 << 20, 2, 1))
        self.config = cluster_config.load(path)
        self.handles = {}
        self._scopes = {}
        self._stopped = {}
        self._clients = {}

    async def start(self, mds_id: int):
        data = str(self.tmp_path / f"mds{mds_id}")
        self.handles[mds_id] = await self.nursery.start(self._run, mds_id, data)

    async def _run(self, mds_id, data, task_status=trio.TASK_STATUS_IGNORED):
        done = self._stopped[mds_id] = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._scopes[mds_id] = scope
                await serve_shard(self.config, mds_id, data, task_status=task_status,
                                  **self.options)
        finally:
            done.set()

    async def start_all(self):
        for mds_id in range(self.nshards):
            await self.start(mds_id)

    async def stop(self, mds_id: int):
        self._scopes[mds_id].cancel()
        with trio.fail_after(10):
            await self._stopped[mds_id].wait()

    def client(self, mds_id: int) -> rpc.RpcClient:
        if mds_id not in self._clients:
            self._clients[mds_id] = rpc.RpcClient(self.nursery, self.config.mds[mds_id],
                                                  self.config.cluster_id, self.config.key,
                                                  "test")
        return self._clients[mds_id]

    def entry_shard(self, parent: int, name: bytes) -> int:
        return shard_of_dentry(parent, name, self.nshards)

    def ino_shard(self, ino: int) -> int:
        return ino % self.nshards

    # -- client-side helpers that route like the real client ----------------------

    async def call_entry(self, op: str, parent: int, name: bytes, **args):
        args.update(parent=parent, name=name)
        if op not in ("lookup",) and "rid" not in args:
            args["rid"] = os.urandom(16)
        return await self.client(self.entry_shard(parent, name)).call(op, args)

    async def call_ino(self, op: str, ino: int, **args):
        args["ino"] = ino
        return await self.client(self.ino_shard(ino)).call(op, args)

    async def create(self, parent: int, name: bytes, mode: int = 0o644) -> dict:
        return await self.call_entry("mknod", parent, name, mode=stat.S_IFREG | mode,
                                     uid=1000, gid=1000, rdev=0, parent_mode=0o40755,
                                     parent_gid=0, layout=None)

    async def mkdir(self, parent: int, name: bytes, mode: int = 0o755) -> dict:
        return await self.call_entry("mkdir", parent, name, mode=mode, uid=1000, gid=1000,
                                     parent_mode=0o40755, parent_gid=0, layout=None)

    async def lookup(self, parent: int, name: bytes) -> dict:
        return await self.call_entry("lookup", parent, name)

    async def unlink(self, parent: int, name: bytes) -> dict:
        return await self.call_entry("unlink", parent, name)

    async def rmdir(self, parent: int, name: bytes) -> dict:
        return await self.call_entry("rmdir", parent, name)

    async def rename(self, parent, name, new_parent, new_name, flags=0, rid=None):
        args = {"parent": parent, "name": name, "new_parent": new_parent,
                "new_name": new_name, "flags": flags, "rid": rid or os.urandom(16)}
        return await self.client(self.entry_shard(new_parent, new_name)).call("rename", args)

    async def getattr(self, ino: int) -> dict:
        return await self.call_ino("getattr", ino)

    async def listdir(self, ino: int, limit: int = 100) -> list:
        """Every entry of a directory over all shards, as the client pages them."""
        names = []
        for shard in range(self.nshards):
            after = 0
            while True:
                reply = await self.client(shard).call(
                    "readdir", {"ino": ino, "shard_after": after, "limit": limit})
                for name, seq, attr in reply["entries"]:
                    assert seq > after
                    after = seq
                    names.append((name, attr))
                if not reply["more"]:
                    break
        return names


def name_on_shard(cluster: MdsCluster, parent: int, shard: int, stem: str = "n") -> bytes:
    """A name whose entry in `parent` lives on `shard`."""
    for i in range(10000):
        name = f"{stem}{i}".encode()
        if cluster.entry_shard(parent, name) == shard:
            return name
    raise AssertionError("no name found")


async def test_harness_starts_and_stops(tmp_path, nursery):
    cluster = MdsCluster(tmp_path, nursery, 2)
    await cluster.start_all()
    root = await cluster.getattr(ROOT)
    assert stat.S_ISDIR(root["mode"]) and root["nlink"] == 2
    await cluster.stop(0)
    await cluster.stop(1)


@pytest.fixture(autouse=True)
def no_log_warnings(caplog, request):
    """An mdsd warning or error in the log fails the test (the mdsd tests import this)
    unless the test is marked ``allow_log_errors``."""
    yield
    if request.node.get_closest_marker("allow_log_errors"):
        return
    noisy = [r for r in caplog.get_records("call")
             if r.levelno >= logging.WARNING and r.name.startswith("mdsd")]
    assert not noisy, "unexpected log records: " + "; ".join(
        f"{r.levelname} {r.name}: {r.getMessage()}" for r in noisy)
