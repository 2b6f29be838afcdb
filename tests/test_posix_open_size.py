"""Close-to-open for the size: an open on one mount after another mount grew the
file in place reads all of it, also when this mount's kernel holds the file's old
attributes with a long attr_timeout.

The open's reply carries no attributes, so the kernel read only up to the size it
had cached (nothing, for a file made empty and stat'ed here first; the old end,
after an append elsewhere): a tester's report.  The client now drops the kernel's
attributes at an open that finds them changed."""

import multiprocessing
import os

import pytest

from posix_util import extra_mount

pytestmark = pytest.mark.mount

WRITER = "allow_other,default_permissions,attr_timeout=0,entry_timeout=0"
READER = "allow_other,default_permissions,entry_timeout=30,attr_timeout=30"


@pytest.mark.parametrize("statahead", ["statahead=0", "statahead=1"])
def test_an_open_reads_what_another_mount_wrote_in_place(cluster, statahead):
    with extra_mount(cluster, WRITER) as writer_root, \
            extra_mount(cluster, READER + "," + statahead) as reader_root:
        top = f"open-size-{statahead}"
        os.mkdir(writer_root / top)
        writer, reader = writer_root / top, reader_root / top
        (writer / "empty").write_bytes(b"")
        (writer / "grows").write_bytes(b"a" * 100)
        assert os.stat(reader / "empty").st_size == 0  # cached in the reader's kernel
        assert (reader / "grows").read_bytes() == b"a" * 100
        (writer / "empty").write_bytes(b"x" * 4096)
        with open(writer / "grows", "ab") as fp:
            fp.write(b"b" * 100)
        assert (reader / "empty").read_bytes() == b"x" * 4096
        assert (reader / "grows").read_bytes() == b"a" * 100 + b"b" * 100
        assert os.stat(reader / "grows").st_size == 200
        # A file shrunk elsewhere reads as its new, shorter self too.
        os.truncate(writer / "grows", 50)
        assert (reader / "grows").read_bytes() == b"a" * 50


def _append(path, data: bytes) -> None:
    """What a shell's `>>` does: O_APPEND and a write, no lseek (Python's "ab"
    seeks to the end first, which refreshes the kernel's size and hid this)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def test_appends_from_two_mounts_in_turn_keep_every_line(cluster):
    """An O_APPEND write went to the end of file this mount's kernel had cached,
    over what another mount had appended and closed meanwhile (a tester lost
    half the lines of `echo >> f` from two mounts in turn).  Appends now go to
    the end the client knows from the open, and a shrink elsewhere counts too."""
    with extra_mount(cluster, READER) as one_root, extra_mount(cluster, READER) as two_root:
        os.mkdir(one_root / "appends")
        one, two = one_root / "appends" / "log", two_root / "appends" / "log"
        _append(one, b"line1\n")
        assert os.stat(two).st_size == 6  # both kernels cache the size now
        expect = b"line1\n"
        for i in range(4):
            for name, path in (("one", one), ("two", two)):
                line = f"{name} {i}\n".encode()
                _append(path, line)
                expect += line
        assert one.read_bytes() == expect and two.read_bytes() == expect
        os.truncate(one, 6)
        _append(two, b"after the cut\n")  # two's kernel still says the longer size
        assert one.read_bytes() == b"line1\nafter the cut\n"
        assert os.stat(two).st_size == os.stat(one).st_size == 20


def test_appends_from_several_processes_of_one_mount_after_another_mounts(cluster):
    """Another mount appends; then several processes of this mount append, one
    after another: only the first of them was sent back for the size, and the
    others went on with the old one, over the other mount's line (a tester's).
    (Processes of one mount appending at the same moment as another mount's
    change can still race the kernel's taking of the size: README.)"""
    with extra_mount(cluster, READER) as one_root, extra_mount(cluster, READER) as two_root:
        os.mkdir(one_root / "many")
        one, two = one_root / "many" / "log", two_root / "many" / "log"
        _append(one, b"start\n")
        assert os.stat(two).st_size == 6
        ctx = multiprocessing.get_context("fork")
        for round_ in range(5):
            _append(two, f"two {round_}\n".encode())
            for p in range(4):
                proc = ctx.Process(target=_append, args=(one, f"one {round_} {p}\n".encode()))
                proc.start()
                proc.join(60)
                assert proc.exitcode == 0
        lines = two.read_bytes().decode().splitlines()
        expected = ["start"] + [line for r in range(5) for line in
                                [f"two {r}"] + [f"one {r} {p}" for p in range(4)]]
        assert lines == expected
