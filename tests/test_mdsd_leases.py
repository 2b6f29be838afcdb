"""Leases on a directory's share and the seq a create's entry takes (mdsd.leases,
client.absent), against real in-process shards over loopback."""

import os
import stat
import time

import pytest

from mdsd.leases import LEASE
from test_mdsd_harness import ROOT, MdsCluster, name_on_shard, no_log_warnings  # noqa: F401

A, B = b"a" * 16, b"b" * 16
FILE = {"mode": stat.S_IFREG | 0o644, "uid": 1000, "gid": 1000, "rdev": 0,
        "parent_mode": 0o40755, "parent_gid": 0, "layout": None}


@pytest.fixture
async def mds(tmp_path, nursery):
    mds = MdsCluster(tmp_path, nursery, 2)
    await mds.start_all()
    return mds


async def _names(mds, stems):
    d = await mds.mkdir(ROOT, b"leased")
    shard = mds.entry_shard(d["ino"], b"any")
    return d["ino"], [name_on_shard(mds, d["ino"], shard, stem) for stem in stems]


async def test_another_clients_entry_waits_until_the_lease_ends(mds):
    d, (mine, theirs, later) = await _names(mds, ["mine", "theirs", "later"])
    sent = time.monotonic()
    attr = await mds.call_entry("mknod", d, mine, lessee=A, lease=True, **FILE)
    assert attr["entry_seq"] == [1, LEASE]
    other = await mds.call_entry("mknod", d, theirs, lessee=B, lease=True, **FILE)
    assert time.monotonic() - sent >= LEASE  # held back until A's lease was over
    assert other["entry_seq"] == [2, 0.0]  # it had to wait: contended, no lease
    again = await mds.call_entry("mknod", d, later, lessee=A, lease=True, **FILE)
    assert again["entry_seq"] == [3, 0.0]  # A sees seq 2 was not its own


async def test_a_rename_from_a_client_without_a_session_waits_too(mds):
    d, (mine, moved) = await _names(mds, ["mine", "moved"])
    await mds.create(ROOT, b"outside")
    sent = time.monotonic()
    await mds.call_entry("mknod", d, mine, lessee=A, lease=True, **FILE)
    await mds.rename(ROOT, b"outside", d, moved)
    assert time.monotonic() - sent >= LEASE
    assert {name for name, _ in await mds.listdir(d)} == {mine, moved}


async def test_creates_that_ask_for_no_lease_get_seqs_and_no_lease(mds):
    d, (*names, other_name, plain_name) = await _names(mds, ["n0", "n1", "n2", "b", "p"])
    seqs = [(await mds.call_entry("mknod", d, name, lessee=A, **FILE))["entry_seq"]
            for name in names]
    assert seqs == [[1, 0.0], [2, 0.0], [3, 0.0]]
    # Nobody held a lease, so B was not held back: no contention, B gets one.
    other = await mds.call_entry("mknod", d, other_name, lessee=B, lease=True, **FILE)
    assert other["entry_seq"] == [4, LEASE]
    plain = await mds.create(d, plain_name)  # a caller that sends no lessee
    assert "entry_seq" not in plain


async def test_a_retried_create_replays_its_seq(mds):
    d, (name,) = await _names(mds, ["once"])
    rid = os.urandom(16)
    first = await mds.call_entry("mknod", d, name, lessee=A, lease=True, rid=rid, **FILE)
    second = await mds.call_entry("mknod", d, name, lessee=A, lease=True, rid=rid, **FILE)
    assert first["entry_seq"] == second["entry_seq"] == [1, LEASE]


@pytest.mark.parametrize("bad", [{"lessee": "a-str"}, {"lessee": b""}, {"lessee": 7},
                                 {"lessee": A, "lease": 1}, {"lease": "yes"}])
async def test_malformed_lease_arguments_are_refused(mds, bad):
    from loomproto import errors

    d, (name,) = await _names(mds, ["bad"])
    with pytest.raises(errors.BadRequest) as refused:
        await mds.call_entry("mknod", d, name, **bad, **FILE)
    assert ("lessee" if "lessee" in bad and "lease" not in bad else "lease") in str(refused.value)
    assert (await mds.create(d, name))["nlink"] == 1  # the shard still serves
