"""Stat-ahead's check of a listed name before a change by it (client.ops
`_verify_name`, `wrong`, `stale_ino`), over the fake cluster of
tests/statahead_fake.py extended with the ops these cases need (open, rename,
readlink, xattrs).  A reviewer's tests of b96d0f3: each failed there, and
passes since (the last ones held already).  Their docstrings describe what went
wrong at b96d0f3."""

import errno
import os
import stat

import pyfuse3
import trio
import trio.testing
from statahead_fake import Attr, Ctx, FakeCluster, ModeOnly, names_on_shard

from client.meta import Meta
from client.ops import LoomOperations
from client.statahead import TRIGGER_MISSES
from loomproto import errors

A, B = 2, 3
LNK = stat.S_IFLNK | 0o777


class Cluster(FakeCluster):
    """The fake plus open/close/rename/readlink/xattr ops."""

    def __init__(self, nursery):
        super().__init__(nursery)
        self.targets: dict[int, bytes] = {}
        self.xattrs: dict[int, dict] = {}

    def make_symlink(self, parent, name, ino, target=b"t"):
        self.make_file(parent, name, ino)
        self.inodes[ino]["mode"] = LNK
        self.targets[ino] = target

    def _check(self, ino):
        if ino not in self.inodes:
            raise errors.NotFound(f"no ino {ino}")

    def _getattr(self, shard, args):
        self._check(args["ino"])
        return super()._getattr(shard, args)

    def _setattr(self, shard, args):
        self._check(args["ino"])
        return super()._setattr(shard, args)

    def _open(self, shard, args):
        self._check(args["ino"])
        return self.attr(args["ino"])

    def _close(self, shard, args):
        return {}

    def _readlink(self, shard, args):
        self._check(args["ino"])
        return self.targets[args["ino"]]

    def _getxattr(self, shard, args):
        self._check(args["ino"])
        try:
            return self.xattrs[args["ino"]][args["name"]]
        except KeyError:
            raise errors.NoData("none") from None

    def _listxattr(self, shard, args):
        self._check(args["ino"])
        return list(self.xattrs.get(args["ino"], {}))

    def _setxattr(self, shard, args):
        self._check(args["ino"])
        self.xattrs.setdefault(args["ino"], {})[args["name"]] = args["value"]
        return super()._setxattr(shard, args)

    def _rename(self, shard, args):
        ino = self.dirs[args["parent"]].pop(args["name"])
        old = self.dirs[args["new_parent"]].get(args["new_name"])
        if old is not None:
            self.inodes[old]["nlink"] -= 1
        self._add(args["new_parent"], args["new_name"], ino)
        self.inodes[args["parent"]]["size"] = len(self.dirs[args["parent"]])
        return {"moved": []}

    # Another mount's changes, applied on the shard directly.
    def other_replace(self, parent, name, new_ino):
        """`mv tmp name` on another mount: the old inode lives on only if held open."""
        old = self.dirs[parent][name]
        self.inodes[old]["nlink"] -= 1
        self.make_file(parent, name, new_ino)

    def other_move_aside(self, parent, name, aside_parent, aside, new_ino):
        """`mv name aside && create name` on another mount: the old inode lives on."""
        old = self.dirs[parent].pop(name)
        self._add(aside_parent, aside, old)
        self.make_file(parent, name, new_ino)


def make(nursery):
    cluster = Cluster(nursery)
    meta = Meta(cluster)
    ops = LoomOperations(meta, data=None, attr_timeout=5.0, entry_timeout=5.0,
                         unlink_window=4)
    return cluster, meta, ops


async def listed_dir(cluster, meta, ops, parent, first_ino, count=40, symlinks=False):
    """A directory of `count` files on shard 0 whose listing landed; returns the
    names not yet looked up (each will be answered from the listing)."""
    if parent not in cluster.dirs:
        cluster.make_dir(parent)
    names = names_on_shard(parent, 0, count)
    for i, name in enumerate(names):
        if symlinks:
            cluster.make_symlink(parent, name, first_ino + 2 * i)
        else:
            cluster.make_file(parent, name, first_ino + 2 * i)
    await meta.getattr(parent)
    for name in names[:TRIGGER_MISSES]:
        await ops.lookup(parent, name, Ctx())
    await trio.testing.wait_all_tasks_blocked()
    assert parent in ops.statahead.listings, "listing landed"
    return [(n, first_ino + 2 * i) for i, n in enumerate(names)][TRIGGER_MISSES:]


async def served_lookup(cluster, ops, parent, name):
    before = cluster.count("lookup")
    entry = await ops.lookup(parent, name, Ctx())
    assert cluster.count("lookup") == before, "answered from the listing"
    return entry


async def estale(coro):
    try:
        await coro
    except pyfuse3.FUSEError as exc:
        return exc.errno
    return 0


# -- 1. Concurrent operations: the second one skips the check --------------------

async def test_concurrent_ops_on_a_listed_name_are_all_checked(nursery):
    """Two processes change the same file by the same listed name at once
    (`chmod` and `touch`, parallel tar, make -j).  `_verify_name` pops the
    served record before its lookup's await: the second call finds neither
    `served` nor `wrong` and goes straight on, to the old inode (lost change)
    or, when the old inode is gone, ENOENT (which the kernel does not retry)."""
    cluster, meta, ops = make(nursery)
    (name, ino), *_ = await listed_dir(cluster, meta, ops, A, 1000)
    await served_lookup(cluster, ops, A, name)
    cluster.other_replace(A, name, 5000)  # old ino held open elsewhere: nlink 0
    gate = cluster.gates["lookup"] = trio.Event()
    results = {}

    async def chmod(tag):
        results[tag] = await estale(ops.setattr(ino, Attr(), ModeOnly(), None, Ctx()))

    nursery.start_soon(chmod, "first")
    await trio.testing.wait_all_tasks_blocked()  # first is in its check's lookup
    nursery.start_soon(chmod, "second")
    await trio.testing.wait_all_tasks_blocked()
    gate.set()
    del cluster.gates["lookup"]
    await trio.testing.wait_all_tasks_blocked()
    landed_on_old = cluster.inodes[ino]["mode"] == 0o100600
    assert results == {"first": errno.ESTALE, "second": errno.ESTALE} and not landed_on_old, (
        f"results {results}; the old inode's mode changed: {landed_on_old}")


async def test_concurrent_op_on_a_gone_listed_inode_is_not_enoent(nursery):
    """The same when the old inode is gone: the second call answers ENOENT."""
    cluster, meta, ops = make(nursery)
    (name, ino), *_ = await listed_dir(cluster, meta, ops, A, 1000)
    await served_lookup(cluster, ops, A, name)
    cluster.other_replace(A, name, 5000)
    del cluster.inodes[ino]  # nobody held it
    gate = cluster.gates["lookup"] = trio.Event()
    results = {}

    async def getx(tag):
        results[tag] = await estale(ops.getxattr(ino, b"user.k", Ctx()))

    nursery.start_soon(getx, "first")
    await trio.testing.wait_all_tasks_blocked()
    nursery.start_soon(getx, "second")
    await trio.testing.wait_all_tasks_blocked()
    gate.set()
    del cluster.gates["lookup"]
    await trio.testing.wait_all_tasks_blocked()
    assert results == {"first": errno.ESTALE, "second": errno.ESTALE}, results


# -- 2. `wrong` never cleared when a listing gives the inode again: ESTALE loop ---

# -- 3. Our own rename: the check of the old name says ESTALE --------------------

async def test_own_rename_of_a_listed_name_then_chmod_by_new_name(nursery):
    """This mount renames a file the listing gave (`mv x y`, the kernel moves its
    dentry, no lookup), then chmods y: the check looks up the OLD name x, finds
    nothing, and answers ESTALE and marks the inode wrong, although nothing is
    stale.  A path call is retried by the kernel and lands (one ESTALE, two
    extra shard lookups); an fd-path call (fchownat(O_PATH fd, "", AT_EMPTY_PATH),
    chmod("/proc/self/fd/N"), readlinkat(fd, "")) is retried without a new lookup
    and fails with ESTALE, and so does every further one while `wrong` holds."""
    cluster, meta, ops = make(nursery)
    (name, ino), *_ = await listed_dir(cluster, meta, ops, A, 1000)
    await served_lookup(cluster, ops, A, name)
    await ops.rename(A, name, A, b"renamed", 0, Ctx())
    first = await estale(ops.setattr(ino, Attr(), ModeOnly(), None, Ctx()))
    retried_without_lookup = await estale(ops.setattr(ino, Attr(), ModeOnly(), None, Ctx()))
    assert (first, retried_without_lookup) == (0, 0), (
        f"chmod after our own rename: {errno.errorcode.get(first, first)}, retried on the "
        f"same dentry: {errno.errorcode.get(retried_without_lookup)}; "
        f"wrong={list(ops.statahead.wrong)}")


async def test_own_rename_exchange_of_two_listed_names(nursery):
    """RENAME_EXCHANGE of two listed names by this mount: each check finds the
    other inode under its old name."""
    cluster, meta, ops = make(nursery)
    (n1, i1), (n2, i2), *_ = await listed_dir(cluster, meta, ops, A, 1000)
    await served_lookup(cluster, ops, A, n1)
    await served_lookup(cluster, ops, A, n2)
    # Fake exchange on the shard (the fake has no RENAME_EXCHANGE) + our bookkeeping.
    with ops._changing_names((A, n1), (A, n2)):
        cluster.dirs[A][n1], cluster.dirs[A][n2] = i2, i1
    got = await estale(ops.listxattr(i1, Ctx()))
    assert got == 0, f"listxattr after our own exchange: {errno.errorcode.get(got)}"


# -- 4. open: the served record is consumed, a moved-aside old inode is opened ----

async def test_open_for_write_by_a_listed_name_moved_aside_lands_on_the_old_file(nursery):
    """Another mount did `mv x x.bak && create x`.  chmod/truncate by x are
    checked and land on the new x; open(x, O_WRONLY[|O_TRUNC]) is not checked
    (`open` only catches a gone or unlinked inode, and drops the served record
    so nothing checks later): the write and O_TRUNC land on x.bak."""
    cluster, meta, ops = make(nursery)
    (name, ino), *_ = await listed_dir(cluster, meta, ops, A, 1000)
    await served_lookup(cluster, ops, A, name)
    cluster.other_move_aside(A, name, A, b"x.bak", 5000)
    got = await estale(ops.open(ino, os.O_WRONLY, Ctx()))
    assert got == errno.ESTALE, (
        f"open for writing by the replaced listed name opened the moved-aside old "
        f"inode {ino} (now A/x.bak): {errno.errorcode.get(got, got)}")


# -- 5. Costs ---------------------------------------------------------------------

async def test_following_listed_symlinks_costs_no_extra_lookup(nursery):
    """A walk over a directory of symlinks (git-annex / DVC datasets, .so links):
    each stat follows the link, so the kernel sends READLINK right after the
    lookup; the check turns each listing hit back into a shard lookup."""
    cluster, meta, ops = make(nursery)
    rest = await listed_dir(cluster, meta, ops, A, 1000, symlinks=True)
    before = cluster.count("lookup")
    for name, ino in rest:
        await ops.lookup(A, name, Ctx())
        await ops.readlink(ino, Ctx())
    extra = cluster.count("lookup") - before
    assert extra == 0, (f"{extra} shard lookups for {len(rest)} stats of listed symlinks "
                        f"(stat-ahead saved nothing)")

async def test_fd_call_on_a_file_open_here_skips_check_and_wrong(nursery):
    """fchmod/fsetxattr on a file open on any handle of this mount (fh None for
    fchmod): `ino in self.files` comes first, also when the inode is `wrong`."""
    cluster, meta, ops = make(nursery)

    class Data:  # what setattr's flush of an open file needs
        async def drain(self, fd):
            pass

        def take_error(self, fd):
            return None

    ops.data = Data()
    (name, ino), *_ = await listed_dir(cluster, meta, ops, A, 1000)
    await served_lookup(cluster, ops, A, name)
    fi = await ops.open(ino, os.O_RDONLY, Ctx())
    ops.statahead.found_wrong(ino, 0.0)
    cluster.other_replace(A, name, 5000)
    assert await estale(ops.setattr(ino, Attr(), ModeOnly(), None, Ctx())) == 0
    assert await estale(ops.setxattr(ino, b"user.k", b"v", Ctx())) == 0
    assert fi.fh in ops.handles


async def test_replaced_name_retry_reaches_shard_and_lands_on_new_file(nursery):
    """The commit's main case: ESTALE, the retry's lookup reaches the shard (the
    inode's names left every listing) and the call lands on the new file; a
    second name of the old inode recovers with one retry (shard lookup confirms)."""
    cluster, meta, ops = make(nursery)
    (name, ino), *_ = await listed_dir(cluster, meta, ops, A, 1000)
    await served_lookup(cluster, ops, A, name)
    cluster._add(A, b"z", ino)
    cluster.inodes[ino]["nlink"] += 1
    cluster.other_replace(A, name, 5000)
    assert await estale(ops.setattr(ino, Attr(), ModeOnly(), None, Ctx())) == errno.ESTALE
    before = cluster.count("lookup")
    entry = await ops.lookup(A, name, Ctx())
    assert entry.st_ino == 5000 and cluster.count("lookup") == before + 1
    assert await estale(ops.setattr(5000, Attr(), ModeOnly(), None, Ctx())) == 0
    assert cluster.inodes[5000]["mode"] == 0o100600
    # by z: one ESTALE, then the retry's lookup confirms
    assert await estale(ops.listxattr(ino, Ctx())) == errno.ESTALE
    await ops.lookup(A, b"z", Ctx())
    assert await estale(ops.listxattr(ino, Ctx())) == 0


async def test_an_inode_found_wrong_is_not_answered_from_a_listing_again(nursery):
    """`mv A/x B/x.bak && create A/x` elsewhere: A/x's check marks the old inode
    wrong; B's listing, fetched after, holds x.bak -> that inode.  The kernel's
    lookup of B/x.bak must reach a shard (which clears the mark), not loop on
    ESTALE through the listing."""
    cluster, meta, ops = make(nursery)
    cluster.make_dir(B)
    (name, ino), *_ = await listed_dir(cluster, meta, ops, A, 1000)
    await served_lookup(cluster, ops, A, name)
    cluster.other_move_aside(A, name, B, b"x.bak", 5000)
    assert await estale(ops.setattr(ino, Attr(), ModeOnly(), None, Ctx())) == errno.ESTALE
    await listed_dir(cluster, meta, ops, B, 3000)
    before = cluster.count("lookup")
    entry = await ops.lookup(B, b"x.bak", Ctx())
    assert entry.st_ino == ino and cluster.count("lookup") == before + 1
    assert await estale(ops.setattr(ino, Attr(), ModeOnly(), None, Ctx())) == 0


async def test_own_rename_of_a_listed_name_needs_no_retry(nursery):
    cluster, meta, ops = make(nursery)
    (name, ino), *_ = await listed_dir(cluster, meta, ops, A, 1000)
    await served_lookup(cluster, ops, A, name)
    await ops.rename(A, name, A, b"renamed", 0, Ctx())
    assert await estale(ops.setattr(ino, Attr(), ModeOnly(), None, Ctx())) == 0
    assert cluster.inodes[ino]["mode"] == 0o100600
