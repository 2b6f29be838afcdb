"""The client's view of a cluster: connections to every shard and OSD, the
cluster map kept current by a long poll, and the client session.

Retry policy lives here, in one place: calls to metadata servers are retried
on transport failures until `mds_timeout` passes (mutating calls carry a
request id, so a retry after a lost reply is not applied twice); calls to OSDs
are left to the data path, which knows which replica to try next.

With `bound_calls` (the mount) `mds_timeout` also bounds a server that keeps
its connection open but never answers (stopped, or stuck): the call ends with
ETIMEDOUT instead of holding its FUSE request forever.  The admin tools leave
it off, since a backup or fsck call may rightly take long on a big shard.
"""

import logging
import os

import trio

from loomproto import errors, layout, rpc
from loomproto.clustermap import ClusterMap

log = logging.getLogger(__name__)

MAP_WATCH_SECONDS = 25
MAP_FETCH_SECONDS = 2.0  # a fetch asked for by a stale-map answer
SESSION_RENEW_SECONDS = 10
SLOW_CALL = 5.0  # a metadata call slower than this (retries included) is logged


def delay_of(attempts: int) -> float:
    """Backoff before the next try after `attempts` failed ones: 0.05 s doubling to 1 s."""
    return min(0.05 * 2 ** (attempts - 1), 1.0)


class Cluster:
    """Owns every RPC connection of one client; background tasks run in `nursery`."""

    def __init__(self, nursery, config, name: str = "client", mds_timeout: float = 60.0,
                 bound_calls: bool = False):
        self.nursery = nursery
        self.config = config
        self.nshards = config.nshards
        self.name = name
        self.mds_timeout = mds_timeout
        self.bound_calls = bound_calls
        self.session = os.urandom(16)
        self.map = ClusterMap()
        self.placement_changes = 0  # maps seen whose placement differs from the one before
        self.map_changed = trio.Event()
        self._mds = [self._client(addr) for addr in config.mds]
        self._osds: dict[int, rpc.RpcClient] = {}
        self.open_inos: dict[int, int] = {}  # ino -> number of open handles here

    def _client(self, addr: str) -> rpc.RpcClient:
        return rpc.RpcClient(self.nursery, addr, self.config.cluster_id, self.config.key,
                             self.name)

    async def start(self, connect_timeout: float = 10.0, check_shards: bool = True):
        """Fetch the map and check every shard answers; raise TransportError if not."""
        deadline = trio.current_time() + connect_timeout
        self._set_map(ClusterMap.from_wire(await self._call_until(0, "get_map", {}, deadline)))
        for shard in range(self.nshards if check_shards else 0):
            await self._call_until(shard, "shard_info", {}, deadline)
        self.nursery.start_soon(self._watch_map)
        self.nursery.start_soon(self._renew_session)

    async def aclose(self):
        for client in [*self._mds, *self._osds.values()]:
            await client.aclose()

    # -- metadata ---------------------------------------------------------

    def shard_of_ino(self, ino: int) -> int:
        return layout.shard_of_ino(ino, self.nshards)

    def shard_of_dentry(self, parent_ino: int, name: bytes) -> int:
        return layout.shard_of_dentry(parent_ino, name, self.nshards)

    async def mds(self, shard: int, op: str, args: dict, sent=None):
        """Call one shard, retrying transport failures until `mds_timeout`;
        `sent.set()` once a request is written (see rpc.RpcClient.call)."""
        return await self._call_until(shard, op, args, trio.current_time() + self.mds_timeout,
                                      sent)

    async def mds_once(self, shard: int, op: str, args: dict, timeout: float):
        """Call one shard, retrying only until `timeout` seconds pass."""
        return await self._call_until(shard, op, args, trio.current_time() + timeout)

    async def _call_until(self, shard: int, op: str, args: dict, deadline: float, sent=None):
        started = trio.current_time()
        attempts = 0
        try:
            while True:
                attempts += 1
                try:
                    return await self._attempt(shard, op, args, deadline, sent)
                except errors.TransportError as exc:
                    if trio.current_time() + delay_of(attempts) > deadline:
                        log.error("metadata server %d (%s) unreachable for %s: %s", shard,
                                  self.config.mds[shard], op, exc)
                        raise
                    log.debug("retrying %s on shard %d: %s", op, shard, exc)
                except errors.Conflict:
                    if trio.current_time() + delay_of(attempts) > deadline:
                        raise
                await trio.sleep(delay_of(attempts))
        finally:
            took = trio.current_time() - started
            if took > SLOW_CALL:
                log.warning("slow metadata call: %s on shard %d took %.1fs in %d attempts",
                            op, shard, took, attempts)

    async def _attempt(self, shard: int, op: str, args: dict, deadline: float, sent=None):
        if not self.bound_calls:
            return await self._mds[shard].call(op, args, sent=sent)
        with trio.move_on_at(deadline):
            return await self._mds[shard].call(op, args, sent=sent)
        log.error("metadata server %d (%s) did not answer %s within %.0fs", shard,
                  self.config.mds[shard], op, self.mds_timeout)
        raise errors.TimedOut(f"metadata server {shard} did not answer {op} "
                              f"within {self.mds_timeout:.0f}s")

    # -- OSDs ---------------------------------------------------------------

    def osd(self, osd_id: int) -> rpc.RpcClient:
        info = self.map.osds.get(osd_id)
        if info is None:
            raise errors.StaleMap(f"osd {osd_id} is not in map epoch {self.map.epoch}")
        client = self._osds.get(osd_id)
        if client is None or client.addr != info.addr:
            client = self._client(info.addr)
            self._osds[osd_id] = client
        return client

    def in_osds(self) -> list[int]:
        return self.map.in_osds()

    # -- background -------------------------------------------------------

    def _set_map(self, new_map: ClusterMap):
        if new_map.epoch < self.map.epoch:
            return
        old_epoch = self.map.epoch
        if new_map.placement() != self.map.placement():
            self.placement_changes += 1
        self.map = new_map
        if new_map.epoch != old_epoch:
            log.info("cluster map epoch %d: %d OSDs, %d up", new_map.epoch,
                     len(new_map.osds), sum(o.up for o in new_map.osds.values()))
            self.map_changed.set()
            self.map_changed = trio.Event()

    async def refresh_map(self) -> None:
        """Fetch the map now (an OSD said ours is stale) instead of waiting for the
        watch to bring it; best effort, the watch still does."""
        try:
            with trio.fail_after(MAP_FETCH_SECONDS):
                self._set_map(ClusterMap.from_wire(await self._mds[0].call("get_map", {})))
        except (errors.LoomError, trio.TooSlowError) as exc:
            log.debug("map fetch failed: %s", exc or "timeout")

    async def _watch_map(self):
        while True:
            try:
                raw = await self._mds[0].call(
                    "watch_map", {"epoch": self.map.epoch, "timeout": MAP_WATCH_SECONDS})
                self._set_map(ClusterMap.from_wire(raw))
            except errors.LoomError as exc:
                log.debug("map watch failed: %s", exc)
                await trio.sleep(1.0)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("undecodable cluster map from %s: %r", self.config.mds[0], exc)
                await trio.sleep(1.0)

    async def _renew_session(self):
        interval = SESSION_RENEW_SECONDS
        while True:
            for shard in range(self.nshards):
                inos = [ino for ino in self.open_inos if self.shard_of_ino(ino) == shard]
                try:
                    reply = await self._mds[shard].call(
                        "session_renew", {"session": self.session, "inos": inos})
                    # Renew three times per lease, so a shard started with a short
                    # --session-timeout does not expire a live client.
                    interval = min(SESSION_RENEW_SECONDS, reply["lease"] / 3)
                except errors.LoomError as exc:
                    log.debug("session renew on shard %d failed: %s", shard, exc)
            await trio.sleep(interval)
