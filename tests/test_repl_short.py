"""Fewer OSDs in than files' replica count (issue 6): `loomfs osd out` refuses to get
there without --force, and once there, `loomfs status` says DEGRADED, not HEALTHY,
since no chunk can have its R copies (a tester's report: four OSDs marked out one by
one left every chunk on one OSD while status said HEALTHY).

A 2-OSD cluster with REPLICAS=2, on loopback.
"""

import os

import pytest

from posix_util import wait_until
from repl_helpers import drop_page_cache, running_cluster, write_synced

pytestmark = pytest.mark.mount


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    yield from running_cluster(tmp_path_factory, osds=2, replicas=2)


def test_out_below_the_replica_count_is_refused_then_reported_degraded(short):
    short.wait_healthy(60)
    path = short.mnt / "data"
    data = os.urandom(3 << 20)
    write_synced(path, data)
    short.wait_healthy(60)

    refused = short.loomfs("osd", "out", 1, check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "leaves 1 OSDs in, fewer than the 2 replicas" in refused.stderr
    assert all(o["in"] for o in short.status()["osds"])

    short.loomfs("osd", "out", 1, "--force")
    # Once osd0's pass at the new epoch has counted them, every chunk is degraded
    # for good: one copy, where two are asked for.
    wait_until(lambda: short.status()["recovery"]["degraded"] > 0, 30,
               "status to count the chunks with one copy as degraded")
    waited = short.loomfs("status", "--wait-healthy", 3, check=False)
    assert waited.returncode == 1 and "data: DEGRADED" in waited.stdout, waited.stdout
    drop_page_cache()
    assert path.read_bytes() == data

    short.loomfs("osd", "in", 1)
    short.wait_healthy(90)
    drop_page_cache()
    assert path.read_bytes() == data
