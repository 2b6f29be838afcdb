"""`scripts/cluster up --netns RATE`: daemons in their own network namespaces, limited links.

A real cluster (1 metadata server, 2 OSDs, R=1) in namespaces serves a mount in this
namespace: a file written through it is read back by a second client, byte for byte,
through the OSDs' limited links, which carry a tbf qdisc at the rate asked for on both
ends.  `down`, a failing `up`, a harness killed mid-`up` and a test body that raises all
leave no namespace or link of the run behind.  No assertion depends on a speed.

Skips, saying why, when not root or ip, tc or nsenter are missing (install-deps installs
iproute2 and util-linux), or when this machine refuses to make a network namespace.
"""

import contextlib
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dummy_daemon
from conftest import CLUSTER_SCRIPT, Harness, cluster_script, mount_skip_reason

import clusternet  # scripts/clusternet.py: loading scripts/cluster put scripts/ on sys.path

RATE_MIB = 40
DEADLINE = 120.0


def netns_skip_reason():
    reason = clusternet.unavailable()
    if reason:
        return reason
    probe = "lfprobe" + secrets.token_hex(3)
    try:
        clusternet.run("ip", "netns", "add", probe)
    except clusternet.NetnsError as exc:
        return f"cannot make a network namespace here: {exc}"
    clusternet.run("ip", "netns", "del", probe)
    return None


SKIP_REASON = netns_skip_reason()
needs_netns = pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))


def leftovers(record):
    """The namespaces and links of this run's prefix that still exist."""
    prefix = record["prefix"]
    found = [name for name in clusternet.namespaces() | clusternet.links()
             if name.startswith(prefix)]
    return sorted(found)


def wait_until(condition, what, timeout=DEADLINE):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)  # polls the condition, under the deadline


def recorded_net(harness):
    with open(harness.state / "nodes.json") as fp:
        return json.load(fp).get("netns")


@contextlib.contextmanager
def netns_cluster(harness, *up_args):
    """`up --netns` on `harness`; on the way out, however it is left, `down` and a check
    that nothing of the run is left: no process, no namespace, no link."""
    record = None
    try:
        harness.run("up", "--netns", RATE_MIB, *up_args)
        record = recorded_net(harness)
        yield record
    finally:
        record = recorded_net(harness) or record
        problems = harness.close(harness.state.parent)
        if record is not None and record.get("prefix"):
            problems += [f"left behind: {name}" for name in leftovers(record)]
        if recorded_net(harness) is not None:
            problems.append("nodes.json still records namespaces after down")
        assert not problems, "\n".join(problems)


def sent_bytes(namespace):
    shown = clusternet.run("tc", "-s", "-n", namespace, "qdisc", "show", "dev", "eth0")
    return int(re.search(r"Sent (\d+) bytes", shown).group(1))


@needs_netns
def test_mount_over_limited_links(tmp_path):
    reason = mount_skip_reason()
    if reason:
        pytest.skip(reason)
    harness = Harness(tmp_path / "state")
    mnt, mnt2 = tmp_path / "mnt", tmp_path / "mnt2"
    with netns_cluster(harness, "--mds", 1, "--osd", 2, "--replicas", 1,
                       "--mount", mnt) as record:
        check_addresses_and_qdiscs(harness, record)
        data = os.urandom(6 << 20)
        (mnt / "blob").write_bytes(data)
        before = sum(sent_bytes(f"{record['prefix']}-osd{index}") for index in range(2))

        # A fresh client in a namespace of its own: no page cache, every byte from an OSD.
        name = harness.run("mount", mnt2, "--own-link").stdout.split()[-1]
        own = f"{record['prefix']}-{name}"
        assert own in clusternet.namespaces()
        assert "qdisc tbf" in clusternet.run("tc", "-n", own, "qdisc", "show", "dev", "eth0")
        with open(mnt2 / "blob", "rb") as fp:
            digest = hashlib.sha256(fp.read()).hexdigest()
        assert digest == hashlib.sha256(data).hexdigest()
        after = sum(sent_bytes(f"{record['prefix']}-osd{index}") for index in range(2))
        assert after - before >= len(data), "the read did not come through the OSD links"
        assert sent_bytes(own) > 0

        harness.run("umount", name)
        assert own not in clusternet.namespaces()
        assert own not in recorded_net(harness)["namespaces"]


def check_addresses_and_qdiscs(harness, record):
    subnet = record["subnet"]
    assert subnet.startswith("10.231.")
    nodes = harness.nodes()
    with open(harness.config) as fp:
        assert json.load(fp)["mds"] == [nodes["mds0"]["addr"]]
    for name in ("mds0", "osd0", "osd1"):
        assert clusternet.subnet_of(nodes[name]["addr"]) is not None, nodes[name]
        assert nodes[name]["netns"] == f"{record['prefix']}-{name}"
    assert sorted(record["namespaces"]) == sorted(nodes[name]["netns"]
                                                  for name in ("mds0", "osd0", "osd1"))
    shown = clusternet.qdiscs(record)
    assert len(shown) == 6  # both ends of three links
    for link, text in shown.items():
        assert "qdisc tbf" in text, (link, text)
        assert abs(tbf_rate(text) - RATE_MIB * 8 * 2**20) < 0.01 * RATE_MIB * 8 * 2**20, text


def tbf_rate(text):
    """The rate in bit/s that `tc qdisc show` prints for a tbf ("rate 335544Kbit")."""
    number, unit = re.search(r"rate ([\d.]+)([KMG]?)bit", text).groups()
    return float(number) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[unit]


@needs_netns
def test_body_that_raises_still_removes_everything(tmp_path):
    harness = Harness(tmp_path / "state", dummy_daemon.write_bin(tmp_path / "bin"))
    seen = {}
    with pytest.raises(RuntimeError, match="the test body failed"):
        with netns_cluster(harness, "--mds", 1, "--osd", 2, "--replicas", 1) as record:
            seen.update(record)
            assert len(leftovers(record)) == 3 + 4  # 3 namespaces; 3 veths and the bridge
            raise RuntimeError("the test body failed")
    assert leftovers(seen) == []
    assert harness.running() == []


@needs_netns
def test_failed_up_removes_its_namespaces(tmp_path):
    harness = Harness(tmp_path / "state", dummy_daemon.write_bin(tmp_path / "bin"))
    env = dict(os.environ, DUMMY_FAIL="osd1")
    try:
        done = harness.run("up", "--netns", RATE_MIB, "--mds", 1, "--osd", 2, "--replicas", 1,
                           check=False, env=env)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "dummy osd1: failing on purpose" in done.stderr
        assert "netns: removed 3 namespaces and 4 links" in done.stdout
        assert recorded_net(harness) is None
        prefix = re.search(r"bridge (lf[0-9a-f]{6})br", done.stdout).group(1)
        assert leftovers({"prefix": prefix}) == []
    finally:
        problems = harness.close(tmp_path)
        assert not problems, "\n".join(problems)


@needs_netns
def test_down_cleans_up_after_a_killed_harness(tmp_path):
    """SIGKILL the harness while `up` waits for a daemon: its namespaces stay recorded,
    and `down` stops the daemons by pid and deletes them."""
    harness = Harness(tmp_path / "state", dummy_daemon.write_bin(tmp_path / "bin"))
    argv = [sys.executable, str(CLUSTER_SCRIPT), "up", "--state", str(harness.state),
            "--bin", str(harness.bin_dir), "--netns", str(RATE_MIB), "--mds", "1",
            "--osd", "2", "--replicas", "1", "--timeout", "300"]
    env = dict(os.environ, DUMMY_HANG="osd1")
    up = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    record = None
    try:
        def osd1_started():
            nodes = harness.nodes() if (harness.state / "nodes.json").exists() else {}
            return nodes.get("osd1", {}).get("pid") is not None

        wait_until(osd1_started, "the harness to start osd1")
        up.kill()
        up.wait(timeout=DEADLINE)
        record = recorded_net(harness)
        assert record is not None and len(leftovers(record)) == 3 + 4
        assert set(harness.running()) == {"mds0", "osd0", "osd1"}

        done = harness.run("down")
        assert "netns: removed 3 namespaces and 4 links" in done.stdout
        assert leftovers(record) == []
        assert harness.running() == []
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(timeout=DEADLINE)
        problems = harness.close(tmp_path)
        if record is not None:
            problems += [f"left behind: {name}" for name in leftovers(record)]
        assert not problems, "\n".join(problems)


@needs_netns
def test_restart_keeps_netns_and_refuses_without(tmp_path):
    harness = Harness(tmp_path / "state", dummy_daemon.write_bin(tmp_path / "bin"))
    with netns_cluster(harness, "--mds", 1, "--osd", 1, "--replicas", 1) as record:
        first = harness.nodes()["mds0"]["addr"]
        harness.run("add-osd")  # joins the running cluster in a namespace of its own
        added = harness.nodes()["osd1"]
        assert added["netns"] == f"{record['prefix']}-osd1"
        assert added["addr"] == clusternet.daemon_addr(record, "osd", 1)
        assert cluster_script.accepts_tcp(added["addr"])
    done = harness.run("up", "--mds", 1, "--osd", 1, "--replicas", 1, check=False)
    assert done.returncode == 1 and "pass --netns RATE again" in done.stderr
    with netns_cluster(harness, "--mds", 1, "--osd", 1, "--replicas", 1):
        assert harness.nodes()["mds0"]["addr"] == first
        assert cluster_script.accepts_tcp(first)
    assert Path(harness.config).exists()


def test_rate_and_address_units():
    assert clusternet.parse_rate("20") == 20 << 20
    assert clusternet.parse_rate("0.5") == 1 << 19
    for bad in ("fast", "0", "-3", "1e6"):
        with pytest.raises(clusternet.NetnsError):
            clusternet.parse_rate(bad)
    record = {"prefix": "lf000000", "subnet": "10.231.7.0/24"}
    assert clusternet.daemon_addr(record, "mds", 1) == "10.231.7.11:6700"
    assert clusternet.daemon_addr(record, "osd", 3) == "10.231.7.103:6700"
    assert str(clusternet.subnet_of("10.231.7.103:6700")) == "10.231.7.0/24"
    assert clusternet.subnet_of("127.0.0.1:20000") is None
    assert clusternet.subnet_of("[::1]:20000") is None
    assert clusternet.node_names(record, "client2", "client", 2) == ("lf000000-client2",
                                                                      "lf000000c2")


def test_teardown_touches_only_names_of_its_prefix(monkeypatch):
    """A record whose names lack its prefix (edited by hand, say) deletes nothing."""
    calls = []
    monkeypatch.setattr(clusternet, "namespaces", lambda: {"other-ns", "lf111111-osd0"})
    monkeypatch.setattr(clusternet, "links", lambda: {"eth0", "lf111111br"})
    monkeypatch.setattr(clusternet, "run", lambda *argv: calls.append(argv) or "")
    record = {"prefix": "lf111111", "namespaces": ["other-ns", "lf111111-osd0"],
              "links": ["eth0", "lf111111br", "lf111111o0"]}
    assert clusternet.teardown(record) == []
    assert calls == [("ip", "link", "del", "lf111111br"), ("ip", "netns", "del", "lf111111-osd0")]
