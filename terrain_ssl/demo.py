"""`terrain-ssl demo`: the README's main command.

Foundation stage: until the simulator, nodes and report land, the demo runs the end-to-end piece
that exists: a PointCloud2 round trip through real rclpy, with the conversion speed.
"""

from __future__ import annotations

import time


def register(subparsers) -> None:
    parser = subparsers.add_parser('demo', help='simulate a drive, learn live, write a report')
    parser.add_argument('--out', default='demo_out', help='output folder (default: demo_out)')
    parser.add_argument('--quick', action='store_true', help='short run for CI (< 1 minute)')
    parser.set_defaults(func=run)


def run(args) -> int:
    import numpy as np
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import PointCloud2

    from terrain_ssl.ros.conversions import array_to_pointcloud2, pointcloud2_to_xyz

    rng = np.random.default_rng(0)
    points = np.zeros(131072, dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4')])
    for axis in 'xyz':
        points[axis] = rng.normal(size=points.shape[0])
    start = time.perf_counter()
    cloud = array_to_pointcloud2(points, 'lidar_link', 0, height=128)
    wire = serialize_message(cloud)
    xyz = pointcloud2_to_xyz(deserialize_message(wire, PointCloud2))
    seconds = time.perf_counter() - start
    print(f'PointCloud2 round trip through rclpy CDR: {xyz.shape[0]} points in '
          f'{seconds * 1e3:.1f} ms ({xyz.shape[0] / seconds / 1e6:.1f} M points/s)')
    return 0
