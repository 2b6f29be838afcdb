"""Keep freed bulk buffers in the process instead of handing them back to the kernel.

A 1 MiB chunk that arrives from FUSE or a socket lives in a fresh ``bytes``.
glibc serves allocations that large with mmap and unmaps them when freed, so
every chunk pays the first touch of new pages (about 0.5 GiB/s on the 2-core
VM; README "Performance").  Raising glibc's mmap and trim thresholds keeps the
freed memory on the heap, where the next chunk reuses pages already mapped: a
copy of 1 MiB went from 0.86 ms to 0.1 ms.  The cost is that up to
`TRIM_THRESHOLD` of freed memory stays resident.
"""

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for this setting on 64-bit systems
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Tune glibc's allocator for bulk buffers; False (and a log line) where that is impossible."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.info("no glibc mallopt here (libc %s): bulk buffers use the default allocator", name)
        return False
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD,
                                                                   TRIM_THRESHOLD)
    if not done:
        log.info("mallopt refused the bulk-buffer thresholds")
    return bool(done)
