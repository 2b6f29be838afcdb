"""Mounting as users do it: mount(8) with the fuse.loomfs helper, and the clear refusals
of `loomfs mount` when no metadata server answers or the mount point is wrong."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import cluster_script, missing_components, mounts_below
from loomproto import config as loomconfig
from loomproto.layout import Layout

pytestmark = pytest.mark.mount

LOOMFS = Path(os.environ.get("LOOMFS_BIN", cluster_script.DEFAULT_BIN)) / "loomfs"
NO_ANSWER_LIMIT = 20.0


@pytest.fixture
def client_program():
    reason = missing_components(["client/cli.py"], ["loomfs"])
    if reason:
        pytest.skip(reason)


def processes_mentioning(path):
    """Pids whose command line names `path`: the mount processes of this test only."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and str(path) in cluster_script.proc_cmdline(int(entry)):
            found.append(int(entry))
    return found


def no_process_left(path, timeout=20.0):
    """Wait until no process names `path`; SIGKILL and report the ones that stay."""
    try:
        cluster_script.wait_for(lambda: not processes_mentioning(path), timeout,
                                f"the processes of {path} to exit")
        return []
    except cluster_script.HarnessError:
        left = processes_mentioning(path)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return left


def mount_and_time(config, mnt, timeout=60):
    start = time.monotonic()
    done = subprocess.run([LOOMFS, "mount", str(config), str(mnt)], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=timeout)
    return done, time.monotonic() - start


def expect_refusal(done, mnt, *words):
    output = done.stdout + done.stderr
    try:
        assert done.returncode != 0, output
        assert "Traceback" not in output, output
        assert any(word in output.lower() for word in words), output
    finally:
        for path in mounts_below(mnt):
            subprocess.run(["fusermount3", "-uz", path], capture_output=True, timeout=60)
    assert not mounts_below(mnt)
    assert no_process_left(mnt) == []


@pytest.fixture
def lone_config(tmp_path):
    """A cluster config whose metadata servers are loopback ports nobody serves."""
    host = "127.0.0.1"
    addrs = [f"{host}:{port}" for port in cluster_script.free_ports(host, 2)]
    return Path(loomconfig.create(str(tmp_path / "lone"), addrs, Layout()))


def test_mount_refused_when_no_mds_listens(client_program, lone_config, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done, seconds = mount_and_time(lone_config, mnt)
    expect_refusal(done, mnt, "metadata", "mds", "127.0.0.1")
    assert seconds < NO_ANSWER_LIMIT


def test_mount_refused_when_mds_never_answers(client_program, tmp_path):
    """The port accepts connections, but nothing ever answers the handshake."""
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        addr = f"127.0.0.1:{silent.getsockname()[1]}"
        config = loomconfig.create(str(tmp_path / "silent"), [addr], Layout())
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        done, seconds = mount_and_time(config, mnt)
    finally:
        silent.close()
    expect_refusal(done, mnt, "metadata", "mds", addr)
    assert seconds < NO_ANSWER_LIMIT


def test_mount_point_missing(client_program, lone_config, tmp_path):
    mnt = tmp_path / "no" / "such" / "dir"
    done, seconds = mount_and_time(lone_config, mnt)
    expect_refusal(done, mnt, "does not exist", "no such", "not a directory")
    assert str(mnt) in done.stderr
    assert seconds < NO_ANSWER_LIMIT


def test_mount_point_not_empty(client_program, lone_config, tmp_path):
    mnt = tmp_path / "full"
    mnt.mkdir()
    (mnt / "precious").write_text("keep me")
    done, seconds = mount_and_time(lone_config, mnt)
    expect_refusal(done, mnt, "not empty")
    assert (mnt / "precious").read_text() == "keep me"
    assert seconds < NO_ANSWER_LIMIT


def test_mount_helper_with_fstab_options(cluster, tmp_path):
    """`mount -t fuse.loomfs` runs scripts/mount.fuse.loomfs, as an fstab line would."""
    if not os.path.exists("/sbin/mount.fuse.loomfs") or shutil.which("mount") is None:
        pytest.skip("mount(8) or /sbin/mount.fuse.loomfs missing: run scripts/install-deps")
    mnt = tmp_path / "fstab-mnt"
    mnt.mkdir()
    opts = "rw,nofail,_netdev,noauto,allow_other,default_permissions,attr_timeout=2"
    try:
        done = subprocess.run(["mount", "-t", "fuse.loomfs", "-o", opts, str(cluster.config),
                               str(mnt)], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert os.path.ismount(mnt)
        (mnt / "hello").write_text("through mount(8)\n")
        assert (cluster.mnt / "hello").read_text() == "through mount(8)\n"
        (mnt / "hello").unlink()
        subprocess.run(["umount", str(mnt)], check=True, timeout=60)
    finally:
        for path in mounts_below(mnt):
            subprocess.run(["fusermount3", "-uz", path], capture_output=True, timeout=60)
    assert no_process_left(mnt) == []


@pytest.mark.allow_log_errors
def test_umount_by_path_stops_the_live_client_after_a_dead_one(cluster, tmp_path):
    """A client that died without an umount leaves its record on the mount point;
    a new client mounts there again.  `umount PATH` must stop the live one and drop
    both records (it took the dead record first and left the live client mounted:
    a tester's report)."""
    mnt = tmp_path / "again"
    mnt.mkdir()
    first = cluster.run("mount", mnt).stdout.split()[-1]
    assert cluster_script.send_signal(cluster.nodes()[first], signal.SIGKILL)
    cluster_script.wait_for(lambda: not cluster_script.is_running(cluster.nodes()[first]),
                            20, "the killed client to exit")
    cluster_script.unmount(mnt)  # (its kernel mount is left without a server)
    second = cluster.run("mount", mnt).stdout.split()[-1]
    live = cluster.nodes()[second]
    done = cluster.run("umount", mnt)
    assert {first, second} == {line.split()[-1] for line in done.stdout.splitlines()}
    assert not cluster_script.is_running(live)
    assert not cluster_script.is_mounted(str(mnt))
    assert first not in cluster.nodes() and second not in cluster.nodes()


@pytest.mark.deadline(240)
def test_umount_ends_while_the_roots_shard_is_down(cluster, tmp_path):
    """`umount PATH` must not stat the mount point: with the root's shard killed
    that stat waits mds_timeout per try, and the harness holds its state lock
    meanwhile, so a `start` of the shard waited behind it (a tester's report)."""
    mnt = tmp_path / "rootless"
    mnt.mkdir()
    name = cluster.run("mount", mnt, "--mount-opts",
                       "allow_other,default_permissions,attr_timeout=0").stdout.split()[-1]
    root_shard = f"mds{1 % loomconfig.load(str(cluster.config)).nshards}"  # inode 1's
    cluster.allowed_dead.add(root_shard)
    try:
        cluster.run("kill", root_shard)
        started = time.monotonic()
        cluster.run("umount", mnt, timeout=120)
        assert time.monotonic() - started < 40  # not a stat's mds_timeout (60 s)
        assert name not in cluster.nodes() and not cluster_script.is_mounted(str(mnt))
    finally:
        if not cluster_script.is_running(cluster.nodes()[root_shard]):
            cluster.run("start", root_shard)
        cluster.allowed_dead.discard(root_shard)
