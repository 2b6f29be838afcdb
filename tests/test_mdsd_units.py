"""Units: key encoders, the store's group commit, the transaction engine on one
shard, and two-phase-commit recovery between two in-process shards."""

import os
import stat

import pytest
import trio
import trio.testing

from loomproto import errors
from mdsd import apply, recovery, schema, txn
from mdsd.store import Store, StoreError
from test_mdsd_harness import ROOT, MdsCluster, name_on_shard, no_log_warnings  # noqa: F401


def test_key_encoders_sort_numerically():
    assert schema.inode_key(1) == ("inode", b"\0" * 7 + b"\1")
    assert schema.inode_key(255)[1] < schema.inode_key(256)[1]
    assert schema.dentry_key(5, b"ab") == ("dentry", schema.be64(5) + b"ab")
    db, key = schema.dirseq_key(7, 300)
    assert db == "dirseq" and schema.dirseq_parse(key) == (7, 300)
    assert schema.dirseq_key(7, 2)[1] < schema.dirseq_key(7, 10)[1] < schema.dirseq_key(8, 1)[1]
    assert schema.lock_key(("inode", b"k")) == ("lock", b"inode\0k")
    assert schema.unpack_share(None) == schema.empty_share()
    assert schema.unpack_dentry(schema.pack_dentry(9, stat.S_IFDIR, 3)) == (9, stat.S_IFDIR, 3)


async def test_store_group_commit_isolates_failures(tmp_path):
    store = await Store.open(str(tmp_path / "db"))
    try:
        def good(i, txn):
            txn.put(schema.be64(i), b"v", db=store.dbs["inode"])
            return i

        def bad(txn):
            txn.put(b"bad", b"v", db=store.dbs["inode"])
            raise errors.Exists("no")

        results = []

        async def one(fn):
            try:
                results.append(await store.write(fn))
            except errors.Exists:
                results.append("exists")

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, lambda txn, i=i: good(i, txn))
            nursery.start_soon(one, bad)
        assert sorted(r for r in results if r != "exists") == list(range(50))
        assert results.count("exists") == 1
        assert store.get(("inode", b"bad")) is None
        assert store.entries("inode") == 50
    finally:
        store.close()


async def test_store_refuses_other_format(tmp_path):
    path = str(tmp_path / "db")
    store = await Store.open(path)
    await store.write(lambda txn: txn.put(schema.SYS_FORMAT, b"99", db=store.dbs["sys"]))
    store.close()
    with pytest.raises(StoreError, match="format"):
        await Store.open(path)


async def test_local_commit_validates_reads_and_locks(tmp_path):
    store = await Store.open(str(tmp_path / "db"))
    try:
        key = schema.inode_key(4)
        await store.write(lambda txn: apply.commit_local(
            store, [], [["put", "inode", key[1], b"one"]], None, "r", txn))
        stale = [["inode", key[1], None]]
        with pytest.raises(errors.Conflict):
            await store.write(lambda txn: apply.commit_local(store, stale, [], None, "r", txn))
        txid = os.urandom(16)
        await store.write(lambda txn: apply.prepare(
            store, txid, 1, 1, [["inode", key[1], b"one"]],
            [["put", "inode", key[1], b"two"]], txn))
        with pytest.raises(errors.Conflict, match="locked"):
            await store.write(lambda txn: apply.commit_local(
                store, [], [["put", "inode", key[1], b"three"]], None, "r", txn))
        assert store.get(key) == b"one"
        assert await store.write(lambda txn: apply.finish_prepared(store, txid, True, txn))
        assert store.get(key) == b"two"
        assert store.entries("lock") == 0 and store.entries("prepared") == 0
        rid = os.urandom(16)
        await store.write(lambda txn: apply.commit_local(store, [], [], rid, {"x": 1}, txn))
        with pytest.raises(apply.AlreadyDone):
            await store.write(lambda txn: apply.commit_local(store, [], [], rid, {}, txn))
    finally:
        store.close()


async def test_retry_racing_its_first_attempt_answers_with_its_reply(tmp_path, nursery):
    """A client retry (same rid) whose body ran into the first attempt's effects
    answers with the stored reply, not with the error those effects cause."""
    mds = MdsCluster(tmp_path, nursery, 1)
    await mds.start_all()
    engine = mds.handles[0].shard.engine
    key = schema.xattr_key(ROOT, b"user.once")
    rid = os.urandom(16)
    first_done = trio.Event()

    async def first(tx):
        tx.put(0, key, b"v")
        return {"made": True}

    async def retry(tx):  # already past the stored-reply check when it waits
        await first_done.wait()
        if await tx.read(0, key) is not None:
            raise errors.Exists("made by the first attempt")
        return await first(tx)

    answers = []

    async def run_retry():
        answers.append(await engine.run(retry, rid))

    async with trio.open_nursery() as inner:
        inner.start_soon(run_retry)
        await trio.testing.wait_all_tasks_blocked()
        assert await engine.run(first, rid) == {"made": True}
        first_done.set()
    assert answers == [{"made": True}]
    with pytest.raises(errors.Exists):  # without a request id the error stands
        await engine.run(retry)


@pytest.fixture
def fast_recovery(monkeypatch):
    monkeypatch.setattr(recovery, "RESOLVE_AFTER", 0.2)
    monkeypatch.setattr(recovery, "SCAN_INTERVAL", 0.05)


async def _wait_for(predicate, seconds=10.0):
    with trio.fail_after(seconds):
        while not await predicate():
            await trio.sleep(0.02)  # polls the predicate, under fail_after


async def test_orphaned_prepare_is_aborted_and_unlocks(tmp_path, nursery, fast_recovery):
    mds = MdsCluster(tmp_path, nursery, 2)
    await mds.start_all()
    f = await mds.create(ROOT, name_on_shard(mds, ROOT, 1))
    key = schema.xattr_key(f["ino"], b"user.k")
    prepare = {"txid": os.urandom(16), "coord": 0, "reads": [],
               "mutations": [["put", key[0], key[1], b"never"]]}
    await mds.client(1).call("txn_prepare", prepare)  # coordinator 0 never heard of it
    await mds.call_ino("setxattr", f["ino"], name=b"user.k", value=b"mine", flags=0)
    assert await mds.call_ino("getxattr", f["ino"], name=b"user.k") == b"mine"
    info = await mds.client(1).call("shard_info", {})
    assert info["inodes"] >= 1


async def test_lost_commit_is_redriven(tmp_path, nursery, fast_recovery):
    mds = MdsCluster(tmp_path, nursery, 2)
    await mds.start_all()
    engine = mds.handles[0].shard.engine
    real = engine.commit_participants
    dropped = []

    async def drop_first(txid, remote):
        if not dropped:
            dropped.append(txid)
            return False  # as if every txn_commit message were lost
        return await real(txid, remote)

    engine.commit_participants = drop_first
    d = await mds.mkdir(ROOT, name_on_shard(mds, ROOT, 0, "d"))
    name = name_on_shard(mds, d["ino"], 1)
    await mds.call_entry("mknod", d["ino"], name, mode=0o100644, uid=0, gid=0)
    # rmdir from shard 0 kills the share on shard 1 too: a two-phase commit.
    with pytest.raises(errors.NotEmpty):
        await mds.rmdir(ROOT, name_on_shard(mds, ROOT, 0, "d"))
    await mds.unlink(d["ino"], name)
    await mds.rmdir(ROOT, name_on_shard(mds, ROOT, 0, "d"))
    assert dropped

    async def settled():
        return mds.handles[0].shard.store.entries("decided") == 0 and \
            mds.handles[1].shard.store.entries("prepared") == 0

    await _wait_for(settled)
    with pytest.raises(errors.NotFound):
        await mds.call_entry("mknod", d["ino"], b"late", mode=0o100644, uid=0, gid=0)


async def test_prepared_txn_survives_participant_restart(tmp_path, nursery, fast_recovery):
    mds = MdsCluster(tmp_path, nursery, 2)
    await mds.start_all()
    f = await mds.create(ROOT, name_on_shard(mds, ROOT, 1))
    key = schema.xattr_key(f["ino"], b"user.k")
    txid = os.urandom(16)
    await mds.client(1).call("txn_prepare", {"txid": txid, "coord": 0, "reads": [],
                                             "mutations": [["put", key[0], key[1], b"v"]]})
    await mds.stop(1)
    await mds.start(1)

    async def resolved():
        return mds.handles[1].shard.store.entries("prepared") == 0

    await _wait_for(resolved)
    with pytest.raises(errors.NoData):
        await mds.call_ino("getxattr", f["ino"], name=b"user.k")


def test_statfs_space_counts_a_shared_filesystem_once():
    from mdsd.service import space_of

    class Osd:
        def __init__(self, capacity, used, fs="", fs_size=0, fs_free=0):
            self.capacity, self.used = capacity, used
            self.fs, self.fs_size, self.fs_free = fs, fs_size, fs_free

    disk = dict(fs="m:1", fs_size=1000, fs_free=300)
    # Four OSDs on one 1000-byte disk with 300 left: the disk counts once.
    assert space_of([Osd(1000, 100, **disk) for _ in range(4)]) == (1000, 300)
    # --capacity below the disk: each OSD stops at its own, the disk at what it has.
    assert space_of([Osd(200, 150, **disk), Osd(200, 0, **disk)]) == (400, 250)
    assert space_of([Osd(200, 0, **disk) for _ in range(3)]) == (600, 300)
    # Two disks, and an OSD that reported no filesystem (capacity less used).
    other = dict(fs="m:2", fs_size=500, fs_free=500)
    assert space_of([Osd(1000, 0, **disk), Osd(500, 0, **other), Osd(80, 30)]) == \
        (1580, 850)


async def test_a_lookup_reads_a_name_a_prepared_transaction_changes_as_committed(
        tmp_path, nursery, monkeypatch):
    """A prepared transaction holds a name on a participant (the source name of a
    cross-shard rename, both names of a RENAME_EXCHANGE) until the commit reaches it,
    after the coordinator applied its part: a lookup there waits for the outcome
    instead of reading the name as it was.  (A prepare made by hand here, changing
    the name to another inode.)"""
    monkeypatch.setattr(txn, "SETTLE_SECONDS", 30.0)  # the commit comes when it comes
    mds = MdsCluster(tmp_path, nursery, 2)
    await mds.start_all()
    name = name_on_shard(mds, ROOT, 1)
    old = await mds.create(ROOT, name)
    new = await mds.create(ROOT, name_on_shard(mds, ROOT, 1, "tmp"))
    key = schema.dentry_key(ROOT, name)
    _, type_bits, seq = schema.unpack_dentry(mds.handles[1].shard.store.get(key))
    txid = os.urandom(16)
    await mds.client(1).call("txn_prepare", {
        "txid": txid, "coord": 0, "reads": [],
        "mutations": [["put", key[0], key[1], schema.pack_dentry(new["ino"], type_bits, seq)]]})
    held = trio.Event()
    real_get_many = txn._get_many

    def get_many(dbs, keys, lmdb_txn):
        values = real_get_many(dbs, keys, lmdb_txn)
        if keys[-1] == schema.lock_key(key) and values[-1] is not None:
            held.set()  # the lookup found the name held
        return values

    monkeypatch.setattr(txn, "_get_many", get_many)
    found = []

    async def look():
        found.append(await mds.call_entry("lookup", ROOT, name))

    async with trio.open_nursery() as inner:
        inner.start_soon(look)
        with trio.fail_after(10):
            await held.wait()
        assert not found
        await mds.client(1).call("txn_commit", {"txid": txid})
    assert found[0]["ino"] == new["ino"] != old["ino"]


async def test_a_lookup_waits_a_bounded_time_for_a_prepared_transaction(
        tmp_path, nursery, monkeypatch):
    """A coordinator that died decides only once it is back: until then a lookup of
    the name gives what is committed, after SETTLE_SECONDS."""
    monkeypatch.setattr(txn, "SETTLE_SECONDS", 0.2)
    mds = MdsCluster(tmp_path, nursery, 2)
    await mds.start_all()
    name = name_on_shard(mds, ROOT, 1)
    old = await mds.create(ROOT, name)
    key = schema.dentry_key(ROOT, name)
    await mds.client(1).call("txn_prepare", {
        "txid": os.urandom(16), "coord": 0, "reads": [],
        "mutations": [["del", key[0], key[1]]]})
    started = trio.current_time()
    assert (await mds.call_entry("lookup", ROOT, name))["ino"] == old["ino"]
    assert 0.2 <= trio.current_time() - started < 5


@pytest.mark.parametrize("held", [False, True], ids=["old-gone", "old-held-open"])
async def test_a_lookup_follows_a_name_replaced_between_its_two_reads(
        tmp_path, nursery, monkeypatch, held):
    """The name read, then a rename over it commits before the inode is read (on
    another shard, a round trip later): the old inode is gone, and the lookup reads
    the name again instead of answering ENOENT for a name that exists.  Held open
    (`held`), the old inode lives on with no name, and the lookup gave it: its open
    then answered ESTALE, again after the kernel's retry (a tester's churn run)."""
    from mdsd import ops_attr
    mds = MdsCluster(tmp_path, nursery, 2)
    await mds.start_all()
    name = name_on_shard(mds, ROOT, 0)
    old = await mds.create(ROOT, name)
    if held:
        await mds.call_ino("open", old["ino"], session=7, flags=0)
    new = await mds.create(ROOT, name_on_shard(mds, ROOT, 1, "tmp"))
    real_getattr = ops_attr.getattr
    replaced = []

    async def getattr_after_a_rename(ns, args):
        if args["ino"] == old["ino"] and not replaced:
            replaced.append(True)
            await mds.rename(ROOT, name_on_shard(mds, ROOT, 1, "tmp"), ROOT, name)
        return await real_getattr(ns, args)

    monkeypatch.setattr(ops_attr, "getattr", getattr_after_a_rename)
    assert (await mds.lookup(ROOT, name))["ino"] == new["ino"]
    assert replaced
