"""Short leases on a directory's share, so its creator can answer lookups itself.

A client creating files in a directory looks every new name up first, and
the shard answers "no such entry" each time (client.absent).  When a
create's entry goes into a share (the part of a directory on this shard),
the creating client's session gets a lease on that share for LEASE seconds:
until it ends, an entry from anyone else waits (`Conflict`, which mdsd.txn
retries with backoff).  With the lease and the entry's seq in the reply, the
client knows every name of the share and may answer lookups of others
itself, for LEASE seconds counted from before it sent the create.

- A client asks for the lease only while it still knows the share's names;
  an entry from anyone else that had to wait marks the share contended for
  CONTENDED seconds, with no leases granted there meanwhile, so the one that
  waited gets in once the current lease ends: its Conflict carries
  ``retry_after``, the time left, and mdsd.txn retries then, not later.
- Leases live in memory only.  For LEASE seconds after a shard starts
  serving (`quiet`), no entry is added at all (`Conflict` again): a lease a
  previous run of this shard granted is over by then.
- Everything here runs in the store's writer thread (from mdsd.apply), the
  only thread that adds entries, so the check and the entry are atomic.
"""

import time

from loomproto import errors

LEASE = 0.1
CONTENDED = 1.0
SWEEP_AT = 4096  # table size at which ended leases and marks are dropped


class Leases:
    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._quiet_until = 0.0
        self._held: dict[int, tuple[bytes, float]] = {}  # dir -> (session, end)
        self._contended: dict[int, float] = {}  # dir -> end of the mark

    def quiet(self) -> None:
        """A serving shard starts with this: no entries for LEASE seconds."""
        self._quiet_until = self._clock() + LEASE

    def admit(self, dir_ino: int, adder: bytes | None) -> None:
        """Before an entry from session `adder` (None: unknown) goes into this
        shard's share of `dir_ino`: Conflict while someone else's lease holds."""
        now = self._clock()
        if now < self._quiet_until:
            raise _held_back("shard just started: leases of its last run may hold",
                             self._quiet_until - now)
        held = self._held.get(dir_ino)
        if held is None or held[0] == adder:
            return
        if held[1] > now:
            self._contended[dir_ino] = now + CONTENDED
            if len(self._contended) > SWEEP_AT:
                self._sweep(now)
            raise _held_back(f"share of directory {dir_ino} is leased to another client",
                             held[1] - now)
        del self._held[dir_ino]

    def grant(self, dir_ino: int, adder: bytes | None) -> float:
        """After the entry, for an adder that asked for a lease: its length in
        seconds, 0 for none."""
        now = self._clock()
        if adder is None or self._contended.get(dir_ino, 0.0) > now:
            return 0.0
        self._held[dir_ino] = (adder, now + LEASE)
        if len(self._held) > SWEEP_AT:
            self._sweep(now)
        return LEASE

    def _sweep(self, now: float) -> None:
        self._held = {d: h for d, h in self._held.items() if h[1] > now}
        self._contended = {d: end for d, end in self._contended.items() if end > now}


def _held_back(message: str, seconds: float) -> errors.Conflict:
    """A Conflict that mdsd.txn retries once `retry_after` seconds have passed."""
    exc = errors.Conflict(message)
    exc.retry_after = seconds
    return exc
