"""Recovery: every OSD keeps the chunks it holds at R up-to-date copies.

OSD-driven, no central bookkeeping.  Each OSD runs a *pass* when the cluster
map's epoch changes, within `interval` seconds of a degraded write here, and
every `interval` seconds, or PASS_DUTY times as long as the last pass took if
that is longer (`next_periodic`: a big store is walked no more than about a
twentieth of the time).  A pass walks the chunk index:

- per inode it asks the inode's metadata shard for its attributes
  (``getattr``): an inode that no longer exists has its chunks removed here
  (a delete this OSD missed while it was down is never resurrected); the
  layout gives each chunk's replica set (`loomproto.layout`, over the in
  OSDs of the current map, spread over hosts);
- it asks every other up member of each set for its version of the chunk
  (``chunk_versions``, batched per peer);
- of the up copies with the highest version, the first (in replica-set order,
  a non-member last) is *responsible*: it pushes its whole copy
  (``replicate`` with ``full``) to every up member that is behind or lacks
  it, counts the chunk *degraded* when fewer than all members hold the
  newest version or when fewer OSDs are in than the file's replica count
  (the set itself is short), and *misplaced* when it holds a chunk outside
  the set;
- a copy outside the set (after ``osd out``, a new OSD, rebalance) is removed
  once every member holds the newest version.

So an OSD that comes back is caught up by the others chunk by chunk, by
version, and gets nothing it already has; an OSD marked out has its chunks
copied to their new members.  Pushes run at most `PUSH_PARALLEL` at a time
and at most `rate` bytes per second, so client I/O goes on.  The figures
(`report`) travel in every heartbeat and ``loomfs status`` sums them; a pass
that pushed something is followed at once by another, so ``degraded`` drops
to 0 when everything is repaired.

Reads call `freshen` (copy a newer version from another replica before
serving) while this OSD is *suspect*: from its start, and from any map that
shows mds0 marked it up anew (`up_since` changed: it was down in between and
writes went elsewhere), until a pass finds every member of every chunk's set
answering with no newer copy.  When a member does not answer (it is down), a
suspect OSD asks the inode's metadata shard whether a write of the chunk was
acknowledged while this OSD was down (the missed-write record, `osd.missed`,
written by the primary before it acknowledged): if so it answers EIO, as its
copy is old or absent and the new one is out of reach; if not its copy is
current and served.  Each pass lists this OSD's records and clears those of
chunks that every member now confirms current; a read that finds every member
answering clears its chunk's record too.
A copy that took every write in order needs no check, so a healthy OSD serves
reads without asking its peers.  `repair` replaces a copy that fails its
checksums; ``loomfs scrub`` calls `scrub`.

Truncation cuts chunks past the new size to empty copies with a higher
version instead of removing them (`ChunkStore.truncate_file`), so a copy that
missed a truncate while its OSD was down is simply behind, and recovery
replaces it with the empty one like any other stale copy.

Limitations:
- Empty copies left by a shrinking truncate stay until the file is deleted
  (one small file per chunk).
- A chunk whose every holder is down is not counted anywhere.
"""

import logging

import trio

from loomproto import errors, rpc
from loomproto.layout import Layout, osd_order, replicas_for_chunk

log = logging.getLogger(__name__)

RECOVERY_INTERVAL = 10.0
PASS_DUTY = 20  # periodic passes take at most about 1/PASS_DUTY of the time
RECOVERY_RATE = 200 << 20  # bytes per second of pushes
PUSH_PARALLEL = 2
QUERY_BATCH = 1000
CALL_TIMEOUT = 10.0
FRESHEN_TIMEOUT = 2.0


class Recovery:
    def __init__(self, nursery, config, osd_id: int, maps, store, replicator,
                 interval: float = RECOVERY_INTERVAL, rate: int = RECOVERY_RATE,
                 missed=None):
        self.nursery = nursery
        self.config = config
        self.osd_id = osd_id
        self.maps = maps
        self.store = store
        self.replicator = replicator
        self.interval = interval
        self.last_pass_seconds = 0.0  # wall time of the last pass (`next_periodic`)
        self.rate = rate
        self._mds = [rpc.RpcClient(nursery, addr, config.cluster_id, config.key,
                                   f"osd{osd_id}-recovery") for addr in config.mds]
        self._kick = trio.Event()
        self._waiting: trio.CancelScope | None = None  # `run`'s wait for a reason to pass
        self._wait_began = 0.0
        # A degraded write since the last pass began, or the last pass failed or
        # left work: the next one comes within `interval`
        self._count_soon = False
        # The last pass left work that a pass can do before the map changes
        # (see `run_pass`): the next one comes within `interval`
        self._work_left = False
        # This copy may have missed writes since generation `_stale_gen` (it
        # started, or lost touch with mds0 and may have been marked down).  A
        # pass that finds no member ahead of us on any chunk clears it.
        self._stale_gen = 1
        self._clean_gen = 0
        self._up_since = None
        self._push_slots = trio.Semaphore(PUSH_PARALLEL)
        self._next_send = 0.0
        self.missed = missed  # osd.missed.MissedLog; None in bare unit setups
        self._missed_mine: set[tuple[int, int]] = set()  # as the last pass listed them
        self.stats = {"degraded": 0, "recovering": 0, "recovered": 0, "misplaced": 0,
                      "removed": 0, "scan_epoch": 0, "passes": 0, "repaired": 0,
                      "unrepairable": 0}
        replicator.on_degraded = self._degraded_write
        replicator.locate = self.locate

    def kick(self) -> None:
        """Run a pass as soon as the one running (if any) ends."""
        self._kick.set()
        if self._waiting is not None:
            # (Before, a kick while `run` waited took effect only at the next
            # map change or periodic pass, up to `interval` later.)
            self._waiting.cancel()

    def _degraded_write(self) -> None:
        """A write here missed a replica: a pass should count it (`degraded`), but
        within `interval` is soon enough.  Writes go on degraded until the
        replica is back, and a pass can repair nothing meanwhile: a pass per
        write would walk every chunk over and over while clients write."""
        self._count_soon = True
        if self._waiting is not None:
            self._waiting.deadline = min(self._waiting.deadline,
                                         self._wait_began + self.interval)

    def mark_suspect(self) -> None:
        """Writes may have gone past this OSD: reads check the peers until a pass
        has confirmed every chunk here is current."""
        self._stale_gen += 1
        self.kick()

    @property
    def suspect(self) -> bool:
        return self._clean_gen < self._stale_gen

    def report(self) -> dict:
        return dict(self.stats)

    # -- the loop ---------------------------------------------------------------

    def watch_up_since(self, current) -> None:
        """Become suspect when the map shows that mds0 marked us up anew: we were
        down in between, and writes may have gone to the other replicas."""
        info = current.osds.get(self.osd_id)
        if info is None or not info.up:
            return
        if self._up_since is not None and info.up_since != self._up_since:
            log.info("marked up again at epoch %d: checking copies before serving them",
                     info.up_since)
            self.mark_suspect()
        self._up_since = info.up_since

    async def run(self):
        seen_epoch = -1
        while True:
            self._wait_began = trio.current_time()
            with trio.move_on_after(self.next_periodic()) as self._waiting:
                while self.maps.current.epoch == seen_epoch and not self._kick.is_set():
                    await self.maps.wait_changed()
            self._waiting = None
            # Before the kick is reset: if the map marked us up anew, the pass
            # about to start is the one `mark_suspect` asks for, not a second.
            self.watch_up_since(self.maps.current)
            self._kick = trio.Event()
            self._count_soon = False
            seen_epoch = self.maps.current.epoch
            started = trio.current_time()
            try:
                pushed = await self.run_pass()
            except (errors.LoomError, trio.TooSlowError) as exc:
                log.warning("recovery pass at epoch %d stopped: %s", seen_epoch,
                            exc or "timeout")
                self._count_soon = True  # tried again within `interval`, as before
                continue
            self.last_pass_seconds = trio.current_time() - started
            if self._work_left:
                self._count_soon = True  # the next pass within `interval`, as before
            if pushed:
                self.kick()  # count again, so `degraded` reflects what was repaired

    def next_periodic(self) -> float:
        """Seconds until the next pass that nothing asked for: `interval`, or
        PASS_DUTY times what the last pass took if that is longer.  A pass walks
        every chunk held here (about 8 us each, measured as 0.03 s for 4,000
        chunks of one file, and a shard's `peer_attrs` for every inode): at
        100,000 chunks that is about a second, and past a million, passes every
        `interval` would never stop.  Passes that
        something asks for (a map change, `kick`) still start at once, and
        one after a degraded write, a failed pass or a pass that left work it
        could do now (`_work_left`) within `interval`."""
        if self._count_soon:
            return self.interval
        return max(self.interval, PASS_DUTY * self.last_pass_seconds)

    async def run_pass(self) -> int:
        """One walk over every chunk held here; returns how many copies were pushed."""
        current = self.maps.current
        epoch = current.epoch
        stale_gen = self._stale_gen
        if not current.is_up(self.osd_id):
            return 0  # our own map says we are down: others may be ahead of us
        in_osds = current.in_osds()
        hosts = current.hosts()
        plans = []
        wanted = {}  # chunk -> its file's replica count, when fewer OSDs are in than that
        inos = sorted(self.store.index)
        attrs = await self._attrs(inos)
        for ino in inos:
            attr = attrs.get(ino)
            if attr is None:
                log.info("recovery: ino %d no longer exists, removing its chunks", ino)
                await self.store.delete_file(ino)
                self.stats["removed"] += 1
                continue
            if not attr.get("layout"):
                continue
            layout = Layout.from_wire(attr["layout"])
            order = osd_order(ino, in_osds)
            for chunk_index in sorted(self.store.index.get(ino, {})):
                members = replicas_for_chunk(layout, ino, chunk_index, order, hosts)
                plans.append(((ino, chunk_index), members))
                if len(members) < layout.replicas:
                    wanted[(ino, chunk_index)] = layout.replicas
        versions = await self._peer_versions(plans, current)

        if not self._behind(plans, versions):
            self._clean_gen = stale_gen
        # Still suspect, behind a member that is up: its push and the next pass
        # clear that.  (Not suspect, being behind is the responsible member's
        # work, and a write on its way between the copies makes it look so.)
        behind_up = self.suspect and self._behind(plans, versions, up_only=current)
        await self._clear_missed(plans, versions)
        degraded = misplaced = unrepairable = movable = 0
        pushes, removals = [], []
        for key, members in plans:
            meta = self.store.meta(*key)
            if meta is None:
                continue  # deleted meanwhile
            have = {self.osd_id: 0 if meta.corrupt else meta.version}
            for osd_id in members:
                if osd_id != self.osd_id and (osd_id, key) in versions:
                    have[osd_id] = versions[(osd_id, key)]
            best = max(have.values())
            good = sum(1 for o in members if have.get(o) == best)
            if self.osd_id not in members:
                # A copy outside the set goes once every member has the newest version.
                if best > 0 and good == len(members):
                    removals.append((key, meta.version))
                    continue
                misplaced += 1
                if all(current.is_up(o) for o in members):
                    movable += 1  # a member's push lets the next pass drop it here
            ranked = members + ([] if self.osd_id in members else [self.osd_id])
            holders = [o for o in ranked if have.get(o) == best]
            if best == 0 and meta.corrupt:
                # Corrupt here, and no member that answered has a good copy: the
                # data is lost unless a silent member holds it (a tester's report:
                # status said HEALTHY with a chunk corrupt on every copy).
                unrepairable += 1
            if best == 0 or holders[0] != self.osd_id:
                continue  # another copy is responsible (or nobody has data)
            if good < max(len(members), wanted.get(key, 0)):
                # (Fewer OSDs in than the file's replica count: the set is short,
                # and the chunk has fewer copies than asked for however full it is.)
                degraded += 1
            # With every member answering, `best` is the newest copy there is.
            newest = best if all(o in have for o in members) else None
            for osd_id in members:
                if osd_id in have and have[osd_id] < best:
                    pushes.append((key, osd_id, newest))
        self.stats.update(degraded=degraded, recovering=len(pushes), unrepairable=unrepairable)
        removed = await self._remove_moved(removals, epoch)
        pushed = await self._push_all(pushes)
        # Work left that a pass can do before the map changes: pushes that failed,
        # copies here outside their sets whose members are all up, this copy
        # still suspect and behind a member that is up.  (A reviewer found the
        # pace of big stores put these off to 20 times a pass, and `loomfs
        # rebalance` waited for them.)  What waits for a member that is down, or
        # for more OSDs in, waits for the map change that brings them, which
        # starts a pass.
        self._work_left = (pushed < len(pushes) or movable > 0 or behind_up
                           or removed < len(removals))
        # `misplaced` goes out with `scan_epoch`, after the removals: `loomfs osd
        # in|out` takes both at this epoch, with no misplaced copy, as the sign that
        # the last placement change is over (a reviewer saw a second pass report
        # misplaced 0 beside the first one's epoch while its removals still ran).
        misplaced += len(removals) - removed
        self.stats.update(misplaced=misplaced, scan_epoch=epoch)
        self.stats["passes"] += 1
        if pushes or removals or degraded:
            log.info("recovery pass at epoch %d: %d chunks, %d degraded, %d pushed, "
                     "%d misplaced, %d moved away", epoch, len(plans), degraded, pushed,
                     misplaced, removed)
        return pushed

    async def _remove_moved(self, removals, epoch: int) -> int:
        """Remove copies outside their sets that every member holds at the newest
        version; returns how many went.  Each is checked again under the chunk's
        lock: unchanged since the pass looked, and the map still that of the pass
        (a copy outside its set then may be a member's now)."""
        removed = 0
        for key, version in removals:
            if self.maps.current.epoch != epoch:
                break  # the next pass decides with the new map
            async with self.replicator.order.hold(key):
                meta = self.store.meta(*key)
                if meta is None or meta.version != version:
                    continue
                await self.store.remove_chunk(*key)
            removed += 1
            self.stats["removed"] += 1
        return removed

    def _behind(self, plans, versions, up_only=None) -> bool:
        """Whether some member may hold a newer copy than ours of some chunk; with
        `up_only` (a map), some member that is up in it."""
        return any(self._maybe_behind(key, members, versions, up_only)
                   for key, members in plans)

    def _maybe_behind(self, key, members, versions, up_only=None) -> bool:
        """Whether a member says it holds a newer copy than ours, or did not answer."""
        meta = self.store.meta(*key)
        mine = 0 if meta is None or meta.corrupt else meta.version
        return any(versions.get((osd_id, key), mine + 1) > mine
                   for osd_id in members
                   if osd_id != self.osd_id and (up_only is None or up_only.is_up(osd_id)))

    async def _clear_missed(self, plans, versions) -> None:
        """Drop this OSD's missed-write records of chunks it now holds at the newest
        version every member confirmed (`osd.missed`)."""
        if self.missed is None:
            return
        try:
            self._missed_mine = await self.missed.mine()
        except (errors.LoomError, trio.TooSlowError) as exc:
            log.warning("recovery: missed-write records not listed: %s", exc or "timeout")
            return
        confirmed = []
        for key, members in plans:
            meta = self.store.meta(*key)
            if key in self._missed_mine and meta is not None and not meta.corrupt \
                    and not self._maybe_behind(key, members, versions):
                confirmed.append((*key, meta.version))
        if confirmed and not await self._clear_records(confirmed):
            return
        self._missed_mine.difference_update(key[:2] for key in confirmed)
        if confirmed:
            log.info("recovery: %d missed chunks confirmed caught up, %d to go",
                     len(confirmed), len(self._missed_mine))

    async def record_truncate(self, ino: int, cut: dict[int, int]) -> None:
        """A truncate cut these chunks here (``{chunk_index: new version}``): record
        it as missed by the down members of their sets before it is answered."""
        current = self.maps.current
        in_osds = current.in_osds()
        if not cut or all(current.is_up(o) for o in in_osds):
            return
        try:
            attr = (await self._attrs([ino])).get(ino)
        except trio.TooSlowError:
            raise errors.TryAgain(f"truncate of ino {ino}: its shard did not answer") from None
        if attr is None or not attr.get("layout"):
            return  # deleted meanwhile: nothing to protect
        layout = Layout.from_wire(attr["layout"])
        order = osd_order(ino, in_osds)
        for chunk_index, version in sorted(cut.items()):
            members = replicas_for_chunk(layout, ino, chunk_index, order, current.hosts())
            down = [o for o in members if o != self.osd_id and not current.is_up(o)]
            await self.replicator.record_missed(ino, chunk_index, down, version)

    async def _attrs(self, inos: list[int]) -> dict[int, dict]:
        """Attributes of the inodes that still exist, asked of each owning shard
        in batches (one round trip per thousand inodes, not one per inode)."""
        by_shard: dict[int, list[int]] = {}
        for ino in inos:
            by_shard.setdefault(ino % len(self._mds), []).append(ino)
        found: dict[int, dict] = {}
        for shard, group in by_shard.items():
            for start in range(0, len(group), QUERY_BATCH):
                with trio.fail_after(CALL_TIMEOUT):
                    reply = await self._mds[shard].call(
                        "peer_attrs", {"inos": group[start:start + QUERY_BATCH]})
                found.update((ino, attr) for ino, attr in reply)
        return found

    async def _peer_versions(self, plans, current) -> dict:
        """``{(osd_id, key): version}`` from every up member of every plan."""
        wanted: dict[int, list] = {}
        for key, members in plans:
            for osd_id in members:
                if osd_id != self.osd_id and current.is_up(osd_id):
                    wanted.setdefault(osd_id, []).append(key)
        found = {}

        async def ask(osd_id, keys):
            client = self.replicator.peer(osd_id)
            if client is None:
                return
            for start in range(0, len(keys), QUERY_BATCH):
                batch = keys[start:start + QUERY_BATCH]
                try:
                    with trio.fail_after(CALL_TIMEOUT):
                        reply = await client.call("chunk_versions",
                                                  {"keys": [list(k) for k in batch]})
                except (errors.LoomError, trio.TooSlowError) as exc:
                    log.warning("recovery: osd %d did not list versions: %s", osd_id,
                                exc or "timeout")
                    return
                for key, version in zip(batch, reply):
                    found[(osd_id, key)] = version

        async with trio.open_nursery() as nursery:
            for osd_id, keys in wanted.items():
                nursery.start_soon(ask, osd_id, keys)
        return found

    async def _push_all(self, pushes) -> int:
        """Push whole copies; ``pushes`` is ``[(key, osd_id, newest or None)]``.
        A member that got the newest copy has its missed-write record cleared."""
        done = 0
        caught_up: dict[int, list] = {}  # osd_id -> [(ino, chunk, version)]

        async def one(key, osd_id, newest):
            nonlocal done
            async with self._push_slots:
                meta = self.store.meta(*key)
                if meta is not None:
                    await self._throttle(meta.length)
                client = self.replicator.peer(osd_id)
                try:
                    if client is not None and await self.replicator.push_full(
                            key[0], key[1], osd_id, client.addr):
                        done += 1
                        self.stats["recovered"] += 1
                        if newest is not None:
                            caught_up.setdefault(osd_id, []).append((*key, newest))
                except (errors.LoomError, trio.TooSlowError) as exc:
                    log.warning("recovery: push of ino %d chunk %d to osd %d failed: %s",
                                key[0], key[1], osd_id, exc or "timeout")
                finally:
                    self.stats["recovering"] -= 1

        async with trio.open_nursery() as nursery:
            for key, osd_id, newest in pushes:
                nursery.start_soon(one, key, osd_id, newest)
        for osd_id, confirmed in caught_up.items():
            await self._clear_records(confirmed, osd_id)
        return done

    async def _clear_records(self, confirmed, osd_id: int | None = None) -> bool:
        """Clear missed-write records (`osd.missed`); best effort, as a later
        pass confirms the copies again."""
        if self.missed is None:
            return False
        try:
            await self.missed.clear(confirmed, osd_id)
        except (errors.LoomError, trio.TooSlowError) as exc:
            log.warning("missed-write records of osd %s not cleared: %s",
                        self.osd_id if osd_id is None else osd_id, exc or "timeout")
            return False
        return True

    async def _throttle(self, nbytes: int) -> None:
        now = trio.current_time()
        start = max(now, self._next_send)
        self._next_send = start + nbytes / self.rate
        if start > now:
            await trio.sleep(start - now)

    # -- on the read path -------------------------------------------------------

    async def freshen(self, ino: int, chunk_index: int, replicas: list[int]) -> None:
        """Before serving a read: make this copy the newest any member has, or fail.

        Copies the chunk from a member with a newer version.  When some member
        does not answer (down, or too slow), it may hold writes that went past
        this OSD, so the copy is served only if the missed-write record
        (`osd.missed`) holds none for it.  Raises `IOFailure` when a newer copy
        cannot be fetched or the record says this copy was written past, so the
        client reads another replica instead of old data (or zeros) from here.
        """
        self.watch_up_since(self.maps.current)
        meta = self.store.meta(ino, chunk_index)
        if not self.suspect and meta is not None and not meta.corrupt:
            return  # every write since our last check came through us in order
        members = [o for o in replicas if o != self.osd_id]
        others = [o for o in members if self.replicator.peer(o)]
        found = await self._versions_of(ino, chunk_index, others) if others else {}
        try:
            await self._take_newest(ino, chunk_index, found, replicas)
        except errors.NoSpace as exc:
            # Our disk cannot take the newer copy: the read is this OSD's to fail,
            # not the client's to see as ENOSPC; it reads another replica instead.
            raise errors.IOFailure(f"ino {ino} chunk {chunk_index}: a newer copy is on "
                                   f"another replica and cannot be stored here: {exc}") from None
        if all(o in found for o in members):
            await self._confirmed_at_read(ino, chunk_index)
            return
        if self.missed is not None and await self.missed.was_missed(ino, chunk_index):
            silent = [o for o in members if o not in found]
            raise errors.IOFailure(f"ino {ino} chunk {chunk_index} was written while osd "
                                   f"{self.osd_id} was down, and osds {silent} that hold "
                                   f"the newer copy do not answer")

    async def _take_newest(self, ino: int, chunk_index: int, found: dict[int, int],
                           replicas: list[int]) -> None:
        """Copy the newest of the `found` versions here if it beats ours; look for an
        absent chunk outside its set."""
        meta = self.store.meta(ino, chunk_index)
        mine = 0 if meta is None or meta.corrupt else meta.version
        newer = sorted((v, o) for o, v in found.items() if v > mine)
        if not newer:
            if mine == 0:
                await self.locate(ino, chunk_index, replicas)
            return
        version, osd_id = newer[-1]
        async with self.replicator.order.hold((ino, chunk_index)):
            meta = self.store.meta(ino, chunk_index)
            if meta is not None and not meta.corrupt and meta.version >= version:
                return
            client = self.replicator.peer(osd_id)
            if client is None or not await self.replicator.pull(ino, chunk_index, osd_id,
                                                                client.addr):
                raise errors.IOFailure(f"ino {ino} chunk {chunk_index}: osd {osd_id} has "
                                       f"v{version}, this osd v{mine} and cannot copy it")
        log.info("read of ino %d chunk %d: caught up from v%d to v%d (osd %d)", ino,
                 chunk_index, mine, version, osd_id)

    async def _confirmed_at_read(self, ino: int, chunk_index: int) -> None:
        """Every member answered and none is ahead: a missed-write record of the
        chunk the last pass listed is obsolete.  Best effort: the next pass
        clears what this could not."""
        key = (ino, chunk_index)
        meta = self.store.meta(ino, chunk_index)
        if key not in self._missed_mine or meta is None or meta.corrupt:
            return
        if await self._clear_records([(ino, chunk_index, meta.version)]):
            self._missed_mine.discard(key)

    async def _versions_of(self, ino: int, chunk_index: int, osd_ids) -> dict[int, int]:
        """``{osd_id: version}`` of one chunk from those of `osd_ids` that answer in time
        (0: absent or corrupt there)."""
        found = {}

        async def ask(osd_id):
            client = self.replicator.peer(osd_id)
            if client is None:
                return
            try:
                with trio.fail_after(FRESHEN_TIMEOUT):
                    found[osd_id] = (await client.call(
                        "chunk_versions", {"keys": [[ino, chunk_index]]}))[0]
            except (errors.LoomError, trio.TooSlowError) as exc:
                log.debug("version of ino %d chunk %d from osd %d: %s", ino, chunk_index,
                          osd_id, exc)

        async with trio.open_nursery() as nursery:
            for osd_id in osd_ids:
                nursery.start_soon(ask, osd_id)
        return found

    async def locate(self, ino: int, chunk_index: int, replicas: list[int],
                     members: bool = False) -> bool:
        """A chunk absent here: look for it on every other up OSD outside its set
        (a placement change moved the set and recovery has not copied it yet), and
        on the other members too with `members` (a write's primary), and copy the
        newest copy found here.  Returns whether one was found.  Costs a round of
        small calls, so only for absent chunks.  For a write (`members`) an OSD
        that does not answer, or a copy that cannot be taken, is `TryAgain`: the
        newest copy may be the one out of reach, and a write on an older one (or
        on none) would lose to it later."""
        current = self.maps.current
        others = [o for o in sorted(current.osds) if o != self.osd_id and current.is_up(o)
                  and (members or o not in replicas)]
        found = await self._versions_of(ino, chunk_index, others)
        failure = errors.TryAgain if members else errors.IOFailure
        silent = [o for o in others if o not in found]
        if members and silent:
            raise failure(f"ino {ino} chunk {chunk_index}: osds {silent} did not say "
                          "whether they hold it")
        best = max(found.items(), key=lambda item: item[1], default=(None, 0))
        if best[1] <= 0:
            return False
        client = self.replicator.peer(best[0])
        if client is None or not await self.replicator.pull(ino, chunk_index, best[0],
                                                            client.addr):
            raise failure(f"ino {ino} chunk {chunk_index} is on osd {best[0]} "
                          f"and cannot be copied here (its set {replicas})")
        log.info("ino %d chunk %d: copied from osd %d (its set %s)", ino, chunk_index,
                 best[0], replicas)
        return True

    async def repair(self, ino: int, chunk_index: int, replicas: list[int]) -> bool:
        """Replace a copy that failed its checksums with another replica's."""
        async with self.replicator.order.hold((ino, chunk_index)):
            for osd_id in replicas:
                client = self.replicator.peer(osd_id) if osd_id != self.osd_id else None
                if client is None:
                    continue
                if await self.replicator.pull(ino, chunk_index, osd_id, client.addr,
                                              any_version=True):
                    self.stats["repaired"] += 1
                    log.warning("repaired ino %d chunk %d from osd %d", ino, chunk_index,
                                osd_id)
                    return True
        log.error("ino %d chunk %d is corrupt here and no replica of %s could repair it",
                  ino, chunk_index, replicas)
        self.kick()  # a pass counts it (`unrepairable`), so status stops saying HEALTHY
        return False

    async def scrub(self, after, limit: int) -> dict:
        """Verify up to `limit` chunks after `after`; repair the corrupt ones."""
        rows = self.store.list_chunks(None, after, limit)
        checked = corrupt = repaired = 0
        unrepaired, unreadable = [], []
        current = self.maps.current
        for ino, chunk_index, _, _ in rows:
            checked += 1
            verdict = await self.store.verify(ino, chunk_index)
            if verdict is None:
                unreadable.append([ino, chunk_index])
                continue
            if verdict:
                continue
            attr = (await self._attrs([ino])).get(ino)
            if attr is None or not attr.get("layout"):
                continue  # a file gone since: recovery removes its chunks
            corrupt += 1
            layout = Layout.from_wire(attr["layout"])
            members = replicas_for_chunk(layout, ino, chunk_index,
                                         osd_order(ino, current.in_osds()), current.hosts())
            if await self.repair(ino, chunk_index, members):
                repaired += 1
            else:
                unrepaired.append([ino, chunk_index])
        last = rows[-1][:2] if rows else None
        return {"checked": checked, "corrupt": corrupt, "repaired": repaired,
                "unrepaired": unrepaired, "unreadable": unreadable,
                "next": list(last) if last and len(rows) == limit else None,
                "total": self.store.chunk_count}

