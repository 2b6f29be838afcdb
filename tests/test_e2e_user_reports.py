"""What a fresh user ran into, kept as tests: ACL-preserving copies, open(O_CREAT)
racing between two mounts, and a write that fails because every OSD is down."""

import errno
import multiprocessing
import os
import shutil
import struct
import subprocess

import pytest

pytestmark = pytest.mark.mount


def test_acl_xattrs_are_refused_so_cp_a_keeps_modes(cluster, workdir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data")
    os.chmod(src / "f", 0o644)
    os.chmod(src, 0o755)
    # An ACL that is more than a mode: USER_OBJ rw, USER 65534 r, GROUP_OBJ r, MASK r, OTHER r.
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident
                                           in [(1, 6, 0), (2, 4, 65534), (4, 4, 0), (16, 4, 0),
                                               (32, 4, 0)])
    with pytest.raises(OSError) as caught:
        os.setxattr(workdir, "system.posix_acl_access", acl)
    assert caught.value.errno == errno.EOPNOTSUPP
    subprocess.run(["cp", "-a", str(src), str(workdir / "copy")], check=True)
    assert os.stat(workdir / "copy" / "f").st_mode & 0o7777 == 0o644
    assert os.stat(workdir / "copy").st_mode & 0o7777 == 0o755


def _open_all(directory, names, out):
    failures = 0
    for name in names:
        try:
            fd = os.open(os.path.join(directory, name), os.O_CREAT | os.O_WRONLY | os.O_APPEND,
                         0o644)
            os.write(fd, b"x")
            os.close(fd)
        except OSError:
            failures += 1
    out.put(failures)


def test_o_creat_racing_on_two_mounts_opens_the_winner(cluster, workdir, second_client):
    other = second_client / workdir.name
    names = [f"log{i}" for i in range(60)]
    out = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_open_all, args=(d, names, out))
             for d in (workdir, other)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [out.get(timeout=10) for _ in procs] == [0, 0]
    # O_APPEND is atomic within one mount only (README), so 1 or 2 bytes.
    assert sorted(os.listdir(workdir)) == sorted(names)


@pytest.mark.deadline(240)
@pytest.mark.allow_log_errors
def test_a_failed_write_leaves_no_size_behind(cluster, tmp_path):
    mnt = tmp_path / "short-timeout"
    mnt.mkdir()
    done = cluster.run("mount", mnt, "--mount-opts",
                       "allow_other,default_permissions,io_timeout=3")
    client = done.stdout.strip().splitlines()[-1]
    osds = {name for name in cluster.nodes() if name.startswith("osd")}
    cluster.allowed_dead |= osds
    try:
        for name in sorted(osds):
            cluster.run("stop", name)
        fd = os.open(mnt / "lost", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"hello")  # buffered: the error comes at close
        with pytest.raises(OSError) as caught:
            os.close(fd)
        assert caught.value.errno == errno.EIO
    finally:
        for name in sorted(osds):
            cluster.run("start", name)
        cluster.allowed_dead -= osds
    assert os.path.getsize(mnt / "lost") == 0  # no size without the data behind it
    cluster.run("umount", client)
    shutil.rmtree(mnt, ignore_errors=True)
