"""Bytes a writer left past a file's size, cut before anyone can see them.

A client's writes are on the OSDs before its flush commits the size that covers
them (`commit_size`).  A writer whose flush failed (ENOSPC), or a truncate that
could not reach every copy of a chunk, may leave bytes past the committed size
for good.  A later extension (a truncate up, a write past the end) would then
show them where the file must read as zeros.

Such an inode carries ``tail`` (in its record, durable), set by the client
(``mark_tail``).  The next open or size change that finds it set, while no
session (the caller's included) held the file before it, first cuts every up
OSD's chunks at the committed size (``truncate_file``), then clears it; opens
and size changes of that inode wait meanwhile.  While a session holds the file
its writes past the size may be on their way, so nothing is cut then: a later
open tries again.

The flag is cleared only once every OSD in the map was up and cut, so a copy
on an OSD that was down cannot come back with the old bytes unrecorded.

Limitations:
- A client killed while writing leaves no flag: the shard cannot tell a dead
  client from one stalled past its session timeout, which resumes, renews and
  commits a size over what a cut would have removed, with fsync succeeding (a
  tester paused a writer with SIGSTOP).  Flagging on session expiry needs
  clients that learn they were evicted and fail their handles first; not built.
- A cut while an OSD is down leaves the flag set, and a session that holds the
  file then (a writer stalled past its session timeout included) is not
  protected against the next cut.  Nor is a writer whose close of an earlier
  handle reached the shard after its re-open (client.meta admits that race),
  and a cut given up after CUT_TIMEOUT may still land on a slow OSD later.
"""

import logging
import stat
from functools import partial

import trio

from loomproto import errors
from loomproto.layout import Layout

from . import schema
from .apply import Applier

log = logging.getLogger(__name__)

CUT_TIMEOUT = 10.0  # per OSD call
MARK_TRIES = 50
MARK_RETRY = 0.1


class Tails:
    """`osd_call(info, op, args)` calls one OSD (mdsd.sessions.Reclaimer.osd_call);
    `map_source()` gives the current cluster map."""

    def __init__(self, store, sessions, map_source, osd_call):
        self.store = store
        self.sessions = sessions
        self.map_source = map_source
        self.osd_call = osd_call
        self._locks: dict[int, trio.Lock] = {}  # inodes being (or waiting to be) cut

    async def mark(self, inos) -> None:
        """Flag these inodes (the regular files among them) durably."""
        inos = list(inos)
        for _ in range(MARK_TRIES):
            locked = await self.store.write(partial(_set_tail, self.store, inos))
            if set(locked) != set(inos):
                log.info("tail flagged on inodes %s", sorted(set(inos) - set(locked))[:32])
            inos = locked
            if not inos:
                return
            await trio.sleep(MARK_RETRY)  # a prepared transaction holds them: it ends soon
        log.warning("tail of inodes %s not flagged: locked by a transaction for %gs",
                    inos, MARK_TRIES * MARK_RETRY)

    async def settle(self, ino: int, held_before: bool) -> None:
        """Before an open or a size change of `ino`: cut what a flagged inode may
        hold past its size.  `held_before`: some session, the caller's included,
        held the file open before this request, so its writes past the size may
        be on their way (a second open of a file is an open like the first)."""
        lock = self._locks.get(ino)
        if lock is None:
            inode = self._inode(ino)
            if inode is None or not inode.get("tail"):
                return  # the common case: one read, no wait
            lock = self._locks[ino] = trio.Lock()
        try:
            async with lock:
                inode = self._inode(ino)
                if inode is None or not inode.get("tail"):
                    return
                if held_before or not self.sessions.settled:
                    # After a start, clients may not have registered their opens
                    # again yet (mdsd.sessions): nobody is known not to hold it.
                    log.debug("ino %d: tail left for later, the file may be held", ino)
                    return
                if await self._cut(ino, inode):
                    await self.store.write(partial(_clear_tail, self.store, ino,
                                                   inode["size"]))
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(ino, None)

    def _inode(self, ino: int) -> dict | None:
        raw = self.store.get(schema.inode_key(ino))
        return None if raw is None else schema.unpack(raw)

    async def _cut(self, ino: int, inode: dict) -> bool:
        if inode.get("layout") is None:
            return True  # no data of its own: nothing to cut
        cluster_map = self.map_source()
        if cluster_map is None:
            return False
        # `again`: chunks an earlier try cut are recorded as missed by the members
        # that are down now, like those this one cuts (osd.service, truncate_file).
        args = {"ino": ino, "size": inode["size"], "again": True,
                "unit": Layout.from_wire(inode["layout"]).unit, "epoch": cluster_map.epoch}
        failed = []

        async def one(info):
            try:
                with trio.fail_after(CUT_TIMEOUT):
                    await self.osd_call(info, "truncate_file", args)
            except (errors.LoomError, trio.TooSlowError) as exc:
                failed.append(f"osd {info.osd_id}: {exc or 'timeout'}")

        # Every up OSD, in or out: one marked out may still hold a copy recovery
        # has not moved yet.  A down one is cut by recovery when it returns if
        # an up member recorded the cut as missed by it (osd.recovery); with no up
        # member (one replica) nothing can, so the flag stays until it is back.
        async with trio.open_nursery() as nursery:
            for info in cluster_map.osds.values():
                if info.up:
                    nursery.start_soon(one, info)
        down = sorted(info.osd_id for info in cluster_map.osds.values()
                      if info.in_ and not info.up)
        if down:
            failed.append(f"osds {down} down")
        if failed:
            log.warning("ino %d: cutting what a writer left past size %d failed (tried "
                        "again at the next open): %s", ino, inode["size"], "; ".join(failed))
            return False
        log.info("ino %d: cut what a writer left past size %d", ino, inode["size"])
        return True


def _set_tail(store, inos: list[int], txn) -> list[int]:
    """Flag the inodes; returns those a prepared cross-shard transaction holds
    locked (flagged on a later try)."""
    ap = Applier(store, txn)
    locked = []
    for ino in inos:
        key = schema.inode_key(ino)
        raw = ap.get(key)
        if raw is None:
            continue
        inode = schema.unpack(raw)
        if not stat.S_ISREG(inode["mode"]) or inode.get("tail"):
            continue
        inode["tail"] = True
        try:
            ap.put(key, schema.pack(inode))
        except errors.Conflict:
            locked.append(ino)
    return locked


def _clear_tail(store, ino: int, size: int, txn):
    """Clear the flag if the size is still the one the OSDs were cut at."""
    ap = Applier(store, txn)
    key = schema.inode_key(ino)
    raw = ap.get(key)
    if raw is None:
        return
    inode = schema.unpack(raw)
    if inode.get("tail") and inode["size"] == size:
        del inode["tail"]
        ap.put(key, schema.pack(inode))
