"""Close-to-open for the size: an open on one mount after another mount grew the
file in place reads all of it, also when this mount's kernel holds the file's old
attributes with a long attr_timeout.

The open's reply carries no attributes, so the kernel read only up to the size it
had cached (nothing, for a file made empty and stat'ed here first; the old end,
after an append elsewhere): a tester's report.  The client now drops the kernel's
attributes at an open that finds them changed."""

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
