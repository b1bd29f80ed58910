"""Rare cycle collection while a replay runs (its one BLAS thread: ros.math_threads)."""

from __future__ import annotations

import gc
from contextlib import contextmanager


@contextmanager
def rare_garbage_collection(young_threshold: int = 50_000):
    """Python's cycle collector runs much less often while the replay's loop runs.

    A replay allocates a dozen short-lived objects per bag message (the deserialised message
    and its parts), all freed by reference counting: they hold no cycles. At the default
    threshold (700 allocations) the collector would scan the young objects hundreds of times
    per drive, and the older ones (modules, nodes, models) whenever those scans promote
    enough. The objects alive when the loop starts are frozen out of the scans; everything new
    is still collected, only in larger batches.
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(young_threshold, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
