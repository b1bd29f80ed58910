"""pytest set-up for real rclpy over real DDS.

Each test session picks its own ROS domain and keeps discovery on this host, so test runs that
happen at the same time (CI, a developer's shell, a bag playing) cannot hear each other.
"""

import os
import random

os.environ.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(1, 100)))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
# Lidar scans (0.7 MB here) do not fit Fast DDS's default 512 KB shared-memory segment; the
# package's profile (README, "Large point clouds") keeps them off fragmented best-effort UDP.
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'config',
    'fastdds_large_messages.xml'))

import pytest  # noqa: E402


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
