"""Rejected inputs: every one counted, one log line per throttle period that says how many it
did not log. The logger here records its lines (the real one writes to rcutils' output, which
the test cannot read back); the nodes' reliability tests use it on real rclpy loggers."""

from terrain_ssl.ros.diagnostics import RejectCounter


class RecordingLogger:
    def __init__(self):
        self.lines = []

    def warning(self, text, **kwargs):
        assert not kwargs, 'the throttle is the counter\'s own, not rclpy\'s (slow per call)'
        self.lines.append(text)


def test_a_flood_is_counted_in_full_and_logged_once_per_period():
    now_s = [100.0]
    logger = RecordingLogger()
    rejects = RejectCounter(logger, throttle_s=5.0, clock=lambda: now_s[0])

    for index in range(1000):  # 200 Hz for 5 s: every IMU sample rejected
        now_s[0] = 100.0 + index / 200.0
        rejects.reject('imu_non_finite', f'sample {index}')
    assert rejects.counts == {'imu_non_finite': 1000}
    assert logger.lines == ['rejected input (imu_non_finite): sample 0']

    now_s[0] = 105.0
    rejects.reject('odometry_non_finite')
    assert rejects.total == 1001
    assert len(logger.lines) == 2
    assert logger.lines[1].startswith('rejected input (odometry_non_finite) (and 999 more')

    now_s[0] = 110.5  # nothing suppressed since: no "more"
    rejects.reject('imu_non_finite', 'again')
    assert logger.lines[2] == 'rejected input (imu_non_finite): again'
