"""The client's memory stays bounded while it writes a big file.

A second client of the session cluster is mounted with a small write window;
one file of LOOMFS_MEM_MB (default 1024) MiB is written through it with 1 MiB
writes, then fsynced.  The client's peak resident set (VmHWM of its pid, read
from the harness's nodes.json) must stay below RSS_LIMIT_MB: the window, the
chunks in flight and the interpreter, never the file.  Nothing here depends on
a speed.
"""

import os

import pytest
from conftest import cluster_script

MEM_MB = int(os.environ.get("LOOMFS_MEM_MB", "1024"))
WINDOW = 4 << 20
RSS_LIMIT_MB = 256


def _vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fp:
        for line in fp:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.mark.deadline(600)
def test_client_rss_bounded_while_writing(cluster):
    mnt = cluster.base / "mnt_mem"
    done = cluster.run("mount", mnt, "--mount-opts",
                       f"allow_other,default_permissions,write_window={WINDOW}")
    name = done.stdout.strip().splitlines()[-1]
    try:
        node = cluster.nodes()[name]
        assert cluster_script.is_running(node), f"{name} is not running"
        pid = node["pid"]
        before = _vm_kib(pid, "VmHWM")
        block = os.urandom(1 << 20)
        path = mnt / "big-mem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(MEM_MB):
                os.write(fd, block)
            os.fsync(fd)
        finally:
            os.close(fd)
        assert os.stat(path).st_size == MEM_MB << 20
        peak = _vm_kib(pid, "VmHWM")
        os.unlink(path)
    finally:
        cluster.run("umount", name)
    print(f"client {name}: VmHWM {before >> 10} MiB before, {peak >> 10} MiB after "
          f"writing {MEM_MB} MiB")
    assert peak < RSS_LIMIT_MB << 10, (
        f"client {name} peaked at {peak >> 10} MiB RSS writing {MEM_MB} MiB with a "
        f"{WINDOW >> 20} MiB window (it started at {before >> 10} MiB)")
