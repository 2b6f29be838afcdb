"""xattrs, setstripe, the cluster map, sessions, statfs and the command line."""

import os
import signal
import subprocess
import sys
import threading
from functools import partial

import pytest
import trio

from loomproto import errors, rpc
from loomproto.config import create as create_config
from loomproto.layout import Layout
from mdsd.main import serve_shard
from mdsd.store import StoreError
from test_mdsd_harness import ROOT, MdsCluster, free_ports, no_log_warnings  # noqa: F401


@pytest.fixture
async def mds(tmp_path, nursery):
    cluster = MdsCluster(tmp_path, nursery, 2, down_after=0.3)
    await cluster.start_all()
    return cluster


async def test_xattr_flags_and_values(mds):
    f = await mds.create(ROOT, b"x")
    ino = f["ino"]
    call = mds.call_ino
    with pytest.raises(errors.NoData):
        await call("getxattr", ino, name=b"user.a")
    with pytest.raises(errors.NoData):
        await call("setxattr", ino, name=b"user.a", value=b"1", flags=2)
    await call("setxattr", ino, name=b"user.a", value=b"", flags=1)
    with pytest.raises(errors.Exists):
        await call("setxattr", ino, name=b"user.a", value=b"2", flags=1)
    await call("setxattr", ino, name=b"user.a", value=b"\0bin\0", flags=2)
    assert await call("getxattr", ino, name=b"user.a") == b"\0bin\0"
    await call("setxattr", ino, name=b"user.b", value=b"", flags=0)
    assert await call("getxattr", ino, name=b"user.b") == b""
    assert sorted(await call("listxattr", ino)) == [b"user.a", b"user.b"]
    await call("removexattr", ino, name=b"user.a")
    with pytest.raises(errors.NoData):
        await call("removexattr", ino, name=b"user.a")
    with pytest.raises(errors.Range):
        await call("setxattr", ino, name=b"n" * 256, value=b"", flags=0)
    with pytest.raises(errors.Range):
        await call("setxattr", ino, name=b"user.big", value=b"v" * 65537, flags=0)
    assert (await mds.getattr(ino))["ctime"] > f["ctime"]
    with pytest.raises(errors.NotFound):
        await call("getxattr", ino + 1000, name=b"user.a")


async def test_setstripe(mds):
    d = await mds.mkdir(ROOT, b"striped")
    out = await mds.call_ino("setstripe", d["ino"], layout=[1 << 16, 8, 3])
    assert out["layout"] == [1 << 16, 8, 3]
    with pytest.raises(errors.Invalid):
        await mds.call_ino("setstripe", d["ino"], layout=[1000, 8, 3])
    f = await mds.create(ROOT, b"file")
    with pytest.raises(errors.NotDir):
        await mds.call_ino("setstripe", f["ino"], layout=[1 << 16, 8, 3])


@pytest.mark.allow_log_errors  # "osd 3 marked down" is expected
async def test_cluster_map_heartbeats_and_down(mds):
    mds0 = mds.client(0)
    first = await mds0.call("get_map", {})
    hb = {"id": 3, "addr": "127.0.0.1:9", "host": "h", "capacity": 1000, "used": 10}
    epoch = (await mds0.call("osd_heartbeat", hb))["epoch"]
    assert epoch == first["epoch"] + 1
    assert (await mds0.call("osd_heartbeat", hb))["epoch"] == epoch
    with trio.fail_after(5):
        down = await mds0.call("watch_map", {"epoch": epoch, "timeout": 5})
    assert down["epoch"] == epoch + 1 and not down["osds"][0]["up"]
    out = await mds0.call("osd_set", {"id": 3, "in": False})
    assert out["epoch"] == epoch + 2 and not out["osds"][0]["in"]
    quick = await mds0.call("watch_map", {"epoch": out["epoch"], "timeout": 0.05})
    assert quick["epoch"] == out["epoch"]
    with pytest.raises(errors.Invalid):
        await mds.client(1).call("get_map", {})
    stats = await mds.client(1).call("statfs", {})
    assert stats["bytes_total"] == 1000 and stats["inodes_used"] >= 1
    await mds.stop(0)
    await mds.start(0)
    again = await mds.client(0).call("get_map", {})
    assert again["epoch"] >= out["epoch"]
    assert not again["osds"][0]["up"] and not again["osds"][0]["in"]


@pytest.mark.allow_log_errors  # "osd 3 marked down" is expected
async def test_a_restarted_mds0_keeps_osds_up_until_they_fall_silent(tmp_path, nursery):
    """mdsd 0 marked every OSD down when it started, and clients then saw every
    replica down: each restart stalled writes and made them single-copy (a
    tester's report).  An OSD that was up stays up, at the same epoch, and one
    that sends no heartbeat is marked down after down_after, as before."""
    mds = MdsCluster(tmp_path, nursery, 1, down_after=3.0)  # room for a slow machine
    await mds.start_all()
    mds0 = mds.client(0)
    hb = {"id": 3, "addr": "127.0.0.1:9", "host": "h", "capacity": 1000, "used": 10}
    epoch = (await mds0.call("osd_heartbeat", hb))["epoch"]
    await mds.stop(0)
    await mds.start(0)
    mds0 = mds.client(0)
    again = await mds0.call("get_map", {})
    assert again["epoch"] == epoch and again["osds"][0]["up"]
    assert (await mds0.call("osd_heartbeat", hb))["epoch"] == epoch  # nothing changed
    with trio.fail_after(15):
        down = await mds0.call("watch_map", {"epoch": epoch, "timeout": 15})
    assert down["epoch"] == epoch + 1 and not down["osds"][0]["up"]


async def test_osd_set_refuses_a_placement_that_changed_since_it_was_checked(mds):
    """`loomfs osd in|out` sends the placement it found settled: a change that came
    between its check and its own (another operator's) refuses it, so two
    placement changes never overlap.  A malformed placement is refused as such."""
    mds0 = mds.client(0)
    for osd_id, host in ((3, "a"), (4, "b")):
        await mds0.call("osd_heartbeat", {"id": osd_id, "addr": f"127.0.0.1:{9 + osd_id}",
                                          "host": host, "capacity": 1000, "used": 0})
    checked = [[3, "a"], [4, "b"]]
    out = await mds0.call("osd_set", {"id": 4, "in": False, "placement": checked})
    assert [o["in"] for o in out["osds"]] == [True, False]
    with pytest.raises(errors.TryAgain, match=r"placement changed .* osds \[3\] in"):
        await mds0.call("osd_set", {"id": 3, "in": False, "placement": checked})
    for bad in ([[3]], [["3", "a"]], [[True, "a"]], "3a", [[3, 4]]):
        with pytest.raises(errors.BadRequest):
            await mds0.call("osd_set", {"id": 3, "in": False, "placement": bad})
    after = await mds0.call("get_map", {})
    assert [o["in"] for o in after["osds"]] == [True, False]
    await mds0.call("osd_set", {"id": 3, "in": False, "placement": [[3, "a"]]})


@pytest.mark.parametrize("addr", ["garbage", "127.0.0.1:", ":9", "127.0.0.1:0",
                                  "127.0.0.1:70000", "127.0.0.1:9x", "a..b:7000",
                                  "x" * 64 + ":7000"])
async def test_a_heartbeat_with_a_bad_address_is_refused(mds, addr):
    """A bad address in the map made every OSD that tried it exit (its recovery pass
    raised ValueError from the RPC layer): it is refused at the door."""
    mds0 = mds.client(0)
    before = await mds0.call("get_map", {})
    with pytest.raises(errors.BadRequest):
        await mds0.call("osd_heartbeat", {"id": 3, "addr": addr, "host": "h"})
    assert (await mds0.call("get_map", {})) == before


@pytest.mark.parametrize("addr", ["garbage", "a..b:7000", "x" * 64 + ":7000"])
async def test_a_bad_address_is_a_transport_error(nursery, addr):
    client = rpc.RpcClient(nursery, addr, "cluster", b"k" * 32, "test")
    with pytest.raises(errors.TransportError):
        await client.call("get_map", {})


async def test_session_expiry_drops_opens(tmp_path, nursery):
    mds = MdsCluster(tmp_path, nursery, 1, session_timeout=0.3, reclaim_grace=0)
    await mds.start_all()
    f = await mds.create(ROOT, b"held")
    lease = await mds.client(0).call("session_renew", {"session": b"s", "inos": [f["ino"]]})
    assert lease["lease"] == 0.3
    await mds.unlink(ROOT, b"held")
    with trio.fail_after(10):
        while True:
            try:
                await mds.getattr(f["ino"])
            except errors.NotFound:
                break
            await trio.sleep(0.05)  # polls until the inode is gone, under fail_after


def _run_mdsd(cfg, data, *extra):
    cmd = [sys.executable, "-m", "mdsd.main", "--cluster", cfg, "--id", "0", "--data", data,
           *extra]
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def test_command_line_serves_and_stops_on_sigterm(tmp_path):
    port = free_ports(1)[0]
    cfg = create_config(str(tmp_path / "cfg"), [f"127.0.0.1:{port}"], Layout())
    proc = _run_mdsd(cfg, str(tmp_path / "data"))
    try:
        with trio.fail_after(20):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    await stream.aclose()
                    break
                except OSError:
                    assert proc.poll() is None, proc.stderr.read()
                    await trio.sleep(0.05)  # polls for the port, under fail_after
        proc.send_signal(signal.SIGTERM)
        rc = await trio.to_thread.run_sync(proc.wait, 20)
        assert rc == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_mark_tail_checks_its_inode(mds):
    f = await mds.create(ROOT, b"tailed")
    assert await mds.call_ino("mark_tail", f["ino"]) == {}
    with pytest.raises(errors.BadRequest):
        await mds.client(0).call("mark_tail", {"ino": "x"})
    elsewhere = 1 - mds.ino_shard(f["ino"])
    with pytest.raises(errors.Invalid):
        await mds.client(elsewhere).call("mark_tail", {"ino": f["ino"]})


async def test_a_commit_that_writes_nothing_says_so(mds):
    """A client takes a reply's gen for a step of its own commit (client.ops
    _own_change): a commit another client's later one already covers must say
    that it wrote nothing, or the client would keep stale pages."""
    f = await mds.create(ROOT, b"committed")
    now = f["mtime"]
    first = await mds.call_ino("commit_size", f["ino"], size=100, mtime=now + 1000)
    assert "unchanged" not in first
    later = await mds.call_ino("commit_size", f["ino"], size=100, mtime=now + 3000)
    assert later["gen"] == first["gen"] + 1 and "unchanged" not in later
    covered = await mds.call_ino("commit_size", f["ino"], size=50, mtime=now + 2000)
    assert covered["unchanged"] and covered["gen"] == later["gen"]


async def _until(predicate, what: str, seconds: float = 10):
    """Poll `predicate` until it holds; fail, naming `what`, after `seconds`."""
    deadline = trio.current_time() + seconds
    while not predicate():
        if trio.current_time() > deadline:
            raise AssertionError(f"still waiting after {seconds:g}s for {what}")
        await trio.sleep(0.01)  # polls the condition, up to the deadline above


async def _record(outcome: dict, key: str, fn, *args):
    """outcome[key] = what fn(*args) returns or raises (a LoomError)."""
    try:
        outcome[key] = await fn(*args)
    except errors.LoomError as exc:
        outcome[key] = exc


async def _all_held(nursery, outcome: dict, others: dict, event, what: str):
    """Start each of `others` (key -> (fn, *args)), recording into `outcome`,
    which holds only the held change's own answer-to-be; all must come to wait
    on `event` (the held change's end, mdsd.removals), none answer."""
    for key, (fn, *args) in others.items():
        nursery.start_soon(_record, outcome, key, fn, *args)
    await _until(lambda: len(outcome) == len(others) + 1
                 or event.statistics().tasks_waiting >= len(others), "all to answer or wait")
    assert not outcome, f"answered before the {what} committed: {outcome}"


def _hold_commits(shard, monkeypatch) -> threading.Event:
    """The shard's writer thread waits before each commit until the event is set."""
    gate = threading.Event()
    real = shard.store._run_batch

    def held(batch):
        gate.wait(20)
        real(batch)

    monkeypatch.setattr(shard.store, "_run_batch", held)
    return gate


async def test_an_open_racing_an_unlink_waits_for_its_commit(tmp_path, nursery, monkeypatch):
    """An unlink decides to drop an inode nobody has open, then commits; an open that
    came in between used to register and read the inode still there, and its client
    was left holding an inode the commit then dropped (a tester's report: reads of
    ENOENT, or of zeros, on a file open since before the unlink returned).  Now the
    open waits for that commit and finds the inode gone."""
    mds = MdsCluster(tmp_path, nursery, 1, reclaim_grace=0)
    await mds.start_all()
    shard = mds.handles[0].shard
    ino = (await mds.create(ROOT, b"racing"))["ino"]
    with trio.fail_after(10):
        while not shard.sessions.settled:
            await trio.sleep(0.01)  # polls the flag reclaim sets, under fail_after

    gate = _hold_commits(shard, monkeypatch)
    outcome = {}

    async def unlink():
        outcome["unlink"] = await mds.unlink(ROOT, b"racing")

    async def open_():
        try:
            outcome["open"] = await mds.call_ino("open", ino, session=b"s", flags=0)
        except errors.NotFound as exc:
            outcome["open"] = exc

    try:
        nursery.start_soon(unlink)
        await _until(lambda: ino in shard.sessions._dropping, "the drop to be decided")
        ended = shard.sessions._dropping[ino][1]
        # The open waits for the unlink received (mdsd.removals), or for the drop.
        removal = shard.ns.removals._inos.get(ino, ended)
        nursery.start_soon(open_)
        await _until(lambda: "open" in outcome or ended.statistics().tasks_waiting
                     or removal.statistics().tasks_waiting, "the open to answer or wait")
        assert "open" not in outcome, f"open answered before the unlink committed: {outcome}"
    finally:
        gate.set()
    await _until(lambda: len(outcome) == 2, "both to answer once the commit is let go")
    assert isinstance(outcome["open"], errors.NotFound), outcome
    assert not shard.sessions.is_open(ino) and not shard.sessions._dropping


async def test_requests_about_a_name_being_unlinked_wait_for_its_commit(tmp_path, nursery,
                                                                       monkeypatch):
    """A client may answer an unlink before its commit (client.behind) and its
    application may tell another machine at once.  From its arrival until it
    commits, the unlink holds back every other request about its name (lookup,
    create, rename onto it), its inode (getattr, open) and its directory's listing
    (mdsd.removals); before, they read the entry still there: the other mount's
    create failed with EEXIST, or its open reached the old file, whose name the
    commit then removed, and the bytes written to it were lost (a tester's report)."""
    mds = MdsCluster(tmp_path, nursery, 1)
    await mds.start_all()
    shard = mds.handles[0].shard
    old = (await mds.create(ROOT, b"ckpt"))["ino"]
    await mds.create(ROOT, b"next")
    gate = _hold_commits(shard, monkeypatch)
    outcome = {}

    others = {
        "lookup": (mds.lookup, ROOT, b"ckpt"),
        "create": (mds.create, ROOT, b"ckpt"),
        "rename": (mds.rename, ROOT, b"next", ROOT, b"ckpt"),
        "getattr": (mds.getattr, old),
        "open": (partial(mds.call_ino, session=b"s", flags=0), "open", old),
        "readdir": (mds.call_ino, "readdir", ROOT),
    }
    removals = shard.ns.removals
    try:
        nursery.start_soon(_record, outcome, "unlink",
                           partial(mds.call_entry, early=True), "unlink", ROOT, b"ckpt")
        await _until(lambda: old in removals._inos, "the unlink to read its entry")
        await _all_held(nursery, outcome, others, removals._inos[old], "unlink")
    finally:
        gate.set()
    await _until(lambda: len(outcome) == len(others) + 1,
                 "all to answer once the commit is let go", 20)
    assert isinstance(outcome["getattr"], errors.NotFound), outcome
    assert isinstance(outcome["open"], errors.NotFound), outcome
    assert old not in {e[2]["ino"] for e in outcome["readdir"]["entries"]}, outcome
    # The lookup, the create and the rename onto the name came after the unlink: the
    # lookup finds nothing or what one of the others put there, never the old file.
    assert not isinstance(outcome["create"], errors.LoomError) \
        or not isinstance(outcome["rename"], errors.LoomError), outcome
    assert isinstance(outcome["lookup"], errors.NotFound) \
        or outcome["lookup"]["ino"] != old, outcome
    assert not removals._names and not removals._inos and not removals._dirs


async def test_a_rename_coordinated_elsewhere_waits_for_an_early_unlink(tmp_path, nursery,
                                                                       monkeypatch):
    """The rename's target names another shard, which coordinates it; its prepare on
    the shard where the source is being unlinked (answered early) conflicts until
    that commit, and the rename then finds no source (a reviewer's case: it could
    win, and the file the first client was told is gone lived on)."""
    mds = MdsCluster(tmp_path, nursery, 2)
    await mds.start_all()
    src = next(n for n in (b"s%d" % i for i in range(100)) if mds.entry_shard(ROOT, n) == 0)
    dst = next(n for n in (b"d%d" % i for i in range(100)) if mds.entry_shard(ROOT, n) == 1)
    await mds.create(ROOT, src)
    shard = mds.handles[0].shard
    outcome = {}

    gate = _hold_commits(shard, monkeypatch)
    try:
        nursery.start_soon(_record, outcome, "unlink", partial(mds.call_entry, early=True),
                           "unlink",
                           ROOT, src)
        await _until(lambda: (ROOT, src) in shard.ns.removals._names, "the unlink to arrive")
        nursery.start_soon(_record, outcome, "rename", mds.rename, ROOT, src, ROOT, dst)
        held = shard.ns.removals._names[(ROOT, src)][-1]
        await _until(lambda: "rename" in outcome or held.statistics().tasks_waiting
                     or _conflicted(mds), "the rename to answer or retry")
        assert "rename" not in outcome, outcome
    finally:
        gate.set()
    await _until(lambda: len(outcome) == 2, "both to answer once the commit is let go", 20)
    assert isinstance(outcome["rename"], errors.NotFound), outcome
    with pytest.raises(errors.NotFound):
        await mds.lookup(ROOT, dst)


async def test_a_malformed_early_unlink_holds_nothing_back(mds):
    """An early unlink is counted as it is read, before its handler checks it; one
    that fails its checks (or whose connection goes) must still be uncounted, or
    every later lookup on the shard would wait for it forever."""
    await mds.create(ROOT, b"kept")
    for bad in ({"name": b"n" * 300}, {"parent": 0}, {"rid": b"short"}):
        args = {"parent": ROOT, "name": b"kept", "rid": os.urandom(16), "early": True, **bad}
        with pytest.raises(errors.LoomError):
            await mds.client(mds.entry_shard(ROOT, b"kept")).call("unlink", args)
    with trio.fail_after(5):
        assert (await mds.lookup(ROOT, b"kept"))["nlink"] == 1
    assert all(not h.shard.ns.removals._arriving for h in mds.handles.values())


async def test_a_second_unlink_of_a_name_holds_only_that_name(tmp_path, nursery,
                                                             monkeypatch):
    """Two early unlinks of one name (two mounts, or a resend): the second queues
    behind the first without holding every other request of the shard (a
    reviewer saw an unrelated getattr wait for the first one's commit)."""
    mds = MdsCluster(tmp_path, nursery, 1)
    await mds.start_all()
    shard = mds.handles[0].shard
    other = (await mds.create(ROOT, b"other"))["ino"]
    await mds.create(ROOT, b"twice")
    outcome = {}
    gate = _hold_commits(shard, monkeypatch)
    try:
        for key in ("first", "second"):
            nursery.start_soon(_record, outcome, key, partial(mds.call_entry, early=True),
                               "unlink", ROOT, b"twice")
        await _until(lambda: len(shard.ns.removals._names.get((ROOT, b"twice"), ())) == 2,
                     "both unlinks to queue")
        with trio.fail_after(5):
            assert (await mds.getattr(other))["nlink"] == 1
    finally:
        gate.set()
    await _until(lambda: len(outcome) == 2, "both to answer once the commit is let go", 20)
    assert sorted(type(v).__name__ for v in outcome.values()) == ["NotFound", "dict"], outcome


async def test_an_early_unlink_never_waits_for_a_slot_that_its_waiters_hold(
        tmp_path, nursery, monkeypatch):
    """With a connection's request slots all held by requests that wait for early
    unlinks, a further early unlink on it must still be read and registered, or
    they wait for each other for ever, and with them the whole shard (a
    reviewer's case; here with two slots per connection instead of 128)."""
    monkeypatch.setattr(rpc, "MAX_IN_FLIGHT_PER_CONN", 2)
    mds = MdsCluster(tmp_path, nursery, 1)
    await mds.start_all()
    shard = mds.handles[0].shard
    for name in (b"x", b"d", b"y1", b"y2"):
        await mds.create(ROOT, name)
    other_mount = rpc.RpcClient(nursery, mds.config.mds[0], mds.config.cluster_id,
                                mds.config.key, "other mount")
    outcome = {}

    async def unlink_x():  # another mount's early unlink, its commit held
        args = {"parent": ROOT, "name": b"x", "rid": os.urandom(16), "early": True}
        outcome["x"] = await other_mount.call("unlink", args)

    gate = _hold_commits(shard, monkeypatch)
    try:
        nursery.start_soon(unlink_x)
        await _until(lambda: (ROOT, b"x") in shard.ns.removals._names, "x's unlink to register")
        for target in (b"y1", b"y2"):  # both slots of this connection, waiting for x
            nursery.start_soon(_record, outcome, target.decode(), mds.rename, ROOT, b"x", ROOT,
                               target)
        held = shard.ns.removals._names[(ROOT, b"x")][-1]
        await _until(lambda: held.statistics().tasks_waiting >= 2, "both renames to wait")
        nursery.start_soon(_record, outcome, "d", partial(mds.call_entry, early=True),
                           "unlink", ROOT, b"d")
        await _until(lambda: not shard.ns.removals._arriving, "d's unlink to register")
    finally:
        gate.set()
    await _until(lambda: len(outcome) == 4, "everything to answer", 20)
    assert isinstance(outcome["y1"], errors.NotFound) and isinstance(outcome["y2"],
                                                                     errors.NotFound)
    with trio.fail_after(5):
        assert (await mds.lookup(ROOT, b"y1"))["nlink"] == 1


def _conflicted(mds) -> bool:
    """Whether shard 0 turned a prepare away (a Conflict its coordinator retries)."""
    return mds.handles[0].shard.ns.removals.refused > 0


async def test_a_shard_refuses_another_shards_store(tmp_path, nursery):
    """Each store records whose it is at the first start; an mdsd given another
    shard's data directory refuses to serve it instead of serving that namespace
    as its own."""
    mds = MdsCluster(tmp_path, nursery, 2)
    await mds.start_all()
    await mds.stop(0)
    await mds.stop(1)
    with pytest.raises(StoreError, match="holds shard 0 of cluster"):
        await serve_shard(mds.config, 1, str(tmp_path / "mds0"))
    await mds.start(0)  # its own still opens
