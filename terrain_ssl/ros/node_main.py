"""Running one node as a process: rclpy.init with one-line errors, spin, close cleanly."""

from __future__ import annotations

import sys
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.impl.implementation_singleton import rclpy_implementation

from terrain_ssl.ros.executor import new_executor, spin_until_shutdown
from terrain_ssl.ros.heap import keep_message_buffers, release_free_memory_periodically
from terrain_ssl.ros.math_threads import pin_math_threads


def init_ros(args=None) -> bool:
    """rclpy.init; on arguments rcl cannot parse, say so in one line (no traceback) and return
    False. The usual slip: an empty value, `-p model_path:=`, which rcl refuses; an empty string
    is written `-p model_path:="''"`."""
    try:
        rclpy.init(args=args)
    except rclpy_implementation.RCLError as error:
        reason = str(error).split(', at ')[0]
        print(f'error: {reason}\n(an empty parameter value is written -p name:="\'\'")',
              file=sys.stderr)
        return False
    return True


def run_node(node_factory: Callable, args=None) -> int:
    """init, build the node, spin until Ctrl-C / SIGTERM / shutdown, then close it cleanly.

    A node may define `close()` (e.g. save its model); it runs after spinning stops, even when the
    context was shut down by a signal. Returns the process exit code.
    """
    pin_math_threads()
    keep_message_buffers()
    if not init_ros(args):
        return 2
    try:
        node = node_factory()
    except ValueError as error:  # invalid parameters at start-up: say why, do not trace back
        print(f'error: {error}', file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    except rclpy_implementation.RCLError:
        if rclpy.ok():
            raise
        return 0  # Ctrl-C / SIGTERM while the node was being built: nothing to close
    executor = new_executor()
    executor.add_node(node)
    spin_then_close(executor, [node])
    return 0


def spin_then_close(executor, nodes) -> None:
    """Spin until Ctrl-C / SIGTERM / shutdown; then each node's `close()` (last node first:
    the learner saves its model after the advisor stops), and rclpy shut down."""
    release_free_memory_periodically(nodes[0])
    try:
        spin_until_shutdown(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for node in reversed(nodes):
            close = getattr(node, 'close', None)
            if close is not None:
                close()
        executor.shutdown(timeout_sec=1.0)
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
