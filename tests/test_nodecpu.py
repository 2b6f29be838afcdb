"""scripts/nodecpu: CPU per unit of work of a cluster's recorded nodes around a command;
scripts/listcost: what a lookup costs against a listed entry."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODECPU = os.path.join(REPO, "scripts", "nodecpu")
BURN = "while True: pass"
# Waits, with a deadline, until the node given by pid has used 0.3 s of CPU.
WAIT_FOR_CPU = """
import os, sys, time
pid, deadline = int(sys.argv[1]), time.monotonic() + 60
def used():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
start = used()
while used() - start < 0.3:
    assert time.monotonic() < deadline, "the busy node never got 0.3 s of CPU"
    time.sleep(0.05)  # polling the CPU count, under the deadline above
sys.exit(3)
"""


@pytest.fixture
def state(tmp_path):
    busy = subprocess.Popen([sys.executable, "-c", BURN])
    # A node that does nothing: it blocks reading its stdin until the fixture ends it.
    idle = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    nodes = {"osd0": {"kind": "osd", "pid": busy.pid}, "client0": {"kind": "client",
                                                                   "pid": idle.pid}}
    (tmp_path / "nodes.json").write_text(json.dumps({"nodes": nodes}))
    yield tmp_path, busy.pid
    for proc in (busy, idle):
        proc.kill()
        proc.wait()


def test_counts_each_node_per_unit_and_passes_on_the_exit_status(state):
    state_dir, busy_pid = state
    result = subprocess.run([sys.executable, NODECPU, "--state", str(state_dir), "--units",
                             "10", "--json", "--", sys.executable, "-c", WAIT_FOR_CPU,
                             str(busy_pid)], capture_output=True, text=True, timeout=120)

    assert result.returncode == 3, result.stderr
    figures = json.loads(result.stdout)
    assert figures["ms_per_unit"]["osd"] >= 30  # at least 300 ms over 10 units
    assert figures["osds"] == {"osd0": figures["ms_per_unit"]["osd"]}
    assert figures["ms_per_unit"]["client"] < 5  # the idle node, not the command
    assert 0 < figures["machine_busy"] <= 1


def test_needs_a_command_and_units(state):
    state_dir, _ = state
    result = subprocess.run([sys.executable, NODECPU, "--state", str(state_dir), "--units",
                             "0", "--", "true"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--units above 0" in result.stderr


def test_listcost_measures_lookups_and_listed_entries_on_a_live_cluster(cluster, workdir):
    """scripts/listcost, which backs the cost figures client.statahead rests on."""
    for i in range(40):
        (workdir / f"f{i}").write_bytes(b"")
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "listcost"),
                             "--state", str(cluster.state), "--rounds", "2",
                             str(workdir)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("lookup") and " 80 done" in lines[0]
    assert lines[1].startswith("listed entry") and " 80 done" in lines[1]
    assert "listed entries" in lines[2]
