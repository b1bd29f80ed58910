"""Cost of a rejected input that is counted but not logged (the log is throttled).

A node falling behind, or fed a broken sensor, can reject every IMU sample: 200 a second. Each is
counted and, at most once per throttle period, logged. Measured in one run: rclpy's own throttle
(`logger.warning(..., throttle_duration_sec=5)`, as RejectCounter called it before) against
RejectCounter's steady-clock throttle, on a real rclpy node's logger.

    PYTHONPATH=. .venv/bin/python bench/bench_rejects.py
"""

from __future__ import annotations

import os
import random
import sys
import time

REJECTIONS = 20_000
IMU_RATE_HZ = 200.0


def per_call_us(call, n: int = REJECTIONS) -> float:
    best = float('inf')
    for _ in range(3):
        started = time.process_time()
        for index in range(n):
            call(index)
        best = min(best, time.process_time() - started)
    return 1e6 * best / n


def main() -> int:
    os.environ.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(101, 200)))
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    import rclpy
    from rclpy.node import Node

    from terrain_ssl.ros.diagnostics import RejectCounter

    rclpy.init()
    try:
        node = Node('bench_rejects')
        logger = node.get_logger()
        counts: dict = {}

        def rclpy_throttle(index: int) -> None:
            counts['imu_gap'] = counts.get('imu_gap', 0) + 1
            logger.warning(f'rejected input (imu_gap): gap {index}', throttle_duration_sec=5.0)

        rejects = RejectCounter(logger, throttle_s=5.0)

        def own_throttle(index: int) -> None:
            rejects.reject('imu_gap', f'gap {index}')

        before_us = per_call_us(rclpy_throttle)
        after_us = per_call_us(own_throttle)
        node.destroy_node()
    finally:
        rclpy.shutdown()
    print(f'per rejected input, logging throttled (CPU us): rclpy throttle {before_us:.1f}, '
          f'RejectCounter {after_us:.2f}; ratio {before_us / after_us:.0f}x')
    percent = 1e-4 * IMU_RATE_HZ  # us per call -> % of one core at that rate
    print(f'every IMU sample rejected at {IMU_RATE_HZ:.0f} Hz: {before_us * percent:.2f}% -> '
          f'{after_us * percent:.3f}% of one core')
    print(f'RESULT rejects_rclpy_throttle_us {before_us:.1f} us')
    print(f'RESULT rejects_counter_us {after_us:.2f} us')
    print(f'RESULT rejects_speedup {before_us / after_us:.0f} x')
    return 0


if __name__ == '__main__':
    sys.exit(main())
