"""Changes by a name that another mount replaced (`write tmp; mv tmp name`) after
this mount's kernel cached it: chmod, utime, truncate, setxattr, removexattr and
link land on the file the name leads to now.

The kernel goes by its cached entry to the old inode.  Gone, that failed with
ENOENT; held open on the other mount (so alive, with no name left), the change
landed on it and was lost.  The client now answers ESTALE for both (the shard
refuses a change by name of a file with no name left, `linked`), and the kernel
looks the name up again and repeats the call (a tester's churn run, with and
without stat-ahead).  The old file held open keeps what it had."""

import os
import threading
import time

import pytest

from client.filenames import FRESH
from posix_util import extra_mount

pytestmark = pytest.mark.mount

WRITER = "allow_other,default_permissions,attr_timeout=0,entry_timeout=0"
# Long timeouts: the reader's kernel keeps the old entries for the whole test.
READER = "allow_other,default_permissions,entry_timeout=30,attr_timeout=30"
CHANGES = ("chmod", "utime", "truncate", "setxattr", "removexattr", "link")
MTIME = 1_500_000_000 * 10**9


def _old_file(path) -> None:
    path.write_bytes(b"old contents")
    os.chmod(path, 0o644)
    os.setxattr(path, "user.old", b"1")


def _change(kind: str, path, links):
    if kind == "chmod":
        os.chmod(path, 0o600)
    elif kind == "utime":
        os.utime(path, ns=(MTIME, MTIME))
    elif kind == "truncate":
        os.truncate(path, 3)
    elif kind == "setxattr":
        os.setxattr(path, "user.k", b"v")
    elif kind == "removexattr":
        os.removexattr(path, "user.old")
    else:
        os.link(path, links / path.name)


def _check(kind: str, path, links):
    st = os.stat(path)
    if kind == "chmod":
        assert st.st_mode & 0o777 == 0o600
    elif kind == "utime":
        assert st.st_mtime_ns == MTIME
    elif kind == "truncate":
        assert path.read_bytes() == b"new"
    elif kind == "setxattr":
        assert os.getxattr(path, "user.k") == b"v"
    elif kind == "removexattr":
        assert "user.old" not in os.listxattr(path)
    else:
        assert os.stat(links / path.name).st_ino == st.st_ino
        assert st.st_nlink == 2


@pytest.mark.parametrize("statahead", ["statahead=0", "statahead=1"])
@pytest.mark.parametrize("held", [False, True], ids=["old-gone", "old-held-open"])
def test_a_change_by_a_replaced_name_lands_on_the_new_file(cluster, request, statahead,
                                                             held):
    with extra_mount(cluster, WRITER) as writer_root, \
            extra_mount(cluster, READER + "," + statahead) as reader_root:
        top = f"replaced-{request.node.name}".replace("[", "-").replace("]", "")
        os.mkdir(writer_root / top)
        os.mkdir(writer_root / top / "links")
        writer, reader = writer_root / top, reader_root / top
        for kind in CHANGES:
            _old_file(writer / kind)
            os.stat(reader / kind)  # the reader's kernel caches the name
        kept = {}
        try:
            for kind in CHANGES:
                if held:
                    kept[kind] = open(writer / kind, "rb")  # the old file lives on
                (writer / "tmp").write_bytes(b"new contents")
                os.chmod(writer / "tmp", 0o644)
                os.setxattr(writer / "tmp", "user.old", b"2")
                os.rename(writer / "tmp", writer / kind)
            for kind in CHANGES:
                _change(kind, reader / kind, reader / "links")
            for kind in CHANGES:
                _check(kind, writer / kind, writer / "links")
            for kind, fp in kept.items():
                old = os.fstat(fp.fileno())
                assert old.st_nlink == 0
                assert old.st_mode & 0o777 == 0o644, kind
                assert old.st_size == len(b"old contents"), kind
                assert fp.read() == b"old contents", kind
                assert os.listxattr(fp.fileno()) == ["user.old"], kind
                assert os.getxattr(fp.fileno(), "user.old") == b"1", kind
        finally:
            for fp in kept.values():
                fp.close()


def _past_fresh(since: float) -> None:
    """Until the reader's names are older than client.filenames.FRESH: a name
    given that recently is not checked (a poll of the clock, with a deadline)."""
    deadline = since + 5.0
    while time.monotonic() - since <= FRESH * 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)  # polls the clock, under the deadline above


@pytest.mark.parametrize("statahead", ["statahead=0", "statahead=1"])
def test_a_change_by_a_name_moved_aside_elsewhere_lands_on_the_new_file(cluster, statahead):
    """`mv cfg cfg.bak` and a new `cfg` on one mount: the other mount's kernel
    still holds `cfg` for the old file, which lives on under its new name.  A
    change, an open for writing with O_TRUNC and an append through `cfg` land on
    the new file, and the backup keeps what it had (a tester's `> cfg` emptied
    cfg.bak, and logrotate-style appends went to log.1)."""
    kinds = CHANGES + ("rewrite", "append")
    with extra_mount(cluster, WRITER) as writer_root, \
            extra_mount(cluster, READER + "," + statahead) as reader_root:
        top = f"moved-aside-{statahead}"
        os.mkdir(writer_root / top)
        os.mkdir(writer_root / top / "links")
        writer, reader = writer_root / top, reader_root / top
        for kind in kinds:
            _old_file(writer / kind)
        for kind in kinds:
            os.stat(reader / kind)  # the reader's kernel caches the name
        cached = time.monotonic()
        for kind in kinds:
            os.rename(writer / kind, writer / f"{kind}.bak")
            (writer / kind).write_bytes(b"new contents")
            os.chmod(writer / kind, 0o644)
            os.setxattr(writer / kind, "user.old", b"2")
        _past_fresh(cached)
        for kind in kinds:
            if kind == "rewrite":
                (reader / kind).write_bytes(b"from the reader")
            elif kind == "append":
                with open(reader / kind, "ab") as fp:
                    fp.write(b" and more")
            else:
                _change(kind, reader / kind, reader / "links")
        for kind in kinds:
            if kind == "rewrite":
                assert (writer / kind).read_bytes() == b"from the reader"
            elif kind == "append":
                assert (writer / kind).read_bytes() == b"new contents and more"
            else:
                _check(kind, writer / kind, writer / "links")
            backup = writer / f"{kind}.bak"
            assert backup.read_bytes() == b"old contents", kind
            st = os.stat(backup)
            assert (st.st_mode & 0o777, st.st_nlink) == (0o644, 1), kind
            assert os.listxattr(backup) == ["user.old"], kind
            assert os.getxattr(backup, "user.old") == b"1", kind


@pytest.mark.parametrize("how", ["replaced-elsewhere", "unlinked-here"])
def test_a_change_through_an_o_path_descriptor_lands_on_its_file(cluster, request, how):
    """chmod, utime and setxattr through /proc/self/fd/N of an O_PATH descriptor
    whose file has no name left (held open by another mount): the kernel walks the
    descriptor, not a name, and its repeat after ESTALE reaches the same inode, so
    the change is done on that file, as a local filesystem does (a reviewer found
    ESTALE reaching the application; systemd-tmpfiles changes files this way)."""
    with extra_mount(cluster, WRITER) as writer_root, \
            extra_mount(cluster, READER) as reader_root:
        top = f"opath-{how}"
        os.mkdir(writer_root / top)
        writer, reader = writer_root / top, reader_root / top
        (writer / "f").write_bytes(b"old contents")
        os.chmod(writer / "f", 0o644)
        with open(writer / "f", "rb") as held:
            fd = os.open(reader / "f", os.O_PATH)
            opened = time.monotonic()
            try:
                if how == "replaced-elsewhere":
                    (writer / "tmp").write_bytes(b"new contents")
                    os.rename(writer / "tmp", writer / "f")
                else:
                    os.unlink(reader / "f")
                # The reader's name is old enough to be checked (client.filenames):
                # the check finds it wrong, and the kernel's repeat through the
                # descriptor must still land on the held file (it failed with
                # ESTALE when the check's refusal was not counted as one).
                _past_fresh(opened)
                proc = f"/proc/self/fd/{fd}"
                os.chmod(proc, 0o600)
                os.utime(proc, ns=(MTIME, MTIME))
                os.setxattr(proc, "user.k", b"v")
            finally:
                os.close(fd)
            old = os.fstat(held.fileno())
            assert old.st_mode & 0o777 == 0o600
            assert old.st_mtime_ns == MTIME
            assert os.getxattr(held.fileno(), "user.k") == b"v"
        if how == "replaced-elsewhere":
            assert os.stat(writer / "f").st_mode & 0o777 == 0o644


def test_a_directory_removed_and_made_again_elsewhere_is_walked_anew(cluster):
    """`rm -r out; mkdir out` on one mount: the other mount's kernel still holds
    `out` for the removed directory.  Listing it and creating in it land in the
    new one (they failed with ENOENT until the kernel's entry expired, a tester
    found).  A lookup of a name in it still can: see README."""
    with extra_mount(cluster, WRITER) as writer_root, \
            extra_mount(cluster, READER) as reader_root:
        os.mkdir(writer_root / "remade")
        writer, reader = writer_root / "remade", reader_root / "remade"
        for name in ("out", "out2", "out3"):
            os.mkdir(writer / name)
            (writer / name / "old").write_bytes(b"old")
            assert os.listdir(reader / name) == ["old"]  # the reader's kernel holds it
            for path in (writer / name / "old", writer / name):
                os.unlink(path) if path.name == "old" else os.rmdir(path)
            os.mkdir(writer / name)
            (writer / name / "new").write_bytes(b"new")
        assert os.listdir(reader / "out") == ["new"]
        (reader / "out2" / "from-reader").write_bytes(b"reader")
        assert (writer / "out2" / "from-reader").read_bytes() == b"reader"
        os.mkdir(reader / "out3" / "sub")
        assert os.path.isdir(writer / "out3" / "sub")


def test_a_name_another_mount_makes_shows_at_once_after_a_miss(cluster):
    """The kernel kept a "no such name" for entry_timeout: git's new loose ref
    after `git gc` stayed hidden on another mount, which read the packed one
    and lost a commit (a tester's report).  Misses are not kept by default
    (negative_timeout=0), whatever entry_timeout is."""
    with extra_mount(cluster, WRITER) as writer_root, \
            extra_mount(cluster, READER) as reader_root:
        os.mkdir(writer_root / "misses")
        writer, reader = writer_root / "misses", reader_root / "misses"
        for attempt in range(3):
            name = f"ref{attempt}"
            assert not os.path.exists(reader / name)
            (writer / name).write_bytes(b"commit")
            assert (reader / name).read_bytes() == b"commit"


def test_changes_at_once_and_after_our_rename_by_a_moved_aside_name(cluster):
    """Two changes at once through a name another mount moved aside: the second
    waited for the first one's check and then went on, on the moved file (a
    tester's two `> f` at once emptied f.bak).  And this mount's own `mv f g`
    of such a name moves the kernel's entry of the old file: g was taken as
    freshly given, and a write to it landed on f.bak (a tester's)."""
    with extra_mount(cluster, WRITER) as writer_root, \
            extra_mount(cluster, READER) as reader_root:
        os.mkdir(writer_root / "at-once")
        writer, reader = writer_root / "at-once", reader_root / "at-once"
        for name in ("f", "h"):
            (writer / name).write_bytes(b"old")
            os.stat(reader / name)
        cached = time.monotonic()
        for name in ("f", "h"):
            os.rename(writer / name, writer / f"{name}.bak")
            (writer / name).write_bytes(b"new")
        _past_fresh(cached)
        errors = []

        def empty():
            try:
                (reader / "f").write_bytes(b"")
            except OSError as exc:
                errors.append(exc)

        workers = [threading.Thread(target=empty) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert not errors
        assert (writer / "f.bak").read_bytes() == b"old"
        assert (writer / "f").read_bytes() == b""

        os.rename(reader / "h", reader / "g")  # the shard renames the new file
        (reader / "g").write_bytes(b"from the reader")
        assert (writer / "h.bak").read_bytes() == b"old"
        assert (writer / "g").read_bytes() == b"from the reader"


def test_a_rename_into_a_directory_made_again_elsewhere_lands_there(cluster):
    """`rm -r out; mkdir out` on one mount, then a rename into `out` on the other
    (which still holds the old one) failed with ENOENT (a tester's)."""
    with extra_mount(cluster, WRITER) as writer_root, \
            extra_mount(cluster, READER) as reader_root:
        os.mkdir(writer_root / "into")
        writer, reader = writer_root / "into", reader_root / "into"
        os.mkdir(writer / "out")
        assert os.listdir(reader / "out") == []
        os.rmdir(writer / "out")
        os.mkdir(writer / "out")
        (reader / "src").write_bytes(b"moved")
        os.rename(reader / "src", reader / "out" / "x")
        assert (writer / "out" / "x").read_bytes() == b"moved"
