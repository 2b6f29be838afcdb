"""Online backup of a shard: a compacted LMDB copy that forms a consistent cut
with the copies of every other shard.

``loomfs backup`` (`client.backup`) drives three RPCs on every shard:

1. ``backup_pause {token, seconds}``: the shard's writer stops after the writes
   already queued (`Store.pause`); answered once it holds.  Called on every
   shard before step 2, so at one moment no shard commits anything.
2. ``backup_copy {token, path}``: begins a read transaction (the state at the
   pause), releases the writer, then copies that snapshot with
   ``env.copy(path, compact=True)`` in a thread; answers ``{path, bytes}``.
3. ``backup_release {token}``: releases a pause whose copy was never asked
   for (the backup failed elsewhere).  A pause also ends by itself after
   `seconds`.

Why the cut is consistent: a two-phase commit decides on its coordinator only
after every participant recorded its prepare, and a participant applies only
after the decision.  With every writer stopped at once, each transaction is
seen as not prepared, prepared (resolved after a restore by asking the
coordinator, whose copy holds the decision or not: commit or presumed abort),
or decided.  `path` is on the metadata server's host: ``DIR/mds<N>``.
"""

import logging
import os

import lmdb
import trio

from loomproto import errors

from . import args as check

log = logging.getLogger(__name__)

PAUSE_MAX = 60.0


class BackupAgent:
    def __init__(self, store, mds_id: int):
        self.store = store
        self.mds_id = mds_id
        self.pauses = {}  # token -> Pause

    async def pause(self, args: dict) -> dict:
        token = check.blob(args, "token", 64)
        seconds = check.integer(args, "seconds", 1, int(PAUSE_MAX), default=10)
        if token in self.pauses:
            return {}
        self.pauses[token] = await self.store.pause(float(seconds))
        log.info("writes paused for backup %s", token.hex())
        return {}

    def release(self, args: dict) -> dict:
        pause = self.pauses.pop(check.blob(args, "token", 64), None)
        if pause is not None:
            pause.release()
        return {}

    async def copy(self, args: dict) -> dict:
        token = check.blob(args, "token", 64)
        path = args.get("path")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise errors.BadRequest("argument 'path' must be an absolute path")
        pause = self.pauses.pop(token, None)
        if pause is None:
            raise errors.Invalid(f"no paused backup {token.hex()} on shard {self.mds_id}")
        try:
            txn = self.store.env.begin()
        finally:
            pause.release()
        try:
            size = await trio.to_thread.run_sync(_copy, self.store.env, txn, path)
        except (OSError, lmdb.Error) as exc:
            raise errors.IOFailure(f"backup copy to {path} failed: {exc}") from None
        finally:
            txn.abort()
        log.info("backup %s written to %s (%d bytes)", token.hex(), path, size)
        return {"path": path, "bytes": size}


def _copy(env, txn, path: str) -> int:
    os.makedirs(path, exist_ok=False)
    env.copy(path, compact=True, txn=txn)
    return os.path.getsize(os.path.join(path, "data.mdb"))
