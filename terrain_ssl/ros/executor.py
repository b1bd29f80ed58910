"""The executor the node processes spin: rclpy's EventsExecutor where it exists, else the
single-threaded one; and a spin loop that stops on Ctrl-C / SIGTERM with either.

The EventsExecutor (rclpy.experimental, Jazzy and later) dispatches from a C++ event queue
instead of rebuilding a wait set in Python for every message; at sensor rates that bookkeeping
was most of the nodes' own CPU time. Its `spin()` does not return when rclpy's signal handler
shuts the context down, so `spin_until_shutdown` spins in bounded slices and checks the context.

`TERRAIN_SSL_EXECUTOR=single` (environment) selects the single-threaded executor, e.g. to
compare the two.
"""

from __future__ import annotations

import os

EXECUTORS = ('events', 'single')
ENVIRONMENT_VARIABLE = 'TERRAIN_SSL_EXECUTOR'


def executor_kind() -> str:
    """'events' or 'single': the environment's choice, else events where rclpy has it. An
    unknown choice is reported on stderr in one line and the default used."""
    kind = os.environ.get(ENVIRONMENT_VARIABLE, 'events').strip().lower() or 'events'
    if kind not in EXECUTORS:
        import sys
        print(f'warning: {ENVIRONMENT_VARIABLE}={kind!r} is not one of {list(EXECUTORS)}; '
              'using events', file=sys.stderr)
        kind = 'events'
    if kind == 'events':
        try:
            import rclpy.experimental  # noqa: F401
        except ImportError:  # Humble / Iron: no events executor
            return 'single'
    return kind


def new_executor(kind: str | None = None, context=None):
    """A new executor of `kind` (default: executor_kind())."""
    kind = kind or executor_kind()
    if kind == 'events':
        from rclpy.experimental import EventsExecutor
        return EventsExecutor(context=context)
    from rclpy.executors import SingleThreadedExecutor
    return SingleThreadedExecutor(context=context)


def spin_until_shutdown(executor, context=None, slice_s: float = 0.5) -> None:
    """Spin until the context shuts down (Ctrl-C, SIGTERM, rclpy.shutdown), then return.
    Raises KeyboardInterrupt where rclpy's signal handler is not installed."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.impl.implementation_singleton import rclpy_implementation

    while rclpy.ok(context=context):
        try:
            executor.spin_once(timeout_sec=slice_s)
        except ExternalShutdownException:
            return
        except rclpy_implementation.RCLError:
            # A signal can shut the context down between the check above and the wait set
            # spin_once builds on it: that is the shutdown asked for, not an error.
            if rclpy.ok(context=context):
                raise
            return
