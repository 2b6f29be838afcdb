"""client.statahead's bookkeeping without a cluster: when a listing is fetched,
how long it answers, and what throws it away (the mount tests are in
test_posix_statahead.py)."""

from client import statahead
from client.statahead import BACKOFF, MAX_ENTRIES, TRIGGER_MISSES, Listing, StatAhead

DIR = 7


def triggered(ahead: StatAhead, now: float, entries: int = 100) -> int:
    """Misses until `ahead` asks for a fetch of DIR; returns how many it took."""
    return triggered_for(ahead, DIR, now, entries)


def triggered_for(ahead: StatAhead, parent: int, now: float, entries: int = 100) -> int:
    for count in range(1, 10 * TRIGGER_MISSES):
        if ahead.missed(parent, entries, now):
            return count
    raise AssertionError("no fetch asked for")


def listed(ahead: StatAhead, now: float, names=None) -> Listing:
    generation = ahead.fetch_started(DIR)
    listing = Listing(names if names is not None else {b"a": 10, b"b": 11}, now, 0)
    assert ahead.fetch_ended(DIR, generation, listing)
    return listing


def test_a_fetch_is_asked_for_after_enough_misses_within_the_window():
    ahead = StatAhead(entry_timeout=1.0)
    for _ in range(TRIGGER_MISSES - 1):
        assert not ahead.missed(DIR, 100, 5.0)
    assert not ahead.missed(DIR, 100, 6.5)  # past the window: counting starts again
    assert triggered(ahead, 6.6) == TRIGGER_MISSES - 1
    ahead.fetch_started(DIR)
    assert not ahead.missed(DIR, 100, 6.7)  # one fetch at a time


def test_big_directories_are_not_fetched():
    ahead = StatAhead(entry_timeout=1.0)
    for _ in range(3 * TRIGGER_MISSES):
        assert not ahead.missed(DIR, MAX_ENTRIES + 1, 1.0)
    assert not ahead.missed(DIR, 10, 1.0 + BACKOFF - 1)  # backed off meanwhile
    assert triggered(ahead, 1.0 + BACKOFF + 1, entries=10) == TRIGGER_MISSES


def test_a_directory_of_unknown_size_is_fetched():
    # The client may hold no attributes of the directory (a late forget from
    # drop_caches took them): the fetch itself stops past MAX_ENTRIES.
    ahead = StatAhead(entry_timeout=1.0)
    assert triggered(ahead, 1.0, entries=None) == TRIGGER_MISSES


def test_a_listing_answers_until_its_entry_timeout_and_never_says_absent():
    ahead = StatAhead(entry_timeout=1.0)
    listing = listed(ahead, 10.0)
    assert ahead.find(DIR, b"a", 10.5) == (10, listing)
    assert ahead.entry_left(listing, 10.5) == 0.5
    assert ahead.find(DIR, b"zz", 10.5) is None  # not listed: the shard decides
    assert ahead.find(DIR + 1, b"a", 10.5) is None
    assert ahead.find(DIR, b"a", 10.0 + 1.0 - statahead.MIN_TIMEOUT / 2) is None
    assert DIR not in ahead.listings


def test_our_change_drops_the_listing_and_any_fetch_it_overlapped():
    ahead = StatAhead(entry_timeout=1.0)
    listed(ahead, 1.0)
    ahead.changed(DIR)
    assert ahead.find(DIR, b"a", 1.1) is None
    # A fetch that began before our change (or during it) must not land.
    generation = ahead.fetch_started(DIR)
    ahead.changed(DIR)
    assert not ahead.fetch_ended(DIR, generation, Listing({b"a": 10}, 1.2, 0))
    assert ahead.find(DIR, b"a", 1.3) is None
    assert not ahead.fetching
    generation = ahead.fetch_started(DIR)  # one after the change lands
    assert ahead.fetch_ended(DIR, generation, Listing({b"a": 12}, 1.4, 0))
    assert ahead.find(DIR, b"a", 1.5)[0] == 12


def test_our_removal_takes_only_its_name_out_of_the_listing_and_a_fetch():
    ahead = StatAhead(entry_timeout=1.0)
    listed(ahead, 1.0, {b"a": 10, b"b": 11, b"c": 12})
    ahead.removed(DIR, b"a")
    assert ahead.find(DIR, b"a", 1.1) is None  # the shard decides
    assert ahead.find(DIR, b"b", 1.1)[0] == 11  # the rest still answers
    # A fetch that read the name before the removal committed leaves it out.
    del ahead.listings[DIR]
    generation = ahead.fetch_started(DIR)
    ahead.removed(DIR, b"b")
    assert ahead.fetch_ended(DIR, generation, Listing({b"b": 11, b"c": 12}, 1.2, 0))
    assert ahead.find(DIR, b"b", 1.3) is None
    assert ahead.find(DIR, b"c", 1.3)[0] == 12
    # Nothing is kept for the next fetch.
    generation = ahead.fetch_started(DIR)
    assert ahead.fetch_ended(DIR, generation, Listing({b"b": 13}, 1.4, 0))
    assert ahead.find(DIR, b"b", 1.5)[0] == 13


def test_a_failed_fetch_keeps_nothing_and_can_be_tried_again():
    ahead = StatAhead(entry_timeout=1.0)
    triggered(ahead, 1.0)
    generation = ahead.fetch_started(DIR)
    assert not ahead.fetch_ended(DIR, generation, None)
    assert not ahead.listings and not ahead.fetching
    assert triggered(ahead, 1.1) == TRIGGER_MISSES


def test_a_listing_in_use_is_fetched_again_only_when_its_attributes_are_gone():
    ahead = StatAhead(entry_timeout=1.0)
    listing = listed(ahead, 1.0)
    for _ in range(3 * TRIGGER_MISSES):
        assert not ahead.missed(DIR, 100, 1.1)
    listing.gone = TRIGGER_MISSES  # the kernel forgot them, and so did the client
    assert triggered(ahead, 1.2) == TRIGGER_MISSES


def test_a_listing_that_served_little_backs_its_directory_off():
    ahead = StatAhead(entry_timeout=1.0)
    names = {f"n{i}".encode(): i for i in range(1000)}
    listing = listed(ahead, 1.0, names)
    listing.hits = 20  # under 1/8 of 1,000: random lookups in a big directory
    listing.used = 1.9  # (the last of them near its end)
    assert ahead.find(DIR, b"n1", 2.5) is None  # expired: retired
    for _ in range(3 * TRIGGER_MISSES):
        assert not ahead.missed(DIR, 1000, 3.0)
    assert triggered(ahead, 1.0 + BACKOFF + 0.1, entries=1000) == TRIGGER_MISSES
    listing = listed(ahead, 40.0, names)
    listing.hits = 500  # paid off: no back-off after this one
    assert ahead.find(DIR, b"n1", 41.5) is None
    assert triggered(ahead, 41.6, entries=1000) == 1  # and fetched again at once


def test_a_listing_that_paid_off_is_fetched_again_at_the_first_miss_after_it():
    ahead = StatAhead(entry_timeout=1.0)
    listing = listed(ahead, 1.0)
    listing.hits = TRIGGER_MISSES
    assert ahead.find(DIR, b"a", 2.0) is None  # expired: judged, and it paid off
    assert ahead.missed(DIR, 100, 2.1)
    listing = listed(ahead, 2.1)
    listing.hits = TRIGGER_MISSES
    assert ahead.find(DIR, b"a", 3.1) is None
    # Lookups that stopped and came back later count from the start again.
    assert triggered(ahead, 3.1 + statahead.TRIGGER_WINDOW + 0.1) == TRIGGER_MISSES
    # Also when the lookup that comes back is the one that finds it expired: it
    # counts from the expiry, not from that lookup.
    listing = listed(ahead, 5.0)
    listing.hits = TRIGGER_MISSES
    assert ahead.find(DIR, b"a", 60.0) is None
    assert triggered(ahead, 60.0) == TRIGGER_MISSES
    # One that served little is not fetched again at once.
    listing = listed(ahead, 10.0)
    listing.hits = TRIGGER_MISSES - 1
    assert ahead.find(DIR, b"a", 11.0) is None
    assert triggered(ahead, 11.1) == TRIGGER_MISSES


def test_a_listing_whose_lookups_stopped_early_backs_nothing_off():
    """The listings fetched as a program's lookups end serve few names: that
    says nothing of the next program's lookups (a tester's second read of 16
    directories was backed off for 30 s by them)."""
    ahead = StatAhead(entry_timeout=1.0)
    names = {f"n{i}".encode(): i for i in range(125)}
    listing = listed(ahead, 1.0, names)
    listing.hits, listing.used = 12, 1.2  # 12 in a fifth of its life, then nothing
    assert ahead.find(DIR, b"n1", 6.0) is None  # the next program's first lookup
    assert triggered(ahead, 6.0, entries=125) == TRIGGER_MISSES
    # The same 12 answers spread over its whole life: too slow a pace to pay.
    listing = listed(ahead, 7.0, names)
    listing.hits, listing.used = 12, 7.9
    assert ahead.find(DIR, b"n1", 8.0) is None
    for _ in range(3 * TRIGGER_MISSES):
        assert not ahead.missed(DIR, 125, 8.1)


def test_listings_pushed_out_by_newer_ones_are_judged_on_the_life_they_lived():
    """A loader reading more directories at once than listings are kept: the
    oldest is pushed out before its time (with 8 kept and fsbench's 16
    directories, each was, and judged as if it had lived its life, its
    directory backed off for 30 s)."""
    ahead = StatAhead(entry_timeout=1.0)
    names = {f"n{i}".encode(): i for i in range(800)}  # pays off at 100 hits
    for parent in range(statahead.MAX_LISTINGS + 2):
        began = ahead.fetch_started(parent)
        listing = Listing(dict(names), 1.0 if parent != 1 else 0.2, 0)
        listing.hits = 30
        listing.used = 1.0  # answering until it was pushed out
        assert ahead.fetch_ended(parent, began, listing)
    assert 0 not in ahead.listings and len(ahead.listings) == statahead.MAX_LISTINGS
    # 30 hits in no time at all: not backed off, and counted afresh
    assert triggered_for(ahead, 0, 1.1, entries=800) == TRIGGER_MISSES
    # 30 hits in 80 % of its life, where 80 were due: backed off
    assert 1 not in ahead.listings
    for _ in range(3 * TRIGGER_MISSES):
        assert not ahead.missed(1, 800, 1.1)


def test_the_names_of_all_listings_are_bounded():
    ahead = StatAhead(entry_timeout=1.0)
    big = statahead.MAX_LISTED // 3 + 1
    for parent in range(3):
        began = ahead.fetch_started(parent)
        names = {b"%d-%d" % (parent, i): i for i in range(big)}
        assert ahead.fetch_ended(parent, began, Listing(names, 1.0, 0))
    assert list(ahead.listings) == [1, 2]
    # One listing alone is kept whatever its size (MAX_ENTRIES bounds it).
    ahead = StatAhead(entry_timeout=1.0)
    began = ahead.fetch_started(DIR)
    names = {b"%d" % i: i for i in range(statahead.MAX_LISTED + 1)}
    assert ahead.fetch_ended(DIR, began, Listing(names, 1.0, 0))
    assert ahead.find(DIR, b"0", 1.1)[0] == 0



def test_a_stale_inode_leaves_the_listings_and_any_listing_that_lands():
    """An inode the kernel reached by a name that no longer leads there: no
    listing answers that name again, the rest of each stays, and a fetch on its
    way when it was found leaves it out too (looked at once the pause after an
    ESTALE is over)."""
    ahead = StatAhead(entry_timeout=1.0)
    listed(ahead, 1.0, {b"a": 10, b"b": 11, b"link-to-a": 10})
    ahead.served(10, DIR, b"a")
    generation = ahead.fetch_started(DIR + 1)
    ahead.stale_ino(10, 1.2)
    assert ahead.find(DIR, b"a", 1.75) is None and ahead.find(DIR, b"link-to-a", 1.75) is None
    assert ahead.find(DIR, b"b", 1.75)[0] == 11
    assert ahead.take_served(10) is None
    assert ahead.fetch_ended(DIR + 1, generation, Listing({b"x": 10, b"y": 12}, 1.1, 0))
    assert ahead.find(DIR + 1, b"x", 1.75) is None and ahead.find(DIR + 1, b"y", 1.75)[0] == 12
    # A listing fetched after the inode was found stale has it afresh.
    generation = ahead.fetch_started(DIR + 2)
    assert ahead.fetch_ended(DIR + 2, generation, Listing({b"x": 10}, 1.5, 0))
    assert ahead.find(DIR + 2, b"x", 1.75)[0] == 10


def test_an_inode_found_wrong_stays_so_until_a_shard_gives_it():
    ahead = StatAhead(entry_timeout=1.0)
    listed(ahead, 1.0, {b"a": 10})
    ahead.found_wrong(10, 1.1)
    assert 10 in ahead.wrong and ahead.find(DIR, b"a", 1.2) is None
    ahead.confirmed(11)
    assert 10 in ahead.wrong
    ahead.confirmed(10)
    assert not ahead.wrong


def test_served_names_are_remembered_once_and_bounded():
    ahead = StatAhead(entry_timeout=1.0)
    ahead.served(10, DIR, b"a")
    assert ahead.take_served(10) == (DIR, b"a")
    assert ahead.take_served(10) is None  # verified once
    for ino in range(statahead.MAX_SERVED + 10):
        ahead.served(ino, DIR, b"n")
    assert ahead.take_served(0) is None and ahead.take_served(statahead.MAX_SERVED + 9)


def test_off_without_a_kernel_entry_cache():
    ahead = StatAhead(entry_timeout=0.0)
    for _ in range(3 * TRIGGER_MISSES):
        assert not ahead.missed(DIR, 10, 1.0)


def test_fetches_at_once_are_bounded_and_a_too_big_one_backs_off():
    ahead = StatAhead(entry_timeout=1.0)
    began = {}
    for parent in range(statahead.MAX_FETCHING):
        for _ in range(TRIGGER_MISSES - 1):
            ahead.missed(parent, 10, 1.0)
        assert ahead.missed(parent, 10, 1.0)
        began[parent] = ahead.fetch_started(parent)
    for _ in range(3 * TRIGGER_MISSES):
        assert not ahead.missed(DIR + 100, 10, 1.0)
    ahead.too_big(0, 1.0)  # it had grown past MAX_ENTRIES
    assert not ahead.fetch_ended(0, began[0], None)
    for _ in range(3 * TRIGGER_MISSES):
        assert not ahead.missed(0, 10, 2.0)
    assert triggered(ahead, 2.0) == TRIGGER_MISSES  # another directory, one slot free


def test_no_listing_answers_right_after_an_estale():
    """The kernel's entry that met ESTALE may have come from a shard while a
    listing holds the name for another inode replaced since: the kernel's retry,
    right after, must reach a shard."""
    ahead = StatAhead(entry_timeout=30.0)
    listed(ahead, 1.0, {b"a": 10, b"b": 11})
    ahead.stale_ino(99, 2.0)  # not in any listing
    assert ahead.find(DIR, b"a", 2.1) is None
    assert ahead.find(DIR, b"a", 2.0 + statahead.PAUSE_AFTER_STALE)[0] == 10
