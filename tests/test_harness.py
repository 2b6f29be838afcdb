"""scripts/cluster without a mount: up, status, stop, start, kill, down, and its error paths.

Each cycle runs twice: against the dummy daemons of `dummy_daemon` (always; it checks
the harness alone) and against the real loomfs-mdsd and loomfs-osd once they exist.
"""

import json
import os
import subprocess
import sys

import pytest

import dummy_daemon
from conftest import REPO, Harness, Watchdog, cluster_script, missing_components, mounts_below


def wait_until(condition, what, timeout=20.0):
    cluster_script.wait_for(condition, timeout, what)


def wait_port_closed(name, addr):
    wait_until(lambda: not cluster_script.accepts_tcp(addr), f"{name}'s port {addr} to close")


@pytest.fixture(params=["dummy", "real"])
def harness(request, tmp_path):
    if request.param == "dummy":
        bin_dir = dummy_daemon.write_bin(tmp_path / "bin")
    else:
        reason = missing_components()
        if reason:
            pytest.skip(reason)
        bin_dir = None
    harness = Harness(tmp_path / "state", bin_dir)
    try:
        yield harness
    finally:
        problems = harness.close(tmp_path)
        assert not problems, "\n".join(problems)


@pytest.fixture
def dummy(tmp_path):
    harness = Harness(tmp_path / "state", dummy_daemon.write_bin(tmp_path / "bin"))
    try:
        yield harness
    finally:
        problems = harness.close(tmp_path)
        assert not problems, "\n".join(problems)


def check_all_running(harness, count):
    nodes = harness.nodes()
    assert len(nodes) == count
    for name, node in nodes.items():
        assert cluster_script.is_running(node), name
        assert cluster_script.accepts_tcp(node["addr"]), name
        assert node["addr"].startswith("127.0.0.1:")
    return nodes


def check_all_stopped(harness, nodes):
    for name, node in nodes.items():
        assert not cluster_script.is_running(node), name
        wait_port_closed(name, node["addr"])
    assert harness.running() == []


def test_up_status_down(harness):
    harness.run("up", "--mds", 2, "--osd", 3, "--replicas", 2)
    nodes = check_all_running(harness, 5)
    assert sorted(nodes) == ["mds0", "mds1", "osd0", "osd1", "osd2"]
    with open(harness.config) as fp:
        cfg = json.load(fp)
    assert cfg["mds"] == [nodes["mds0"]["addr"], nodes["mds1"]["addr"]]
    assert cfg["layout"] == {"unit": 1 << 20, "count": 3, "replicas": 2}

    status = json.loads(harness.run("status", "--json").stdout)
    assert [row["state"] for row in status["nodes"]] == ["alive"] * 5
    assert {row["node"]: row["pid"] for row in status["nodes"]} == \
        {name: node["pid"] for name, node in nodes.items()}

    harness.run("down")
    check_all_stopped(harness, nodes)


def test_stop_start_kill(harness):
    harness.run("up", "--mds", 2, "--osd", 2, "--replicas", 2)
    before = check_all_running(harness, 4)

    harness.run("stop", "osd1")
    assert not cluster_script.is_running(before["osd1"])
    wait_port_closed("osd1", before["osd1"]["addr"])
    status = harness.run("status")
    assert ["osd1", "-", "stopped"] in [line.split()[:3] for line in status.stdout.splitlines()]

    harness.run("start", "osd1")
    after = check_all_running(harness, 4)
    assert after["osd1"]["pid"] != before["osd1"]["pid"]
    assert after["osd1"]["addr"] == before["osd1"]["addr"]
    assert after["osd1"]["argv"] == before["osd1"]["argv"]

    harness.run("kill", "mds1")
    killed = harness.nodes()["mds1"]
    assert not cluster_script.is_running(killed)
    status = harness.run("status", "--json", check=False)
    assert status.returncode == 1
    rows = json.loads(status.stdout)["nodes"]
    assert {row["node"]: row["state"] for row in rows}["mds1"] == "dead"
    assert "not running" in harness.run("kill", "mds1", check=False).stderr

    harness.run("start", "mds1")
    check_all_running(harness, 4)
    harness.run("down")
    check_all_stopped(harness, harness.nodes() | {"old-mds1": killed})


def test_restart_keeps_config(harness):
    harness.run("up", "--mds", 1, "--osd", 1, "--replicas", 1)
    with open(harness.config) as fp:
        first = json.load(fp)
    harness.run("down")
    harness.run("up", "--mds", 1, "--osd", 1, "--replicas", 1)
    with open(harness.config) as fp:
        assert json.load(fp) == first
    check_all_running(harness, 2)


def test_second_up_refused_while_running(dummy):
    dummy.run("up", "--mds", 1, "--osd", 1, "--replicas", 1)
    pids = {name: node["pid"] for name, node in dummy.nodes().items()}
    again = dummy.run("up", "--mds", 1, "--osd", 1, "--replicas", 1, check=False)
    assert again.returncode == 1
    assert "is running" in again.stderr
    assert "start only the stopped" not in again.stderr
    assert {name: node["pid"] for name, node in dummy.nodes().items()} == pids
    check_all_running(dummy, 2)
    # With one node dead (a killed client, say) the message names what restarts it.
    dummy.run("kill", "osd0")
    again = dummy.run("up", "--mds", 1, "--osd", 1, "--replicas", 1, check=False)
    assert again.returncode == 1
    assert "to start only the stopped ones (osd0): `scripts/cluster start" in again.stderr


def test_mds_count_of_existing_cluster_is_checked(dummy):
    dummy.run("up", "--mds", 2, "--osd", 1, "--replicas", 1)
    dummy.run("down")
    again = dummy.run("up", "--mds", 3, "--osd", 1, "--replicas", 1, check=False)
    assert again.returncode == 1
    assert "2 metadata servers, not 3" in again.stderr


def test_failed_node_tears_down_and_shows_log(dummy):
    env = dict(os.environ, DUMMY_FAIL="osd1")
    done = dummy.run("up", "--mds", 2, "--osd", 2, "--replicas", 1, check=False, env=env)
    assert done.returncode == 1
    assert "osd1 exited during start-up" in done.stderr
    assert "dummy osd1: failing on purpose" in done.stderr  # the log tail
    check_all_stopped(dummy, dummy.nodes())


def test_node_never_ready_times_out(dummy):
    env = dict(os.environ, DUMMY_HANG="mds0")
    done = dummy.run("up", "--timeout", 1, "--mds", 1, "--osd", 1, "--replicas", 1,
                     check=False, env=env)
    assert done.returncode == 1
    assert "mds0 not ready after 1s" in done.stderr
    check_all_stopped(dummy, dummy.nodes())


def test_signals_reach_only_recorded_processes(dummy):
    """A recorded pid that now runs something else is never signalled."""
    dummy.run("up", "--mds", 1, "--osd", 1, "--replicas", 1)
    stranger = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                stdin=subprocess.PIPE)
    try:
        state = json.loads((dummy.state / "nodes.json").read_text())
        real = dict(state["nodes"]["osd0"])
        state["nodes"]["osd0"]["pid"] = stranger.pid
        (dummy.state / "nodes.json").write_text(json.dumps(state))

        assert dummy.run("kill", "osd0", check=False).returncode == 1
        assert dummy.run("stop", "osd0", check=False).returncode == 0
        assert stranger.poll() is None

        state["nodes"]["osd0"] = real
        (dummy.state / "nodes.json").write_text(json.dumps(state))
        assert cluster_script.is_running(real)
    finally:
        stranger.stdin.close()
        stranger.wait(timeout=10)


def test_unknown_node_and_replicas_over_osds(dummy):
    done = dummy.run("up", "--mds", 1, "--osd", 1, "--replicas", 2, check=False)
    assert done.returncode == 1
    assert "--replicas 2 needs at least as many OSDs" in done.stderr
    dummy.run("up", "--mds", 1, "--osd", 1, "--replicas", 1)
    done = dummy.run("stop", "osd7", check=False)
    assert done.returncode == 1
    assert "no node 'osd7'" in done.stderr


def test_down_without_cluster_is_harmless(tmp_path):
    harness = Harness(tmp_path / "nothing")
    done = harness.run("down")
    assert "no cluster recorded" in done.stdout
    assert mounts_below(tmp_path) == []
    # Other verbs refuse a path that is not a cluster's, and leave nothing there
    # (a lock file in a new directory was left, a tester found).
    for verb in (("kill", "mds0"), ("start", "osd0"), ("umount", "client0")):
        done = harness.run(*verb, check=False)
        assert done.returncode == 1 and "no cluster state directory" in done.stderr
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("report, count", [
    ({"epoch": 3, "osds": [{"id": 0, "up": True}, {"id": 1, "up": False}]}, 1),
    ({"map": {"epoch": 3, "osds": [{"id": 0, "up": True}, {"id": 1, "up": True}]}}, 2),
    ({"osds": {"0": {"up": True}, "1": {"up": True}, "2": {"up": True}}}, 3),
    ({"epoch": 3}, None),
    ([1, 2], None),
])
def test_count_up_osds(report, count):
    assert cluster_script.count_up_osds(report) == count


def test_mountinfo_unescaping():
    assert cluster_script._unescape_mountinfo(r"/tmp/a\040b\134c") == "/tmp/a b\\c"


@pytest.mark.parametrize("argv, expected", [
    (["-o", "rw,defaults,allow_other,x-systemd.automount,comment=a,attr_timeout=2", "-n",
      "-t", "fuse.loomfs"], ["-o", "allow_other,attr_timeout=2"]),
    (["-onofail,_netdev,noauto,user,ro"], ["-o", "ro"]),
    (["-o", "rw,defaults"], []),
    ([], []),
])
def test_mount_helper_passes_only_fuse_options(tmp_path, argv, expected):
    """scripts/mount.fuse.loomfs, as mount(8) calls it, with a fake `loomfs` recording argv."""
    fake = tmp_path / "loomfs"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(tmp_path / 'argv')!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    helper = REPO / "scripts" / "mount.fuse.loomfs"
    env = dict(os.environ, LOOMFS_BIN=str(tmp_path))
    subprocess.run([helper, "/etc/loomfs/cluster.json", "/mnt/x", *argv], env=env,
                   check=True, timeout=30)
    recorded = json.loads((tmp_path / "argv").read_text())
    assert recorded == ["mount", "/etc/loomfs/cluster.json", "/mnt/x", *expected]


class FakeCluster:
    """What the watchdog sees of a cluster, with daemons that die on demand."""

    def __init__(self, dead=()):
        self.dead = list(dead)
        self.killed = []

    def dead_daemons(self):
        return self.dead

    def log_tail(self, name):
        return f"last words of {name}"

    def kill_running(self, kinds):
        self.killed.append(kinds)


def test_watchdog_kills_clients_at_deadline():
    cluster = FakeCluster()
    watchdog = Watchdog(cluster, 0.0)
    watchdog.start()
    wait_until(lambda: cluster.killed, "the watchdog to act")
    watchdog.stop()
    assert "deadline of 0s" in watchdog.reason
    assert cluster.killed == [("client",)]


def test_watchdog_reports_dead_daemon():
    cluster = FakeCluster(dead=["osd1"])
    watchdog = Watchdog(cluster, 3600)
    watchdog.start()
    wait_until(lambda: cluster.killed, "the watchdog to act")
    watchdog.stop()
    assert "died during the test: osd1" in watchdog.reason
    assert "last words of osd1" in watchdog.reason


def test_watchdog_quiet_while_healthy():
    cluster = FakeCluster()
    watchdog = Watchdog(cluster, 3600)
    watchdog.start()
    watchdog.stop()
    assert watchdog.reason is None and cluster.killed == []


def test_a_failed_add_osd_leaves_no_record(harness, tmp_path):
    """add-osd whose OSD cannot start (its data path is a file) fails and forgets the
    node; a dead record made `status` exit 1 for good (a tester's report)."""
    harness.run("up", "--mds", 1, "--osd", 1, "--replicas", 1)
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("x")
    failed = harness.run("add-osd", "--data", not_a_dir, check=False)
    assert failed.returncode != 0
    assert sorted(harness.nodes()) == ["mds0", "osd0"]
    assert harness.run("status", check=False).returncode == 0
    harness.run("down")


def test_an_added_osd_comes_back_with_the_next_up(harness):
    """`up` after `down` starts the OSDs add-osd added too: it planned only --osd of
    them, and the chunks rebalance had put on the added ones could not be read (a
    tester's report)."""
    harness.run("up", "--mds", 1, "--osd", 1, "--replicas", 1)
    harness.run("add-osd", "--host", "other")
    added = harness.nodes()["osd1"]
    harness.run("down")
    harness.run("up", "--mds", 1, "--osd", 1, "--replicas", 1)
    nodes = check_all_running(harness, 3)
    assert nodes["osd1"]["data"] == added["data"]
    assert nodes["osd1"]["argv"][-2:] == ["--host", "other"]
    harness.run("down")


def test_free_ports_leave_out_ports_given_to_daemons_not_yet_listening(monkeypatch):
    """The OSDs' ports were chosen while the metadata servers were not listening yet,
    so one could be a metadata server's (a CI run: osd2 exited at start-up, its
    port taken).  A range of two free ports, one of them given out: only the other
    comes back, every time."""
    low = cluster_script.free_ports("127.0.0.1", 1)[0] & ~1
    monkeypatch.setattr(cluster_script, "PORT_RANGE", (low, low + 2))
    given = [f"127.0.0.1:{low}"]
    assert {port for _ in range(20)
            for port in cluster_script.free_ports("127.0.0.1", 1, taken=given)} == {low + 1}
    monkeypatch.setattr(cluster_script, "PORT_RANGE", (low, low + 1))
    with pytest.raises(cluster_script.HarnessError):
        cluster_script.free_ports("127.0.0.1", 1, taken=given)
