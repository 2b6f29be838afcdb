"""Names this client knows are absent, so that a create's lookup needs no round trip.

Before every create the kernel looks the new name up, and for a new name
that costs a shard round trip which only says "no such entry".  This client
answers such lookups itself where it knows the whole of a directory's share
(the part of a directory on one shard, mdsd.schema ``dirstat``) and holds a
lease on it, during which nobody else can add an entry there (mdsd.leases):

- A directory this client made was empty on every shard when it was made.
- A share hands each added entry the next number of its ``next_seq``, and a
  create's reply carries ``[seq, lease]``: the number its entry took and the
  lease (seconds) it got.  When that number follows the last one this client
  knew of, nothing was added in between, and the share's names are still
  exactly those known here (this client's creates, less what it removed).
  A create asks for the lease only while that holds (`wants_lease`).
- The lease counts from before the create was sent, so it ends here no
  later than on the shard.  The answer goes to the kernel with an entry
  timeout of 0: a name another client adds once the lease is over is seen at
  the next lookup, as without this.

Creates of ours travel together (client.behind answers some before their
commit), and their replies may come in another order than their commits: a
number past the next one waits (`_Share.ahead`) while creates of ours to the
share are on their way (`sending`), and the share answers nothing meanwhile.
A gap left when none is on its way was someone else's entry.

Any other number, or a change of ours whose outcome is not known (an error, a
rename or link, which carry no number back), and the share is forgotten:
lookups there go to the shard again, as they do outside a lease.  Memory is
bounded: at most MAX_DIRS directories and MAX_SHARES shares, MAX_NAMES names in
one share and MAX_NAMES_TOTAL names in all (the directories used longest ago go
first; past that, the share that grew too big).
"""

import math
from collections import OrderedDict

MAX_DIRS = 4096
MAX_SHARES = 16_384
MAX_NAMES = 65_536
MAX_NAMES_TOTAL = 131_072


class _Share:
    __slots__ = ("next_seq", "names", "until", "ahead", "sending")

    def __init__(self):
        self.next_seq = 1  # the seq the share hands out next (mdsd.schema: from 1)
        self.names: set[bytes] = set()  # every name of the share, maybe more
        self.until = -math.inf  # end of our lease, on the clock of `absent`
        self.ahead: set[int] = set()  # seqs of ours past next_seq, come before it
        self.sending = 0  # creates of ours to the share whose reply is not in


class AbsentNames:
    """Per directory and shard, what this client knows; see the module doc.
    Times are on a monotonic clock in seconds (trio.current_time here)."""

    def __init__(self, shard_of, nshards: int):
        self._shard_of = shard_of  # (parent, name) -> shard
        self._nshards = nshards
        self._dirs: OrderedDict[int, dict[int, _Share]] = OrderedDict()
        self._busy: dict[int, int] = {}  # dir -> changes of ours on their way
        self._names = 0  # in all shares kept

    def made_dir(self, ino: int) -> None:
        """Our mkdir of `ino` succeeded: it was empty on every shard then."""
        self.forget(ino)
        self._dirs[ino] = {shard: _Share() for shard in range(self._nshards)}
        while len(self._dirs) > 1 and (len(self._dirs) > MAX_DIRS
                                       or len(self._dirs) * self._nshards > MAX_SHARES):
            self.forget(next(iter(self._dirs)))

    def _share(self, parent: int, name: bytes) -> _Share | None:
        shares = self._dirs.get(parent)
        return None if shares is None else shares.get(self._shard_of(parent, name))

    def wants_lease(self, parent: int, name: bytes) -> bool:
        """Whether a create of `name` should ask for a lease on its share."""
        return self._share(parent, name) is not None

    def absent(self, parent: int, name: bytes, now: float) -> bool:
        """True if `name` is known absent from `parent` at `now`."""
        if name in (b".", b"..") or self._busy.get(parent):
            return False
        share = self._share(parent, name)
        return (share is not None and now < share.until and not share.ahead
                and name not in share.names)

    def sending(self, parent: int, name: bytes) -> None:
        """A create of ours of `name` goes out; `added` or `forget` follows."""
        share = self._share(parent, name)
        if share is not None:
            share.sending += 1

    def changing(self, parent: int) -> "_Changing":
        """Around a change of ours to `parent`: no answers from it meanwhile, and
        it is forgotten if the change fails (the shard may still have made it)."""
        return _Changing(self, parent)

    def claim(self, parent: int, name: bytes, now: float, margin: float) -> bool:
        """Whether a create of `name` may be answered before its commit
        (client.behind): known absent, with at least `margin` seconds of the
        lease left for its request to reach the shard.  If so, the name counts
        as there from now on; `added` or `forget` follows."""
        if not self.absent(parent, name, now):
            return False
        share = self._share(parent, name)
        if share.until - now < margin or len(share.names) >= MAX_NAMES:
            return False
        share.names.add(name)
        self._names += 1
        return True

    def added(self, parent: int, name: bytes, entry_seq, sent_at: float) -> None:
        """Our create of `name`, sent at `sent_at`, got `entry_seq` ([seq, lease])."""
        shares = self._dirs.get(parent)
        if shares is None:
            return
        shard = self._shard_of(parent, name)
        share = shares.get(shard)
        if share is None:
            return
        share.sending = max(0, share.sending - 1)
        if (not isinstance(entry_seq, list) or len(entry_seq) != 2
                or not isinstance(entry_seq[0], int) or entry_seq[0] < share.next_seq
                or entry_seq[0] in share.ahead or len(share.names) >= MAX_NAMES):
            self._names -= len(share.names)  # someone else added to it, or it is too big
            del shares[shard]
            return
        seq, lease = entry_seq
        if seq == share.next_seq:
            share.next_seq += 1
            while share.next_seq in share.ahead:
                share.ahead.discard(share.next_seq)
                share.next_seq += 1
        else:
            share.ahead.add(seq)
        if share.ahead and share.sending <= 0:  # the gap is someone else's entry
            self._names -= len(share.names)
            del shares[shard]
            return
        if name not in share.names:
            share.names.add(name)
            self._names += 1
        share.until = max(share.until, sent_at + lease)
        self._dirs.move_to_end(parent)
        while self._names > MAX_NAMES_TOTAL and len(self._dirs) > 1:
            self.forget(next(iter(self._dirs)))
        if self._names > MAX_NAMES_TOTAL:  # one directory holds them all
            self._names -= len(share.names)
            del shares[shard]

    def removed(self, parent: int, name: bytes) -> None:
        """Our unlink or rmdir of `name` succeeded (a removal takes no seq)."""
        share = self._share(parent, name)
        if share is not None and name in share.names:
            share.names.discard(name)
            self._names -= 1

    def forget(self, *dirs: int) -> None:
        for ino in dirs:
            shares = self._dirs.pop(ino, None)
            if shares is not None:
                self._names -= sum(len(share.names) for share in shares.values())


class _Changing:
    def __init__(self, known: AbsentNames, parent: int):
        self.known = known
        self.parent = parent

    def __enter__(self):
        busy = self.known._busy
        busy[self.parent] = busy.get(self.parent, 0) + 1
        return self

    def __exit__(self, exc_type, exc, tb):
        busy = self.known._busy
        busy[self.parent] -= 1
        if not busy[self.parent]:
            del busy[self.parent]
        if exc_type is not None:
            self.known.forget(self.parent)
        return False
