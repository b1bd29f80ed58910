"""Where a replay's wall time goes: each node's callbacks and the replay's own parts."""

from __future__ import annotations

import time
from typing import Callable, Optional


class CallbackProfiler:
    """Wall time spent in each node's own callbacks (subscriptions and timers), and in the
    replay's own parts, each exclusive of what it calls into (an in-process publish runs the
    next nodes), so the split adds up."""

    def __init__(self):
        self.seconds: dict = {}
        self._stack: list = []  # [start, time spent in nested callbacks] per active callback

    def add_nodes(self, nodes) -> None:
        """Profile these nodes' callbacks. Call before linking, so in-process links and the
        bag-time driver call the wrappers."""
        for node in nodes:
            self.seconds.setdefault(node.get_name(), 0.0)
            for entity in list(node.subscriptions) + list(node.timers):
                entity.callback = self.timed(node.get_name(), entity.callback)

    def timed(self, name: str, callback: Callable) -> Callable:
        self.seconds.setdefault(name, 0.0)

        def call(*args):
            frame = [time.perf_counter(), 0.0]
            self._stack.append(frame)
            try:
                return callback(*args)
            finally:
                self._stack.pop()
                elapsed = time.perf_counter() - frame[0]
                self.seconds[name] += elapsed - frame[1]
                if self._stack:
                    self._stack[-1][1] += elapsed
        return call

    def timed_iteration(self, name: str, iterator):
        """Yield from `iterator`, timing only the steps (not the consumer's loop body)."""
        step = self.timed(name, next)
        while True:
            try:
                item = step(iterator)
            except StopIteration:
                return
            yield item


def profiled(profiler: Optional[CallbackProfiler], name: str, callback: Callable) -> Callable:
    """`callback`, timed under `name` when there is a profiler."""
    return callback if profiler is None else profiler.timed(name, callback)
