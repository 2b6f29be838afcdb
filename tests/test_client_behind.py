"""client.behind: unlinks answered before their commit, and the waits for them.

Unit tests on trio's virtual clock, with the unlink request played by a
function that waits for the test's word; the mount tests are in
test_posix_unlink_behind.
"""

import stat

import pytest
import trio

from client.behind import UnlinksBehind
from loomproto import errors

DIR, OTHER_DIR = 1, 2
FILE = stat.S_IFREG | 0o644


class _Requests:
    """Unlink requests that finish when the test says so, with its outcome."""

    def __init__(self):
        self.sent: list[bytes] = []
        self.gates: dict[bytes, trio.Event] = {}
        self.outcome: dict[bytes, Exception] = {}

    def make(self, name: bytes, unwritten: Exception | None = None):
        """The request is written at once, or fails with `unwritten` before."""
        self.gates[name] = trio.Event()

        async def remove(sent):
            if unwritten is not None:
                raise unwritten
            self.sent.append(name)
            sent.set()
            await self.gates[name].wait()
            if name in self.outcome:
                raise self.outcome[name]
        return remove

    def finish(self, name: bytes, error: Exception | None = None):
        if error is not None:
            self.outcome[name] = error
        self.gates[name].set()


async def _unlink(behind: UnlinksBehind, requests: _Requests, parent: int, name: bytes,
                  ino: int):
    behind.saw(parent, name, ino, FILE)
    assert behind.may_answer_early(parent, name, {}, _ONE_LINK) == ino
    await behind.reserve(parent, name)
    await behind.send(parent, name, ino, requests.make(name))


class _OneLink(dict):
    """An attribute cache in which every inode has one name."""

    def get(self, ino, default=None):
        return {"ino": ino, "nlink": 1}


_ONE_LINK = _OneLink()


async def _pending(nursery, window: int, *unlinks) -> tuple[UnlinksBehind, _Requests]:
    """An UnlinksBehind with the `(parent, name, ino)` unlinks on their way."""
    behind, requests = UnlinksBehind(nursery, window), _Requests()
    for parent, name, ino in unlinks:
        await _unlink(behind, requests, parent, name, ino)
    return behind, requests


async def _finished(fn, *args) -> bool:
    """Whether `fn(*args)` returns once everything runnable has run (virtual time)."""
    done = trio.Event()

    async def run():
        await fn(*args)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        finished = done.is_set()
        nursery.cancel_scope.cancel()
    return finished


async def test_only_known_files_with_one_name_not_open_here_go_early(nursery):
    behind = UnlinksBehind(nursery, 4)
    assert behind.may_answer_early(DIR, b"never-seen", {}, _ONE_LINK) is None
    behind.saw(DIR, b"d", 10, stat.S_IFDIR | 0o755)
    behind.saw(DIR, b"fifo", 11, stat.S_IFIFO | 0o644)
    behind.saw(DIR, b"open", 12, FILE)
    behind.saw(DIR, b"link", 13, stat.S_IFLNK | 0o777)
    behind.saw(DIR, b"hard", 14, FILE)
    assert behind.may_answer_early(DIR, b"d", {}, _ONE_LINK) is None
    assert behind.may_answer_early(DIR, b"fifo", {}, _ONE_LINK) is None
    assert behind.may_answer_early(DIR, b"open", {12: object()}, _ONE_LINK) is None
    assert behind.may_answer_early(DIR, b"link", {}, _ONE_LINK) == 13
    assert UnlinksBehind(nursery, 0).may_answer_early(DIR, b"link", {}, _ONE_LINK) is None
    # Another name's lookup would give the link count before the commit: wait.
    assert behind.may_answer_early(DIR, b"hard", {}, {14: {"nlink": 2}}) is None
    assert behind.may_answer_early(DIR, b"hard", {}, {}) is None  # count unknown
    assert behind.may_answer_early(DIR, b"hard", {}, {14: {"nlink": 1}}) == 14
    # A name the shard said is absent, or removed by a rename, is forgotten.
    behind.gone(DIR, b"hard")
    assert behind.may_answer_early(DIR, b"hard", {}, _ONE_LINK) is None
    # The same inode twice (a name re-made by another mount): the second waits.
    requests = _Requests()
    await _unlink(behind, requests, DIR, b"open", 12)
    behind.saw(OTHER_DIR, b"again", 12, FILE)
    assert behind.may_answer_early(OTHER_DIR, b"again", {}, _ONE_LINK) is None
    requests.finish(b"open")
    await behind.settle_all()
    assert behind.may_answer_early(OTHER_DIR, b"again", {}, _ONE_LINK) == 12


async def test_waits_cover_name_inode_directory_and_all(nursery):
    behind, requests = await _pending(nursery, 8, (DIR, b"a", 21), (OTHER_DIR, b"b", 22))
    await trio.testing.wait_all_tasks_blocked()
    assert requests.sent == [b"a", b"b"] and behind
    assert not await _finished(behind.settle_name, DIR, b"a")
    assert not await _finished(behind.settle_ino, 21)
    assert not await _finished(behind.settle_dir, DIR)
    assert not await _finished(behind.settle_all)
    assert await _finished(behind.settle_name, DIR, b"b")  # another directory's name
    assert await _finished(behind.settle_ino, 99)
    requests.finish(b"a")
    await trio.testing.wait_all_tasks_blocked()
    assert await _finished(behind.settle_dir, DIR)
    assert await _finished(behind.settle_ino, 21)
    assert not await _finished(behind.settle_dir, OTHER_DIR)
    assert not await _finished(behind.settle_all)
    requests.finish(b"b")
    await behind.settle_all()
    assert not behind


async def test_settle_all_waits_only_for_what_was_pending(nursery):
    """A rename or rmdir must not wait as long as another process keeps unlinking."""
    behind, requests = await _pending(nursery, 8, (DIR, b"first", 61))
    waiter = trio.Event()

    async def settle():
        await behind.settle_all()
        waiter.set()

    nursery.start_soon(settle)
    await trio.testing.wait_all_tasks_blocked()
    await _unlink(behind, requests, DIR, b"later", 62)
    requests.finish(b"first")
    await trio.testing.wait_all_tasks_blocked()
    assert waiter.is_set() and behind  # "later" still on its way
    requests.finish(b"later")
    await behind.settle_all()


async def test_an_rmdir_waits_for_the_directory_it_names(nursery):
    behind, requests = await _pending(nursery, 8, (DIR, b"in-dir", 71),
                                      (OTHER_DIR, b"in-other", 72))
    places = {DIR: (100, b"dir"), OTHER_DIR: (100, b"other")}
    # rmdir of "other" waits for OTHER_DIR only.
    assert not await _finished(behind.settle_dir_at, 100, b"other", places.get)
    requests.finish(b"in-other")
    await trio.testing.wait_all_tasks_blocked()
    assert await _finished(behind.settle_dir_at, 100, b"other", places.get)
    # A directory whose place is not known here might be the one: wait for it.
    assert not await _finished(behind.settle_dir_at, 100, b"third", {}.get)
    assert await _finished(behind.settle_dir_at, 100, b"third", places.get)
    requests.finish(b"in-dir")
    await behind.settle_all()


async def test_the_window_bounds_unlinks_in_flight(nursery):
    behind, requests = await _pending(nursery, 2, (DIR, b"one", 31), (DIR, b"two", 32))
    behind.saw(DIR, b"three", 33, FILE)
    assert not await _finished(behind.reserve, DIR, b"three")
    requests.finish(b"one")
    await trio.testing.wait_all_tasks_blocked()
    await behind.reserve(DIR, b"three")  # a place is free again
    await behind.send(DIR, b"three", 33, requests.make(b"three"))
    requests.finish(b"two")
    requests.finish(b"three")
    await behind.settle_all()


@pytest.mark.parametrize("error,reported", [
    (errors.IOFailure("shard unreachable"), True),
    (trio.TooSlowError(), True),
    (errors.NotFound("gone already"), False),  # the name is gone either way
])
async def test_a_failure_is_reported_once_to_the_directory(nursery, error, reported):
    behind, requests = await _pending(nursery, 4, (DIR, b"f", 41))
    requests.finish(b"f", error)
    await behind.settle_dir(DIR)
    failure = behind.take_failure(DIR)
    assert (failure is not None) == reported and behind.failures == int(reported)
    if reported:
        assert isinstance(failure, errors.LoomError)
    assert behind.take_failure(DIR) is None
    assert behind.take_failure(OTHER_DIR) is None


async def test_a_bug_in_the_request_costs_one_failure_not_the_mount(nursery):
    behind, requests = await _pending(nursery, 4, (DIR, b"f", 51))
    requests.finish(b"f", KeyError("a bug"))
    await behind.settle_all()
    assert isinstance(behind.take_failure(DIR), errors.IOFailure)


async def test_a_request_that_cannot_be_written_fails_the_unlink_itself(nursery):
    """Its shard unreachable past mds_timeout: the caller gets the error, as from an
    unlink answered after its commit, and fsync of the directory has nothing to say."""
    behind = UnlinksBehind(nursery, 4)
    requests = _Requests()
    behind.saw(DIR, b"f", 81, FILE)
    await behind.reserve(DIR, b"f")
    with pytest.raises(errors.TimedOut):
        await behind.send(DIR, b"f", 81, requests.make(b"f", errors.TimedOut("no answer")))
    assert not behind and behind.take_failure(DIR) is None and behind.failures == 0
    await _unlink(behind, requests, DIR, b"g", 82)  # its place in the window is free
    requests.finish(b"g")
    await behind.settle_all()


async def test_a_reply_read_before_an_unlink_landed_is_known_stale(nursery):
    """A lookup of another name of the file, read by the shard before the unlink's
    commit and answered after it: its link count is the old one (CI caught a
    stat saying 2 links after the unlink of one of two names)."""
    behind, requests = await _pending(nursery, 4, (DIR, b"a", 91))
    since = behind.ends  # the lookup goes out now
    assert behind.stale(91, since) and not behind.stale(92, since)
    requests.finish(b"a")
    await behind.settle_all()
    assert behind.stale(91, since)  # ended while the lookup was on its way
    assert not behind.stale(92, since) and not behind.stale(91, behind.ends)
