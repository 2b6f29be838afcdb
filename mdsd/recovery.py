"""Two-phase commit, participant side, and the background tasks that finish
transactions interrupted by a crash or a lost message.

- `Participant.prepare/commit/abort` answer ``txn_prepare``, ``txn_commit`` and
  ``txn_abort`` (see `mdsd.apply` for what they write).
- `Participant.resolve_loop`: a prepared record from an earlier boot, or older
  than `RESOLVE_AFTER`, makes this shard ask its coordinator ``txn_status``
  and commit or abort accordingly ("pending" keeps it waiting).
- `redrive_loop` (coordinator): decisions not yet acknowledged by every
  participant (a crash after deciding, an unreachable participant) are sent
  again until they are.
- `expire_replies_loop`: drops stored replies older than `REPLY_TTL`.
"""

import logging
import time
from functools import partial

import trio

from loomproto import errors

from . import apply, schema
from .txn import crash_point

log = logging.getLogger(__name__)

RESOLVE_AFTER = 3.0
SCAN_INTERVAL = 1.0
REPLY_TTL = 600.0


class Participant:
    def __init__(self, store, peers, engine):
        self.store = store
        self.peers = peers
        self.engine = engine

    async def prepare(self, txid, coord, reads, mutations):
        step = partial(apply.prepare, self.store, txid, coord, self.engine.boot, reads, mutations)
        await self.store.write(step)
        crash_point("participant_after_prepare")

    async def finish(self, txid: bytes, commit: bool):
        crash_point("participant_before_finish")
        step = partial(apply.finish_prepared, self.store, txid, commit)
        found = await self.store.write(step)
        crash_point("participant_after_finish")
        if found:
            log.debug("txn %s %s", txid.hex(), "committed" if commit else "aborted")

    async def resolve_loop(self):
        while True:
            for txid, record in self._stale_prepared():
                await self._resolve(txid, record)
            await trio.sleep(SCAN_INTERVAL)

    def _stale_prepared(self):
        cutoff = time.time_ns() - int(RESOLVE_AFTER * 1e9)

        def scan(txn):
            stale = []
            for txid, raw in txn.cursor(db=self.store.dbs[schema.PREPARED]):
                record = schema.unpack(raw)
                if record["time"] < cutoff or record["boot"] != self.engine.boot:
                    stale.append((txid, record))
            return stale

        return self.store.read(scan)

    async def _resolve(self, txid: bytes, record: dict):
        coord = record["coord"]
        try:
            answer = await self.peers.call(coord, "txn_status", {"txid": txid}, timeout=5.0)
        except errors.LoomError as exc:
            log.warning("txn %s: coordinator %d unreachable: %s", txid.hex(), coord, exc)
            return
        if answer["state"] in ("commit", "abort"):
            log.info("txn %s resolved by coordinator %d: %s", txid.hex(), coord, answer["state"])
            await self.finish(txid, answer["state"] == "commit")


async def redrive_loop(store, engine):
    """Coordinator: send decided commits again until every participant has them."""
    while True:
        cutoff = time.time_ns() - int(RESOLVE_AFTER * 1e9)
        for txid, record in store.read(partial(_decided_before, store.dbs, cutoff)):
            log.info("re-sending commit of txn %s to shards %s", txid.hex(),
                     record["participants"])
            await engine.commit_participants(txid, record["participants"])
        await trio.sleep(SCAN_INTERVAL)


def _decided_before(dbs, cutoff, txn):
    found = []
    for txid, raw in txn.cursor(db=dbs[schema.DECIDED]):
        record = schema.unpack(raw)
        if record["time"] < cutoff:
            found.append((txid, record))
    return found


async def expire_replies_loop(store):
    while True:
        cutoff = time.time_ns() - int(REPLY_TTL * 1e9)
        dropped = await store.write(partial(_expire, store.dbs, cutoff))
        if dropped:
            log.debug("expired %d stored replies", dropped)
        await trio.sleep(60.0)


def _expire(dbs, cutoff, txn):
    return apply.expire_replies(txn, dbs, cutoff)
