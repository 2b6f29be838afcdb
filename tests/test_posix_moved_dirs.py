"""A directory moved by one mount while another mount still holds its old name in
the kernel's dentry cache (README "POSIX behaviour", client/dirnames.py).

Linux keeps one dentry per directory.  Before the client dropped the old name, a
rename on the second mount whose lookup met the moved directory under its new name
failed with ESTALE (the kernel cannot move the old dentry while the rename holds
the rename lock), where a local filesystem answers as for any directory: EISDIR
for a file renamed over it, success for a move.  Seen as ESTALE-for-EISDIR in the
two-mount namespace model (LOOMFS_NS_SEED=27 LOOMFS_NS_STEPS=600, step 211).
"""

import errno
import os

import pytest

from posix_util import extra_mount, unlink_and_publish

pytestmark = pytest.mark.mount

NO_CACHE = "allow_other,default_permissions,attr_timeout=0,entry_timeout=0"


@pytest.fixture
def moved(cluster, request):
    """Two mounts; ``p/d`` made and looked up through the second (its dentry cached
    there), then moved to ``q/d2`` through the first.  Yields the directory as seen
    through the first and the second mount."""
    with extra_mount(cluster, NO_CACHE) as one, extra_mount(cluster, NO_CACHE) as two:
        name = f"moved-{request.node.name}"
        top_one, top_two = one / name, two / name
        for sub in ("", "p", "q", "r", "p/d"):
            os.mkdir(top_one / sub)
        (top_one / "p" / "d" / "inside").write_bytes(b"x")
        assert os.listdir(top_two / "p" / "d") == ["inside"]  # cached on mount two
        os.rename(top_one / "p" / "d", top_one / "q" / "d2")
        try:
            yield top_one, top_two
        finally:
            _remove_tree(top_one)


def _remove_tree(top):
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            os.rmdir(os.path.join(dirpath, name))
    os.rmdir(top)


def _errno_of(fn, *args):
    try:
        fn(*args)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "ok"


def test_file_renamed_over_moved_directory_is_eisdir(moved):
    one, two = moved
    (two / "f").write_bytes(b"file")
    # The kernel of mount two still has the directory as p/d; the rename looks it
    # up as q/d2, from another directory than the source's.
    assert _errno_of(os.rename, two / "f", two / "q" / "d2") == "EISDIR"
    assert (one / "f").read_bytes() == b"file"
    assert os.listdir(two / "q" / "d2") == ["inside"]


def test_moved_directory_moves_again_through_its_new_name(moved):
    one, two = moved
    assert _errno_of(os.rename, two / "q" / "d2", two / "r" / "d3") == "ok"
    assert os.listdir(one / "r" / "d3") == ["inside"]
    assert sorted(os.listdir(two / "q")) == []
    assert not os.path.exists(two / "p" / "d")


def test_empty_directory_renamed_over_moved_one_after_it_empties(moved):
    one, two = moved
    unlink_and_publish(one / "q" / "d2" / "inside")  # before mount two's rename over it
    os.mkdir(two / "r" / "e")
    assert _errno_of(os.rename, two / "r" / "e", two / "q" / "d2") == "ok"
    assert sorted(os.listdir(one / "q")) == ["d2"]
    assert sorted(os.listdir(one / "r")) == []


def test_directory_only_listed_before_the_move(cluster):
    """The second mount learnt the directory from a listing of its parent alone: a
    readdir reply makes the kernel's dentry without a lookup.  Before the client
    recorded those too, the rename below failed with ESTALE."""
    with extra_mount(cluster, NO_CACHE) as one, extra_mount(cluster, NO_CACHE) as two:
        top_one, top_two = one / "listed-only", two / "listed-only"
        for sub in ("", "p", "q", "p/d"):
            os.mkdir(top_one / sub)
        try:
            assert os.listdir(top_two / "p") == ["d"]  # no lookup of d on mount two
            os.rename(top_one / "p" / "d", top_one / "q" / "d2")
            (top_two / "f").write_bytes(b"file")
            assert _errno_of(os.rename, top_two / "f", top_two / "q" / "d2") == "EISDIR"
            assert _errno_of(os.rename, top_two / "q" / "d2", top_two / "p" / "back") == "ok"
            assert os.listdir(top_one / "p") == ["back"]
        finally:
            _remove_tree(top_one)
