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

# Tests that take more than ~20 s each on a busy 2-core machine (pytest --durations): marked
# `slow` here so that `make test-fast` (pytest -m "not slow") leaves them out; `make test` runs
# everything. Add a test here when it grows past that.
SLOW_TESTS = {
    'test_bringup.py::test_bringup_live_tuning_and_clean_exit',
    'test_closed_loop.py::test_calibration_drive_gives_a_positive_gain',
    'test_closed_loop.py::test_measured_map_is_rougher_where_the_terrain_is_rough',
    'test_closed_loop.py::test_measured_oracle_keeps_under_the_limit_better_than_constant_speed',
    'test_closed_loop.py::test_oracle_slows_for_rough_ground_and_has_fewer_over_limit_shocks',
    'test_closed_loop.py::test_terrain_ssl_drives_at_the_nodes_published_speed_limit',
    'test_learner_node.py::test_restart_after_sigkill_restores_model',
    'test_live_vs_replay.py::test_live_labels_match_fast_replay',
    'test_reliability_learner.py::test_kill_9_during_model_save_leaves_a_loadable_model',
    'test_replay.py::test_empty_bag_and_missing_topic_are_clear',
    'test_sim_bag.py::test_cli_simulate_and_bad_input',
    'test_sim_bag.py::test_deterministic_for_a_seed',
    'test_sim_bag.py::test_mcap_os128_rotated_imu_at_rest',
    'test_sim_physics.py::test_class_e_shakes_at_least_3x_more_than_class_a_b',
    'test_sim_physics.py::test_shaking_grows_with_speed',
}
# Fixtures that simulate a drive (20-160 s of setup there): every test using one is slow.
SLOW_FIXTURES = {
    'test_labeler_node.py::bags',
    'test_replay.py::sim_bag',
    'test_sim_bag.py::vlp16_bag',
}

_IMPORTS_RCLPY = re.compile(r'^\s*(import rclpy|from rclpy\b)', re.MULTILINE)


def pytest_collection_modifyitems(config, items):
    """`ros` on every test that uses the ros_context fixture or whose module imports rclpy;
    `slow` on the tests in SLOW_TESTS and those using SLOW_FIXTURES."""
    imports_rclpy = {}
    for item in items:
        path = item.path
        if path not in imports_rclpy:
            imports_rclpy[path] = bool(_IMPORTS_RCLPY.search(path.read_text()))
        if 'ros_context' in getattr(item, 'fixturenames', ()) or imports_rclpy[path]:
            item.add_marker(pytest.mark.ros)
        fixtures = getattr(item, 'fixturenames', ())
        if f'{path.name}::{item.originalname}' in SLOW_TESTS or any(
                f'{path.name}::{name}' in SLOW_FIXTURES for name in fixtures):
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
