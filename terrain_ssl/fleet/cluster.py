"""Ray for the fleet commands: a session (embedded local instance or an existing cluster), the
remote form of the per-bag jobs, and a bounded, progress-reporting wait for their results.

Ray is imported only here and only when a command runs, so the rest of the package (and the
robot) never needs it.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Callable, Optional

# A worker process that dies (killed, out of memory, node lost) has its task run again this
# many times before the bag is reported as failed.
DEFAULT_MAX_RETRIES = 3


class FleetError(RuntimeError):
    """The fleet cannot run at all (no Ray, no cluster at that address): one line for the user."""


def import_ray():
    try:
        import ray
    except ImportError as error:
        raise FleetError('the fleet commands need Ray and Optuna: pip install '
                         '"terrain_ssl[fleet]" or pip install -r requirements-fleet.txt') \
            from error
    return ray


def local_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def ray_session(address: Optional[str] = None, workers: Optional[int] = None):
    """Connect to the cluster at `address`, or start an embedded local Ray with `workers` CPUs
    (default: this machine's CPUs). Yields the number of tasks to keep running at once."""
    ray = import_ray()
    if workers is not None and workers < 1:
        raise FleetError(f'--workers must be >= 1, not {workers}')
    # Workers log to their own files: a few hundred replays' warnings would drown the bar.
    common = {'log_to_driver': False, 'configure_logging': False,
              'runtime_env': {'env_vars': _worker_environment()}}
    try:
        if address:
            ray.init(address=address, **common)
        else:
            ray.init(num_cpus=workers or local_cpus(), include_dashboard=False, **common)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise FleetError(f'cannot start or reach Ray ({address or "local"}): '
                         f'{" ".join(str(error).split())[:300]}') from error
    try:
        cpus = int(ray.cluster_resources().get('CPU', 1))
        yield max(1, min(workers, cpus) if workers else cpus)
    finally:
        ray.shutdown()


def _worker_environment() -> dict:
    """Environment the workers need beside the cluster's own: the ROS domain (the replay's
    nodes open DDS participants) and where this package lives when it is not installed."""
    env = {name: os.environ[name] for name in ('ROS_DOMAIN_ID', 'RMW_IMPLEMENTATION')
           if name in os.environ}
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = [package_root] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]
    env['PYTHONPATH'] = os.pathsep.join(dict.fromkeys(os.path.abspath(p) for p in paths))
    return env


def remote(function: Callable, max_retries: int = DEFAULT_MAX_RETRIES):
    """`function` as a Ray task holding one CPU, run again if its worker process dies."""
    ray = import_ray()
    # retry_exceptions=False: an exception is a property of the bag, not of the worker; the
    # jobs catch their own and return them as 'failed' results anyway.
    return ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=False)(function)


def run_bounded(submit: Callable, items, limit: int, on_result: Callable) -> None:
    """Submit `submit(item)` (-> ObjectRef) for each item, at most `limit` at once; call
    `on_result(item, result, error)` as each finishes (error: one line, or '' when none).
    A task whose worker died more than max_retries times gives an error, not an exception.

    `items` may be a generator: it is advanced only when a task slot is free, so it can decide
    its next item from the results so far (the tuner asks for trials that way)."""
    ray = import_ray()
    pending = iter(items)
    exhausted = False
    running: dict = {}
    while not exhausted or running:
        while not exhausted and len(running) < limit:
            item = next(pending, _END)
            if item is _END:
                exhausted = True
                break
            running[submit(item)] = item
        if not running:
            break
        done, _ = ray.wait(list(running), num_returns=1)
        for ref in done:
            item = running.pop(ref)
            try:
                result, error = ray.get(ref), ''
            except ray.exceptions.RayError as failure:
                result, error = None, _ray_error_line(failure)
            on_result(item, result, error)


def _ray_error_line(failure) -> str:
    text = ' '.join(str(failure).split())
    return f'{type(failure).__name__}: {text[:300]}'


_END = object()


class ProgressBar:
    """One line on stderr: bags done of all, bag-seconds done of all, failures, wall time."""

    def __init__(self, n_bags: int, total_bag_s: float, enabled: bool = True, what='bags'):
        self.n_bags, self.total_bag_s, self.enabled, self.what = n_bags, total_bag_s, enabled, what
        self.done = self.failed = 0
        self.bag_s = 0.0
        self.start = time.perf_counter()

    def update(self, bag_s: float, failed: bool) -> None:
        self.done += 1
        self.failed += int(failed)
        self.bag_s += bag_s
        if self.enabled:
            self.draw()

    def draw(self, width: int = 30) -> None:
        share = self.bag_s / self.total_bag_s if self.total_bag_s > 0 else \
            self.done / max(self.n_bags, 1)
        filled = int(width * min(share, 1.0))
        wall = time.perf_counter() - self.start
        failed = f'  {self.failed} failed' if self.failed else ''
        print(f'\r[{"#" * filled}{"." * (width - filled)}] {self.done}/{self.n_bags} '
              f'{self.what}  {self.bag_s:.0f}/{self.total_bag_s:.0f} bag-s{failed}  '
              f'{wall:.0f} s', end='', file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)
