"""The C heap of a node process: keep the pages of the per-message buffers, give the rest back.

A lidar scan crosses the process as a few large buffers: the middleware's sample, the Python
message's data array, the arrays the labeler makes from it (a 64 x 1024 scan: ~1.5 MB each),
freed again before the next scan. glibc hands blocks that large back to the kernel as soon as
they are freed (its mmap threshold, and the trim of the heap's top), so every scan paid page
faults to map and zero the same amount of memory again. Keeping freed blocks up to
`MMAP_THRESHOLD_BYTES` in the heap, and trimming its top only past `TRIM_THRESHOLD_BYTES`, lets the
next scan reuse the pages. `release_free_memory`, run by the node processes on a timer, then
returns what is free (malloc_trim), so resident memory still follows what the nodes hold.

Only glibc is tuned; elsewhere (musl, macOS) these are no-ops. Figures: bench/results/.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 32 * 2 ** 20  # glibc's own ceiling for its adaptive threshold
TRIM_THRESHOLD_BYTES = 128 * 2 ** 20
RELEASE_PERIOD_S = 10.0


@functools.cache
def _glibc():
    """The C library, where it is glibc (whose mallopt parameters these are); else None."""
    if platform.libc_ver()[0] != 'glibc':
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    except (OSError, AttributeError):
        return None
    return libc


def keep_message_buffers() -> bool:
    """Let freed blocks up to MMAP_THRESHOLD_BYTES stay in the heap for the next message.
    Returns whether the allocator was tuned (glibc only)."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def release_free_memory() -> None:
    """Return the heap's free pages to the kernel (glibc's malloc_trim)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def release_free_memory_periodically(node, period_s: float = RELEASE_PERIOD_S):
    """A timer on `node`, on the steady clock (it runs in sim time too), that calls
    release_free_memory every `period_s`."""
    from rclpy.clock import Clock, ClockType

    return node.create_timer(period_s, release_free_memory,
                             clock=Clock(clock_type=ClockType.STEADY_TIME))
