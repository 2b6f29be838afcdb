"""Through the mount: a client answers the lookups of new names in a directory
it made, under a lease on each of its shares (client.absent, mdsd.leases), and
a name another mount adds there is seen by the first at once after that
mount's create returns, as without leases."""

import errno
import itertools
import json
import os
import subprocess

import pytest

from loomproto import config as cluster_config
from loomproto.layout import shard_of_dentry

pytestmark = pytest.mark.mount

LOOMFS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      ".venv", "bin", "loomfs")


def _lookups_served(cluster) -> int:
    out = subprocess.run([LOOMFS, "status", "--json", "--cluster", str(cluster.config)],
                         capture_output=True, text=True, timeout=60)
    shards = json.loads(out.stdout)["shards"]
    assert all(shard["up"] for shard in shards), out.stdout
    return sum(shard["requests"].get("lookup", 0) for shard in shards)


def test_creates_in_a_directory_made_here_skip_the_shards_lookups(cluster, workdir):
    fresh = workdir / "fresh"
    fresh.mkdir()
    before = _lookups_served(cluster)
    for i in range(200):
        (fresh / f"f{i:03d}").write_bytes(b"")
        with pytest.raises(OSError) as failed:  # too long: refused, not merely absent
            os.stat(fresh / ("n" * 256))
        assert failed.value.errno == errno.ENAMETOOLONG
    asked = _lookups_served(cluster) - before
    # One per new name without the leases; with them, about one per share (two).
    assert asked < 20, asked
    assert sorted(os.listdir(fresh)) == [f"f{i:03d}" for i in range(200)]


def _on_share_of(directory, name, count, cluster):
    """`count` names that live on the same shard as `name` in `directory`."""
    nshards = cluster_config.load(str(cluster.config)).nshards
    ino = os.stat(directory).st_ino
    target = shard_of_dentry(ino, name.encode(), nshards)
    names = (f"mine{i}" for i in itertools.count())
    return list(itertools.islice(
        (n for n in names if shard_of_dentry(ino, n.encode(), nshards) == target), count))


def test_a_name_another_mount_added_is_seen_at_once(cluster, workdir, second_client):
    for i in range(6):
        here = workdir / f"d{i}"
        here.mkdir()
        for mine in _on_share_of(here, "theirs", 3, cluster):  # a lease on its share
            (here / mine).write_bytes(b"")
        # Held back on its shard until this mount's lease there has ended...
        (second_client / workdir.name / f"d{i}" / "theirs").write_bytes(b"x")
        # ...so this mount asks the shard again and finds it.
        assert (here / "theirs").read_bytes() == b"x"


def test_o_excl_create_of_a_name_another_mount_made_fails(cluster, workdir, second_client):
    here = workdir / "excl"
    here.mkdir()
    for mine in _on_share_of(here, "taken", 3, cluster):
        (here / mine).write_bytes(b"")
    (second_client / workdir.name / "excl" / "taken").write_bytes(b"theirs")
    assert os.path.exists(here / "taken")  # the lookup, not only the create, finds it
    with pytest.raises(FileExistsError):
        os.close(os.open(here / "taken", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    with open(here / "taken", "ab") as fp:  # O_CREAT without O_EXCL opens theirs
        fp.write(b"+mine")
    assert (second_client / workdir.name / "excl" / "taken").read_bytes() == b"theirs+mine"
