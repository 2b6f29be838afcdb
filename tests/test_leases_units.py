"""Unit tests of the two halves of answering lookups of new names in the client:
the shard's leases (mdsd.leases, on a fake clock) and what the client keeps
(client.absent).  The whole, on real shards and mounts: test_mdsd_leases.py and
test_posix_absent.py."""

import pytest

from client.absent import MAX_NAMES, AbsentNames
from loomproto import errors
from mdsd import leases as leasesmod
from mdsd.leases import CONTENDED, LEASE, Leases

A, B = b"a" * 16, b"b" * 16


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_lease_holds_back_others_until_it_ends():
    clock = Clock()
    leases = Leases(clock)
    leases.admit(7, A)
    assert leases.grant(7, A) == LEASE
    leases.admit(7, A)  # the holder adds again: not held back, and renews
    assert leases.grant(7, A) == LEASE
    for adder in (B, None):  # another session, or one that says nothing
        with pytest.raises(errors.Conflict):
            leases.admit(7, adder)
    leases.admit(8, B)  # another directory is not leased
    clock.now += LEASE
    leases.admit(7, B)  # the lease is over
    assert leases.grant(7, B) == 0.0  # contended by the wait: no lease for anyone
    assert leases.grant(7, A) == 0.0
    clock.now += CONTENDED
    assert leases.grant(7, A) == LEASE


def test_a_starting_shard_admits_no_entry_for_one_lease():
    clock = Clock()
    leases = Leases(clock)
    leases.quiet()
    with pytest.raises(errors.Conflict):
        leases.admit(7, A)
    clock.now += LEASE
    leases.admit(7, A)


def test_ended_leases_are_swept(monkeypatch):
    monkeypatch.setattr(leasesmod, "SWEEP_AT", 10)
    clock = Clock()
    leases = Leases(clock)
    for d in range(11):
        assert leases.grant(d, A) == LEASE
    clock.now += LEASE
    assert leases.grant(100, A) == LEASE
    assert len(leases._held) <= 10
    leases.admit(0, B)  # swept or not, an ended lease holds nobody back


def _known(nshards=2):
    # Names starting with "0" are on shard 0, the others on shard 1.
    return AbsentNames(lambda parent, name: 0 if name.startswith(b"0") else 1, nshards)


def test_names_are_absent_only_under_a_lease_with_the_seqs_in_order():
    known = _known()
    known.made_dir(5)
    assert known.wants_lease(5, b"0a") and not known.wants_lease(6, b"0a")
    assert not known.absent(5, b"0x", now=0.0)  # no lease yet
    known.added(5, b"0a", [1, 0.1], sent_at=10.0)
    assert known.absent(5, b"0x", now=10.05)
    assert not known.absent(5, b"0a", now=10.05)  # ours
    assert not known.absent(5, b"1x", now=10.05)  # the other shard's share: no lease
    assert not known.absent(5, b".", now=10.05) and not known.absent(5, b"..", now=10.05)
    assert not known.absent(5, b"0x", now=10.1)  # the lease counts from the send
    known.added(5, b"0b", [2, 0.0], sent_at=11.0)  # contended: in order, but no lease
    assert not known.absent(5, b"0x", now=11.0)
    known.added(5, b"0c", [3, 0.1], sent_at=12.0)
    assert known.absent(5, b"0x", now=12.0)
    known.removed(5, b"0c")
    assert known.absent(5, b"0c", now=12.0)
    known.added(5, b"0d", [5, 0.1], sent_at=13.0)  # seq 4 was someone else's
    assert not known.absent(5, b"0x", now=13.0) and not known.wants_lease(5, b"0x")
    assert known.wants_lease(5, b"1x")  # the other share is still known


@pytest.mark.parametrize("reply", [None, [1], "1", [2, 0.1]])
def test_a_create_reply_without_the_next_seq_forgets_the_share(reply):
    known = _known()
    known.made_dir(5)
    known.added(5, b"0a", reply, sent_at=10.0)
    assert not known.wants_lease(5, b"0a") and not known.absent(5, b"0x", now=10.0)


def test_no_answers_while_a_change_is_on_its_way_and_none_after_it_failed():
    known = _known()
    known.made_dir(5)
    known.added(5, b"0a", [1, 0.1], sent_at=10.0)
    with known.changing(5):
        assert not known.absent(5, b"0x", now=10.0)
    assert known.absent(5, b"0x", now=10.0)
    with pytest.raises(errors.Exists):
        with known.changing(5):
            raise errors.Exists("made by another client")
    assert not known.absent(5, b"0x", now=10.0) and not known.wants_lease(5, b"0x")


def test_a_share_stops_being_kept_at_max_names(monkeypatch):
    monkeypatch.setattr("client.absent.MAX_NAMES", 3)
    known = _known(1)
    known.made_dir(5)
    for seq, name in enumerate([b"0a", b"0b", b"0c"], 1):
        known.added(5, name, [seq, 0.1], sent_at=10.0)
    assert known.absent(5, b"0x", now=10.0)
    known.added(5, b"0d", [4, 0.1], sent_at=10.0)
    assert not known.wants_lease(5, b"0x")
    assert MAX_NAMES > 1000


def test_names_kept_in_all_shares_are_bounded(monkeypatch):
    monkeypatch.setattr("client.absent.MAX_NAMES_TOTAL", 10)
    known = _known(1)
    for d in range(5):
        known.made_dir(d)
        for seq in range(1, 5):
            known.added(d, b"0%d" % seq, [seq, 0.1], sent_at=10.0)
    assert known._names <= 10
    assert known.absent(4, b"0x", now=10.0)  # the newest directory is kept
    assert not known.wants_lease(0, b"0x")  # the oldest went first
    known.forget(4)
    known.removed(3, b"01")
    assert known._names == sum(len(s.names) for shares in known._dirs.values()
                               for s in shares.values())


def test_shares_kept_are_bounded(monkeypatch):
    monkeypatch.setattr("client.absent.MAX_SHARES", 8)
    known = AbsentNames(lambda parent, name: int(name[:1]), 4)
    for d in range(5):
        known.made_dir(d)
    assert list(known._dirs) == [3, 4]  # 2 directories x 4 shards


def test_replies_of_creates_travelling_together_may_come_in_any_order():
    """Creates answered before their commit (client.behind) are on their way
    together, and their replies may come in another order than their seqs: a seq
    past the next one waits while creates of ours are on their way, the share
    answers nothing meanwhile, and the share is kept once the gap is filled."""
    known = _known()
    known.made_dir(5)
    known.sending(5, b"0a")
    known.added(5, b"0a", [1, 0.1], sent_at=10.0)
    for name in (b"0b", b"0c", b"0d"):
        assert known.claim(5, name, now=10.01, margin=0.05)
        known.sending(5, name)
    assert not known.absent(5, b"0b", now=10.01)  # claimed: counts as there
    known.added(5, b"0d", [4, 0.1], sent_at=10.01)
    known.added(5, b"0c", [3, 0.1], sent_at=10.01)
    assert not known.absent(5, b"0x", now=10.02)  # seq 2 not in yet
    known.added(5, b"0b", [2, 0.1], sent_at=10.01)
    assert known.absent(5, b"0x", now=10.02) and known.wants_lease(5, b"0x")
    assert {b"0a", b"0b", b"0c", b"0d"} <= known._dirs[5][0].names


def test_a_gap_no_create_of_ours_can_fill_was_someone_elses():
    known = _known()
    known.made_dir(5)
    known.added(5, b"0a", [1, 0.1], sent_at=10.0)
    known.sending(5, b"0b")
    known.sending(5, b"0c")
    known.added(5, b"0c", [4, 0.1], sent_at=10.01)  # 2 and 3 missing, 0b on its way
    assert known.wants_lease(5, b"0x") and not known.absent(5, b"0x", now=10.02)
    known.added(5, b"0b", [2, 0.1], sent_at=10.01)  # 3 was someone else's
    assert not known.wants_lease(5, b"0x") and not known.absent(5, b"0x", now=10.02)


def test_a_create_is_claimed_only_with_enough_of_the_lease_left():
    known = _known()
    known.made_dir(5)
    assert not known.claim(5, b"0a", now=0.0, margin=0.05)  # no lease yet
    known.added(5, b"0a", [1, 0.1], sent_at=10.0)
    assert not known.claim(5, b"0a", now=10.0, margin=0.05)  # ours already
    assert not known.claim(5, b"0b", now=10.06, margin=0.05)  # 0.04 s left
    assert known.claim(5, b"0b", now=10.04, margin=0.05)
    assert not known.claim(5, b"0b", now=10.04, margin=0.05)  # claimed once
