"""An OSD that stays down is marked out by mds 0, its chunks get their copies back
on the other OSDs, and it is marked in again when it returns (mdsd.clustermap
`down_out`; the decisions themselves, with their guards, in virtual time:
tests/test_mdsd_down_out.py).

A live cluster: 2 shards, 4 OSDs, R=2, ``--down-after 2 --down-out 4``.  An OSD
is killed by the pid the harness recorded; every wait polls with a deadline.
"""

import os

import pytest

from posix_util import wait_until
from repl_helpers import drop_page_cache, running_cluster, write_synced

DOWN_OUT = 4
MIB = 1 << 20


@pytest.fixture(scope="module")
def repl(tmp_path_factory):
    yield from running_cluster(tmp_path_factory, down_out=DOWN_OUT)


def osd_state(repl, osd_id) -> tuple:
    osd = next(o for o in repl.status()["osds"] if o["id"] == osd_id)
    return osd["up"], osd["in"], osd.get("auto_out", False)


def holders(repl, ino, chunk_index, among) -> list[int]:
    return [osd_id for osd_id in among if repl.chunk_path(osd_id, ino, chunk_index).exists()]


def test_a_dead_osd_is_marked_out_and_its_chunks_copied_then_in_again(repl):
    repl.wait_healthy(60)
    path = repl.mnt / "kept"
    data = os.urandom(8 * MIB)
    write_synced(path, data)
    ino = os.stat(path).st_ino
    slots = repl.getstripe(path)
    victim = slots[0][0]
    others = [osd_id for osd_id in range(4) if osd_id != victim]

    repl.kill(victim)
    wait_until(lambda: osd_state(repl, victim) == (False, False, True), 60,
               f"osd{victim} to be marked out after {DOWN_OUT}s down")
    status = repl.loomfs("status").stdout
    assert "DOWN,out(auto)" in status, status
    repl.wait_healthy(120)
    # Every chunk of the file has its two copies again, on the OSDs still alive.
    short = [c for c in range(8) if len(holders(repl, ino, c, others)) < 2]
    assert not short, f"chunks {short} still have fewer than 2 copies on osds {others}"
    drop_page_cache()
    assert path.read_bytes() == data
    mds0 = repl.log_text("mds0")
    assert f"osd {victim} marked out: down for" in mds0

    repl.restart(victim)
    wait_until(lambda: osd_state(repl, victim) == (True, True, False), 60,
               f"osd{victim} to be marked in again")
    assert f"osd {victim} marked in again: it was marked out while down" \
        in repl.log_text("mds0")
    repl.wait_healthy(120)
    drop_page_cache()
    assert path.read_bytes() == data
    assert not repl.tracebacks(), repl.tracebacks()
