"""Optimistic transactions over keys on several shards (coordinator side).

An operation is a *body*: ``async def body(tx) -> result`` that reads keys with
`Txn.read` (validated at commit) or `Txn.peek` (not validated), and records
writes as mutations (`Txn.put`, `Txn.delete`, `Txn.mutate`, see `mdsd.apply`).
`TxnEngine.run` executes the body and commits:

- every key on this shard: one local write transaction validates the reads,
  applies the mutations and stores the reply under the request id;
- otherwise two-phase commit: ``txn_prepare`` on every other shard involved
  (validates, locks, records the prepared writes durably), then this shard's
  own part and the durable commit decision in one local transaction, then
  ``txn_commit`` to the participants.  Any failure before the decision sends
  ``txn_abort``.  Presumed abort: a txid this process is not running and has
  no decision for is aborted (`TxnEngine.status`).

A `Conflict` (a read changed, a key is locked by a prepared transaction, a
participant unreachable) runs the body again, with backoff, for a bounded time.
Participants and restart recovery live in `mdsd.recovery`.

Fault injection: `crash_point` exits the process (status 137) when the
environment variable LOOMFS_CRASH_AT names the step (`CRASH_POINTS`, in
protocol order):

- ``coord_after_prepare``: every participant prepared, no decision: abort.
- ``coord_after_decide``: decided and applied locally, no commit sent: the
  participants ask (``txn_status``) and the restarted coordinator re-sends.
- ``coord_after_commit``: every participant committed, decision not yet
  forgotten: the re-sent commits are no-ops.
- ``participant_after_prepare``: prepared durably, reply lost: the
  coordinator aborts (or retries the body); the restarted participant asks.
- ``participant_before_finish``: a commit or abort arrived and was not
  applied: resolved by asking the coordinator after the restart.
- ``participant_after_finish``: applied, reply lost: the coordinator re-sends.
"""

import logging
import os
import random
from collections import defaultdict
from functools import partial

import trio

from loomproto import errors

from . import apply, schema

log = logging.getLogger(__name__)

RETRY_SECONDS = 15.0
PREPARE_TIMEOUT = 5.0
COMMIT_TIMEOUT = 5.0
SETTLE_SECONDS = 1.0  # how long a read waits for a prepared transaction (fetch_settled)


CRASH_POINTS = ("coord_after_prepare", "coord_after_decide", "coord_after_commit",
                "participant_after_prepare", "participant_before_finish",
                "participant_after_finish")


def crash_point(name: str):
    """Fault-injection hook: exits the process at the step named by LOOMFS_CRASH_AT."""
    if os.environ.get("LOOMFS_CRASH_AT") == name:
        log.warning("crash point %s reached: exiting", name)
        os._exit(137)


class Txn:
    """Reads and mutations of one attempt of an operation."""

    def __init__(self, engine: "TxnEngine"):
        self.engine = engine
        self.reads: dict[tuple[int, schema.Key], bytes | None] = {}
        self.mutations: dict[int, list] = defaultdict(list)
        # Who adds entries, and whether it asks for a lease (mdsd.leases).
        self.adder = None
        self.wants_lease = False
        # Called once this attempt committed or was given up (TxnEngine.run).
        self.on_end: list = []

    async def read(self, shard: int, key: schema.Key) -> bytes | None:
        """Read a key; the commit fails with Conflict if it changed meanwhile."""
        if (shard, key) in self.reads:
            return self.reads[(shard, key)]
        (value,) = await self.engine.fetch(shard, [key])
        self.reads[(shard, key)] = value
        return value

    async def peek(self, shard: int, key: schema.Key) -> bytes | None:
        if (shard, key) in self.reads:
            return self.reads[(shard, key)]
        (value,) = await self.engine.fetch(shard, [key])
        return value

    def put(self, shard: int, key: schema.Key, value: bytes):
        self.mutations[shard].append(["put", key[0], key[1], value])

    def delete(self, shard: int, key: schema.Key):
        self.mutations[shard].append(["del", key[0], key[1]])

    def mutate(self, shard: int, mutation: list):
        self.mutations[shard].append(mutation)

    def shards(self) -> set[int]:
        return {shard for shard, _ in self.reads} | set(self.mutations)

    def reads_of(self, shard: int) -> list[list]:
        return [[key[0], key[1], value] for (s, key), value in self.reads.items() if s == shard]


class TxnEngine:
    def __init__(self, store, peers, mds_id: int, boot: int, nursery):
        self.store = store
        self.peers = peers
        self.mds_id = mds_id
        self.boot = boot
        self.nursery = nursery
        self.active: set[bytes] = set()

    # -- reads ----------------------------------------------------------------

    async def fetch(self, shard: int, keys: list[schema.Key]) -> list[bytes | None]:
        if shard == self.mds_id:
            return self.store.read(partial(_get_many, self.store.dbs, keys))
        wire_keys = [[db, raw] for db, raw in keys]
        values = await self.peers.call(shard, "peer_read", {"keys": wire_keys})
        return list(values)

    async def fetch_settled(self, shard: int, keys: list[schema.Key],
                            watched: schema.Key) -> list[bytes | None]:
        """`fetch`, once no prepared transaction holds `watched` here: what a
        two-phase commit in flight is about to change is read as it will be.

        A participant applies its part when the commit reaches it, after the
        coordinator applied its own: a name held here (the source of a
        cross-shard rename, both names of a RENAME_EXCHANGE) would otherwise be
        read as it was while the rest of the change already shows elsewhere.
        The wait is bounded by SETTLE_SECONDS (a coordinator that died decides
        only once it is back), and a `watched` key of another shard is read
        without waiting (lookups reach the name's own shard)."""
        if shard != self.mds_id:
            return await self.fetch(shard, keys)
        lock = schema.lock_key(watched)
        deadline = trio.current_time() + SETTLE_SECONDS
        delay = 0.0005
        while True:
            values = self.store.read(partial(_get_many, self.store.dbs, keys + [lock]))
            if values[-1] is None or trio.current_time() >= deadline:
                return values[:-1]
            await trio.sleep(delay)  # the commit or abort comes from the coordinator
            delay = min(2 * delay, 0.02)

    # -- running operations ---------------------------------------------------

    def stored_reply(self, rid: bytes | None):
        return self.store.read(lambda txn: apply.stored_reply(txn, self.store.dbs, rid))

    async def run(self, body, rid: bytes | None = None):
        """Run `body` until it commits; the reply is stored under `rid` if given."""
        stored = self.stored_reply(rid)
        if stored is not None:
            return _replay(stored)
        started = trio.current_time()
        deadline = started + RETRY_SECONDS
        delay = 0.002
        while True:
            tx = Txn(self)
            pause = None
            try:
                result = await body(tx)
                return await self._commit(tx, result, rid)
            except errors.Conflict as exc:
                # A lease that holds entries back says when it ends (mdsd.leases).
                pause = getattr(exc, "retry_after", None)
                if trio.current_time() + (pause or delay) > deadline:
                    log.warning("transaction gave up after %.1fs: %s",
                                trio.current_time() - started, exc.message)
                    raise errors.TryAgain(f"transaction kept conflicting: {exc.message}") from None
                log.debug("retrying after conflict: %s", exc.message)
            except apply.AlreadyDone as done:
                return _replay(done.stored)
            except errors.LoomError:
                # The body may have failed on the effects of an earlier attempt of
                # this request (a client retry after a lost connection, running
                # beside the first one): NotFound for a rename it made, Exists for
                # its own mkdir.  That attempt's reply, once stored, is the answer.
                stored = self.stored_reply(rid)
                if stored is not None:
                    return _replay(stored)
                raise
            finally:
                for end in tx.on_end:
                    end()
            if pause is not None:
                await trio.sleep(pause + 0.001)  # just past the lease's end
                continue
            await trio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.25)

    async def _commit(self, tx: Txn, result, rid):
        shards = tx.shards()
        if shards <= {self.mds_id}:
            step = partial(apply.commit_local, self.store, tx.reads_of(self.mds_id),
                           tx.mutations.get(self.mds_id, []), rid, result)
            return await self.store.write(step)
        return await self._two_phase(tx, shards, result, rid)

    async def _two_phase(self, tx: Txn, shards: set[int], result, rid):
        txid = os.urandom(16)
        remote = sorted(shards - {self.mds_id})
        self.active.add(txid)
        try:
            await self._prepare_and_decide(txid, tx, remote, result, rid)
        finally:
            self.active.discard(txid)
        crash_point("coord_after_decide")
        await self.commit_participants(txid, remote)
        return result

    async def _prepare_and_decide(self, txid, tx: Txn, remote, result, rid):
        try:
            await self._prepare_all(txid, tx, remote)
            crash_point("coord_after_prepare")
            step = partial(apply.decide, self.store, txid, remote, tx.reads_of(self.mds_id),
                           tx.mutations.get(self.mds_id, []), rid, result)
            await self.store.write(step)
        except BaseException:
            # Not decided: nothing of ours was written; release the participants.
            with trio.CancelScope(shield=True):
                await self._abort_all(txid, remote)
            raise

    async def _prepare_all(self, txid, tx: Txn, remote):
        failures = []

        async def one(shard):
            args = {"txid": txid, "coord": self.mds_id,
                    "reads": tx.reads_of(shard), "mutations": tx.mutations.get(shard, [])}
            try:
                await self.peers.call(shard, "txn_prepare", args, timeout=PREPARE_TIMEOUT)
            except errors.LoomError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for shard in remote:
                nursery.start_soon(one, shard)
        if failures:
            raise _worst(failures)

    async def _abort_all(self, txid, remote):
        async def one(shard):
            try:
                await self.peers.call(shard, "txn_abort", {"txid": txid}, timeout=2.0)
            except errors.LoomError as exc:
                log.debug("abort of txn %s on shard %d not delivered: %s", txid.hex(), shard, exc)

        async with trio.open_nursery() as nursery:
            for shard in remote:
                nursery.start_soon(one, shard)

    async def commit_participants(self, txid: bytes, remote) -> bool:
        """Send txn_commit to every participant; forget the decision once all acked."""
        missing = []

        async def one(shard):
            try:
                await self.peers.call(shard, "txn_commit", {"txid": txid}, timeout=COMMIT_TIMEOUT)
            except errors.LoomError as exc:
                log.warning("commit of txn %s on shard %d pending: %s", txid.hex(), shard, exc)
                missing.append(shard)

        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for shard in remote:
                    nursery.start_soon(one, shard)
            if missing:
                return False
            crash_point("coord_after_commit")
            await self.store.write(partial(apply.forget_decision, self.store, txid))
        return True

    def status(self, txid: bytes) -> str:
        """What a participant should do with a prepared `txid`."""
        if txid in self.active:
            return "pending"
        decided = self.store.get((schema.DECIDED, txid))
        return "commit" if decided is not None else "abort"


def _get_many(dbs, keys, txn):
    return [txn.get(raw, db=dbs[db]) for db, raw in keys]


def _worst(failures: list[errors.LoomError]) -> errors.LoomError:
    """A definite answer (NotEmpty, Exists...) beats a conflict or a transport failure."""
    for exc in failures:
        if not isinstance(exc, (errors.Conflict, errors.TransportError, errors.TryAgain)):
            return exc
    for exc in failures:
        if isinstance(exc, errors.TransportError):
            return errors.Conflict(f"participant unreachable: {exc.message}")
    return failures[0]


def _replay(stored):
    _, ok, result = stored
    if ok:
        return result
    code, message = result
    raise errors.from_wire(code, message)
