"""`terrain-ssl bringup`: all three nodes in one process, linked directly (no serialisation).

For machines without the ROS 2 launch tools and for the lowest latency. Same parameters file as
the launch file; DDS topics are still published, so RViz and other nodes see everything.

    terrain-ssl bringup --config config/terrain_ssl.yaml --ros-args -p roughness_labeler.xxx:=...
"""

from __future__ import annotations

import sys
from pathlib import Path


def default_config_path() -> str:
    """config/terrain_ssl.yaml from the install share directory, else from the source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory
        shared = Path(get_package_share_directory('terrain_ssl')) / 'config' / 'terrain_ssl.yaml'
        if shared.exists():
            return str(shared)
    except Exception:  # not installed with colcon: use the source tree
        pass
    return str(Path(__file__).resolve().parents[2] / 'config' / 'terrain_ssl.yaml')


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        'bringup', help='run the three nodes in one process',
        description='Run roughness_labeler, roughness_learner and speed_advisor in one process. '
                    'Anything after --ros-args is passed to rclpy (remaps, -p overrides).')
    parser.add_argument('--config', default=None,
                        help='parameters file (default: the package config/terrain_ssl.yaml)')
    parser.add_argument('--threads', type=int, default=1,
                        help='executor threads (default 1: rclpy\'s events executor, or the '
                             'single-threaded one with TERRAIN_SSL_EXECUTOR=single, keeps up '
                             'with real-time sensor rates; the multi-threaded one, used for '
                             'N > 1, does not)')
    parser.set_defaults(func=run, accepts_ros_args=True)


def run(args) -> int:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from terrain_ssl.ros.node_main import init_ros, spin_then_close
    from terrain_ssl.ros.executor import new_executor
    from terrain_ssl.ros.heap import keep_message_buffers
    from terrain_ssl.ros.math_threads import pin_math_threads
    from terrain_ssl.ros.pipeline import create_nodes
    from terrain_ssl.ros.wiring import (link_in_process, serialize_node_callbacks,
                                        share_clock_subscription)

    pin_math_threads()
    keep_message_buffers()
    config = args.config or default_config_path()
    if not Path(config).exists():
        print(f'error: parameters file {config} does not exist', file=sys.stderr)
        return 2
    ros_args = list(args.ros_args or [])
    if ros_args and ros_args[0] == '--ros-args':
        ros_args = ros_args[1:]
    if not init_ros(['terrain-ssl', '--ros-args', '--params-file', config] + ros_args):
        return 2
    try:
        nodes = create_nodes()
    except ValueError as error:  # an invalid parameter value: say which, do not trace back
        print(f'error: {error}', file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    for node in nodes:
        serialize_node_callbacks(node)
    links = link_in_process(nodes)
    share_clock_subscription(nodes)
    logger = nodes[0].get_logger()
    for link in links:
        logger.info(f'in-process link {link.publisher_node} -> {link.subscriber_node} '
                    f'on {link.topic}')
    # Single-threaded by default. rclpy's MultiThreadedExecutor hands every message to a thread
    # pool through a fresh wait set and a GIL hand-off, and most of the ready messages of a node
    # (mutually exclusive: the nodes are serialised) are handed out only to be refused and waited
    # for again. Most of the process then goes to executor bookkeeping, IMU samples are lost, and
    # odometry falls seconds behind the freshest scans (the scan queue is 5 deep, the odometry
    # queue 200): every scan is then refused as odom_missing, and a backlog from a slow start
    # never drains.
    # The nodes gain nothing from threads anyway: they are serialised and share one GIL.
    if args.threads > 1:
        executor = MultiThreadedExecutor(num_threads=args.threads)
    else:
        executor = new_executor()
    for node in nodes:
        executor.add_node(node)
    spin_then_close(executor, nodes)
    return 0
