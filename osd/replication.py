"""Primary-side replication: apply a write here and on every other replica, in order.

Ordering protocol: the primary holds a per-chunk *order lock* from choosing the
write's version until every reached replica has acknowledged it.  The next
write to that chunk cannot start before then, so all replicas apply the
writes of one chunk in the same order, with the same versions.  Writes to
different chunks run in parallel.

Inside the lock the local write and the ``replicate`` calls run concurrently.
A replica the map shows as down is skipped (a degraded write, logged as a
warning).  A replica that fails to answer fails the write with `IOFailure`,
unless a fresh map from mdsd 0 now shows it down.

Limitations:
- A degraded or failed write leaves replicas at different versions; nothing
  here brings a returning replica up to date (a later recovery issue).
- A write that failed on the primary but landed on a replica leaves that
  replica one version ahead with content the primary never got; the next
  write reuses the version number.  Recovery must compare data, not versions
  alone, until versions are issued from a persistent per-chunk counter.
- ``truncate_file`` does not take the order lock, so a truncate racing a write
  to the same chunk may share its version number with that write.
"""

import logging

import trio

from loomproto import errors, rpc

from .locks import KeyedLocks

log = logging.getLogger(__name__)

REPLICA_TIMEOUT = 10.0


class Replicator:
    def __init__(self, nursery, config, osd_id: int, maps, store,
                 replica_timeout: float = REPLICA_TIMEOUT):
        self.nursery = nursery
        self.config = config
        self.osd_id = osd_id
        self.maps = maps
        self.store = store
        self.replica_timeout = replica_timeout
        self._order = KeyedLocks()
        self._peers: dict[int, rpc.RpcClient] = {}

    async def write(self, ino: int, chunk_index: int, offset: int, data,
                    replicas: list[int], epoch: int) -> int:
        """Apply a write as primary; returns the chunk's new version."""
        await self._catch_up_map(epoch)
        async with self._order.hold((ino, chunk_index)):
            targets = self._reachable(replicas[1:], ino, chunk_index)
            meta = self.store.meta(ino, chunk_index)
            version = (meta.version if meta is not None else 0) + 1
            args = {"ino": ino, "chunk": chunk_index, "offset": offset, "version": version}
            failures = await self._apply_everywhere(args, data, targets)
            await self._judge(failures, ino, chunk_index)
        return version

    async def _catch_up_map(self, epoch: int) -> None:
        """The client saw a newer map than ours: fetch it before choosing targets."""
        if epoch <= self.maps.current.epoch:
            return
        try:
            await self.maps.refresh(epoch)
        except (errors.LoomError, trio.TooSlowError) as exc:
            log.warning("cannot fetch map epoch %d from mds0, using epoch %d: %s",
                        epoch, self.maps.current.epoch, exc)

    def _reachable(self, others: list[int], ino: int, chunk_index: int) -> list[tuple]:
        """``(osd_id, addr)`` of the replicas to forward to, from the current map."""
        current = self.maps.current
        targets = []
        for osd_id in others:
            if osd_id not in current.osds:
                raise errors.IOFailure(f"replica osd {osd_id} of ino {ino} chunk {chunk_index} "
                                       f"is not in cluster map epoch {current.epoch}")
            if current.is_up(osd_id):
                targets.append((osd_id, current.osds[osd_id].addr))
            else:
                log.warning("degraded write of ino %d chunk %d: replica osd %d is down",
                            ino, chunk_index, osd_id)
        return targets

    async def _apply_everywhere(self, args: dict, data, targets: list[tuple]) -> dict:
        """Run the local write and every forward at once; returns ``{osd_id: error}``."""
        failures = {}

        async def local():
            try:
                await self.store.write(args["ino"], args["chunk"], args["offset"], data,
                                       version=args["version"])
            except errors.LoomError as exc:
                failures[self.osd_id] = exc

        async def forward(osd_id, addr):
            try:
                with trio.fail_after(self.replica_timeout):
                    await self._peer(osd_id, addr).call("replicate", args, data)
            except (errors.LoomError, trio.TooSlowError) as exc:
                failures[osd_id] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(local)
            for osd_id, addr in targets:
                nursery.start_soon(forward, osd_id, addr)
        return failures

    async def _judge(self, failures: dict, ino: int, chunk_index: int) -> None:
        """Raise the error the client should see, if any."""
        local = failures.pop(self.osd_id, None)
        if local is not None:
            raise local
        if not failures:
            return
        await self._refresh_quietly()
        for osd_id, exc in failures.items():
            if not self.maps.current.is_up(osd_id):
                log.warning("degraded write of ino %d chunk %d: replica osd %d went down: %s",
                            ino, chunk_index, osd_id, exc or "timeout")
                continue
            if isinstance(exc, errors.NoSpace):
                raise errors.NoSpace(f"replica osd {osd_id}: {exc.message}")
            raise errors.IOFailure(f"replica osd {osd_id} failed for ino {ino} chunk "
                                   f"{chunk_index}: {exc or 'timeout'}")

    async def _refresh_quietly(self) -> None:
        """Ask mdsd 0 for the newest map, so a replica it marked down is known."""
        try:
            await self.maps.refresh(self.maps.current.epoch + 1)
        except (errors.LoomError, trio.TooSlowError) as exc:
            log.debug("map refresh after a replica failure failed: %s", exc)

    def _peer(self, osd_id: int, addr: str) -> rpc.RpcClient:
        client = self._peers.get(osd_id)
        if client is None or client.addr != addr:
            if client is not None:
                self.nursery.start_soon(client.aclose)
            client = rpc.RpcClient(self.nursery, addr, self.config.cluster_id, self.config.key,
                                   f"osd{self.osd_id}")
            self._peers[osd_id] = client
        return client
