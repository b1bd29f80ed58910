"""Math libraries (BLAS, OpenMP) on one thread: in the nodes for good, in a replay while it runs.

The nodes' linear algebra works on small matrices (a 3x3 eigh per cell, a few hundred random
features) at sensor rate. A second BLAS thread cannot speed that up, but OpenBLAS's workers
spin-wait after every call: beside each node's main thread one of them burns most of a core, on a
robot whose CPU also runs localisation and planning. One thread also gives the same sums in the
same order whatever the machine.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

# Read by each library when it is loaded: covers the ones imported after pin_math_threads.
THREAD_VARIABLES = ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS',
                    'BLIS_NUM_THREADS', 'VECLIB_MAXIMUM_THREADS', 'NUMEXPR_NUM_THREADS')

_process_limits = []  # the threadpoolctl limiter of pin_math_threads (kept alive)


def pin_math_threads() -> None:
    """Limit every math thread pool of this process to one thread, for the process's lifetime.

    Libraries already loaded are limited through threadpoolctl; the environment variables make
    the ones loaded later start with one thread. A variable the user set is left as it is.
    """
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, '1')
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:
        return
    _process_limits.append(threadpool_limits(limits=1))


@contextmanager
def single_threaded_math():
    """BLAS / OpenMP pools limited to one thread inside the `with` block (a replay), restored
    after it."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1):
        yield
