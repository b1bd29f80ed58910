"""A node's health: rejected inputs counted by reason, and its status on /diagnostics."""

from __future__ import annotations

import time
from typing import Callable, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

DIAG_OK = 0
DIAG_WARN = 1
DIAG_ERROR = 2


class RejectCounter:
    """Counts rejected inputs by reason and logs them, throttled so a flood cannot drown the
    log: one line per `throttle_s` (steady clock), which also says how many were not logged.

    The throttle is kept here, not in rclpy's logger: its throttled call still inspects the
    caller's frame, ~0.2-0.4 ms per rejection (bench/bench_rejects.py), which a flood of
    rejected 200 Hz IMU samples turns into CPU taken from a node already falling behind."""

    def __init__(self, logger, throttle_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self._logger = logger
        self._throttle_s = throttle_s
        self._clock = clock
        self._next_log_s = float('-inf')
        self._not_logged = 0
        self.counts: dict = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def reject(self, reason: str, detail: str = '') -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        now_s = self._clock()
        if now_s < self._next_log_s:
            self._not_logged += 1
            return
        self._next_log_s = now_s + self._throttle_s
        text = f'rejected input ({reason}): {detail}' if detail else f'rejected input ({reason})'
        if self._not_logged:
            text += (f' (and {self._not_logged} more since the last such line; counts by reason '
                     'on /diagnostics)')
            self._not_logged = 0
        self._logger.warning(text)

    def add(self, counts: dict) -> None:
        """Merge counts kept elsewhere (e.g. by a core object) without logging them again."""
        for reason, count in counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + count


def diagnostic_status(name: str, hardware_id: str, level: int, message: str,
                      values: dict) -> DiagnosticStatus:
    return DiagnosticStatus(
        level=bytes([int(level)]), name=name, message=message, hardware_id=hardware_id,
        values=[KeyValue(key=str(key), value=_format_value(value))
                for key, value in values.items()])


def _format_value(value) -> str:
    if isinstance(value, float):
        return f'{value:.6g}'
    return str(value)


class DiagnosticsPublisher:
    """Publishes the node's health on /diagnostics every `period_s` (node clock)."""

    def __init__(self, node, period_s: float, collect: Callable[[], tuple]):
        self._node = node
        self._collect = collect
        self._publisher = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.timer = node.create_timer(period_s, self._on_timer)
        self.last: Optional[DiagnosticStatus] = None
        self._listeners: list = []  # in-process takers, like LinkedPublisher's (a recording)
        self.published = 0

    def connect(self, callback: Callable) -> None:
        self._listeners.append(callback)

    def _on_timer(self) -> None:
        # Collecting costs up to a few ms (the learner's windowed Spearman): not when nobody
        # listens (replay, tests). Rates in the next status then average over the silent time.
        if self._listeners or self._publisher.get_subscription_count() > 0:
            self.publish_now()

    def publish_now(self) -> None:
        level, message, values = self._collect()
        status = diagnostic_status(f'{self._node.get_name()}: status',
                                   self._node.get_fully_qualified_name(), level, message, values)
        array = DiagnosticArray()
        array.header.stamp = self._node.get_clock().now().to_msg()
        array.status = [status]
        self.last = status
        self.published += 1
        self._publisher.publish(array)
        for callback in self._listeners:
            callback(array)
