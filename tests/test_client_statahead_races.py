"""client.statahead's wiring in client.ops over a fake cluster (statahead_fake):
races between a listing fetched ahead and this client's own changes, and the
bounds on fetching.  Each test failed before its fix (a reviewer's findings at
ea3c76c); the chmod test is the control that held already."""

import pyfuse3
import pytest
import trio
import trio.testing
from statahead_fake import NSHARDS, Attr, Ctx, ModeOnly, make_ops, names_on_shard

import client.ops as ops_module
from client import statahead
from loomproto import errors
from client.statahead import TRIGGER_MISSES

A, B = 2, 3


def meta_entries(cluster) -> int:
    """Entries the fake shards returned to readdir calls so far."""
    return cluster.entries_returned


def listing_reads(cluster) -> int:
    """readdir calls of whole listings fetched ahead (not of windows, which a
    directory too big for a listing is read in: test_client_statahead_windows)."""
    return sum(1 for op, args in cluster.calls
               if op == "readdir" and args["limit"] == ops_module.READDIR_BATCH)


async def _fetch_held(nursery):
    """A client whose fetch of A's listing was triggered and whose readdir reply is
    held at `gate` (the shard answered already: its state is from before); returns
    (cluster, meta, ops, a listed name, its inode, gate)."""
    cluster, meta, ops = make_ops(nursery)
    cluster.make_dir(A)
    await meta.getattr(A)
    names = names_on_shard(A, 0, 40)
    for i, name in enumerate(names):
        cluster.make_file(A, name, 1000 + 2 * i)  # inodes on shard 0, as the names
    meta.attrs[A] = dict(meta.attrs[A], size=len(names))
    gate = cluster.gates["readdir"] = trio.Event()
    await _miss(ops, A, names[:TRIGGER_MISSES])  # triggers the fetch of A
    await trio.testing.wait_all_tasks_blocked()
    return cluster, meta, ops, names[-1], 1000 + 2 * (len(names) - 1), gate


async def _miss(ops, parent, names):
    for name in names:
        await ops.lookup(parent, name, Ctx())


async def test_a_directory_that_outgrew_its_cached_size_is_backed_off(nursery, monkeypatch):
    """A directory whose cached size is small but that has grown past MAX_ENTRIES
    (another mount added files; the parent's attributes are refreshed only every
    attr_timeout) is found too big by the fetch, which gives up: it must then be
    backed off, not fetched whole again after every TRIGGER_MISSES lookups (as it
    was before `StatAhead.too_big`)."""
    limit = 64
    monkeypatch.setattr(statahead, "MAX_ENTRIES", limit)
    monkeypatch.setattr(ops_module, "STATAHEAD_MAX_ENTRIES", limit)
    cluster, meta, ops = make_ops(nursery)
    cluster.make_dir(A)
    await meta.getattr(A)  # cached: size 0, as before the other mount's creates
    names = [b"f%05d" % i for i in range(10 * limit)]
    for i, name in enumerate(names):
        cluster.make_file(A, name, 1000 + i)
    assert meta.attrs[A]["size"] == 0

    fetches, entries = [], []
    for round_ in range(4):
        before = listing_reads(cluster)
        read_before = meta_entries(cluster)
        await _miss(ops, A, names[round_ * TRIGGER_MISSES:(round_ + 1) * TRIGGER_MISSES])
        await trio.testing.wait_all_tasks_blocked()
        fetches.append(listing_reads(cluster) - before)
        entries.append(meta_entries(cluster) - read_before)
    # Expected: one aborted fetch, then a back-off (no readdir for BACKOFF seconds).
    assert fetches[1:] == [0, 0, 0], (
        f"directory past MAX_ENTRIES fetched again after each {TRIGGER_MISSES} "
        f"lookups: readdir calls per round {fetches}")


async def test_own_link_is_not_undone_by_an_older_listing_reply(nursery):
    """A readdir reply to a request sent before our link, arriving after the
    link's reply, must not replace nlink 2 with nlink 1 (Meta.link marks the inode
    changed).  The listing of the old name's directory lands (the link changes
    only the new parent); before the fix it answered the old name with nlink 1
    after our own `ln` returned, and client.behind's early-unlink check (nlink
    from Meta.attrs) took the file for one with a single name."""
    cluster, meta, ops, target, x_ino, gate = await _fetch_held(nursery)
    cluster.make_dir(B)
    assert A in ops.statahead.fetching and cluster.count("readdir") == 1
    # Our own `ln A/target B/y` while shard 0's readdir reply is on its way.
    entry = await ops.link(x_ino, B, b"y", Ctx())
    assert entry.st_nlink == 2 and meta.attrs[x_ino]["nlink"] == 2
    del cluster.gates["readdir"]
    gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert A in ops.statahead.listings, "the listing of A landed"
    got = await ops.lookup(A, target, Ctx())
    early = ops._early_unlink(A, target)
    assert got.st_nlink == 2 and early is None, (
        f"lookup of {target!r} after our own link answered nlink {got.st_nlink} "
        f"(from a listing; attr_timeout {got.attr_timeout:.2f}s); an unlink of it "
        f"now would be answered early: {early is not None}")


async def test_own_setxattr_is_not_undone_by_an_older_listing_reply(nursery):
    """The same with setxattr, which moves ctime: a readdir reply sent before it
    and arriving after must not be kept (not even for an inode with nothing
    cached, `Meta.remember`), so the listing does not answer the old ctime."""
    cluster, meta, ops, target, x_ino, gate = await _fetch_held(nursery)
    await ops.setxattr(x_ino, b"user.k", b"v", Ctx())
    new_ctime = cluster.inodes[x_ino]["ctime"]
    del cluster.gates["readdir"]
    gate.set()
    await trio.testing.wait_all_tasks_blocked()
    got = await ops.lookup(A, target, Ctx())
    assert got.st_ctime_ns == new_ctime, (
        f"ctime {got.st_ctime_ns} answered after our own setxattr set it to {new_ctime}")


async def test_own_chmod_racing_the_listing_shows_at_once(nursery):
    """setattr marks the inode changed, so the older readdir reply does not
    replace its attributes (this held before the fixes too)."""
    cluster, meta, ops, target, x_ino, gate = await _fetch_held(nursery)
    await ops.setattr(x_ino, Attr(), ModeOnly(), None, Ctx())
    del cluster.gates["readdir"]
    gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert A in ops.statahead.listings
    got = await ops.lookup(A, target, Ctx())
    assert got.st_mode == 0o100600


async def test_fetches_in_flight_are_bounded(nursery):
    """Not only landed listings are bounded (MAX_LISTINGS): fetches in flight are
    too (MAX_FETCHING), since each may hold up to MAX_ENTRIES names and fill
    Meta.attrs."""
    cluster, meta, ops = make_ops(nursery)
    gate = cluster.gates["readdir"] = trio.Event()
    dirs = range(10, 10 + 4 * statahead.MAX_LISTINGS)
    for d in dirs:
        cluster.make_dir(d)
        names = [b"f%03d" % i for i in range(TRIGGER_MISSES)]
        for i, name in enumerate(names):
            cluster.make_file(d, name, 100_000 + d * 100 + i)
        await meta.getattr(d)
        await _miss(ops, d, names)
    await trio.testing.wait_all_tasks_blocked()
    in_flight = len(ops.statahead.fetching)
    gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert in_flight == statahead.MAX_FETCHING, f"{in_flight} fetches at once"


async def test_a_late_forget_keeps_what_a_new_lookup_gave(nursery):
    """drop_caches: the kernel evicts an inode, looks it up again, and only then
    does the forget of the old struct reach the client (the kernel sends forgets
    between other requests, in batches).  That forget takes back the old
    lookups only: the directory stays known, with its attributes, and stat-ahead
    still fetches its listing.  Before the lookup count, the late forget dropped
    the directory's attributes; the unknown size then backed stat-ahead off for
    BACKOFF, and one cold-stat bench run in three ran at a fifth of its speed."""
    cluster, meta, ops = make_ops(nursery)
    cluster.make_dir(1)
    cluster.make_dir(A)
    cluster._add(1, b"a", A)
    names = names_on_shard(A, 0, 3 * TRIGGER_MISSES)
    for i, name in enumerate(names):
        cluster.make_file(A, name, 1000 + 2 * i)
    await ops.lookup(1, b"a", Ctx())  # the kernel's first struct of A: one lookup
    await ops.lookup(1, b"a", Ctx())  # evicted, looked up again: a new struct
    await ops.forget([(A, 1)])  # the old struct's forget arrives after
    assert meta.attrs.get(A) is not None, "the late forget dropped what the kernel holds"
    assert ops.dir_names.place_of(A) == (1, b"a")

    await _miss(ops, A, names[:TRIGGER_MISSES])
    await trio.testing.wait_all_tasks_blocked()
    assert cluster.count("readdir") > 0, "stat-ahead backed off the directory"
    before = cluster.count("lookup")
    await _miss(ops, A, names[TRIGGER_MISSES:])
    assert cluster.count("lookup") == before  # answered from the listing

    await ops.forget([(A, 1)])  # the last lookup taken back: now forgotten
    assert meta.attrs.get(A) is None
    assert ops.dir_names.place_of(A) is None


async def test_a_directory_whose_attributes_are_gone_is_still_fetched(nursery):
    """The client holds no attributes of the directory (memory pressure made the
    kernel forget it, and a path walk found it through a cached dentry): its
    size is unknown, which is no reason to give up stat-ahead for BACKOFF."""
    cluster, meta, ops = make_ops(nursery)
    cluster.make_dir(A)
    names = names_on_shard(A, 0, 2 * TRIGGER_MISSES)
    for i, name in enumerate(names):
        cluster.make_file(A, name, 1000 + 2 * i)
    assert meta.attrs.get(A) is None
    await _miss(ops, A, names[:TRIGGER_MISSES])
    await trio.testing.wait_all_tasks_blocked()
    assert cluster.count("readdir") > 0


async def test_a_directory_of_unknown_size_is_sized_before_it_is_listed(nursery, monkeypatch):
    """With the directory's size unknown, the fetch asks for its attributes
    first: one known too big is backed off without a listing, which would have
    filled the attribute cache with entries only to drop them."""
    limit = 64
    monkeypatch.setattr(statahead, "MAX_ENTRIES", limit)
    monkeypatch.setattr(ops_module, "STATAHEAD_MAX_ENTRIES", limit)
    cluster, meta, ops = make_ops(nursery)
    cluster.make_dir(A)
    names = [b"f%05d" % i for i in range(2 * limit)]
    for i, name in enumerate(names):
        cluster.make_file(A, name, 1000 + i)
    meta.attrs.pop(A, None)
    await _miss(ops, A, names[:TRIGGER_MISSES])
    await trio.testing.wait_all_tasks_blocked()
    assert cluster.count("getattr") == 1
    assert listing_reads(cluster) == 0
    await _miss(ops, A, names[TRIGGER_MISSES:2 * TRIGGER_MISSES])
    await trio.testing.wait_all_tasks_blocked()
    assert listing_reads(cluster) == 0  # backed off


async def test_entries_of_a_failed_readdir_are_not_counted(nursery, monkeypatch):
    """pyfuse3 drops the entries buffered by a readdir handler that fails: the
    kernel takes no lookup of them, so neither may the client's count."""
    cluster, meta, ops = make_ops(nursery)
    cluster.make_dir(A)
    names = names_on_shard(A, 0, 3)
    for i, name in enumerate(names):
        cluster.make_file(A, name, 1000 + 2 * i)
    cluster.make_file(A, names_on_shard(A, 1, 1)[0], 2001)
    replied = []

    def readdir_reply(token, name, entry, next_id):
        replied.append(entry.st_ino)
        return True

    real_readdir = cluster._readdir
    shard_1_away = True

    def readdir(shard, args):
        if shard == 1 and shard_1_away:
            raise errors.IOFailure("shard 1 away")
        return real_readdir(shard, args)

    monkeypatch.setattr(pyfuse3, "readdir_reply", readdir_reply)
    monkeypatch.setattr(cluster, "_readdir", readdir)
    with pytest.raises(pyfuse3.FUSEError):
        await ops.readdir(A, 2, None)  # past "." and "..": shard 0, then shard 1 fails
    assert {1000, 1002, 1004} <= set(replied)
    assert not ops._lookups  # none of them reached the kernel
    shard_1_away = False
    await ops.readdir(A, 2, None)
    assert ops._lookups == {1000: 1, 1002: 1, 1004: 1, 2001: 1}


async def test_removing_names_one_by_one_fetches_the_listing_once(nursery):
    """`rm` of many files (lookup, unlink, lookup, unlink, ...) past the kernel's
    entry timeout: each unlink used to drop the whole listing, so every
    TRIGGER_MISSES lookups fetched the directory again; rm -rf of 100,000
    entries ran at a tenth of the speed of one of 5,000.  Now one fetch answers
    every later lookup, and the unlinked names leave it one by one."""
    cluster, meta, ops = make_ops(nursery)
    cluster.make_dir(A)
    await meta.getattr(A)
    names = names_on_shard(A, 0, 200)
    for i, name in enumerate(names):
        cluster.make_file(A, name, 1000 + 2 * i)
    meta.attrs[A] = dict(meta.attrs[A], size=len(names))
    for name in names:
        await ops.lookup(A, name, Ctx())
        await ops.unlink(A, name, Ctx())
        await trio.testing.wait_all_tasks_blocked()
    assert cluster.count("readdir") == NSHARDS  # one fetch: one call to each shard
    assert cluster.count("lookup") == TRIGGER_MISSES
    assert not cluster.dirs[A]
