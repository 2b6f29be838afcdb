"""`loomfs backup` of a live cluster, changes, the documented restore procedure
(client/backup.py), and the backed-up namespace is back; `loomfs fsck --repair`
then removes the chunks of files created after the backup (or finds them
already removed by an OSD recovery pass)."""

import hashlib
import os
import subprocess
import sys

import pytest

from conftest import started_cluster

LOOMFS = os.path.join(os.path.dirname(sys.executable), "loomfs")


@pytest.fixture
def small_cluster(tmp_path):
    with started_cluster(tmp_path, "--mds", 2, "--osd", 2, "--replicas", 1) as live:
        yield live


def loomfs(live, *args):
    return subprocess.run([LOOMFS, *map(str, args), "--cluster", str(live.config)],
                          capture_output=True, text=True, timeout=300)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_backup_change_restore(small_cluster, tmp_path):
    live = small_cluster
    before = live.mnt / "before"
    (before / "sub").mkdir(parents=True)
    for i in range(5):
        (before / f"f{i}").write_bytes(os.urandom(300_000 * i))
    kept = {f"f{i}": digest(before / f"f{i}") for i in range(5)}

    backup_dir = tmp_path / "backup"
    done = loomfs(live, "backup", backup_dir)
    assert done.returncode == 0, done.stderr
    assert (backup_dir / "manifest.json").exists() and (backup_dir / "mds1" / "data.mdb").exists()

    os.rename(before / "f1", live.mnt / "moved")
    os.rmdir(before / "sub")
    (live.mnt / "new").mkdir()
    (live.mnt / "new" / "data").write_bytes(os.urandom(1 << 20))

    live.run("umount", "client0")
    live.run("stop", "mds1")

    def restore(shard, data):
        return subprocess.run([LOOMFS, "restore", str(backup_dir), "--id", str(shard), "--data",
                               str(data), "--cluster", str(live.config)],
                              capture_output=True, text=True, timeout=60)

    # Shard 1's copy into mds0's directory (mds0 still running) is refused and
    # leaves it in place: it was moved aside, and mds0 then served shard 1's
    # namespace as its own (a tester's report).
    wrong = restore(1, live.state / "mds0")
    assert wrong.returncode != 0 and "holds shard 0" in wrong.stderr, wrong.stderr
    assert (live.state / "mds0" / "data.mdb").exists()
    assert not list(live.state.glob("mds0.pre-restore-*"))
    live.run("stop", "mds0")
    for shard in (0, 1):
        done = restore(shard, live.state / f"mds{shard}")
        assert done.returncode == 0, done.stderr
    for shard in (0, 1):
        live.run("start", f"mds{shard}")
    live.run("mount", live.mnt)

    assert sorted(os.listdir(live.mnt)) == ["before"]
    assert sorted(os.listdir(before)) == ["f0", "f1", "f2", "f3", "f4", "sub"]
    assert {name: digest(before / name) for name in kept} == kept

    # The chunks of new/data are strays now: fsck reports them, unless an OSD
    # recovery pass (osd/recovery.py) removed them first.
    check = loomfs(live, "fsck", "-q")
    assert check.returncode in (0, 1), check.stdout + check.stderr
    assert check.returncode == 0 or "stray-chunks" in check.stdout, check.stdout
    repaired = loomfs(live, "fsck", "-q", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert loomfs(live, "fsck", "-q").returncode == 0
