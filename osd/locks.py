"""Per-key trio locks that exist only while someone holds or waits for them."""

from contextlib import asynccontextmanager

import trio


class KeyedLocks:
    """One `trio.Lock` per key (a chunk, an inode), created on first use and
    dropped when its last holder or waiter leaves, so the table stays small."""

    def __init__(self):
        self._entries: dict = {}  # key -> [lock, holders and waiters]

    @asynccontextmanager
    async def hold(self, key):
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = [trio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._entries[key]

    def busy(self, key) -> bool:
        """True while a task holds or waits for `key`."""
        return key in self._entries
