"""Stat-ahead windows (client.statahead): a directory too big for a listing is
read ahead a shard's window at a time when its names are looked up in the
order a shard keeps them.  First the bookkeeping alone, then its wiring in
client.ops over the fake cluster of statahead_fake."""

import random

import pytest
import trio
import trio.testing
from statahead_fake import Ctx, make_ops, names_on_shard

import client.ops as ops_module
from client import statahead
from client.statahead import BACKOFF, MIN_PAYOFF, StatAhead, Window

DIR = 7
W = statahead.WINDOW_MIN


def big(entry_timeout=1.0, now=0.0) -> StatAhead:
    ahead = StatAhead(entry_timeout=entry_timeout)
    ahead.too_big(DIR, now)
    return ahead


def window(ahead, shard, after, names, now, more=True) -> Window:
    began = ahead.window_started(DIR, shard)
    win = Window(names, now, 0, DIR, shard, after, after + len(names), more)
    assert ahead.window_ended(DIR, shard, began, win)
    return win


def test_only_misses_in_a_shards_order_start_a_window():
    assert statahead.IN_ORDER == 3
    ahead = big()
    assert ahead.window_missed(DIR, 0, 10, 1.0) is None  # the first: no order yet
    assert ahead.window_missed(DIR, 0, 11, 1.0) is None
    assert ahead.window_missed(DIR, 0, 13, 1.0) == (13, W)
    ahead.window_started(DIR, 0)
    assert ahead.window_missed(DIR, 0, 14, 1.0) is None  # one fetch per shard at a time
    assert ahead.window_missed(DIR, 1, 500, 1.0) is None
    assert ahead.window_missed(DIR, 1, 501, 1.0) is None
    assert ahead.window_missed(DIR, 1, 400, 1.0) is None  # backwards: counting anew
    near = statahead.NEAR
    assert ahead.window_missed(DIR, 1, 400 + near, 1.0) is None
    assert ahead.window_missed(DIR, 1, 400 + 2 * near + 1, 1.0) is None  # too far ahead
    assert ahead.window_missed(DIR, 1, 400 + 2 * near + 2, 1.0) is None
    assert ahead.window_missed(DIR, 1, 400 + 3 * near + 2, 1.0) == (400 + 3 * near + 2, W)


def test_no_window_of_a_directory_a_listing_covers_or_without_a_seq():
    ahead = StatAhead(entry_timeout=1.0)  # not known to be big
    assert ahead.window_missed(DIR, 0, 1, 1.0) is None
    assert ahead.window_missed(DIR, 0, 2, 1.0) is None
    ahead = big()
    assert ahead.window_missed(DIR, 0, None, 1.0) is None  # an old shard's reply
    assert StatAhead(entry_timeout=0.0).window_missed(DIR, 0, 1, 1.0) is None  # off
    ahead = big(now=0.0)
    ahead.window_missed(DIR, 0, 1, BACKOFF + 1)
    ahead.window_missed(DIR, 0, 2, BACKOFF + 1)
    assert ahead.window_missed(DIR, 0, 3, BACKOFF + 1) is None  # no longer known big


def test_a_window_answers_its_names_until_its_entry_timeout():
    ahead = big()
    win = window(ahead, 0, 100, {b"a": 10, b"b": 11}, 1.0)
    assert ahead.find(DIR, b"a", 1.5) == (10, win)
    assert ahead.find(DIR, b"zz", 1.5) is None  # never "absent"
    assert ahead.find(DIR, b"a", 2.0) is None  # too old
    ahead.window_missed(DIR, 0, 5, 2.0)  # a miss retires windows that aged
    assert not ahead.windows


def test_the_next_window_is_asked_for_once_three_quarters_of_one_answered():
    ahead = big()
    names = {b"n%d" % i: 100 + i for i in range(8)}
    win = window(ahead, 1, 40, names, 1.0)
    win.hits = 5
    assert ahead.next_window(win, 1.5) is None
    win.hits = 6
    assert ahead.next_window(win, 1.5) == (48, W)  # after its last seq; slow: the least
    assert ahead.next_window(win, 1.5) is None  # asked once
    last = window(ahead, 1, 48, {b"z": 5}, 1.0, more=False)
    last.hits = 1
    assert ahead.next_window(last, 1.5) is None  # the share ends there


def test_the_next_window_is_sized_for_the_pace_of_the_lookups():
    ahead = big(entry_timeout=1.0)
    win = window(ahead, 0, 0, {b"n%d" % i: i for i in range(W)}, 1.0)
    win.hits = 3 * W // 4
    # 96 names in 0.01 s: 9,600 per second, half of which is past WINDOW_MAX
    assert ahead.next_window(win, 1.01) == (W, statahead.WINDOW_MAX)
    win = window(ahead, 1, 0, {b"n%d" % i: i for i in range(W)}, 1.0)
    win.hits = 3 * W // 4
    # 2,000 names per second: the power of two past half of that
    assert ahead.next_window(win, 1.0 + 3 * W / 4 / 2000) == (W, 1024)


def test_the_newest_window_answers_and_the_next_one_starts_past_it():
    """A window started by misses after an older one's lookups fell behind can
    overlap a window fetched ahead: the newest answers (its hits decide
    whether windows pay off), and a read-ahead starts past what is held."""
    ahead = big()
    old = window(ahead, 0, 0, {b"a": 10, b"b": 11, b"c": 12, b"d": 13}, 1.0)
    new = window(ahead, 0, 2, {b"c": 12, b"d": 13, b"e": 14, b"f": 15}, 1.2)
    assert ahead.find(DIR, b"c", 1.3) == (12, new)
    assert ahead.find(DIR, b"a", 1.3) == (10, old)
    old.hits = 3
    assert ahead.next_window(old, 1.3) == (new.last, W)


def test_removals_leave_windows_and_fetches_on_their_way():
    ahead = big()
    win = window(ahead, 0, 0, {b"a": 10, b"b": 11}, 1.0)
    first = ahead.window_started(DIR, 1)
    ahead.removed(DIR, b"a")
    second = ahead.window_started(DIR, 0)
    ahead.removed(DIR, b"c")
    assert ahead.find(DIR, b"a", 1.1) is None and ahead.find(DIR, b"b", 1.1) == (11, win)
    late = Window({b"a": 10, b"c": 12, b"d": 13}, 1.05, 0, DIR, 1, 0, 3, True)
    assert ahead.window_ended(DIR, 1, first, late)
    assert set(late.names) == {b"d"}  # both removals came after its start
    later = Window({b"a": 10, b"c": 12, b"e": 14}, 1.06, 0, DIR, 0, 3, 6, True)
    assert ahead.window_ended(DIR, 0, second, later)
    assert set(later.names) == {b"a", b"e"}  # it began after "a" went
    assert not ahead._removed  # nothing on its way: nothing kept


def test_our_changes_take_their_names_out_of_windows_and_fetches_on_their_way():
    """A create, link or rename of ours: the names it touches leave every
    window, also one on its way; the other names stay (a reader that renames
    each file out after its lookup keeps its windows)."""
    ahead = big()
    held = window(ahead, 0, 0, {b"a": 10, b"b": 11}, 1.0)
    began = ahead.window_started(DIR, 1)
    ahead.changed(DIR, (b"a",))  # renamed away
    ahead.changed(DIR, (b"c",))  # made, or renamed over
    assert ahead.find(DIR, b"a", 1.1) is None
    assert ahead.find(DIR, b"b", 1.1) == (11, held)
    late = Window({b"c": 12, b"d": 13}, 1.0, 0, DIR, 1, 0, 2, True)
    assert ahead.window_ended(DIR, 1, began, late)
    assert ahead.find(DIR, b"c", 1.1) is None and ahead.find(DIR, b"d", 1.1) == (13, late)


def test_a_window_on_its_way_over_our_change_loses_the_name_whatever_the_counters():
    """Generation counters of many directories are pruned: a window fetched over
    our change must still not answer the changed name (a reviewer's finding:
    the pruning kept only listing fetches' counters)."""
    ahead = big()
    began = ahead.window_started(DIR, 0)
    ahead.changed(DIR, (b"x",))  # renamed away
    for other in range(10_000, 10_000 + 4 * statahead.MAX_ENTRIES + 1):
        ahead.changed(other)
    late = Window({b"x": 10, b"y": 11}, 0.5, 0, DIR, 0, 0, 2, True)
    assert ahead.window_ended(DIR, 0, began, late)
    assert ahead.find(DIR, b"x", 0.6) is None and ahead.find(DIR, b"y", 0.6) == (11, late)


def test_names_lost_while_fetches_were_on_their_way_spoil_them():
    ahead = big()
    began = ahead.window_started(DIR, 0)
    for i in range(statahead.MAX_ENTRIES + 1):
        ahead.removed(DIR, b"n%d" % i)
    assert not ahead.window_ended(DIR, 0, began, Window({b"x": 10}, 1.0, 0, DIR, 0, 0, 1, True))
    began = ahead.window_started(DIR, 0)  # after: fine again
    assert ahead.window_ended(DIR, 0, began, Window({b"x": 10}, 1.0, 0, DIR, 0, 0, 1, True))


def test_a_stale_inode_leaves_every_window():
    ahead = big()
    window(ahead, 0, 0, {b"a": 10, b"b": 11}, 1.0)
    ahead.stale_ino(10, 1.1)
    assert ahead.find(DIR, b"a", 1.0 + statahead.PAUSE_AFTER_STALE + 0.2) is None
    assert ahead.find(DIR, b"b", 1.0 + statahead.PAUSE_AFTER_STALE + 0.2) is not None


def test_windows_that_do_not_pay_off_stop_for_a_while():
    """A window that went unused while the lookups went elsewhere: they are
    not in the shard's order (random ones that happened to start it)."""
    ahead = big(entry_timeout=1.0)
    win = window(ahead, 0, 0, {b"n%d" % i: i for i in range(W)}, 1.0)
    win.hits = int(MIN_PAYOFF * W) - 1
    for seq in range(statahead.PAYOFF_MISSES * W + 1):
        ahead.window_missed(DIR, 1, 10_000 + 1000 * seq, 1.5)  # elsewhere
    ahead.window_missed(DIR, 0, 5000, 3.0)  # retires it, unpaid
    ahead.window_missed(DIR, 0, 5001, 3.0)
    assert ahead.window_missed(DIR, 0, 5002, 3.0) is None
    ahead.too_big(DIR, 3.0 + BACKOFF)
    ahead.window_missed(DIR, 0, 6000, 3.0 + BACKOFF + 1)
    ahead.window_missed(DIR, 0, 6001, 3.0 + BACKOFF + 1)
    assert ahead.window_missed(DIR, 0, 6002, 3.0 + BACKOFF + 1) == (6002, W)


def test_a_window_read_ahead_and_left_unused_stops_nothing():
    """A window read ahead goes unused when the lookups slow down (an unlink
    waiting for its commit) or stop: that says nothing of their order."""
    ahead = big(entry_timeout=1.0)
    began = ahead.window_started(DIR, 0)
    ahead.window_ended(DIR, 0, began, Window({b"n%d" % i: i for i in range(W)}, 1.0, 0, DIR,
                                             0, 0, W, True, read_ahead=True))
    ahead.window_missed(DIR, 0, 5000, 3.0)  # retires it, unused
    ahead.window_missed(DIR, 0, 5001, 3.0)
    assert ahead.window_missed(DIR, 0, 5002, 3.0) == (5002, W)


def test_a_window_left_unused_while_few_lookups_missed_stops_nothing():
    """The kernel's own entries, still valid from a walk before, answer most
    names: a window gets few lookups, and so do the shards."""
    ahead = big(entry_timeout=1.0)
    window(ahead, 0, 0, {b"n%d" % i: i for i in range(W)}, 1.0)
    ahead.window_missed(DIR, 0, 5000, 3.0)  # retires it, unused
    ahead.window_missed(DIR, 0, 5001, 3.0)
    assert ahead.window_missed(DIR, 0, 5002, 3.0) == (5002, W)


def test_a_small_window_filling_a_gap_that_went_unused_stops_nothing():
    """A window that fills the gap before another holds only that gap; the
    lookups may pass it before it lands, and the next walk's first misses come
    before it expires (a tester found this backed the directory off, and the
    next walk ran at statahead=0 speed)."""
    ahead = big(entry_timeout=1.0)
    began = ahead.window_started(DIR, 0)
    ahead.window_ended(DIR, 0, began, Window({b"n%d" % i: i for i in range(68)}, 1.0, 0, DIR,
                                             0, 100, 168, True))
    for seq in range(200):
        ahead.window_missed(DIR, 1, 10_000 + 1000 * seq, 1.5)  # elsewhere
    ahead.window_missed(DIR, 0, 5000, 3.0)  # retires it, unused
    ahead.window_missed(DIR, 0, 5001, 3.0)
    assert ahead.window_missed(DIR, 0, 5002, 3.0) == (5002, W)


def test_a_window_is_not_fetched_again_over_one_just_ahead():
    """Lookups by name need not follow the seqs exactly (names made by many
    writers at once): misses just before a window fetch nothing, and misses
    further before fetch only up to it."""
    ahead = big()
    window(ahead, 0, 100, {b"n%d" % i: i for i in range(W)}, 1.0)
    for seq in (60, 61, 62):
        assert ahead.window_missed(DIR, 0, seq, 1.1) is None  # within NEAR of it
    near = statahead.NEAR
    first = 100 - near - 10
    ahead.window_missed(DIR, 0, first - 2, 1.1)
    ahead.window_missed(DIR, 0, first - 1, 1.1)
    assert ahead.window_missed(DIR, 0, first, 1.1) == (first, 100 - first)
    assert ahead.window_missed(DIR, 0, 150, 1.1) is None  # inside it


def test_windows_kept_are_bounded():
    ahead = StatAhead(entry_timeout=1.0)
    for parent in range(2 * statahead.MAX_WINDOWS):
        ahead.too_big(parent, 0.0)
        began = ahead.window_started(parent, 0)
        ahead.window_ended(parent, 0, began, Window({b"a": parent}, 1.0, 0, parent, 0, 0, 1,
                                                    True))
    assert sum(len(w) for w in ahead.windows.values()) == statahead.MAX_WINDOWS
    assert len(ahead.windows) == statahead.MAX_WINDOWS


# -- wiring in client.ops over the fake cluster --------------------------------

A = 2


async def _big_dir(nursery, monkeypatch, count=400, limit=64, window_size=32):
    monkeypatch.setattr(statahead, "MAX_ENTRIES", limit)
    monkeypatch.setattr(ops_module, "STATAHEAD_MAX_ENTRIES", limit)
    monkeypatch.setattr(statahead, "WINDOW_MIN", window_size)
    monkeypatch.setattr(statahead, "WINDOW_MAX", window_size)
    monkeypatch.setattr(statahead, "NEAR", 4)  # as far apart, for a window's size
    cluster, meta, ops = make_ops(nursery)
    cluster.make_dir(A)
    names = names_on_shard(A, 0, count)
    for i, name in enumerate(names):
        cluster.make_file(A, name, 1000 + 2 * i)
    await meta.getattr(A)  # its size, over the limit, is known
    return cluster, meta, ops, names


@pytest.mark.parametrize("order", ["made", "shuffled"])
async def test_lookups_in_a_shards_order_are_answered_from_windows(nursery, monkeypatch,
                                                                   order):
    """Lookups in the order the names were made reach the shard a few times in
    all; shuffled ones start few windows, so most reach the shard."""
    cluster, meta, ops, names = await _big_dir(nursery, monkeypatch, count=1000)
    if order == "shuffled":
        names = names[:]
        random.Random(4).shuffle(names)
    for name in names:
        entry = await ops.lookup(A, name, Ctx())
        assert entry.st_ino == cluster.dirs[A][name]
        await trio.testing.wait_all_tasks_blocked()  # let a window's fetch land
    lookups = cluster.count("lookup")
    if order == "made":
        # IN_ORDER misses start the first window; each later one is asked for when
        # half of the one before answered, so the shard sees few lookups.
        assert lookups <= 8, lookups
        assert cluster.count("readdir") >= len(names) // 32
    else:
        windows = sum(1 for op, args in cluster.calls if op == "readdir")
        assert lookups >= 0.95 * len(names) and windows <= 2, (lookups, windows)


async def test_a_removed_name_is_not_answered_from_a_window(nursery, monkeypatch):
    """`rm` of a big directory: each lookup is answered from a window and each
    unlink takes its name out, so a name removed and made again is looked up at
    the shard."""
    cluster, meta, ops, names = await _big_dir(nursery, monkeypatch)
    for name in names[:100]:
        await ops.lookup(A, name, Ctx())
        await ops.unlink(A, name, Ctx())
        await trio.testing.wait_all_tasks_blocked()
    await ops.behind.settle_all()
    assert not any(name in cluster.dirs[A] for name in names[:100])
    assert cluster.count("lookup") <= 8
    cluster.make_file(A, names[50], 5000)  # made again, by another mount
    before = cluster.count("lookup")
    entry = await ops.lookup(A, names[50], Ctx())
    assert entry.st_ino == 5000 and cluster.count("lookup") == before + 1


async def test_a_reader_that_moves_each_file_out_keeps_its_windows(nursery, monkeypatch):
    """A spool consumer: look up the next file in the order they were made, then
    rename it into another directory.  Each rename takes only its name out of
    the windows (a reviewer found every rename dropped them, so a window was
    fetched and thrown away per name, and every lookup reached the shard)."""
    cluster, meta, ops, names = await _big_dir(nursery, monkeypatch)
    done = 3
    cluster.make_dir(done)
    await meta.getattr(done)
    for i, name in enumerate(names[:200]):
        entry = await ops.lookup(A, name, Ctx())
        assert entry.st_ino == 1000 + 2 * i
        await ops.rename(A, name, done, name, 0, Ctx())
        await trio.testing.wait_all_tasks_blocked()
    assert cluster.count("lookup") <= 10, cluster.count("lookup")
    window_entries = sum(args["limit"] for op, args in cluster.calls if op == "readdir")
    assert window_entries <= 2 * 200, window_entries
    # a moved name is not answered from a window any more: the shard says absent
    assert (await ops.lookup(A, names[10], Ctx())).st_ino == 0
