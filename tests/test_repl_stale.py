"""A copy that missed changes while its OSD was down is never served as current
(issue 6: "EIO, never wrong data"), on a real cluster of 2 metadata servers and 4
OSDs with 2 replicas, OSDs marked down after 2 s of silence.

- a truncate missed by a down OSD: the file, extended again, reads as zeros;
- a write that reached only the other replica, whose OSD then dies before the
  returning OSD caught up: the read returns the new bytes or EIO, never the old
  bytes or zeros;
- the same with the other replica dead before the OSD returns, so that it cannot
  have caught up: EIO for the chunk written while it was down, its own copy for a
  chunk of the same replica set that was not (the missed-write record tells them
  apart), and the new bytes once the other replica is back;
- a truncate missed by a down OSD whose only peer then dies: EIO, not the old
  bytes, until the peer is back;
- the same with the truncate sent while the OSD had just died and the map still
  showed it up: the truncate succeeds (it failed with EIO at once, after its peer
  had cut, so the file kept its size and lost the bytes past the new one), and the
  cut is recorded as missed by the dead OSD all the same.
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


def _pread(path, offset, length):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def test_a_returning_osd_answers_eio_only_for_the_chunks_it_missed(repl):
    repl.wait_healthy(60)
    path = repl.mnt / "partly-written-while-down"
    old, kept, new = b"o" * MiB, b"k" * MiB, b"n" * MiB
    _write(path, old + bytes(3 * MiB) + kept)  # chunks 0 and 4 share stripe slot 0
    first, second = repl.getstripe(path)[0][:2]
    repl.kill(first)
    repl.wait_osd(first, False)
    _write(path, new)  # chunk 0 only, past `first`
    repl.kill(second)
    repl.wait_osd(second, False)
    repl.restart(first)

    drop_page_cache()
    assert _pread(path, 4 * MiB, MiB) == kept, "a chunk nothing went past was refused"
    _eio_until_the_current_copy_returns(repl, path, second)
    assert _pread(path, 0, MiB) == new
    assert _pread(path, 4 * MiB, MiB) == kept


def _eio_until_the_current_copy_returns(repl, path, holder):
    """The file's first chunk reads as EIO while `holder`, the only OSD with its
    current copy, is down; then `holder` is started and the cluster heals."""
    drop_page_cache()
    with pytest.raises(OSError) as failed:
        _pread(path, 0, 4096)
    assert failed.value.errno == errno.EIO
    repl.restart(holder)
    repl.wait_healthy(120)
    drop_page_cache()


@pytest.mark.parametrize("cut", ["once the map marks it down", "while the map shows it up"])
def test_a_missed_truncate_with_the_other_copy_lost_gives_eio(repl, cut):
    repl.wait_healthy(60)
    path = repl.mnt / ("cut-while-down" if cut.startswith("once") else "cut-while-dying")
    _write(path, os.urandom(MiB))
    first, second = repl.getstripe(path)[0][:2]
    repl.kill(first)
    if cut.startswith("once"):
        repl.wait_osd(first, False)
    # Recorded as missed by `first`.  Sent while the map still showed `first` up,
    # it failed with EIO at once before, with `second` cut already: the file kept
    # its size and lost its bytes past the new one.
    os.truncate(path, 0)
    assert os.stat(path).st_size == 0
    repl.wait_osd(first, False)
    repl.kill(second)
    repl.wait_osd(second, False)
    repl.restart(first)
    os.truncate(path, MiB)

    _eio_until_the_current_copy_returns(repl, path, second)
    assert path.read_bytes() == bytes(MiB)
