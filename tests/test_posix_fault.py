"""A bug inside a FUSE handler costs one EIO, not the mount: the client's debug fault
hook (mount option ``debug_faults``) raises inside getxattr/setxattr for one magic
xattr name; the error is logged with its traceback and the mount keeps serving."""

import errno
import os

import pytest

from posix_util import errno_of, extra_mount

pytestmark = pytest.mark.mount

FAULT = "user.loomfs.debug.fault"


@pytest.mark.allow_log_errors
def test_unexpected_error_is_eio_and_mount_survives(cluster, workdir):
    path = workdir / "f"
    path.write_bytes(b"still here")
    # Off by default: on the ordinary mount the name is just an attribute.
    os.setxattr(path, FAULT, b"harmless")
    assert os.getxattr(path, FAULT) == b"harmless"
    before = cluster.log_sizes()
    with extra_mount(cluster, "allow_other,default_permissions,debug_faults") as mnt:
        faulty = mnt / workdir.name / "f"
        for _ in range(3):
            assert errno_of(os.setxattr, faulty, FAULT, b"x") == errno.EIO
            assert errno_of(os.getxattr, faulty, FAULT) == errno.EIO
        assert faulty.read_bytes() == b"still here"
        (mnt / workdir.name / "g").write_bytes(b"new")
        assert sorted(os.listdir(mnt / workdir.name)) == ["f", "g"]
        tracebacks = "\n".join(cluster.new_tracebacks(before))
        assert "InjectedFault: debug fault injected" in tracebacks
