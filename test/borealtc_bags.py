"""BorealTC CSV runs -> real rosbag2 bags: IMU (100 Hz) and odometry dead-reckoned from the
Husky's wheel speeds (skid steer: v = (left + right) / 2, yaw rate = (right - left) / track).

imu_NN.csv: time (s), wx wy wz (rad/s), ax ay az (m/s^2); pro_NN.csv: time (s), curL curR (A),
velL velR (m/s). Both clocks start at 0 for a run.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from nav_msgs.msg import Odometry
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import Imu

from terrain_ssl.ros.conversions import ns_to_stamp

T0_NS = 1_700_000_000_000_000_000
HUSKY_TRACK_M = 0.555


def read_csv(path) -> np.ndarray:
    return np.genfromtxt(path, delimiter=',', names=True)


def runs(root) -> list:
    """(surface, run) pairs that have both an IMU and a wheel-speed file."""
    root = Path(root)
    return [(imu.parent.name, imu.stem[-2:]) for imu in sorted(root.glob('*/imu_*.csv'))
            if (imu.parent / f'pro_{imu.stem[-2:]}.csv').exists()]


def odometry_from_wheels(pro: np.ndarray):
    """(t_s, x, y, yaw, v, yaw_rate) dead-reckoned from the wheel speeds."""
    t = np.asarray(pro['time'], float)
    left, right = np.asarray(pro['velL'], float), np.asarray(pro['velR'], float)
    v = 0.5 * (left + right)
    yaw_rate = (right - left) / HUSKY_TRACK_M
    dt = np.r_[0.0, np.diff(t)]
    yaw = np.cumsum(np.r_[0.0, yaw_rate[:-1]] * dt)
    x = np.cumsum(np.r_[0.0, (v[:-1] * np.cos(yaw[:-1]))] * dt)
    y = np.cumsum(np.r_[0.0, (v[:-1] * np.sin(yaw[:-1]))] * dt)
    return t, x, y, yaw, v, yaw_rate


def write_bag(root, surface: str, run: str, out_dir, imu: bool = True) -> Path:
    """A rosbag2 (sqlite3) of one run: /imu/data (unless imu=False) and /odom."""
    root, out_dir = Path(root), Path(out_dir)
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    messages = []
    if imu:
        data = read_csv(root / surface / f'imu_{run}.csv')
        for row in data:
            msg = Imu()
            t_ns = T0_NS + int(round(float(row['time']) * 1e9))
            msg.header.stamp = ns_to_stamp(t_ns)
            msg.header.frame_id = 'imu_link'
            msg.orientation_covariance[0] = -1.0  # no orientation
            msg.angular_velocity.x, msg.angular_velocity.y, msg.angular_velocity.z = (
                float(row['wx']), float(row['wy']), float(row['wz']))
            msg.linear_acceleration.x, msg.linear_acceleration.y, msg.linear_acceleration.z = (
                float(row['ax']), float(row['ay']), float(row['az']))
            messages.append(('/imu/data', 'sensor_msgs/msg/Imu', t_ns, msg))
    for t, x, y, yaw, v, yaw_rate in zip(*odometry_from_wheels(
            read_csv(root / surface / f'pro_{run}.csv'))):
        msg = Odometry()
        t_ns = T0_NS + int(round(t * 1e9))
        msg.header.stamp = ns_to_stamp(t_ns)
        msg.header.frame_id, msg.child_frame_id = 'odom', 'base_link'
        msg.pose.pose.position.x, msg.pose.pose.position.y = float(x), float(y)
        msg.pose.pose.orientation.z = math.sin(0.5 * yaw)
        msg.pose.pose.orientation.w = math.cos(0.5 * yaw)
        msg.twist.twist.linear.x = float(v)
        msg.twist.twist.angular.z = float(yaw_rate)
        messages.append(('/odom', 'nav_msgs/msg/Odometry', t_ns, msg))
    messages.sort(key=lambda item: item[2])
    with Writer(out_dir, version=8) as writer:
        connections = {}
        for topic, msgtype in (('/imu/data', 'sensor_msgs/msg/Imu'),
                               ('/odom', 'nav_msgs/msg/Odometry')):
            if imu or topic == '/odom':
                connections[topic] = writer.add_connection(topic, msgtype, typestore=typestore)
        for topic, _, t_ns, msg in messages:
            writer.write(connections[topic], t_ns, serialize_message(msg))
    return out_dir
