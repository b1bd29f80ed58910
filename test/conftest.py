"""pytest set-up for real rclpy over real DDS.

Each test session picks its own ROS domain and keeps discovery on this host, so test runs that
happen at the same time (CI, a developer's shell, a bag playing) cannot hear each other.
"""

import os
import random
import re

os.environ.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(1, 100)))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
# Lidar scans (0.7 MB here) do not fit Fast DDS's default 512 KB shared-memory segment; the
# package's profile (README, "Large point clouds") keeps them off fragmented best-effort UDP.
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'config',
    'fastdds_large_messages.xml'))

import pytest  # noqa: E402

# Tests that take more than ~20 s each (pytest --durations on this project's 2-core machine):
# marked `slow` here, so `make test-fast` (pytest -m "not slow") leaves them out. Add a test
# when it grows past that; `make test` runs everything.
SLOW_TESTS = {
}

_IMPORTS_RCLPY = re.compile(r'^\s*(import rclpy|from rclpy\b)', re.MULTILINE)


def pytest_collection_modifyitems(config, items):
    """`ros` on every test that uses the ros_context fixture or whose module imports rclpy;
    `slow` on the tests in SLOW_TESTS."""
    imports_rclpy = {}
    for item in items:
        path = item.path
        if path not in imports_rclpy:
            imports_rclpy[path] = bool(_IMPORTS_RCLPY.search(path.read_text()))
        if 'ros_context' in getattr(item, 'fixturenames', ()) or imports_rclpy[path]:
            item.add_marker(pytest.mark.ros)
        if f'{path.name}::{item.name}' in SLOW_TESTS or \
                f'{path.name}::{item.originalname}' in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def ros_context():
    """A fresh, initialised rclpy Context for one test; shut down afterwards."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        context.try_shutdown()


def spin_until(executor, predicate, timeout_s: float = 10.0, step_s: float = 0.02) -> bool:
    """Spin `executor` until `predicate()` is true or the timeout passes; returns predicate()."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=step_s)
    return bool(predicate())
