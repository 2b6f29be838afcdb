"""Primary-side replication: apply a write here and on every other replica, in order.

Ordering protocol: the primary holds a per-chunk *order lock* from choosing the
write's version until every reached replica has acknowledged it.  The next
write to that chunk cannot start before then, so all replicas apply the
writes of one chunk in the same order, with the same versions.  Writes to
different chunks run in parallel.

Inside the lock the local write and the ``replicate`` calls run concurrently.
A replica the map shows as down is skipped (a degraded write, logged as a
warning).  A replica that fails to answer makes the write fail with
`TryAgain` (the client waits for a newer map and sends it again, so the dead
replica is skipped once mdsd 0 marks it down), unless a fresh map already
shows it down.

Versions are strictly sequential per chunk: a replica applies ``replicate``
of version ``v`` only on top of version ``v-1`` and otherwise answers with
the version it has (``{"applied": false, "have": h}``):

- ``h < v-1``: the replica missed writes (it was down): the primary sends it
  the whole chunk (``replicate`` with ``full``), which it installs only if
  newer than its own copy;
- ``h >= v``: this primary is the stale one (it came back and has not caught
  up yet, or a write failed here but landed there): it copies the chunk from
  that replica, then applies the write again with the next version.

So a copy is never given a version it does not have the content of, and a
returning OSD is never trusted just because it is the primary again.  A
local chunk that fails its checksums is repaired from a replica the same way.

A write that a member did not take (down in the map, skipped or failed) is
recorded as missed by that member on the inode's metadata shard before it is
acknowledged (`osd.missed`), so the member, back and not caught up yet,
answers EIO for the chunk rather than its old copy while no member holding
the new one answers.

Limitations:
- ``truncate_file`` does not take the order lock, so a truncate racing a write
  to the same chunk may share its version number with that write.
"""

import logging

import trio

from loomproto import errors, rpc

from .chunkfile import MAX_CHUNK
from .locks import KeyedLocks

log = logging.getLogger(__name__)

REPLICA_TIMEOUT = 10.0
MAX_ROUNDS = 4


class Replicator:
    def __init__(self, nursery, config, osd_id: int, maps, store,
                 replica_timeout: float = REPLICA_TIMEOUT):
        self.nursery = nursery
        self.config = config
        self.osd_id = osd_id
        self.maps = maps
        self.store = store
        self.replica_timeout = replica_timeout
        self.order = KeyedLocks()
        self.degraded_writes = 0
        self.on_degraded = None  # callable, set by the recovery worker
        self.locate = None  # async callable, set by the recovery worker
        self.missed = None  # osd.missed.MissedLog; None in bare unit setups
        self._peers: dict[int, rpc.RpcClient] = {}

    async def write(self, ino: int, chunk_index: int, offset: int, data,
                    replicas: list[int], epoch: int, fresh: bool = False,
                    written: bool = False) -> int:
        """Apply a write as primary; returns the chunk's new version.  `fresh`:
        the client made the inode under the placement of its current map;
        `written`: the client wrote this chunk since its last size commit."""
        await self.catch_up_map(epoch)
        since = self.maps.placement_since
        if 0 < epoch < since:
            # Placed with a map from before the last placement change: this OSD
            # may no longer be the chunk's primary, and the write would make a copy
            # outside its set, at a version the set's own copies may also reach.
            raise errors.StaleMap(f"write of ino {ino} chunk {chunk_index} placed with map "
                                  f"epoch {epoch}; the placement changed at epoch {since}")
        async with self.order.hold((ino, chunk_index)):
            here = self.store.meta(ino, chunk_index)
            if not fresh and (here is None or here.corrupt) and self.locate is not None:
                # Not here, or only a copy that failed its checksums (its version
                # cannot be trusted, so it counts as none).  After a placement
                # change the chunk's copies may sit on any other OSDs: one OSD in
                # or out can move a chunk's whole set, and recovery copies it over
                # only later.  Written on top of nothing, the chunk would start
                # anew at version 1, and the old copies (a higher version) would
                # replace it once recovery got to it, or once their OSD came back
                # (a tester lost fsynced writes so after a plain `osd out`).  A
                # fresh inode's chunks were all placed as now.
                if not await self.locate(ino, chunk_index, replicas, members=True) \
                        and here is None:
                    await self._never_written(ino, chunk_index, written)
            for attempt in range(MAX_ROUNDS):
                targets = self._reachable(replicas[1:], ino, chunk_index)
                if len(targets) < len(replicas) - 1:
                    self._note_degraded()
                meta = self.store.meta(ino, chunk_index)
                # A corrupt copy's version counts for nothing where a replica can
                # answer with its own (it is then copied here first, `_settle`);
                # with none to ask (one replica, or the others down), the write goes
                # on top of it, at its version + 1 as for any copy (with version 1,
                # an older copy coming back elsewhere would win over it).
                trusted = meta is not None and (not meta.corrupt or not targets)
                version = (meta.version if trusted else 0) + 1
                args = {"ino": ino, "chunk": chunk_index, "offset": offset, "version": version}
                failures, answers = await self._apply_everywhere(args, data, targets)
                if await self._settle(ino, chunk_index, version, failures, answers, targets):
                    # Every failure left was judged down: those members and the
                    # skipped ones missed it.  Recorded before the acknowledgement.
                    reached = {osd_id for osd_id, _ in targets} - set(failures)
                    missed = [o for o in replicas[1:] if o not in reached]
                    await self.record_missed(ino, chunk_index, missed, version)
                    if not missed:
                        await self._caught_up(ino, chunk_index, version, answers, failures)
                    return version
        raise errors.TryAgain(f"ino {ino} chunk {chunk_index}: replicas kept moving ahead "
                              f"of primary osd {self.osd_id}")

    async def _never_written(self, ino: int, chunk_index: int, written: bool) -> None:
        """No up OSD has the chunk: return if it may start from nothing here (a
        hole, or past the file's end); `TryAgain` if it was written, so its copies
        are on OSDs that are down (the client tries again until its io_timeout,
        then fails the write with EIO, as a read of it fails).  Known from the
        client (`written`) or the inode's record (loomproto.chunkset), which may
        lack chunks (an old inode, past MAX_RANGES ranges): those start anew, as
        every absent chunk did before."""
        if not written and self.missed is not None:
            written = await self.missed.was_written(ino, chunk_index)
        if written:
            raise errors.TryAgain(f"ino {ino} chunk {chunk_index} was written, and no up "
                                  f"OSD has a copy")

    async def record_missed(self, ino: int, chunk_index: int, osd_ids, version: int) -> None:
        """Record on the inode's shard that `osd_ids` missed this version of the
        chunk (`osd.missed`); raises `TryAgain` when it cannot be recorded."""
        if osd_ids and self.missed is not None:
            await self.missed.record(ino, chunk_index, osd_ids, version)

    async def _caught_up(self, ino, chunk_index, version, answers, failures) -> None:
        """Every member took this write, some through a whole copy (they were
        behind): their missed-write records are obsolete.  Best effort: their
        recovery passes clear what this could not."""
        pushed = [o for o, a in answers.items() if not a.get("applied", True)
                  and o not in failures]
        if not pushed or self.missed is None:
            return
        for osd_id in pushed:
            try:
                await self.missed.clear([(ino, chunk_index, version)], osd_id)
            except (errors.LoomError, trio.TooSlowError) as exc:
                log.warning("missed-write record of ino %d chunk %d on osd %d not "
                            "cleared: %s", ino, chunk_index, osd_id, exc or "timeout")

    def _note_degraded(self) -> None:
        self.degraded_writes += 1
        if self.on_degraded is not None:
            self.on_degraded()

    async def catch_up_map(self, epoch: int) -> None:
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

    async def _apply_everywhere(self, args: dict, data, targets: list[tuple]):
        """Run the local write and every forward at once.

        Returns ``({osd_id: error}, {osd_id: replicate reply})``.
        """
        failures, answers = {}, {}

        async def local():
            try:
                await self.store.write(args["ino"], args["chunk"], args["offset"], data,
                                       version=args["version"])
            except errors.LoomError as exc:
                failures[self.osd_id] = exc

        async def forward(osd_id, addr):
            try:
                with trio.fail_after(self.replica_timeout):
                    answers[osd_id] = await self._unless_marked_down(
                        osd_id, self._peer(osd_id, addr).call, "replicate", args, data)
            except (errors.LoomError, trio.TooSlowError) as exc:
                failures[osd_id] = exc

        if not targets:  # R = 1, or every other member skipped: no task to start
            await local()
            return failures, answers
        async with trio.open_nursery() as nursery:
            for osd_id, addr in targets:
                nursery.start_soon(forward, osd_id, addr)
            await local()  # in this task, beside the forwards
        return failures, answers

    async def _unless_marked_down(self, osd_id: int, fn, *args):
        """``await fn(*args)``, given up with `TransportError` as soon as our map marks
        `osd_id` down: a replica that hangs (stopped, stuck on its disk) then costs
        the chunk's lock no more than the map takes to notice, and `_judge` treats
        it as any replica judged down (the write is recorded as missed by it)."""
        outcome, failure = [], []

        async def call():
            try:
                outcome.append(await fn(*args))
            except errors.LoomError as exc:
                failure.append(exc)
            nursery.cancel_scope.cancel()

        async def watch():
            while self.maps.current.is_up(osd_id):
                await self.maps.wait_changed()
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            nursery.start_soon(watch)
        if failure:
            raise failure[0]
        if not outcome:
            raise errors.TransportError(f"osd {osd_id} was marked down")
        return outcome[0]

    async def _settle(self, ino, chunk_index, version, failures, answers, targets) -> bool:
        """Deal with replicas at other versions; True when the write is done,
        False when it must be applied again (this primary was behind)."""
        addrs = dict(targets)
        local = failures.pop(self.osd_id, None)
        if isinstance(local, errors.Corrupt):
            log.error("primary copy of ino %d chunk %d is corrupt, repairing: %s",
                      ino, chunk_index, local.message)
            self.store.mark_corrupt(ino, chunk_index)
            await self._pull_newest(ino, chunk_index, answers, addrs, any_version=True)
            return False
        if local is not None:
            raise local
        ahead = {o: a["have"] for o, a in answers.items()
                 if not a.get("applied", True) and a["have"] >= version}
        if ahead:
            log.warning("primary osd %d is behind on ino %d chunk %d (v%d, replicas %s): "
                        "copying it first", self.osd_id, ino, chunk_index, version - 1, ahead)
            # Our copy already took this write at `version` on a stale base: replace
            # it whatever its version (we hold the order lock, so nothing else lands).
            await self._pull_newest(ino, chunk_index, answers, addrs, any_version=True)
            return False
        behind = [o for o, a in answers.items() if not a.get("applied", True)]
        for osd_id in behind:
            try:
                await self.push_full(ino, chunk_index, osd_id, addrs[osd_id])
            except (errors.LoomError, trio.TooSlowError) as exc:
                failures[osd_id] = exc
        await self._judge(failures, ino, chunk_index)
        return True

    async def _pull_newest(self, ino, chunk_index, answers, addrs, any_version=False):
        """Copy the chunk from the replica with the highest version."""
        candidates = sorted(addrs, key=lambda o: version_hint(answers.get(o)), reverse=True)
        for osd_id in candidates:
            if await self.pull(ino, chunk_index, osd_id, addrs[osd_id], any_version):
                return
        raise errors.IOFailure(f"ino {ino} chunk {chunk_index}: no replica could give "
                               f"primary osd {self.osd_id} a good copy")

    async def pull(self, ino, chunk_index, osd_id, addr, any_version=False) -> bool:
        """Copy one chunk from `osd_id` if its copy is newer (or if ours is bad)."""
        try:
            with trio.fail_after(self.replica_timeout):
                result, data = await self._peer(osd_id, addr).call_payload(
                    "read", {"ino": ino, "chunk": chunk_index, "offset": 0,
                             "length": MAX_CHUNK, "local": True})
        except (errors.LoomError, trio.TooSlowError) as exc:
            log.warning("copy of ino %d chunk %d from osd %d failed: %s", ino, chunk_index,
                        osd_id, exc or "timeout")
            return False
        version = result.get("version", 0)
        if version == 0:
            return False  # absent there
        installed = await self.store.replace(ino, chunk_index, data, version,
                                             only_if_newer=not any_version)
        if installed:
            log.info("copied ino %d chunk %d v%d from osd %d", ino, chunk_index, version,
                     osd_id)
        return True

    async def push_full(self, ino, chunk_index, osd_id, addr) -> bool:
        """Send our whole copy of a chunk to a replica that is behind."""
        data, version = await self.store.read(ino, chunk_index, 0, MAX_CHUNK)
        if version == 0:
            return False
        args = {"ino": ino, "chunk": chunk_index, "offset": 0, "version": version,
                "full": True}
        with trio.fail_after(self.replica_timeout):
            reply = await self._peer(osd_id, addr).call("replicate", args, data)
        if reply.get("applied", True):
            log.info("sent ino %d chunk %d v%d to osd %d", ino, chunk_index, version, osd_id)
            return True
        return False

    async def _judge(self, failures: dict, ino: int, chunk_index: int) -> None:
        """Raise the error the client should see, if any."""
        if not failures:
            return
        await self._refresh_quietly()
        for osd_id, exc in failures.items():
            if not self.maps.current.is_up(osd_id):
                log.warning("degraded write of ino %d chunk %d: replica osd %d went down: %s",
                            ino, chunk_index, osd_id, exc or "timeout")
                self._note_degraded()
                continue
            if isinstance(exc, errors.NoSpace):
                raise errors.NoSpace(f"replica osd {osd_id}: {exc.message}")
            if isinstance(exc, (errors.TransportError, trio.TooSlowError)):
                # Probably dead but not marked down yet: the client retries
                # once the map has caught up.
                raise errors.TryAgain(f"replica osd {osd_id} of ino {ino} chunk {chunk_index} "
                                      f"did not answer: {exc or 'timeout'}")
            raise errors.IOFailure(f"replica osd {osd_id} failed for ino {ino} chunk "
                                   f"{chunk_index}: {exc or 'timeout'}")

    async def _refresh_quietly(self) -> None:
        """Ask mdsd 0 for the newest map, so a replica it marked down is known."""
        try:
            await self.maps.refresh(self.maps.current.epoch + 1)
        except (errors.LoomError, trio.TooSlowError) as exc:
            log.debug("map refresh after a replica failure failed: %s", exc)

    def peer(self, osd_id: int) -> rpc.RpcClient | None:
        """The connection to an OSD the current map shows up, else None."""
        info = self.maps.current.osds.get(osd_id)
        if info is None or not info.up:
            return None
        return self._peer(osd_id, info.addr)

    def _peer(self, osd_id: int, addr: str) -> rpc.RpcClient:
        client = self._peers.get(osd_id)
        if client is None or client.addr != addr:
            if client is not None:
                self.nursery.start_soon(client.aclose)
            client = rpc.RpcClient(self.nursery, addr, self.config.cluster_id, self.config.key,
                                   f"osd{self.osd_id}")
            self._peers[osd_id] = client
        return client


def version_hint(answer) -> int:
    """The version a replicate reply shows: what it has, or what it applied."""
    if not answer:
        return -1
    return answer.get("have", answer.get("version", -1))
