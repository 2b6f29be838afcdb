"""Through the mount: lookups by name of many files in one directory are answered
from a listing fetched ahead (client.statahead), with the right attributes, this
mount's own changes showing at once, and another mount's within the timeouts.

The files are made through a second mount, so that this mount's kernel has never
looked their names up: each stat here is a lookup that reaches the client."""

import os
import time

import pytest

from posix_util import extra_mount, wait_until
from test_posix_absent import _lookups_served

pytestmark = pytest.mark.mount

FILES = 300
# Listings that outlive every step of a test: what is checked is this mount's
# own changes, not the timeouts.
LONG = "allow_other,default_permissions,entry_timeout=30,attr_timeout=30"


@pytest.fixture
def listed_elsewhere(cluster, workdir, second_client):
    """FILES files of distinct sizes made through the second mount; yields the
    directory as seen here and there."""
    theirs = second_client / workdir.name
    for i in range(FILES):
        (theirs / f"f{i:03d}").write_bytes(b"x" * i)
    return workdir, theirs


@pytest.fixture
def long_mount(cluster):
    with extra_mount(cluster, LONG) as mnt:
        yield mnt


def _warm_listing(cluster, here, names):
    """Stat names until one no longer reaches a shard: the listing has landed.
    Returns the names left unlooked-up."""
    names = list(names)

    def served_here():
        before = _lookups_served(cluster)
        os.stat(here / names.pop(0))
        return _lookups_served(cluster) == before

    for name in names[:20]:
        os.stat(here / name)
    del names[:20]
    wait_until(served_here, 10, "a stat answered without a shard lookup", interval=0)
    return names


def test_stats_of_unlisted_names_mostly_skip_the_shards(cluster, listed_elsewhere):
    here, _ = listed_elsewhere
    before = _lookups_served(cluster)
    sizes = [os.stat(here / f"f{i:03d}").st_size for i in range(FILES)]
    asked = _lookups_served(cluster) - before
    assert sizes == list(range(FILES))
    # One per name without stat-ahead; with it, the misses until the listing lands.
    assert asked < FILES // 3, asked


def test_this_mounts_changes_show_at_once_over_a_listing(cluster, listed_elsewhere,
                                                          long_mount):
    """Each change is made with a listing of the directory in place (fetched
    again before each, since every change of ours drops it)."""
    here = long_mount / listed_elsewhere[0].name
    names = [f"f{i:03d}" for i in range(FILES)]

    def next_name():
        names[:] = _warm_listing(cluster, here, names)
        return names.pop(0)

    gone = next_name()
    os.unlink(here / gone)
    with pytest.raises(FileNotFoundError):
        os.stat(here / gone)
    moved = next_name()
    os.rename(here / moved, here / "renamed")
    with pytest.raises(FileNotFoundError):
        os.stat(here / moved)
    assert os.stat(here / "renamed").st_size == int(moved[1:])
    private = next_name()
    os.chmod(here / private, 0o600)
    assert os.stat(here / private).st_mode & 0o777 == 0o600
    grown = next_name()
    with open(here / grown, "ab") as fp:
        fp.write(b"12345")
    assert os.stat(here / grown).st_size == int(grown[1:]) + 5
    linked = next_name()
    os.link(here / linked, here / "second-name")
    assert os.stat(here / linked).st_nlink == 2
    rewritten = next_name()
    with open(here / rewritten, "wb") as fp:  # O_TRUNC of a name the listing gave
        fp.write(b"new")
    assert os.stat(here / rewritten).st_size == 3
    assert (here / rewritten).read_bytes() == b"new"
    next_name()
    # A name the listing never had is not reported absent from it.
    (here / "brand-new").write_bytes(b"1")
    assert os.stat(here / "brand-new").st_size == 1


def test_a_name_another_mount_replaced_opens_the_new_file(cluster, listed_elsewhere,
                                                         long_mount):
    """`mv tmp cfg` on another mount: this mount's listing still names the old
    inode, whose open finds it unlinked; ESTALE makes the kernel look the name up
    again, and that lookup must reach a shard instead of the same listing."""
    _, theirs = listed_elsewhere
    here = long_mount / theirs.name
    names = _warm_listing(cluster, here, [f"f{i:03d}" for i in range(100)])
    for name in names[:5]:
        (theirs / "tmp").write_bytes(b"replacement " + name.encode())
        os.rename(theirs / "tmp", theirs / name)
        assert (here / name).read_bytes() == b"replacement " + name.encode()


def test_a_change_by_a_name_another_mount_replaced_lands_on_the_new_file(
        cluster, listed_elsewhere, long_mount):
    """chmod, truncate, setxattr and readlink by a name another mount replaced
    after this mount's listing was read: the old inode may live on, held open
    there, and a change landing on it would be lost.  Each is checked against the
    shard first, and ESTALE makes the kernel look the name up again."""
    _, theirs = listed_elsewhere
    here = long_mount / theirs.name
    os.symlink("old-target", theirs / "link")
    names = _warm_listing(cluster, here, [f"f{i:03d}" for i in range(FILES)])
    chmodded, truncated, tagged = names[:3]
    held = []
    try:
        for name in (chmodded, truncated, tagged):
            held.append(open(theirs / name, "rb"))  # the old inode lives on
            (theirs / "tmp").write_bytes(b"replacement")
            os.rename(theirs / "tmp", theirs / name)
        os.symlink("new-target", theirs / "tmp")
        os.rename(theirs / "tmp", theirs / "link")
        os.chmod(here / chmodded, 0o600)
        os.truncate(here / truncated, 3)
        os.setxattr(here / tagged, "user.k", b"v")
        assert os.readlink(here / "link") == "new-target"
    finally:
        for fp in held:
            fp.close()
    assert os.stat(theirs / chmodded).st_mode & 0o777 == 0o600
    assert (theirs / truncated).read_bytes() == b"rep"
    assert os.getxattr(theirs / tagged, "user.k") == b"v"


def test_another_mounts_changes_show_within_the_timeouts(cluster, listed_elsewhere):
    here, theirs = listed_elsewhere
    names = _warm_listing(cluster, here, [f"f{i:03d}" for i in range(100)])
    changed, removed = names[0], names[1]
    os.chmod(theirs / changed, 0o640)
    os.unlink(theirs / removed)
    started = time.monotonic()
    # entry_timeout and attr_timeout are 1 s on this mount: at most that old,
    # counted from when the listing was fetched, plus the time a stat takes.
    wait_until(lambda: os.stat(here / changed).st_mode & 0o777 == 0o640, 5,
               "another mount's chmod")

    def gone():
        try:
            os.stat(here / removed)
        except FileNotFoundError:
            return True
        return False

    wait_until(gone, 5, "another mount's unlink")
    assert time.monotonic() - started < 2.5

