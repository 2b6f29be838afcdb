"""An OSD that hangs without closing its connections (SIGSTOP: a process stuck on its
disk or starved on a loaded machine) holds no request longer than the cluster map takes
to mark it down; a hung metadata server holds one no longer than the mount's
`mds_timeout`, then the request fails with ETIMEDOUT.

Before, a read, write or fsync whose call was in flight to that OSD waited for the whole
`io_timeout` (60 s by default) although the map had marked the OSD down after
`--down-after` seconds and the other replica held the data (issue 3, "long
single-request stalls").  The mount here has an io_timeout of 600 s, so a request that
waits for the hung OSD never finishes within the test's bound; the OSD stays stopped
until the request is over, so only the map can release it.
"""

import errno
import itertools
import os
import signal
import threading

import pytest

from conftest import cluster_script
from loomproto.layout import shard_of_dentry
from posix_util import errno_of
from repl_helpers import DOWN_AFTER, ReplCluster, close_cluster, drop_page_cache, \
    repl_cluster_fixture

pytestmark = pytest.mark.mount

IO_TIMEOUT = 600  # far beyond REQUEST_BOUND: only the map can end a wait early
MDS_TIMEOUT = 20  # what a metadata call may wait for a shard that does not answer
REQUEST_BOUND = 120  # what a request may take here: down_after, map updates, loaded machine


@pytest.fixture(scope="module")
def hung_cluster(tmp_path_factory):
    base, live = repl_cluster_fixture(tmp_path_factory, osds=3, replicas=2)
    try:
        live.run("up", "--mds", 2, "--osd", 3, "--replicas", 2, "--down-after", DOWN_AFTER,
                 "--mount", live.mnt, "--mount-opts",
                 f"allow_other,default_permissions,io_timeout={IO_TIMEOUT},"
                 f"mds_timeout={MDS_TIMEOUT}")
        yield live
    finally:
        problems = close_cluster(base, live)
        assert not problems, "\n".join(problems)


class _Stopped:
    """SIGSTOP one OSD for the body of a with block; SIGCONT and wait until it is up."""

    def __init__(self, live: ReplCluster, osd_id: int):
        self.live = live
        self.osd_id = osd_id
        self.node = live.nodes()[f"osd{osd_id}"]

    def __enter__(self):
        assert cluster_script.send_signal(self.node, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        cluster_script.send_signal(self.node, signal.SIGCONT)
        self.live.wait_osd(self.osd_id, True, timeout=60)
        self.live.wait_healthy()


def _bounded(fn, *args):
    """fn(*args) in a thread; its result, or a failure if it takes over REQUEST_BOUND
    (the thread is left blocked on the mount until the OSD resumes)."""
    result = {}

    def run():
        try:
            result["value"] = fn(*args)
        except OSError as exc:
            result["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(REQUEST_BOUND)
    assert not worker.is_alive(), f"{fn.__name__} still waits for the hung OSD"
    if "error" in result:
        raise result["error"]
    return result["value"]


def _read(path):
    with open(path, "rb") as fp:
        return fp.read()


def _write_and_fsync(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)  # gathered in the client until the fsync sends it
        os.fsync(fd)
    finally:
        os.close(fd)


def test_read_does_not_wait_for_a_hung_primary(hung_cluster):
    live = hung_cluster
    path = live.mnt / "hung-read"
    data = os.urandom(300_000)
    path.write_bytes(data)
    primary = live.getstripe(path)[0][0]
    drop_page_cache()  # the read must reach the OSDs
    with _Stopped(live, primary):
        assert _bounded(_read, path) == data


def test_write_and_fsync_do_not_wait_for_a_hung_primary(hung_cluster):
    live = hung_cluster
    path = live.mnt / "hung-write"
    path.write_bytes(b"")
    primary = live.getstripe(path)[0][0]
    data = os.urandom(300_000)
    with _Stopped(live, primary):
        _bounded(_write_and_fsync, path, data)
        assert _bounded(_read, path) == data
    drop_page_cache()
    assert _read(path) == data  # and from the copies once the OSD is back


def test_truncate_does_not_wait_for_a_hung_osd(hung_cluster):
    live = hung_cluster
    path = live.mnt / "hung-truncate"
    data = os.urandom(2 << 20)
    _write_and_fsync(path, data)
    primary = live.getstripe(path)[0][0]
    with _Stopped(live, primary):
        _bounded(os.truncate, path, 300_000)  # waited io_timeout (600 s here) before
        assert os.stat(path).st_size == 300_000
    drop_page_cache()
    assert _read(path) == data[:300_000]


def test_a_hung_metadata_server_times_out_a_request(hung_cluster):
    """Before, a lookup sent to a stopped shard waited for as long as the shard stayed
    stopped: nothing bounded one call to a connection that stays open."""
    live = hung_cluster
    top = live.mnt / "hung-mds"
    top.mkdir()
    parent = os.stat(top).st_ino
    name = next(f"n{i}" for i in itertools.count()
                if shard_of_dentry(parent, f"n{i}".encode(), 2) == 1)
    node = live.nodes()["mds1"]
    assert cluster_script.send_signal(node, signal.SIGSTOP)
    try:
        assert _bounded(errno_of, os.stat, top / name) == errno.ETIMEDOUT
    finally:
        cluster_script.send_signal(node, signal.SIGCONT)
    assert errno_of(os.stat, top / name) == errno.ENOENT  # answered again
