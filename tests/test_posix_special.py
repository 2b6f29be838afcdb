"""Special files through the mount: FIFOs, sockets and device nodes keep type, mode
and rdev, and a FIFO passes data between two processes."""

import errno
import os
import socket
import stat
import subprocess
import sys
import threading

import pytest

from posix_util import errno_of, extra_mount

pytestmark = pytest.mark.mount


def test_mknod_types_modes_and_rdev(workdir):
    os.umask(0)
    cases = {"fifo": (stat.S_IFIFO | 0o640, 0), "chr": (stat.S_IFCHR | 0o600, os.makedev(1, 3)),
             "blk": (stat.S_IFBLK | 0o660, os.makedev(8, 17)),
             "sock": (stat.S_IFSOCK | 0o755, 0), "reg": (stat.S_IFREG | 0o604, 0)}
    for name, (mode, dev) in cases.items():
        os.mknod(workdir / name, mode, dev)
    os.mkfifo(workdir / "fifo2", 0o600)
    for name, (mode, dev) in cases.items():
        st = os.lstat(workdir / name)
        assert (st.st_mode, st.st_rdev) == (mode, dev), name
        assert st.st_size == 0
    assert stat.S_ISFIFO(os.stat(workdir / "fifo2").st_mode)
    entries = {e.name: e for e in os.scandir(workdir)}
    assert entries["chr"].is_char_device() if hasattr(entries["chr"], "is_char_device") \
        else stat.S_ISCHR(entries["chr"].stat(follow_symlinks=False).st_mode)
    assert stat.S_ISBLK(entries["blk"].stat(follow_symlinks=False).st_mode)
    # Special files rename and link like any other.
    os.rename(workdir / "chr", workdir / "chr2")
    os.link(workdir / "chr2", workdir / "chr3")
    st = os.lstat(workdir / "chr3")
    assert (st.st_rdev, st.st_nlink) == (os.makedev(1, 3), 2)


def test_device_nodes_work_on_a_dev_mount(cluster, workdir):
    os.mknod(workdir / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(workdir / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    # FUSE mounts are nodev unless asked (as NFS and libfuse do for safety).
    assert errno_of(open, workdir / "null", "rb") == errno.EACCES
    with extra_mount(cluster, "allow_other,default_permissions,dev") as mnt:
        where = mnt / workdir.name
        with open(where / "zero", "rb") as fp:  # the kernel's device, not ours
            assert fp.read(4096) == bytes(4096)
        with open(where / "null", "r+b") as fp:
            assert fp.write(b"gone") == 4
            assert fp.read() == b""


def test_fifo_passes_data_between_processes(workdir):
    path = workdir / "pipe"
    os.mkfifo(path)
    payload = os.urandom(300_000)  # more than a pipe buffer
    reader = subprocess.Popen([sys.executable, "-c",
                               "import sys; sys.stdout.buffer.write(open(sys.argv[1], 'rb')"
                               ".read())", str(path)], stdout=subprocess.PIPE)
    with open(path, "wb") as fp:
        fp.write(payload)
    out, _ = reader.communicate(timeout=60)
    assert reader.returncode == 0 and out == payload


def test_unix_socket_on_the_mount(workdir):
    path = str(workdir / "sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    received = []

    def serve():
        conn, _ = server.accept()
        received.append(conn.recv(100))
        conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    client.sendall(b"hello")
    client.close()
    thread.join(30)
    server.close()
    assert received == [b"hello"]
    os.unlink(path)
    assert not os.path.lexists(path)
