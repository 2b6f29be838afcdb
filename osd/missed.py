"""The OSD's side of the missed-writes record kept by the metadata shards
(`mdsd.missed`, docs/design.md "Replication, durability and recovery").

- `MissedLog.record`: an OSD about to acknowledge a write or truncate that a
  down member of the chunk's set did not take records it on the inode's
  shard first.  Recorded rows are remembered per member and per outage (the
  member's ``up_since`` in the map), so a long outage costs one call per
  chunk, not one per write; concurrent calls share the shard's group commit.
- `MissedLog.was_missed`: a suspect OSD that cannot hear from every member
  asks whether its copy of a chunk was written past.
- `MissedLog.mine` and `MissedLog.clear`: the recovery pass lists this OSD's
  records and clears those of chunks every member confirmed current; an OSD
  that pushed the newest copy to a member that was behind clears that
  member's record.

Limitations:
- A primary whose map is older than the one that marked a returning OSD up
  (by at most a heartbeat, unless a client sent a newer epoch) may skip that
  OSD and find the chunk in its cache of recorded rows, which the returning
  OSD may have cleared meanwhile; the write is then not recorded.  Losing it
  takes that primary dying too before the next recovery pass pushes the chunk.
"""

import logging

import trio

from loomproto import errors, rpc

log = logging.getLogger(__name__)

CALL_TIMEOUT = 10.0
LIST_LIMIT = 1000
CACHE_MAX = 100_000  # remembered rows per member; past it the cache starts again


class MissedLog:
    def __init__(self, nursery, config, osd_id: int, maps, mds_clients=None):
        self.osd_id = osd_id
        self.maps = maps
        self._mds = mds_clients or [
            rpc.RpcClient(nursery, addr, config.cluster_id, config.key, f"osd{osd_id}-missed")
            for addr in config.mds]
        self._recorded: dict[int, tuple[int, set]] = {}  # osd_id -> (up_since, {key})

    def _shard(self, ino: int) -> rpc.RpcClient:
        return self._mds[ino % len(self._mds)]

    async def _call(self, ino: int, op: str, args: dict):
        with trio.fail_after(CALL_TIMEOUT):
            return await self._shard(ino).call(op, args)

    # -- the writer's side ----------------------------------------------------

    async def was_written(self, ino: int, chunk_index: int) -> bool:
        """Whether the inode's record (loomproto.chunkset) says the chunk was ever
        written; False for an inode that is gone.  Raises `TryAgain` when the
        shard does not answer."""
        try:
            ranges = await self._call(ino, "chunk_record", {"ino": ino})
        except errors.NotFound:
            return False
        except (errors.LoomError, trio.TooSlowError) as exc:
            raise errors.TryAgain(f"ino {ino} chunk {chunk_index}: cannot ask its shard "
                                  f"whether it was written: {exc or 'timeout'}") from None
        return any(start <= chunk_index < end for start, end in ranges)

    async def record(self, ino: int, chunk_index: int, osd_ids, version: int) -> None:
        """Durably record that `osd_ids` missed this chunk's write at `version`.

        Raises `TryAgain` when the shard cannot record it: the write must not
        be acknowledged (the client sends it again).
        """
        key = (ino, chunk_index)
        fresh = [o for o in osd_ids if key not in self._remembered(o)]
        if not fresh:
            return
        entries = [[ino, chunk_index, osd_id] for osd_id in fresh]
        try:
            await self._call(ino, "missed_record",
                             {"entries": entries, "by": self.osd_id, "version": version})
        except (errors.LoomError, trio.TooSlowError) as exc:
            raise errors.TryAgain(f"ino {ino} chunk {chunk_index}: cannot record that osds "
                                  f"{fresh} missed v{version}: {exc or 'timeout'}") from None
        log.debug("recorded ino %d chunk %d v%d missed by osds %s", ino, chunk_index,
                  version, fresh)
        for osd_id in fresh:
            self._remembered(osd_id).add(key)

    def _remembered(self, osd_id: int) -> set:
        """The keys recorded for `osd_id` during its current outage."""
        info = self.maps.current.osds.get(osd_id)
        outage = info.up_since if info is not None else 0
        held = self._recorded.get(osd_id)
        if held is None or held[0] != outage or len(held[1]) >= CACHE_MAX:
            held = self._recorded[osd_id] = (outage, set())
        return held[1]

    # -- the returning OSD's side ---------------------------------------------

    async def was_missed(self, ino: int, chunk_index: int) -> bool:
        """Whether a write of this chunk was acknowledged past this OSD.

        Raises `IOFailure` when the shard cannot tell.
        """
        try:
            reply = await self._call(ino, "missed_query",
                                     {"osd": self.osd_id, "keys": [[ino, chunk_index]]})
        except (errors.LoomError, trio.TooSlowError) as exc:
            raise errors.IOFailure(f"ino {ino} chunk {chunk_index}: a member is silent and "
                                   f"the missed-write record cannot be read: "
                                   f"{exc or 'timeout'}") from None
        return bool(reply[0])

    async def mine(self) -> set[tuple[int, int]]:
        """Every ``(ino, chunk)`` recorded as missed by this OSD, from every shard."""
        found = set()
        for client in self._mds:
            after = None
            while True:
                with trio.fail_after(CALL_TIMEOUT):
                    reply = await client.call("missed_list", {"osd": self.osd_id,
                                                              "after": after,
                                                              "limit": LIST_LIMIT})
                found.update((ino, chunk) for ino, chunk in reply["keys"])
                if not reply["more"]:
                    break
                after = reply["keys"][-1]
        return found

    async def clear(self, confirmed, osd_id: int | None = None) -> int:
        """Drop the records of `osd_id` (this OSD by default) for `confirmed`
        ``(ino, chunk, version)``: every member confirmed that copy holds
        `version`, the newest.  A row of a later missed write, with a higher
        version, stays."""
        by_shard: dict[int, list] = {}
        for ino, chunk_index, version in confirmed:
            by_shard.setdefault(ino % len(self._mds), []).append([ino, chunk_index, version])
        owner = self.osd_id if osd_id is None else osd_id
        cleared = 0
        for shard, group in by_shard.items():
            for start in range(0, len(group), LIST_LIMIT):
                with trio.fail_after(CALL_TIMEOUT):
                    reply = await self._mds[shard].call(
                        "missed_clear", {"osd": owner, "keys": group[start:start + LIST_LIMIT]})
                cleared += reply["cleared"]
        return cleared
