"""client.absent keeps at most MAX_NAMES_TOTAL names over all directories
(docs/design.md "The client": "it keeps at most 4,096 directories and 131,072
names"), also when one directory spreads over more than two shards."""

from client.absent import AbsentNames


def test_names_kept_are_bounded_in_one_directory_over_many_shards(monkeypatch):
    monkeypatch.setattr("client.absent.MAX_NAMES_TOTAL", 8)
    monkeypatch.setattr("client.absent.MAX_NAMES", 4)
    nshards = 4
    # Name b"<shard><n>" lives on shard <shard>.
    known = AbsentNames(lambda parent, name: int(name[:1]), nshards)
    known.made_dir(5)
    for shard in range(nshards):
        for seq in range(1, 4):  # three names a share: under MAX_NAMES
            known.added(5, b"%d-%d" % (shard, seq), [seq, 0.1], sent_at=10.0)
    kept = sum(len(s.names) for shares in known._dirs.values() for s in shares.values())
    assert kept <= 8, f"{kept} names kept, bound is 8"
