"""client.fuseloop: the wait for the next FUSE request.

The unit tests drive `FastWait` over a pipe standing in for /dev/fuse, with a
stand-in for pyfuse3's own wait.  The last test mounts real clients, with and
without it, and checks from their unmount log lines that requests were read
both ways and that the files came out right.
"""

import os
import re
import shutil
import threading

import pyfuse3
import pytest
import trio
import trio.testing

from client import fuseloop
from client.fuseloop import FAST_STREAK, FastWait


class Device:
    """A pipe as the FUSE device, blocking as /dev/fuse is opened (a read with
    nothing queued would stop the test, as it would stop the mount's event
    loop), and pyfuse3's wait as it behaves: it parks until the descriptor is
    readable (or the test says it wakes anyway)."""

    def __init__(self):
        self.read_end, self.write_end = os.pipe()
        self.calls = 0
        self.spurious = 0     # wake-ups to hand out without a request queued
        self.ends = False     # the session ended: the wait returns False

    async def wait(self):
        self.calls += 1
        if self.ends:
            return False
        if self.spurious:
            self.spurious -= 1
            await trio.lowlevel.checkpoint()
            return True
        await trio.lowlevel.wait_readable(self.read_end)
        return True

    def queue(self, n=1):
        os.write(self.write_end, b"r" * n)

    def take(self):
        return os.read(self.read_end, 1)

    def close(self):
        for fd in (self.read_end, self.write_end):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def device():
    dev = Device()
    yield dev
    dev.close()


async def test_a_queued_request_is_read_without_the_wait(device):
    fast = FastWait(device.read_end, device.wait)
    device.queue()
    assert await fast()
    assert device.calls == 0 and fast.at_once == 1
    device.take()


async def _parked_worker(nursery, fast):
    """Start a worker's wait; return (once every task is blocked) the list its
    result will land in."""
    results = []

    async def worker():
        results.append(await fast())
    nursery.start_soon(worker)
    await trio.testing.wait_all_tasks_blocked()
    return results


async def test_nothing_queued_goes_through_the_wait(device):
    fast = FastWait(device.read_end, device.wait)
    async with trio.open_nursery() as nursery:
        results = await _parked_worker(nursery, fast)
        assert device.calls == 1 and not results
        device.queue()
    assert results == [True] and fast.waited == 1 and fast.at_once == 0


async def test_a_streak_of_requests_read_at_once_ends_in_the_wait(device):
    fast = FastWait(device.read_end, device.wait)
    device.queue(FAST_STREAK + 2)
    for _ in range(FAST_STREAK):
        assert await fast()
        device.take()
    assert device.calls == 0
    assert await fast()          # the FAST_STREAK+1-th: through the wait, which yields
    assert device.calls == 1 and fast.waited == 1
    device.take()
    assert await fast()          # and the streak starts again
    assert device.calls == 1 and fast.at_once == FAST_STREAK + 1


async def test_a_wake_up_for_a_request_already_taken_waits_again(device):
    """A worker woken for a request another took must not go on to read: on
    the blocking device that read would stop the event loop."""
    fast = FastWait(device.read_end, device.wait)
    device.spurious = 2
    async with trio.open_nursery() as nursery:
        results = await _parked_worker(nursery, fast)
        assert device.calls == 3 and fast.taken == 2 and not results
        device.queue()
    assert results == [True] and fast.waited == 1
    assert os.read(device.read_end, 1) == b"r"   # the request is still there to read


async def test_a_hung_up_device_goes_to_the_read_without_spinning(device):
    """After an unmount the device polls as an error or hang-up, never as a
    plain request: the read (which then ends pyfuse3's loop) gets it at once."""
    fast = FastWait(device.read_end, device.wait)
    os.close(device.write_end)
    with trio.fail_after(5):
        assert await fast()
    assert device.calls == 1 and fast.at_once == 0 and fast.taken == 0


async def test_the_end_of_the_session_ends_the_wait(device):
    fast = FastWait(device.read_end, device.wait)
    device.ends = True
    assert await fast() is False


def test_the_device_is_found_by_its_number_not_its_path(tmp_path):
    """Only a character device 10,229 counts, whatever its name; this process
    has none (pyfuse3.init is what opens one)."""
    assert fuseloop._device_fds() == []
    link = tmp_path / "fuse-link"
    link.symlink_to("/dev/null")
    fd = os.open(link, os.O_RDONLY)
    try:
        assert fd not in fuseloop._device_fds()
    finally:
        os.close(fd)
    if os.path.exists("/dev/fuse"):
        fd = os.open("/dev/fuse", os.O_RDWR)  # an unmounted session: nothing is read
        try:
            assert fuseloop._device_fds() == [fd]
        finally:
            os.close(fd)


def test_install_leaves_pyfuse3_alone_without_one_device(monkeypatch):
    original = pyfuse3._wait_fuse_readable
    monkeypatch.setattr(fuseloop, "_device_fds", lambda: [])
    assert fuseloop.install() is None
    assert pyfuse3._wait_fuse_readable is original
    monkeypatch.setattr(fuseloop, "_device_fds", lambda: [3, 4])
    assert fuseloop.install() is None
    monkeypatch.delattr(pyfuse3, "_wait_fuse_readable")
    assert fuseloop.install() is None


def test_install_and_uninstall(monkeypatch, device):
    original = pyfuse3._wait_fuse_readable
    monkeypatch.setattr(fuseloop, "_device_fds", lambda: [device.read_end])
    fast = fuseloop.install()
    try:
        assert isinstance(fast, FastWait) and pyfuse3._wait_fuse_readable is fast
        assert fuseloop.install() is None          # not wrapped twice
    finally:
        fuseloop.uninstall(fast)
    assert pyfuse3._wait_fuse_readable is original


def _summary(cluster, name, sizes):
    with open(cluster.state / "logs" / f"{name}.log", "rb") as fp:
        fp.seek(sizes.get(f"{name}.log", 0))   # a client's name (and log) may be reused
        text = fp.read().decode(errors="replace")
    found = re.findall(r"read at once (\d+), after a wait (\d+)", text)
    return [tuple(map(int, pair)) for pair in found]


def _busy_mount(mnt, tag, threads=4, files=60):
    """Several threads creating, writing, statting and reading back files at
    once in a new directory `tag`, so that requests queue up; fails if a file
    reads back wrong."""
    top = os.path.join(mnt, tag)
    os.mkdir(top)
    errors = []

    def work(t):
        try:
            for i in range(files):
                path = os.path.join(top, f"t{t}-{i}")
                with open(path, "wb") as fp:
                    fp.write(bytes([t, i]) * 2048)
                os.stat(path)
            for i in range(files):
                with open(os.path.join(top, f"t{t}-{i}"), "rb") as fp:
                    if fp.read() != bytes([t, i]) * 2048:
                        errors.append(f"t{t}-{i} read back wrong")
        except OSError as exc:
            errors.append(repr(exc))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not any(worker.is_alive() for worker in workers), "a worker hung"
    assert not errors, errors
    shutil.rmtree(top)


def test_mounts_read_requests_at_once_and_after_waits(cluster):
    """A busy mount reads some requests without a wait; with fast_wait=0 it
    does as pyfuse3 does, and logs no counts.  Both read back what they wrote."""
    sizes = cluster.log_sizes()
    name, mnt = cluster.mount_client()
    try:
        _busy_mount(mnt, "fast-wait")
    finally:
        cluster.run("umount", name)
    counts = _summary(cluster, name, sizes)
    assert len(counts) == 1, counts
    at_once, waited = counts[0]
    assert at_once > 0 and waited > 0, counts

    sizes = cluster.log_sizes()
    mnt = cluster.base / "mnt-no-fast-wait"
    done = cluster.run("mount", mnt, "--mount-opts",
                       "allow_other,default_permissions,fast_wait=0")
    name = done.stdout.strip().splitlines()[-1]
    try:
        _busy_mount(mnt, "no-fast-wait")
    finally:
        cluster.run("umount", name)
    assert _summary(cluster, name, sizes) == []
    assert "unmounted" in (cluster.state / "logs" / f"{name}.log").read_text()
