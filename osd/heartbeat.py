"""Reporting to metadata server 0 and keeping the latest cluster map.

Every `interval` seconds the OSD sends ``osd_heartbeat {id, addr, host,
capacity, used}`` to ``config.mds[0]``; the reply carries the map's epoch, and
a newer epoch makes `MapKeeper` fetch the map with ``get_map``.  While mdsd 0
is unreachable the loop keeps trying; it warns once when contact is lost and
logs at info when it comes back.
"""

import logging

import trio

from loomproto import errors
from loomproto.clustermap import ClusterMap

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0
CALL_TIMEOUT = 5.0


class MapKeeper:
    """The newest cluster map this OSD has seen."""

    def __init__(self, mds_client):
        self.current = ClusterMap()
        # The epoch of the first map seen with the current placement (or a later
        # one, when maps in between were missed): writes placed with an older
        # map may go to a set that is no longer the chunk's (osd.replication).
        self.placement_since = 0
        self._client = mds_client
        self._fetch_lock = trio.Lock()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Return once a newer map has arrived."""
        await self._changed.wait()

    async def refresh(self, min_epoch: int) -> None:
        """Fetch the map from mdsd 0 unless ours is already at `min_epoch`.

        Raises `LoomError` or `trio.TooSlowError` when mdsd 0 cannot answer.
        """
        async with self._fetch_lock:
            if self.current.epoch >= min_epoch:
                return
            with trio.fail_after(CALL_TIMEOUT):
                raw = await self._client.call("get_map", {})
            self.update(_decode_map(raw))

    def update(self, new_map: ClusterMap) -> None:
        if new_map.epoch <= self.current.epoch:
            return
        if new_map.placement() != self.current.placement():
            self.placement_since = new_map.epoch
        self.current = new_map
        self._changed.set()
        self._changed = trio.Event()
        up = sorted(osd_id for osd_id, info in new_map.osds.items() if info.up)
        log.info("cluster map epoch %d: osds %s, up %s", new_map.epoch,
                 sorted(new_map.osds), up)


def _decode_map(raw) -> ClusterMap:
    if isinstance(raw, dict) and "osds" not in raw and isinstance(raw.get("map"), dict):
        raw = raw["map"]
    try:
        return ClusterMap.from_wire(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise errors.BadRequest(f"undecodable cluster map from mds0: {exc!r}") from None


async def run_heartbeats(mds_client, maps: MapKeeper, report, interval=HEARTBEAT_INTERVAL):
    """Send a heartbeat every `interval` seconds forever; `report()` gives its args."""
    reachable = None  # unknown at start, then True/False: log only the changes
    while True:
        try:
            await _beat(mds_client, maps, report())
        except (errors.LoomError, trio.TooSlowError) as exc:
            if reachable is not False:
                log.warning("mds0 at %s unreachable, will keep retrying: %s",
                            mds_client.addr, exc or "timeout")
            else:
                log.debug("heartbeat to %s failed: %s", mds_client.addr, exc)
            reachable = False
        else:
            if reachable is not True:
                log.info("reporting to mds0 at %s", mds_client.addr)
            reachable = True
        await trio.sleep(interval)


async def _beat(mds_client, maps: MapKeeper, args: dict) -> None:
    with trio.fail_after(CALL_TIMEOUT):
        reply = await mds_client.call("osd_heartbeat", args)
    epoch = reply.get("epoch") if isinstance(reply, dict) else None
    if not isinstance(epoch, int):
        raise errors.BadRequest(f"heartbeat reply without an epoch: {reply!r:.80}")
    if epoch > maps.current.epoch:
        await maps.refresh(epoch)
