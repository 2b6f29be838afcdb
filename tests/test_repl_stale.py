"""A copy that missed changes while its OSD was down is never served as current
(issue 6: "EIO, never wrong data"), on a real cluster of 2 metadata servers and 4
OSDs with 2 replicas, OSDs marked down after 2 s of silence.

- a truncate missed by a down OSD: the file, extended again, reads as zeros;
- a write that reached only the other replica, whose OSD then dies before the
  returning OSD caught up: the read returns the new bytes or EIO, never the old
  bytes or zeros.
"""

import errno
import os

import pytest

from repl_helpers import drop_page_cache, running_cluster

pytestmark = pytest.mark.mount

MiB = 1 << 20


@pytest.fixture(scope="module")
def repl(tmp_path_factory):
    yield from running_cluster(tmp_path_factory)


def _write(path, data, offset=0):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_a_missed_truncate_never_brings_old_bytes_back(repl):
    repl.wait_healthy(60)
    path = repl.mnt / "truncated-while-down"
    _write(path, os.urandom(4 * MiB))
    victim = repl.getstripe(path)[0][0]
    repl.kill(victim)
    repl.wait_osd(victim, False)
    os.truncate(path, 0)
    repl.restart(victim)
    repl.wait_osd(victim, True)
    os.truncate(path, 4 * MiB)
    drop_page_cache()
    assert path.read_bytes() == bytes(4 * MiB)
    repl.wait_healthy(120)
    drop_page_cache()
    assert path.read_bytes() == bytes(4 * MiB)


def test_the_only_current_copy_lost_gives_eio_not_old_bytes(repl):
    repl.wait_healthy(60)
    path = repl.mnt / "written-while-down"
    old, new = b"o" * MiB, b"n" * MiB
    _write(path, old)
    first, second = repl.getstripe(path)[0][:2]
    repl.kill(first)
    repl.wait_osd(first, False)
    _write(path, new)  # reaches `second` only
    repl.restart(first)
    repl.wait_osd(first, True)
    repl.kill(second)
    repl.wait_osd(second, False)
    drop_page_cache()
    try:
        data = path.read_bytes()
    except OSError as exc:
        assert exc.errno == errno.EIO
    else:
        assert data == new, "a stale copy was served"
    repl.restart(second)
    repl.wait_healthy(120)
    drop_page_cache()
    assert path.read_bytes() == new
