"""Stat-ahead: a directory's listing fetched in bulk when its names are looked up
one by one, so the lookups that follow need no round trip each.

A program that stats or opens many files of one directory by name, without
listing it first (a data loader walking a file list, `stat` of every path in an
index, a cold cache after ``drop_caches``), costs one shard round trip per
name: about 0.2-0.3 ms of Python on each end here.  An entry of a listing
costs the shards what a thirteenth to a seventeenth of a lookup costs them,
and the client less (measured with scripts/listcost), and no round trip.  So when
TRIGGER_MISSES lookups of one directory reached a shard within TRIGGER_WINDOW
seconds, its whole listing is fetched in the background (every shard's share,
with attributes, as a readdir gets them), and lookups of names in it are
answered here.  Lustre's statahead does the same
for ``ls -l``; here the kernel's readdirplus already covers listings, and this
covers lookups by name.

What a lookup answered here promises is what the kernel's own caches promise:
- The name -> inode mapping is at most `entry_timeout` old and the attributes
  at most `attr_timeout` old (`client.meta` keeps when the shard gave them),
  counted from when the shard answered, and the kernel gets what is left of
  those timeouts, not fresh ones.  So another mount's change shows after at
  most the mount's timeouts, as through the kernel's cache.
- This mount's own changes show at once: every namespace change of ours in a
  directory (create, rename, link, mkdir, symlink, mknod) drops its listing
  before and after the change, and a listing whose fetch overlapped one is
  thrown away (`generation`); windows (below) lose just the changed names.
  An unlink or rmdir takes just its name out of the listing, and out of one
  being fetched (`removed`): a listing never answers for a name it lacks, and
  `rm` of a big directory keeps using it.
  Attributes come from the client's attribute cache, which our own setattr,
  size commits and links update, and whose entries our xattr changes and the
  kernel's forgets drop.
- Only regular files and symlinks with one link are answered here; everything
  else (directories, whose place the client tracks, hard-linked files) goes to
  the shard as before.  A name missing from the listing goes to the shard too:
  a listing never answers "no such name".
- A name another mount replaced since the listing was read leads the kernel to
  the old inode.  Its open finds that out (ESTALE); any other operation on an
  inode a listing gave first checks the name on its shard (`served`, client.ops
  `_verify_name`) and answers ESTALE when it leads elsewhere, for every
  operation on that inode until a shard gives it again (`wrong`).  The kernel
  then looks the name up again, and no listing answers it (`stale_ino`), nor
  any name for PAUSE_AFTER_STALE seconds: the kernel's old entry may have come
  from a shard while a listing holds the name for another replaced inode.

The cost is bounded: only directories of at most MAX_ENTRIES entries are
fetched (one found bigger while fetched is dropped and backed off), at most
MAX_FETCHING at once, at most MAX_LISTINGS listings holding at most
MAX_LISTED names in all are kept, and a listing that answered at a pace
that would serve fewer than a MIN_PAYOFF share of its entries in its life
(random lookups in a big directory) keeps its directory from being fetched
again for BACKOFF seconds (`_retire`; lookups that stopped early say nothing
against the directory).  A listing that paid off is fetched again at the
first miss within TRIGGER_WINDOW of its expiry (`_paid`): the lookups that
used it are likely still going on, and waiting for TRIGGER_MISSES more each
time sent a few hundred lookups a second to the shards in a loader reading 16
directories at random.  The per-inode records are capped at MAX_SERVED and
MAX_STALE.

Windows: a directory too big for a listing is read ahead in windows of the
entries of one shard, when its names are looked up in the order that shard
keeps them (its `seq`, the order they were made in): `rm -rf`, which unlinks
in inode order past 10,000 entries (gnulib fts), or a loader reading files in
the order they were written.  A shard's lookup reply carries the entry's seq;
IN_ORDER misses in a row on one shard of a big directory, each at most NEAR
seqs after the one before, fetch the WINDOW_MIN entries after the last, and
once three quarters of a window have answered, the window after it is fetched
(a read-ahead of names), as big as half of what the lookups would use up of
it within entry_timeout at the pace they took the one before (at most
WINDOW_MAX).  A window is a listing of part of one shard's share and answers on
the same terms (timeouts counted from its fetch, our changes, stale inodes).
Random lookups seldom start one, and a window started by misses that served
fewer than a MIN_PAYOFF share while PAYOFF_MISSES times more lookups than it
holds went to the shards stops the directory's windows for BACKOFF seconds.  At
most MAX_WINDOWS are kept, and at most MAX_FETCHING fetched at once.
"""

import math
from collections import OrderedDict

TRIGGER_MISSES = 16
TRIGGER_WINDOW = 1.0
MAX_ENTRIES = 32_768
# Listings kept: a data loader reads many directories at once (fsbench's small
# files are spread over 16), and with fewer kept they pushed each other out.
# The names in all are bounded as the 8 listings of MAX_ENTRIES were before.
MAX_LISTINGS = 64
MAX_LISTED = 8 * MAX_ENTRIES
MAX_BIG = 512  # directories known too big, kept until they are pruned
MAX_FETCHING = 4  # listings being fetched at once
MIN_PAYOFF = 1 / 8
BACKOFF = 30.0
MIN_TIMEOUT = 0.05  # a hit with less of its timeout left goes to the shard
MAX_SERVED = 65_536  # inodes whose name a listing gave and nothing verified since
MAX_STALE = 4_096  # inodes found stale lately, kept out of fetches that land
# After an ESTALE, no listing answers for this long: the kernel's retry looks the
# name up at once, and its old entry may have come from a shard while a listing
# holds the name for another inode that was replaced since, too.
PAUSE_AFTER_STALE = 0.5
# Entries of one shard's share of a big directory fetched at once: the first
# window of a run of lookups is WINDOW_MIN, each later one what the lookups
# used up of the one before, per entry_timeout (a window answers that long)
WINDOW_MIN = 128
WINDOW_MAX = 4096  # a shard's readdir gives at most this many at once
# A window started by misses that served under MIN_PAYOFF of its entries while
# this many times its size of lookups reached the shards backs its directory off
PAYOFF_MISSES = 8
NEAR = 64  # two misses on one shard at most this many seqs apart are in its order
IN_ORDER = 3  # misses in a row in a shard's order that start a window
MAX_WINDOWS = 16


class Listing:
    __slots__ = ("names", "by_ino", "more_names", "fetched", "since", "hits", "used",
                 "gone")

    def __init__(self, names: dict[bytes, int], fetched: float, since):
        self.names = names  # name -> ino
        # ino -> name, and for the few with more than one name (hard links) all of
        # them: what `stale_ino` drops, without a scan of every name
        self.by_ino: dict[int, bytes] = {}
        self.more_names: dict[int, list[bytes]] = {}
        for name, ino in names.items():
            first = self.by_ino.setdefault(ino, name)
            if first != name:
                self.more_names.setdefault(ino, [first]).append(name)
        self.fetched = fetched  # when the fetch began (monotonic): the names are this old
        self.since = since  # client.behind's `ends` when the fetch began
        self.hits = 0
        self.used = fetched  # when it last answered (`hit`)
        self.gone = 0  # names found whose attributes the client no longer holds


class Window(Listing):
    """The entries of `shard`'s share of directory `parent` with seqs in
    (`after`, `last`]; `more`: the share has entries after `last`."""
    __slots__ = ("parent", "shard", "after", "last", "more", "size", "ahead", "read_ahead",
                 "misses_before")

    def __init__(self, names: dict[bytes, int], fetched: float, since, parent: int,
                 shard: int, after: int, last: int, more: bool, read_ahead: bool = False):
        super().__init__(names, fetched, since)
        # fetched because the window before it was mostly used, not after misses
        self.read_ahead = read_ahead
        self.parent = parent
        self.shard = shard
        self.after = after
        self.last = last
        self.more = more
        self.size = len(names)
        self.ahead = False  # the window after it was asked for
        self.misses_before = 0  # the directory's shard misses when it was kept


class _Removals:
    """Names our removals took out of one directory while fetches of it were on
    their way: each fetch takes those from its start on (an index that keeps
    counting as the names before every fetch's start are let go)."""
    __slots__ = ("base", "names", "starts", "spoilt")

    def __init__(self):
        self.base = 0  # the index of names[0]
        self.names: list[bytes] = []
        self.starts: list[int] = []  # of the fetches on their way
        self.spoilt = False  # names were lost: no fetch on its way may be kept

    def begin(self) -> int:
        start = self.base + len(self.names)
        self.starts.append(start)
        return start

    def end(self, start: int) -> list[bytes]:
        names = self.names[start - self.base:]
        self.starts.remove(start)
        first = min(self.starts, default=self.base + len(self.names))
        del self.names[:first - self.base]
        self.base = first
        return names


class StatAhead:
    """Per-directory lookup counters and listings; the fetching itself is
    `client.ops`'s (it owns the shard calls).  Times are monotonic seconds."""

    def __init__(self, entry_timeout: float):
        self.entry_timeout = entry_timeout  # 0: off (no kernel entry cache, or statahead=0)
        self.enabled = entry_timeout > MIN_TIMEOUT
        self.listings: OrderedDict[int, Listing] = OrderedDict()
        self.generation: dict[int, int] = {}  # dir -> our namespace changes in it
        self.fetching: set[int] = set()
        # Windows of directories too big for a listing, by directory, at most
        # MAX_WINDOWS in all (`_window_order`: oldest first)
        self.windows: dict[int, list[Window]] = {}
        self._window_order: OrderedDict[Window, None] = OrderedDict()
        self.window_fetching: set[tuple[int, int]] = set()  # (dir, shard)
        self._big: dict[int, float] = {}  # dir -> until when it is read in windows
        # (dir, shard) -> (seq of the last miss, misses in a row in order)
        self._last_miss: dict[tuple[int, int], tuple[int, int]] = {}
        self._window_backoff: dict[int, float] = {}
        self._window_misses: dict[int, int] = {}  # dir -> its lookups that reached a shard
        # dir -> names our removals took out while fetches of it were on their way
        self._removed: dict[int, _Removals] = {}
        self._misses: dict[int, tuple[int, float]] = {}  # dir -> (count, window start)
        self._backoff: dict[int, float] = {}  # dir -> until when not to fetch it
        # dir -> when its last listing expired, having paid off: fetched again
        # at the next miss within TRIGGER_WINDOW of that
        self._paid: dict[int, float] = {}
        # ino -> (dir, name) a listing answered for it; see `served`
        self._served: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        self._stale: OrderedDict[int, float] = OrderedDict()  # ino -> when found stale
        # Inodes a listed name no longer leads to, found by `_verify_name`:
        # every operation on them answers ESTALE until a shard's lookup gives one.
        self.wrong: OrderedDict[int, None] = OrderedDict()
        self.paused_until = -math.inf

    def find(self, parent: int, name: bytes, now: float):
        """``(ino, listing)`` if a fresh listing of `parent` holds `name`, else None."""
        if now < self.paused_until:
            return None
        listing = self.listings.get(parent)
        if listing is not None:
            if now - listing.fetched > self.entry_timeout - MIN_TIMEOUT:
                self._retire(parent, now)
            else:
                ino = listing.names.get(name)
                return None if ino is None else (ino, listing)
        for window in reversed(self.windows.get(parent, ())):  # the newest first
            ino = window.names.get(name)
            if ino is not None:
                if now - window.fetched > self.entry_timeout - MIN_TIMEOUT:
                    return None  # `window_missed` retires it
                return ino, window
        return None

    def entry_left(self, listing: Listing, now: float) -> float:
        return self.entry_timeout - (now - listing.fetched)

    def missed(self, parent: int, dir_entries: int | None, now: float) -> bool:
        """A lookup in `parent` went to a shard; True when its listing should be
        fetched now (the caller then calls `fetch_started`).  A listing in use is
        fetched again only once the client dropped the attributes of many of its
        names (the kernel forgets inodes under memory pressure or drop_caches,
        and the client's cache follows it).  `dir_entries` is the directory's
        size if the client holds its attributes: one known to be bigger than
        MAX_ENTRIES is not fetched, but read in windows from the next miss on.
        An unknown size is no reason to wait: the fetch itself stops past
        MAX_ENTRIES (`too_big`)."""
        if not self.enabled:
            return False
        if dir_entries is not None and dir_entries > MAX_ENTRIES:
            if self._big.get(parent, -math.inf) <= now:
                self.too_big(parent, now)  # windows may start at once
            return False
        if parent in self.fetching or len(self.fetching) >= MAX_FETCHING:
            return False
        listing = self.listings.get(parent)
        if listing is not None and listing.gone < TRIGGER_MISSES:
            return False
        if self._backoff.get(parent, -math.inf) > now:
            return False
        if now - self._paid.pop(parent, -math.inf) <= TRIGGER_WINDOW:
            self._misses.pop(parent, None)
            return True  # its last listing paid off and just expired
        count, start = self._misses.get(parent, (0, now))
        if now - start > TRIGGER_WINDOW:
            count, start = 0, now
        count += 1
        if count < TRIGGER_MISSES:
            self._misses[parent] = (count, start)
            if len(self._misses) > 4 * MAX_ENTRIES:
                self._misses.clear()
            return False
        self._misses.pop(parent, None)
        return True

    def fetch_started(self, parent: int) -> tuple[int, int]:
        """Returns what the fetch must hand to `fetch_ended`: the generation it
        must still see at its end, and where its share of `_removed` begins."""
        self.fetching.add(parent)
        return self._fetch_began(parent)

    def _fetch_began(self, parent: int) -> tuple[int, int]:
        removals = self._removed.setdefault(parent, _Removals())
        return self.generation.get(parent, 0), removals.begin()

    def _fetch_over(self, parent: int, began: tuple[int, int], listing: Listing | None,
                    by_name: bool = False) -> bool:
        """Whether `listing`, fetched since `began`, may be kept; if so, names
        removed (and, `by_name`, changed) or found stale since are taken out of
        it.  Without `by_name`, any change of ours since throws it away."""
        generation, start = began
        removals = self._removed[parent]
        removed = removals.end(start)
        spoilt = removals.spoilt
        if not removals.starts:
            del self._removed[parent]
        if listing is None or spoilt:
            return False
        if not by_name and self.generation.get(parent, 0) != generation:
            return False
        for name in removed:
            listing.names.pop(name, None)
        for ino, when in reversed(self._stale.items()):  # the newest first
            if when < listing.fetched:
                break
            _drop_ino(listing, ino)
        return True

    def fetch_ended(self, parent: int, began: tuple[int, int], listing: Listing | None) -> bool:
        """Keep `listing` (None: the fetch failed) unless a change of ours in the
        directory overlapped the fetch; True when it was kept.  Names of inodes
        found stale since the fetch began are left out of it."""
        self.fetching.discard(parent)
        if not self._fetch_over(parent, began, listing):
            return False
        self.listings[parent] = listing
        self.listings.move_to_end(parent)
        listed = sum(len(kept.names) for kept in self.listings.values())
        while len(self.listings) > 1 and (len(self.listings) > MAX_LISTINGS
                                          or listed > MAX_LISTED):
            oldest = next(iter(self.listings))
            listed -= len(self.listings[oldest].names)
            self._retire(oldest, listing.fetched)  # (about now: its fetch just ended)
        return True

    def too_big(self, parent: int, now: float) -> None:
        """The directory has more than MAX_ENTRIES names (its size says so, or a
        fetch found them): no listing of it for BACKOFF seconds, windows instead."""
        self._backoff[parent] = now + BACKOFF
        self._big[parent] = now + BACKOFF
        if len(self._big) > MAX_BIG:
            self._big = {d: t for d, t in self._big.items() if t > now}
            self._window_misses = {d: n for d, n in self._window_misses.items()
                                   if d in self._big}

    # -- windows of big directories --------------------------------------------

    def windowed(self, parent: int, now: float) -> bool:
        """Whether `parent` is read in windows now (too big for a listing)."""
        return self.enabled and self._big.get(parent, -math.inf) > now

    def window_missed(self, parent: int, shard: int, seq: int | None,
                      now: float) -> tuple[int, int] | None:
        """A shard's lookup found a name of `parent` at `seq` of `shard`'s share:
        ``(after, count)`` when the `count` entries after seq `after` should be
        fetched as a window now (the caller then calls `window_started`)."""
        if seq is None or not self.windowed(parent, now):
            return None
        self._expire_windows(parent, now)  # before this miss counts: it came after them
        self._window_misses[parent] = self._window_misses.get(parent, 0) + 1
        key = (parent, shard)
        last, run = self._last_miss.pop(key, (None, 0))
        run = run + 1 if last is not None and last < seq <= last + NEAR else 1
        self._last_miss[key] = (seq, run)  # the last used, last
        if len(self._last_miss) > 4 * MAX_WINDOWS:
            del self._last_miss[next(iter(self._last_miss))]
        if run < IN_ORDER:
            return None  # not (yet) in the shard's order
        if self._window_backoff.get(parent, -math.inf) > now:
            return None
        if key in self.window_fetching or len(self.window_fetching) >= MAX_FETCHING:
            return None
        count = WINDOW_MIN
        for window in self.windows.get(parent, ()):
            if window.shard != shard or window.last < seq:
                continue
            if window.after < seq:
                return None  # covered: the name left it, or cannot be answered
            # A window further on: fetch only up to it, and not a few names (the
            # lookups' order need not be the seqs' order exactly)
            if window.after - seq <= NEAR:
                return None
            count = min(count, window.after - seq)
        return seq, count

    def next_window(self, window: Window, now: float) -> tuple[int, int] | None:
        """A name of `window` answered: once three quarters of it did,
        ``(after, count)`` of the window after it, sized for the lookups' pace;
        else None."""
        if (window.ahead or not window.more or 4 * window.hits < 3 * window.size
                or (window.parent, window.shard) in self.window_fetching
                or len(self.window_fetching) >= MAX_FETCHING):
            return None
        window.ahead = True
        after = window.last
        for other in self.windows.get(window.parent, ()):  # one fetched since may hold more
            if other.shard == window.shard and other.after <= after < other.last:
                after = other.last
        # Half of what the lookups would use up in a window's life at the pace
        # they took this one: it stays fresh though they slow down a little.
        pace = window.hits / max(now - window.fetched, 1e-3)  # names per second
        count = WINDOW_MIN
        while count < pace * self.entry_timeout / 2 and count < WINDOW_MAX:
            count *= 2
        return after, count

    def window_started(self, parent: int, shard: int) -> tuple[int, int]:
        self.window_fetching.add((parent, shard))
        return self._fetch_began(parent)

    def window_ended(self, parent: int, shard: int, began: tuple[int, int],
                     window: Window | None) -> bool:
        """Keep `window` (None: the fetch failed) on the terms of `fetch_ended`."""
        self.window_fetching.discard((parent, shard))
        if not self._fetch_over(parent, began, window, by_name=True):
            return False
        window.size = len(window.names)  # what it can still answer
        window.misses_before = self._window_misses.get(parent, 0)
        self.windows.setdefault(parent, []).append(window)
        self._window_order[window] = None
        while len(self._window_order) > MAX_WINDOWS:
            self._drop_window(next(iter(self._window_order)))
        return True

    def _expire_windows(self, parent: int, now: float) -> None:
        for window in list(self.windows.get(parent, ())):
            if now - window.fetched > self.entry_timeout - MIN_TIMEOUT:
                self._drop_window(window)
                # Many lookups elsewhere while it went unused: their order is
                # not the shard's.  (A window read ahead may go unused when
                # lookups slow down or stop, any window when the kernel's own
                # entries, still valid, answer its names, and one that fills a
                # gap before another when the lookups passed it meanwhile; the
                # start of a walk misses a few times, too, a tester found.)
                missed = self._window_misses.get(parent, 0) - window.misses_before
                if (not window.read_ahead and window.size >= WINDOW_MIN
                        and window.hits < MIN_PAYOFF * window.size
                        and missed > PAYOFF_MISSES * window.size):
                    self._window_backoff[parent] = now + BACKOFF
                    if len(self._window_backoff) > 4 * MAX_WINDOWS:
                        self._window_backoff = {parent: now + BACKOFF}

    def _drop_window(self, window: Window) -> None:
        self._window_order.pop(window, None)
        windows = self.windows.get(window.parent)
        if windows is not None and window in windows:
            windows.remove(window)
            if not windows:
                del self.windows[window.parent]

    def changed(self, parent: int, names=()) -> None:
        """A namespace change of ours of `names` in `parent` (a create, link,
        rename, ...) is about to happen or happened.  The directory's listing
        is dropped and a fetch of one on its way thrown away; its windows lose
        just those names, as for a removal: a window never answers for a name
        it lacks, and the attributes it answers with are the client's, which
        our changes keep current.  (Dropping windows made a reader that renames
        each file out after its lookup fetch a window per name, a reviewer
        found.)"""
        self.generation[parent] = self.generation.get(parent, 0) + 1
        if len(self.generation) > 4 * MAX_ENTRIES:
            # Dropping counters could let an overlapping fetch look current:
            # drop the chance to land of every fetch on its way instead.
            live = set(self._removed)  # the directories with a fetch on its way
            self.generation = {d: g + 1 for d, g in self.generation.items() if d in live}
        self.listings.pop(parent, None)
        for name in names:
            self._name_left(parent, name)

    def removed(self, parent: int, name: bytes) -> None:
        """An unlink or rmdir of ours of `name` in `parent` is about to happen or
        happened: the name leaves its listing, and one being fetched, which
        keep answering the other names.  (Dropping the whole listing, as other
        changes do, made `rm` of many files one by one fetch the directory again
        after every few names: a tenth of the speed.)  A listing never answers
        for a name it lacks, so a name gone from it is looked up at a shard."""
        listing = self.listings.get(parent)
        if listing is not None:
            listing.names.pop(name, None)
        self._name_left(parent, name)

    def _name_left(self, parent: int, name: bytes) -> None:
        """`name` leaves the windows of `parent` and what fetches on their way bring."""
        for window in self.windows.get(parent, ()):
            window.names.pop(name, None)
        removals = self._removed.get(parent)
        if removals is not None:
            if len(removals.names) < MAX_ENTRIES:
                removals.names.append(name)
            else:  # more than the fetches can hold: let them be thrown away
                removals.spoilt = True

    def served(self, ino: int, parent: int, name: bytes) -> None:
        """A listing answered `name` in `parent` with `ino`: until something
        verifies it (`take_served`), an operation on `ino` first checks that the
        name still leads there (client.ops `_verify_name`)."""
        self._served[ino] = (parent, name)
        self._served.move_to_end(ino)
        if len(self._served) > MAX_SERVED:
            self._served.popitem(last=False)

    def take_served(self, ino: int) -> tuple[int, bytes] | None:
        return self._served.pop(ino, None)

    def found_wrong(self, ino: int, now: float) -> None:
        self.stale_ino(ino, now)
        self.wrong[ino] = None
        self.wrong.move_to_end(ino)
        if len(self.wrong) > MAX_STALE:
            self.wrong.popitem(last=False)

    def confirmed(self, ino: int) -> None:
        """A shard's lookup gave `ino` for some name: it is right there."""
        if self.wrong:
            self.wrong.pop(ino, None)

    def stale_ino(self, ino: int, now: float) -> None:
        """The kernel reached `ino` by a name that no longer leads there (another
        mount removed or replaced it): no listing answers that name again, also
        one being fetched now, so the kernel's next lookup of it reaches a shard.
        The rest of each listing stays."""
        self._served.pop(ino, None)
        self.paused_until = now + PAUSE_AFTER_STALE
        self._stale[ino] = now
        self._stale.move_to_end(ino)
        if len(self._stale) > MAX_STALE:
            self._stale.popitem(last=False)
        for listing in self.listings.values():
            _drop_ino(listing, ino)
        for window in self._window_order:
            _drop_ino(window, ino)

    def forgotten(self, ino: int) -> None:
        """The kernel forgot `ino`: whatever it learns of it later is new."""
        self._served.pop(ino, None)
        if self.wrong:
            self.wrong.pop(ino, None)

    def _retire(self, parent: int, now: float) -> None:
        """`parent`'s listing leaves at `now`, expired or pushed out by newer
        ones.  It paid off if it answered MIN_PAYOFF of its names (at least
        TRIGGER_MISSES).  If not, it is judged at the pace it answered, over the
        share of its life until its last answer: one that served too few names
        while lookups went on (random lookups in a big directory) backs its
        directory off; one whose lookups stopped early (the program ended, or
        moved on) tells nothing, and the next program's lookups start afresh.
        (A tester's second read of 16 directories was backed off for 30 s by
        the listings fetched as the first read ended.)"""
        listing = self.listings.pop(parent)
        life = self.entry_timeout - MIN_TIMEOUT
        due = max(TRIGGER_MISSES, MIN_PAYOFF * len(listing.names))
        if listing.hits < due:
            lived = min(1.0, max(0.0, listing.used - listing.fetched) / life)
            if listing.hits < lived * due:
                self._backoff[parent] = listing.fetched + BACKOFF
                if len(self._backoff) > 4 * MAX_ENTRIES:
                    self._backoff.clear()
        elif now >= listing.fetched + life:
            # Paid off and expired.  When it expired, not when a lookup found it
            # so: lookups that come back after a pause start counting afresh.
            expired = listing.fetched + life
            self._paid[parent] = expired
            if len(self._paid) > 4 * MAX_LISTINGS:
                self._paid = {d: t for d, t in self._paid.items() if now - t <= TRIGGER_WINDOW}
                if len(self._paid) > 4 * MAX_LISTINGS:
                    self._paid = {parent: expired}


def _drop_ino(listing: Listing, ino: int) -> None:
    """No name of `listing` leads to `ino` any more."""
    name = listing.by_ino.pop(ino, None)
    for name in listing.more_names.pop(ino, [name] if name is not None else []):
        if listing.names.get(name) == ino:
            del listing.names[name]

