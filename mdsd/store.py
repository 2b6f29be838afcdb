"""The shard's LMDB environment and its single writer thread.

Reads run on the trio thread in short read transactions (`Store.read`).
Writes are functions ``fn(txn) -> result`` queued to one dedicated writer
thread (`Store.write`), which does group commit: it drains the queue, runs
each function in a nested child transaction (so one failing operation does not
spoil the others of its batch), commits the batch once (one fsync) and then
answers every waiter.  No write transaction is ever begun on the trio thread,
and no transaction is held across an await.

The environment is opened with ``sync=True``: an answered write is on disk.

`Store.pause` stops the writer between two batches (every write queued before
it is committed) until released or until its time limit: ``loomfs backup``
pauses every shard at once to take snapshots that form one consistent cut.
"""

import logging
import os
import queue
import threading
import time

import lmdb
import trio

from loomproto import errors

from . import schema
from .leases import Leases

log = logging.getLogger(__name__)

MAP_SIZE = 64 << 30  # sparse; only the pages used take disk space
BATCH_MAX = 512
_STOP = "stop"  # queued by close(): the writer ends after the writes before it


class StoreError(Exception):
    """The data directory cannot be used (wrong format, unreadable)."""


class _Slot:
    __slots__ = ("event", "result", "error")

    def __init__(self):
        self.event = trio.Event()
        self.result = None
        self.error = None

    def deliver(self, outcome):
        self.result, self.error = outcome
        self.event.set()


class Pause:
    """A writer stop; `reached` is set once the writer waits, `release` ends it."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.reached = trio.Event()
        self.released = threading.Event()

    def release(self):
        self.released.set()

    def hold(self, token):
        """Writer thread: report the stop, then wait (bounded) for the release."""
        try:
            token.run_sync_soon(self.reached.set)
        except trio.RunFinishedError:
            return
        if not self.released.wait(self.seconds):
            log.warning("writer pause not released after %.0fs: resuming", self.seconds)


class Store:
    """Open with `Store.open` (runs the blocking parts in a thread)."""

    def __init__(self, path: str, token):
        self.path = path
        self._token = token
        self.env = _open_env(path)
        self.dbs = {name: self.env.open_db(name.encode()) for name in schema.DATABASES}
        self._check_format()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pauses: set[Pause] = set()
        self.leases = Leases()  # used in the writer thread only (mdsd.apply)
        self.commit_seconds = 0.0   # wall time in batch commits (fsync included), for bench-meta
        self.commits = 0
        self._thread = threading.Thread(target=self._writer_loop, name="lmdb-writer",
                                        daemon=True)
        self._thread.start()
        self.closed = False

    @classmethod
    async def open(cls, path: str) -> "Store":
        token = trio.lowlevel.current_trio_token()
        return await trio.to_thread.run_sync(cls, path, token)

    def _check_format(self):
        with self.env.begin(write=True) as txn:
            found = txn.get(schema.SYS_FORMAT, db=self.dbs[schema.SYS])
            if found is None:
                txn.put(schema.SYS_FORMAT, str(schema.FORMAT_VERSION).encode(),
                        db=self.dbs[schema.SYS])
                return
        if found != str(schema.FORMAT_VERSION).encode():
            self.env.close()
            raise StoreError(f"{self.path}: metadata format {found.decode(errors='replace')!r}, "
                             f"this mdsd reads format {schema.FORMAT_VERSION}; refusing to start")

    # -- reads ------------------------------------------------------------------

    def read(self, fn):
        """Run ``fn(txn)`` in a read transaction on the calling thread."""
        with self.env.begin() as txn:
            return fn(txn)

    def get(self, key: schema.Key) -> bytes | None:
        db, raw = key
        with self.env.begin() as txn:
            return txn.get(raw, db=self.dbs[db])

    def entries(self, db: str) -> int:
        with self.env.begin() as txn:
            return txn.stat(self.dbs[db])["entries"]

    # -- writes -----------------------------------------------------------------

    async def write(self, fn):
        """Run ``fn(txn)`` in the writer thread; returns its result once durable.

        The wait is shielded: once queued, the write happens anyway, and its
        caller must learn the outcome (a cancelled caller would otherwise
        believe an applied operation failed).
        """
        if self.closed:
            raise errors.IOFailure(f"store {self.path} is closed")
        slot = _Slot()
        self._queue.put((fn, slot))
        with trio.CancelScope(shield=True):
            await slot.event.wait()
        if slot.error is not None:
            raise slot.error
        return slot.result

    async def pause(self, seconds: float) -> Pause:
        """Stop the writer once the writes queued so far are durable; returns the
        `Pause` once it holds (call its `release`; it ends by itself after `seconds`)."""
        if self.closed:
            raise errors.IOFailure(f"store {self.path} is closed")
        pause = Pause(seconds)
        self._pauses.add(pause)
        self._queue.put(pause)
        with trio.CancelScope(shield=True):
            await pause.reached.wait()
        return pause

    def _writer_loop(self):
        while True:
            batch, control = self._next_batch()
            if batch:
                self._run_batch(batch)
            if control is None:
                continue
            if isinstance(control, Pause):
                control.hold(self._token)
                self._pauses.discard(control)
                continue
            return

    def _next_batch(self):
        """Queued writes up to the next control item: a Pause, or _STOP."""
        first = self._queue.get()
        if not isinstance(first, tuple):
            return [], first
        batch = [first]
        while len(batch) < BATCH_MAX:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, tuple):
                return batch, item
            batch.append(item)
        return batch, None

    def _run_batch(self, batch):
        started = time.perf_counter()
        try:
            with self.env.begin(write=True) as txn:
                outcomes = [self._run_one(txn, fn) for fn, _ in batch]
        except lmdb.Error as exc:
            log.error("commit of %d writes failed: %s", len(batch), exc)
            failure = errors.IOFailure(f"metadata commit failed: {exc}")
            outcomes = [(None, failure)] * len(batch)
        self.commit_seconds += time.perf_counter() - started
        self.commits += 1
        for (_, slot), outcome in zip(batch, outcomes):
            try:
                self._token.run_sync_soon(slot.deliver, outcome)
            except trio.RunFinishedError:
                return

    def _run_one(self, txn, fn):
        child = self.env.begin(write=True, parent=txn)
        try:
            result = fn(child)
        except Exception as exc:  # forwarded to the waiting caller, who raises it
            child.abort()
            return (None, exc)
        child.commit()
        return (result, None)

    def close(self):
        """Stop the writer after the queued writes and close the environment."""
        if self.closed:
            return
        self.closed = True
        for pause in list(self._pauses):
            pause.release()
        self._queue.put(_STOP)
        self._thread.join()
        self.env.close()
        log.info("store %s closed", self.path)


def _open_env(path: str):
    os.makedirs(path, exist_ok=True)
    try:
        return lmdb.open(path, map_size=MAP_SIZE, max_dbs=len(schema.DATABASES) + 2,
                         subdir=True, sync=True, metasync=True, max_readers=256)
    except lmdb.Error as exc:
        raise StoreError(f"cannot open metadata store {path}: {exc}") from None
