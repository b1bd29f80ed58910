"""The compiled loops of the core (`_kernels.c`), and the switch to their numpy reference.

`current` is the compiled module, or None where it was not built (no C compiler at install
time) or while `numpy_kernels()` is active: the core modules (patches, association) then run
their numpy code, which the C code reproduces bit for bit (test/test_kernels.py).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

try:  # built from _kernels.c by `pip install` / `colcon build` (setup.py)
    from terrain_ssl.core import _kernels as _compiled
except ImportError:  # a source tree that was not built: the numpy reference, same results
    _compiled = None
    warnings.warn('terrain_ssl: the compiled kernels are not built, lidar scans take the numpy '
                  'path (same results, ~2x slower per scan). Build them with a C compiler: '
                  'pip install -e . (or colcon build)', RuntimeWarning, stacklevel=2)

current = _compiled


def compiled_kernels() -> bool:
    """True when the core runs the compiled kernels, False when it runs their numpy
    reference (same results, ~2x slower per scan)."""
    return current is not None


@contextmanager
def numpy_kernels():
    """Run the core on the numpy reference inside the block (tests, benchmarks). Not
    thread-safe: it swaps a module global."""
    global current
    saved, current = current, None
    try:
        yield
    finally:
        current = saved
