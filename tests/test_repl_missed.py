"""The missed-writes record (issue 6, "EIO, never wrong data"): units of the
metadata shard's ``missed_*`` RPCs (`mdsd.missed`) on in-process shards, and of
the OSD's use of it (`osd.missed`, `osd.recovery.Recovery.freshen`) on
in-process OSDs beside the stand-in mdsd 0 of test_osd_service.
"""

import pytest

from loomproto import errors
from mdsd import apply
from test_mdsd_harness import ROOT, MdsCluster, name_on_shard, no_log_warnings  # noqa: F401
from test_osd_service import OsdRig, wait_for  # noqa: F401  (the rig fixture's class)
from test_osd_service import rig  # noqa: F401  (fixture)


async def _file_on(mds, shard: int, stem: str) -> int:
    """A new file whose inode lives on `shard`."""
    for attempt in range(64):
        attr = await mds.create(ROOT, name_on_shard(mds, ROOT, attempt % 2, f"{stem}{attempt}"))
        if attr["ino"] % mds.nshards == shard:
            return attr["ino"]
    raise AssertionError(f"no inode landed on shard {shard}")


async def test_record_query_list_clear_and_restart(tmp_path, nursery):
    mds = MdsCluster(tmp_path, nursery, 2)
    await mds.start_all()
    ino = await _file_on(mds, 1, "f")
    shard = mds.client(1)

    await shard.call("missed_record", {"entries": [[ino, 0, 3], [ino, 2, 3], [ino, 2, 1]],
                                       "by": 0, "version": 4})
    await shard.call("missed_record", {"entries": [[ino, 0, 3]], "by": 2, "version": 9})
    query = {"osd": 3, "keys": [[ino, 0], [ino, 1], [ino, 2]]}
    assert await shard.call("missed_query", query) == [True, False, True]
    assert await shard.call("missed_query", {"osd": 1, "keys": [[ino, 0], [ino, 2]]}) \
        == [False, True]

    await mds.stop(1)
    await mds.start(1)
    assert await shard.call("missed_query", query) == [True, False, True]
    first = await shard.call("missed_list", {"osd": 3, "limit": 1})
    assert first == {"keys": [[ino, 0]], "more": True}
    rest = await shard.call("missed_list", {"osd": 3, "after": [ino, 0], "limit": 5})
    assert rest == {"keys": [[ino, 2]], "more": False}

    # The row of chunk 0 holds v9 (the higher of the two records): a copy
    # confirmed at v5 is still behind it, one at v9 is not.
    assert await shard.call("missed_clear", {"osd": 3, "keys": [[ino, 0, 5], [ino, 1, 5]]}) \
        == {"cleared": 0}
    assert await shard.call("missed_clear", {"osd": 3, "keys": [[ino, 0, 9], [ino, 1, 9]]}) \
        == {"cleared": 1}
    assert await shard.call("missed_query", query) == [False, False, True]
    assert await shard.call("missed_query", {"osd": 1, "keys": [[ino, 2]]}) == [True]


async def test_dropping_the_inode_drops_its_records(tmp_path, nursery):
    mds = MdsCluster(tmp_path, nursery, 2)
    await mds.start_all()
    gone = await _file_on(mds, 0, "gone")
    kept = await _file_on(mds, 0, "kept")
    shard = mds.client(0)
    await shard.call("missed_record", {"entries": [[gone, 0, 1], [gone, 7, 2], [kept, 0, 1]]})

    store = mds.handles[0].shard.store
    await store.write(lambda txn: apply.Applier(store, txn).apply([["inode_drop", gone]]))

    assert await shard.call("missed_query", {"osd": 1, "keys": [[gone, 0], [kept, 0]]}) \
        == [False, True]
    assert (await shard.call("missed_list", {"osd": 2}))["keys"] == []


@pytest.mark.allow_log_errors
async def test_records_are_refused_on_the_wrong_shard(tmp_path, nursery):
    mds = MdsCluster(tmp_path, nursery, 2)
    await mds.start_all()
    ino = await _file_on(mds, 1, "w")
    with pytest.raises(errors.BadRequest, match="belongs to shard 1"):
        await mds.client(0).call("missed_record", {"entries": [[ino, 0, 1]]})
    with pytest.raises(errors.BadRequest):
        await mds.client(1).call("missed_query", {"osd": 1, "keys": [[ino, "0"]]})


# -- the OSDs ------------------------------------------------------------------

async def _swap_down(rig, down: int, up: int) -> None:
    """Mark `down` down and let `up` (marked down before) come back."""
    rig.mds.frozen.discard(up)
    rig.mds.mark_down(down)
    await wait_for(lambda: rig.mds.map.is_up(up))
    await rig.wait_converged()


async def _read(rig, osd_id, ino, replicas):
    args = {"ino": ino, "chunk": 0, "offset": 0, "length": 1 << 20, "replicas": replicas}
    _, data = await rig.clients[osd_id].call_payload("read", args)
    return data


async def test_a_returning_osd_answers_eio_only_for_what_it_missed(rig):  # noqa: F811
    await rig.write(0, 60, 0, 0, b"old" * 10, [0, 1])  # osd 1 takes it
    await rig.write(0, 61, 0, 0, b"same" * 10, [0, 1])
    rig.mds.mark_down(1)
    await rig.wait_converged()
    await rig.write(0, 60, 0, 0, b"new" * 10, [0, 1])  # past osd 1
    await rig.write(0, 60, 0, 0, b"NEW", [0, 1])  # the same outage: no second record
    await rig.write(0, 62, 0, 0, b"born" * 10, [0, 1])  # created while osd 1 was down
    assert rig.mds.missed == {(60, 0, 1), (62, 0, 1)}

    # osd 1 is back (suspect: its passes cannot finish beside this stand-in) and
    # osd 0, the only holder of the new copies, is down.
    await _swap_down(rig, down=0, up=1)
    with pytest.raises(errors.IOFailure, match="was written while osd 1 was down"):
        await _read(rig, 1, 60, [1, 0])
    with pytest.raises(errors.IOFailure, match="was written while osd 1 was down"):
        await _read(rig, 1, 62, [1, 0])
    assert await _read(rig, 1, 61, [1, 0]) == b"same" * 10  # nothing went past it


async def test_no_record_for_an_inode_that_is_gone(tmp_path, nursery):
    mds = MdsCluster(tmp_path, nursery, 2)
    await mds.start_all()
    ino = await _file_on(mds, 0, "late")
    store = mds.handles[0].shard.store
    await store.write(lambda txn: apply.Applier(store, txn).apply([["inode_drop", ino]]))

    await mds.client(0).call("missed_record", {"entries": [[ino, 0, 1]], "version": 3})
    assert await mds.client(0).call("missed_query", {"osd": 1, "keys": [[ino, 0]]}) == [False]
