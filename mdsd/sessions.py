"""Client sessions, the registry of open inodes, and orphan reclaim.

The open registry lives in memory: clients renew their session on every
shard (``session_renew``) with the inodes they hold open there, which rebuilds
the registry after a restart.  A session not renewed within the session
timeout expires and its opens are dropped.

An orphan (nlink 0, recorded in the ``orphan`` family) is reclaimed once
nobody has it open: first its inode record and xattrs are dropped and the OSDs
to clean are written into the orphan record (one transaction), then
``delete_file`` goes to each of them; the record goes when all acknowledged.
A down or unreachable OSD is tried again later.  After a start, reclaim waits
one session timeout so that clients can register their opens again.

Reclaim works in rounds: a round drops every orphan nobody has open (their
commits share group commits), then sends each OSD one ``delete_file`` naming
all of the round's inodes it must clean (up to DELETE_BATCH at a time), and
records what was cleaned in one transaction.  A round starts RECLAIM_LINGER
after the first unlink that woke it, so a burst of unlinks costs each OSD one
request per round instead of one per file.
"""

import logging
import time
from functools import partial

import trio

from loomproto import errors, rpc

from . import apply, schema
from .namespace import may_have_chunks

log = logging.getLogger(__name__)

RECENT_OPEN = 10.0  # an open younger than this survives a renew that omits it
RECLAIM_INTERVAL = 2.0
RECLAIM_PARALLEL = 64  # orphans dropped at once: their commits share one group commit
RECLAIM_LINGER = 0.05  # from the wake-up to the round: later unlinks join its batches
DELETE_BATCH = 256  # inodes per delete_file request


class Sessions:
    def __init__(self, timeout: float):
        self.timeout = timeout
        self.expires: dict = {}  # session -> trio deadline
        self.opens: dict[int, dict] = {}  # ino -> {session: time opened}
        self.wake = trio.Event()
        # Every client had its chance to register its opens again since this
        # shard started (reclaim's grace passed): is_open can be trusted.
        self.settled = False
        # ino -> [drops decided and not yet committed or abandoned, their end]: an
        # open waits for them (`wait_drops`), else it could register and read the
        # inode between a drop's "nobody has it open" and its commit, and be left
        # holding an inode that is gone (a tester's report: reads of ENOENT or zeros).
        self._dropping: dict[int, list] = {}

    def open(self, ino: int, session):
        self.expires[session] = max(self.expires.get(session, 0), self._deadline())
        self.opens.setdefault(ino, {})[session] = trio.current_time()

    def close(self, ino: int, session):
        holders = self.opens.get(ino)
        if holders is not None:
            holders.pop(session, None)
            if not holders:
                del self.opens[ino]
                self.wake.set()

    def renew(self, session, inos: list[int]):
        self.expires[session] = self._deadline()
        keep = set(inos)
        recent = trio.current_time() - RECENT_OPEN
        for ino, holders in list(self.opens.items()):
            opened = holders.get(session)
            if opened is not None and ino not in keep and opened < recent:
                self.close(ino, session)
        for ino in keep:
            self.opens.setdefault(ino, {}).setdefault(session, trio.current_time())

    def is_open(self, ino: int) -> bool:
        return ino in self.opens

    def begin_drop(self, ino: int) -> None:
        """A drop of `ino` was decided on `is_open` being false, in the same step
        (no await between); `end_drop` once it committed or was given up."""
        self._dropping.setdefault(ino, [0, trio.Event()])[0] += 1

    def end_drop(self, ino: int) -> None:
        pending = self._dropping.get(ino)
        if pending is None:
            return
        pending[0] -= 1
        if pending[0] <= 0:
            del self._dropping[ino]
            pending[1].set()

    async def wait_drops(self, ino: int) -> None:
        """Return once no drop of `ino` is in flight; the caller then registers its
        open before any await, so a later drop sees it."""
        while (pending := self._dropping.get(ino)) is not None:
            await pending[1].wait()

    def orphan_added(self, ino: int):
        self.wake.set()

    def _deadline(self) -> float:
        return trio.current_time() + self.timeout

    def expire(self):
        now = trio.current_time()
        for session in [s for s, deadline in self.expires.items() if deadline < now]:
            del self.expires[session]
            log.info("session %r expired", session)
            for ino, holders in list(self.opens.items()):
                if session in holders:
                    self.close(ino, session)

    async def expire_loop(self):
        while True:
            self.expire()
            await trio.sleep(1.0)


class Reclaimer:
    """Deletes orphans nobody has open; `map_source()` gives the current ClusterMap."""

    def __init__(self, store, sessions: Sessions, map_source, nursery, config, name: str):
        self.store = store
        self.sessions = sessions
        self.map_source = map_source
        self.nursery = nursery
        self.config = config
        self.name = name
        self.osd_clients: dict[str, rpc.RpcClient] = {}

    async def run(self, grace: float):
        await trio.sleep(grace)
        self.sessions.settled = True
        log.info("orphan reclaim active")
        while True:
            self.sessions.wake = trio.Event()
            await self.reclaim_once()
            with trio.move_on_after(RECLAIM_INTERVAL):
                await self.sessions.wake.wait()
                await trio.sleep(RECLAIM_LINGER)

    async def reclaim_once(self):
        cluster_map = self.map_source()
        if cluster_map is None:
            return
        limiter = trio.CapacityLimiter(RECLAIM_PARALLEL)
        cleaning: list[tuple[int, dict]] = []
        async with trio.open_nursery() as nursery:
            for ino, record in self.store.read(partial(_orphans, self.store.dbs)):
                if record["dropped"] or not self.sessions.is_open(ino):
                    nursery.start_soon(self._drop_one, ino, record, cluster_map, limiter,
                                       cleaning)
        if cleaning:
            await self._clean_osds(cleaning, cluster_map)

    async def _drop_one(self, ino: int, record: dict, cluster_map, limiter, cleaning: list):
        """Drop one orphan's inode unless that was done; queue its OSDs for cleaning."""
        async with limiter:
            if not record["dropped"]:
                if self.sessions.is_open(ino):  # opened while this waited
                    return
                self.sessions.begin_drop(ino)  # an open now waits for the commit
                try:
                    record = await self._drop(ino, cluster_map)
                finally:
                    self.sessions.end_drop(ino)
                if record is None or record.get("finished"):
                    return
            cleaning.append((ino, record))

    async def _drop(self, ino: int, cluster_map):
        pending = sorted(cluster_map.osds)
        step = partial(_drop_orphan, self.store, ino, pending)
        try:
            record = await self.store.write(step)
        except errors.Conflict as exc:
            log.debug("orphan %d busy: %s", ino, exc.message)
            return None
        if record is not None:
            log.debug("orphan %d dropped; data on osds %s", ino, pending)
        return record

    async def _clean_osds(self, cleaning: list, cluster_map):
        """delete_file on every pending OSD of the `cleaning` orphans, batched per
        OSD; then one transaction records which OSDs are done with which inodes."""
        by_osd: dict[int, list[int]] = {}
        for ino, record in cleaning:
            for osd_id in record["pending"]:
                by_osd.setdefault(osd_id, []).append(ino)
        done: dict[int, list[int]] = {}  # ino -> osd ids cleaned

        async def one(osd_id, inos):
            info = cluster_map.osds.get(osd_id)
            # Gone from the map: nothing left to clean there.
            if info is None or (info.up and await self._delete_on(inos, info)):
                for ino in inos:
                    done.setdefault(ino, []).append(osd_id)

        async with trio.open_nursery() as nursery:
            for osd_id, inos in by_osd.items():
                for start in range(0, len(inos), DELETE_BATCH):
                    nursery.start_soon(one, osd_id, inos[start:start + DELETE_BATCH])
        finished = [(ino, done.get(ino, [])) for ino, record in cleaning
                    if done.get(ino) or not record["pending"]]
        if finished:
            await self.store.write(partial(_osds_done, self.store.dbs, finished))

    async def osd_call(self, info, op: str, args: dict):
        """One call to the OSD `info` (a cluster map entry), on a cached connection."""
        client = self.osd_clients.get(info.addr)
        if client is None:
            client = rpc.RpcClient(self.nursery, info.addr, self.config.cluster_id,
                                   self.config.key, self.name)
            self.osd_clients[info.addr] = client
        return await client.call(op, args)

    async def _delete_on(self, inos: list[int], info) -> bool:
        try:
            with trio.fail_after(10.0):
                await self.osd_call(info, "delete_file", {"inos": inos})
        except (errors.LoomError, trio.TooSlowError) as exc:
            log.warning("delete_file of %d orphans (%d ...) on osd %d failed: %s", len(inos),
                        inos[0], info.osd_id, exc)
            return False
        return True


def _orphans(dbs, txn) -> list:
    return [(schema.from_be64(key), schema.unpack(raw))
            for key, raw in txn.cursor(db=dbs[schema.ORPHAN])]


def _drop_orphan(store, ino: int, pending: list, txn):
    """Drop the inode of an orphan; the record then lists the OSDs to clean."""
    ap = apply.Applier(store, txn)
    raw = ap.get(schema.orphan_key(ino))
    if raw is None:
        return None
    inode_raw = ap.get(schema.inode_key(ino))
    if inode_raw is not None and schema.unpack(inode_raw)["nlink"] > 0:
        ap.delete(schema.orphan_key(ino))  # linked again: not an orphan any more
        return None
    ap.apply([["inode_drop", ino]])
    if inode_raw is not None and not may_have_chunks(schema.unpack(inode_raw)):
        # Never held data (an empty file, a FIFO, ...): no OSD has anything to clean.
        ap.delete(schema.orphan_key(ino))
        return {"dropped": True, "pending": [], "finished": True}
    record = {"since": schema.unpack(raw)["since"], "dropped": True, "pending": pending,
              "dropped_at": time.time_ns()}
    ap.put(schema.orphan_key(ino), schema.pack(record))
    return record



def _osds_done(dbs, finished: list, txn):
    """`finished`: [(ino, osd ids that cleaned it)]; an orphan record with no
    OSD left to clean goes."""
    for ino, done in finished:
        db, key = schema.orphan_key(ino)
        raw = txn.get(key, db=dbs[db])
        if raw is None:
            continue
        record = schema.unpack(raw)
        record["pending"] = [osd for osd in record["pending"] if osd not in done]
        if record["pending"]:
            txn.put(key, schema.pack(record), db=dbs[db])
        else:
            txn.delete(key, db=dbs[db])
