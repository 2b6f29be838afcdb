"""Reading the next FUSE request without a round of the scheduler when one is queued.

pyfuse3's workers each take a request in three steps: wait for a shared lock
(one reader waits on the device at a time), wait until trio's epoll reports
``/dev/fuse`` readable, then read.  Each wait costs at least one turn of the
trio scheduler, plus an ``epoll_ctl`` to arm the descriptor and a wake-up of
the next worker when the lock changes hands.  When the mount is busy (several
programs, or the kernel's read-ahead and write-back sending requests of their
own) the next request is usually queued already when a worker finishes one, and
those turns buy nothing.

`install` wraps pyfuse3's wait (``pyfuse3._wait_fuse_readable``, which its
worker loop looks up by name on every request) with a check first: a
zero-timeout ``poll`` of the device.  If it shows a request queued, the worker
reads it at once, without yielding.  No other worker can take the request
first: nothing runs between the wait's return and the worker's read (no
``await`` between them).  Otherwise pyfuse3's own wait runs.

The device is opened blocking (neither libfuse nor pyfuse3 sets O_NONBLOCK),
so a worker that reads with nothing queued does not fail: it blocks the whole
event loop (every reply from the servers, every timer) until the kernel queues
the next request.  Hence:
- A worker parked in pyfuse3's wait may be woken for a request that another
  worker then took without waiting (or for an interrupt the kernel dropped
  once the request it named was answered).  After pyfuse3's wait the device
  is polled again, and the worker waits once more if it finds nothing.  A
  reviewer's build without that second poll sat in the kernel's read most of
  the time under a storm of cached requests, and one readdir took 18.5 s.
- The kernel itself may still withdraw a queued request between the poll and
  the read: one whose program is killed before the request is read.  If that
  was the only one queued, the read blocks until the next request.  pyfuse3's
  own wait has the same window, longer (epoll, a scheduler turn, then the
  read); the poll here narrows it to microseconds.  Closing it needs a
  non-blocking device in pyfuse3, which would then have to take EAGAIN as it
  takes EINTR.
- An error or hang-up on the device (the filesystem was unmounted) goes to
  pyfuse3's read as before, which ends the loop.

At most FAST_STREAK requests are taken this way in a row.  A request answered
from the client's caches never yields, so an unbroken run of them would keep
every other task (replies from the servers, write-back) waiting.  After
FAST_STREAK of them, the next goes through pyfuse3's wait, which yields.

What it gained is in the README ("Reading queued FUSE requests at once").
"""

import logging
import os
import select
import stat

import pyfuse3

log = logging.getLogger(__name__)

FAST_STREAK = 16
FUSE_DEVICE = os.makedev(10, 229)  # /dev/fuse


class FastWait:
    """The wrapper around pyfuse3's wait for the device, with its counters."""

    def __init__(self, fd: int, wait):
        self._wait = wait
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)
        self._streak = 0
        self.at_once = 0     # requests read without a scheduler turn
        self.waited = 0      # reads after pyfuse3's wait (the last: the unmount's hang-up)
        self.taken = 0       # wake-ups for a request another worker took first

    def _events(self) -> int:
        ready = self._poller.poll(0)
        return ready[0][1] if ready else 0

    async def __call__(self) -> bool:
        if self._streak < FAST_STREAK and self._events() == select.POLLIN:
            self._streak += 1
            self.at_once += 1
            return True
        self._streak = 0
        while True:
            if not await self._wait():
                return False
            if self._events():
                self.waited += 1
                return True
            self.taken += 1

    def summary(self) -> str:
        return (f"FUSE requests read at once {self.at_once}, after a wait {self.waited}, "
                f"wake-ups for a request taken first {self.taken}")


def _device_fds() -> list[int]:
    """This process's descriptors of the FUSE device (character device 10, 229),
    whatever path it was opened under."""
    fds = []
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return fds
    for name in names:
        try:
            st = os.fstat(int(name))
        except OSError:
            continue  # the listing's own descriptor, closed by now
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == FUSE_DEVICE:
            fds.append(int(name))
    return fds


def install() -> FastWait | None:
    """Wrap pyfuse3's wait, after pyfuse3.init (which opens the device).  Returns
    None, leaving pyfuse3 as it is, if this pyfuse3 has no such wait or the
    process holds other than one FUSE device descriptor."""
    wait = getattr(pyfuse3, "_wait_fuse_readable", None)
    if wait is None or isinstance(wait, FastWait):
        log.info("pyfuse3 %s: its reads of FUSE requests are left as they are",
                 getattr(pyfuse3, "__version__", "?"))
        return None
    fds = _device_fds()
    if len(fds) != 1:
        log.info("%d descriptors of /dev/fuse: pyfuse3's reads are left as they are",
                 len(fds))
        return None
    fast = FastWait(fds[0], wait)
    pyfuse3._wait_fuse_readable = fast
    return fast


def uninstall(fast: FastWait | None) -> None:
    if fast is not None and pyfuse3._wait_fuse_readable is fast:
        pyfuse3._wait_fuse_readable = fast._wait
