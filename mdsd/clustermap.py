"""The cluster map: owned and persisted by mds 0 (`MapKeeper`), followed by the
other shards (`MapFollower`) which need OSD addresses to reclaim orphans.

Every change of membership or state raises the epoch by one and is written to
LMDB (``sys`` key ``map``) before it is answered; capacity figures change in
memory only.  After a restart the OSDs keep their up/down and in/out states,
and one that was up is marked down if it sends no heartbeat within down_after.
"""

import logging
from functools import partial

import trio

from loomproto import errors, rpc
from loomproto.clustermap import ClusterMap, OsdInfo

from . import args as check
from . import schema

log = logging.getLogger(__name__)

WATCH_MAX = 30.0


class MapKeeper:
    def __init__(self, store, down_after: float):
        self.store = store
        self.down_after = down_after
        self.map = ClusterMap()
        self.last_seen: dict[int, float] = {}
        self._changed = trio.Event()

    async def load(self):
        raw = self.store.get((schema.SYS, schema.SYS_MAP))
        if raw is None:
            return
        self.map = ClusterMap.from_wire(schema.unpack(raw))
        # The OSDs that were up stay up, as if each had just heartbeated: one that
        # is gone is marked down after down_after, as it would have been with this
        # server running.  (Marking them all down until they reported made every
        # restart of mds 0 stall the clients' writes and turn them into writes to
        # one copy of two, a tester found.)
        now = trio.current_time()
        for osd in self.map.osds.values():
            if osd.up:
                self.last_seen[osd.osd_id] = now
        log.info("cluster map epoch %d loaded: %d osds, %d up until %.1fs without a "
                 "heartbeat", self.map.epoch, len(self.map.osds),
                 len(self.last_seen), self.down_after)

    async def _bump(self):
        self.map.epoch += 1
        snapshot = schema.pack(self.map.to_wire())  # taken now: writes persist in order
        await self.store.write(partial(_put_map, self.store.dbs, snapshot))
        self._changed.set()
        self._changed = trio.Event()

    async def heartbeat(self, args: dict) -> dict:
        osd_id = check.integer(args, "id", 0, check.U32_MAX)
        addr = args.get("addr")
        host = args.get("host", "")
        if not isinstance(addr, str) or not isinstance(host, str) or len(addr) > 256:
            raise errors.BadRequest("heartbeat needs addr and host strings")
        try:
            peer_host, port = rpc.parse_addr(addr)
            peer_host.encode("idna")  # what the resolver will be asked
        except ValueError as exc:  # UnicodeError too
            raise errors.BadRequest(f"heartbeat: bad address {addr!r:.80}: {exc}") from None
        if not 0 < port < 65536:
            raise errors.BadRequest(f"heartbeat: port {port} of {addr!r:.80} out of range")
        capacity = check.integer(args, "capacity", 0, check.U63_MAX, default=0)
        used = check.integer(args, "used", 0, check.U63_MAX, default=0)
        fs = args.get("fs", "")
        if not isinstance(fs, str) or len(fs) > 256:
            raise errors.BadRequest("heartbeat's fs must be a short string")
        fs_size = check.integer(args, "fs_size", 0, check.U63_MAX, default=0)
        fs_free = check.integer(args, "fs_free", 0, check.U63_MAX, default=0)
        self.last_seen[osd_id] = trio.current_time()
        osd = self.map.osds.get(osd_id)
        changed = osd is None or osd.addr != addr or not osd.up
        if osd is None:
            osd = self.map.osds[osd_id] = OsdInfo(osd_id, addr, host)
            log.info("osd %d joined at %s", osd_id, addr)
        elif changed:
            log.info("osd %d up at %s", osd_id, addr)
        if changed:
            osd.up_since = self.map.epoch + 1  # the epoch _bump is about to make
        osd.addr, osd.host, osd.up = addr, host, True
        osd.capacity, osd.used = capacity, used
        osd.fs, osd.fs_size, osd.fs_free = fs, fs_size, fs_free
        osd.stats = _stats(args.get("stats"))
        if changed:
            await self._bump()
        return {"epoch": self.map.epoch}

    async def set_in(self, args: dict) -> dict:
        osd_id = check.integer(args, "id", 0, check.U32_MAX)
        want = args.get("in")
        if not isinstance(want, bool):
            raise errors.BadRequest("argument 'in' must be a boolean")
        checked = args.get("placement")
        if checked is not None and not _placement_arg_ok(checked):
            raise errors.BadRequest("argument 'placement' must be a list of [osd id, host]")
        osd = self.map.osds.get(osd_id)
        if osd is None:
            raise errors.NotFound(f"no osd {osd_id} in the cluster map")
        if checked is not None and tuple(map(tuple, checked)) != self.map.placement():
            # `loomfs osd in|out` checked that the last placement change was over,
            # and another change came since (a second operator's): that one must
            # settle first.  No await between this check and the change below.
            raise errors.TryAgain(f"the placement changed since it was checked (now osds "
                                  f"{self.map.in_osds()} in)")
        osd.in_ = want
        await self._bump()
        log.info("osd %d marked %s", osd_id, "in" if want else "out")
        return self.map.to_wire()

    async def watch(self, args: dict) -> dict:
        epoch = check.integer(args, "epoch", 0, check.U63_MAX, default=0)
        timeout = args.get("timeout", WATCH_MAX)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
            raise errors.BadRequest("argument 'timeout' must be a number")
        with trio.move_on_after(max(0.0, min(float(timeout), WATCH_MAX))):
            while self.map.epoch <= epoch:
                await self._changed.wait()
        return self.map.to_wire()

    async def down_loop(self):
        while True:
            await trio.sleep(min(1.0, self.down_after / 4))
            now = trio.current_time()
            for osd in list(self.map.osds.values()):
                seen = self.last_seen.get(osd.osd_id, float("-inf"))
                if osd.up and now - seen > self.down_after:
                    osd.up = False
                    log.warning("osd %d marked down: silent for %.1fs", osd.osd_id, now - seen)
                    await self._bump()


def _stats(raw) -> dict:
    """The recovery figures of a heartbeat: a small map of names to integers."""
    if not isinstance(raw, dict) or len(raw) > 32:
        return {}
    return {k: v for k, v in raw.items()
            if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)}


def _put_map(dbs, snapshot: bytes, txn):
    txn.put(schema.SYS_MAP, snapshot, db=dbs[schema.SYS])


class MapFollower:
    """A shard other than 0 keeps a copy of the map by long polling mds 0."""

    def __init__(self, peers):
        self.peers = peers
        self.map: ClusterMap | None = None

    async def run(self):
        while True:
            try:
                self.map = ClusterMap.from_wire(await self._next_map())
            except errors.LoomError as exc:
                log.debug("cluster map from mds 0 not available: %s", exc)
                await trio.sleep(1.0)

    async def _next_map(self) -> dict:
        if self.map is None:
            return await self.peers.call(0, "get_map", {})
        args = {"epoch": self.map.epoch, "timeout": 20.0}
        return await self.peers.call(0, "watch_map", args, timeout=30.0)


def _placement_arg_ok(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], int)
        and not isinstance(pair[0], bool) and isinstance(pair[1], str) for pair in value)
