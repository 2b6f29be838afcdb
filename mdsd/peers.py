"""RPC clients from this shard to the other metadata shards.

Peer operations (answered by `mdsd.service`): ``peer_read {keys}``,
``peer_dirstat {inos}``, ``peer_attrs {inos}``, ``txn_prepare``,
``txn_commit``, ``txn_abort``, ``txn_status`` and ``shard_info``.
Every call has a timeout; a timeout is reported as `TransportError`.

Calls that make the answering shard call back (``peer_attrs``, map calls) go
on a connection of their own: a burst of them can then never fill the
per-connection request limit that the leaf calls they wait for also need.
"""

import logging
from functools import partial

import trio

from loomproto import errors, rpc

log = logging.getLogger(__name__)

PEER_TIMEOUT = 10.0
LEAF_OPS = frozenset(("peer_read", "peer_dirstat", "txn_prepare", "txn_commit", "txn_abort",
                      "txn_status", "shard_info"))


class Peers:
    def __init__(self, nursery, config, mds_id: int):
        self.mds_id = mds_id
        self.nshards = config.nshards
        self.clients = {}  # shard -> (leaf client, other client)
        for shard, addr in enumerate(config.mds):
            if shard != mds_id:
                self.clients[shard] = tuple(
                    rpc.RpcClient(nursery, addr, config.cluster_id, config.key, f"mds{mds_id}")
                    for _ in range(2))

    async def call(self, shard: int, op: str, args: dict, timeout: float = PEER_TIMEOUT):
        pair = self.clients.get(shard)
        if pair is None:
            raise errors.Invalid(f"no peer shard {shard}")
        client = pair[0] if op in LEAF_OPS else pair[1]
        with trio.move_on_after(timeout) as scope:
            return await client.call(op, args)
        assert scope.cancelled_caught
        raise errors.TransportError(f"{op} to shard {shard} timed out after {timeout}s")

    async def call_all(self, op: str, args: dict, timeout: float = PEER_TIMEOUT) -> dict:
        """The same call to every other shard, concurrently; {shard: result}."""
        results = {}

        async def one(shard):
            results[shard] = await self.call(shard, op, args, timeout)

        await run_all([partial(one, shard) for shard in self.clients])
        return results

    async def aclose(self):
        for pair in self.clients.values():
            for client in pair:
                await client.aclose()


async def run_all(calls):
    """Run async callables concurrently; the first `LoomError` any raised is raised.

    Keeps typed errors typed (a nursery would wrap them in an ExceptionGroup).
    """
    failures = []

    async def guarded(call):
        try:
            await call()
        except errors.LoomError as exc:
            failures.append(exc)

    if len(calls) == 1:
        await calls[0]()
        return
    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(guarded, call)
    if failures:
        raise failures[0]
