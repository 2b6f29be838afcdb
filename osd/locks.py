"""Per-key trio locks that exist only while someone holds or waits for them."""

from contextlib import asynccontextmanager

import trio


class KeyedLocks:
    """One `trio.Lock` per key (a chunk, an inode), created on first use and
    dropped when its last holder or waiter leaves, so the table stays small.

    `hold` is a checkpoint only when it has to wait: a free key is taken at
    once, so a caller that must yield (or be cancellable) there does so itself."""

    def __init__(self):
        self._entries: dict = {}  # key -> [lock, holders and waiters]

    @asynccontextmanager
    async def hold(self, key):
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = [trio.Lock(), 0]
        entry[1] += 1
        lock = entry[0]
        try:
            try:
                # Uncontended (the common case): taken without the scheduler turn
                # that trio's acquire() always costs.
                lock.acquire_nowait()
            except trio.WouldBlock:
                await lock.acquire()
            try:
                yield
            finally:
                lock.release()
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._entries[key]

    def busy(self, key) -> bool:
        """True while a task holds or waits for `key`."""
        return key in self._entries
