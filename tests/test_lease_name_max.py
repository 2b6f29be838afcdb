"""A lookup the client answers itself under a create lease (client.absent) must
fail as the shard's lookup does: a name longer than NAME_MAX is ENAMETOOLONG
(POSIX stat/open/unlink/rmdir), never ENOENT, whether or not the client holds a
lease on the directory's share."""

import errno
import os

import pytest

from loomproto import config as cluster_config
from loomproto.layout import shard_of_dentry
from posix_util import errno_of

pytestmark = pytest.mark.mount

TOO_LONG = b"n" * 256


def _names_on_shard(parent_ino: int, shard: int, nshards: int, count: int) -> list[bytes]:
    names = []
    for i in range(10_000):
        name = b"f%d" % i
        if shard_of_dentry(parent_ino, name, nshards) == shard:
            names.append(name)
            if len(names) == count:
                return names
    raise AssertionError("no names found")


def test_a_too_long_name_is_enametoolong_under_a_lease(cluster, workdir):
    fresh = os.fsencode(workdir / "fresh")
    os.mkdir(fresh)  # made here: the client knows it empty on every shard
    too_long = fresh + b"/" + TOO_LONG
    # Before any create here the shard answers the lookup: ENAMETOOLONG.
    assert errno_of(os.stat, too_long) == errno.ENAMETOOLONG
    nshards = cluster_config.load(str(cluster.config)).nshards
    shard = shard_of_dentry(os.stat(fresh).st_ino, TOO_LONG, nshards)
    seen = []
    for name in _names_on_shard(os.stat(fresh).st_ino, shard, nshards, 5):
        # A create on the long name's share gets a lease there (0.1 s); ask at once.
        open(fresh + b"/" + name, "wb").close()
        seen.append([errno.errorcode.get(errno_of(fn, too_long), "ok")
                     for fn in (os.stat, os.lstat, os.unlink, os.rmdir,
                                lambda p: os.close(os.open(p, os.O_RDONLY)))])
    assert all(codes == ["ENAMETOOLONG"] * 5 for codes in seen), seen
