"""Small, hand-made bags for reader tests: rosbag2 (sqlite3, mcap, split) and ROS 1.

Messages are built as rclpy objects and serialised with rclpy, so what the reader must return is
known exactly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import yaml
from nav_msgs.msg import Odometry
from rclpy.serialization import serialize_message
from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import Imu, PointCloud2

from terrain_ssl.ros.conversions import ns_to_stamp, xyz_fields_to_pointcloud2

T0_NS = 1_700_000_000_000_000_000
TYPES = {Imu: 'sensor_msgs/msg/Imu', PointCloud2: 'sensor_msgs/msg/PointCloud2',
         Odometry: 'nav_msgs/msg/Odometry'}


def make_messages(duration_s=1.0, imu_topic='/imu/data', points_topic='/points',
                  odom_topic='/odom'):
    """(topic, stamp_ns, rclpy message) in time order: IMU 100 Hz, odom 20 Hz, points 5 Hz."""
    out = []
    rng = np.random.default_rng(1)
    for i in range(int(duration_s * 100)):
        t = T0_NS + i * 10_000_000
        msg = Imu()
        msg.header.stamp = ns_to_stamp(t)
        msg.header.frame_id = 'imu_link'
        msg.linear_acceleration.z = 9.81 + 0.01 * i
        msg.orientation.w = 1.0
        out.append((imu_topic, t, msg))
        if i % 5 == 0:
            odom = Odometry()
            odom.header.stamp = ns_to_stamp(t)
            odom.header.frame_id = 'odom'
            odom.child_frame_id = 'base_link'
            odom.pose.pose.position.x = 0.02 * i
            odom.pose.pose.orientation.w = 1.0
            odom.twist.twist.linear.x = 2.0
            out.append((odom_topic, t, odom))
        if i % 20 == 0:
            n = 100
            cloud = xyz_fields_to_pointcloud2(
                {'x': rng.uniform(2, 10, n), 'y': rng.uniform(-3, 3, n),
                 'z': np.full(n, -1.6) + i * 1e-3}, 'lidar_link', t)
            out.append((points_topic, t, cloud))
    return out


def write_rosbag2(path, messages, storage='sqlite3', corrupt=(), compression=None):
    """`messages` into a rosbag2; the ones at the indices in `corrupt` are recorded as bytes
    that do not deserialise (a damaged record). compression: None, 'file' or 'message' (zstd,
    as `ros2 bag record --compression-mode M --compression-format zstd`)."""
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    store = get_typestore(Stores.ROS2_HUMBLE)
    writer = Writer(Path(path), version=8, storage_plugin=plugin)
    if compression:
        writer.set_compression(CompressionMode[compression.upper()], CompressionFormat.ZSTD)
    with writer:
        connections = {}
        for index, (topic, stamp, msg) in enumerate(messages):
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, TYPES[type(msg)],
                                                           typestore=store)
            payload = b'\x00\x01\x00\x00damaged' if index in corrupt else serialize_message(msg)
            writer.write(connections[topic], stamp, payload)
    return Path(path)


def write_empty_rosbag2(path, topics=(('/imu/data', 'sensor_msgs/msg/Imu'),)):
    store = get_typestore(Stores.ROS2_HUMBLE)
    with Writer(Path(path), version=8) as writer:
        for topic, msgtype in topics:
            writer.add_connection(topic, msgtype, typestore=store)
    return Path(path)


def write_split_rosbag2(path, messages):
    """A rosbag2 directory split over two sqlite3 files, as `ros2 bag record --max-bag-size`
    makes."""
    path = Path(path)
    half = len(messages) // 2
    parts = [write_rosbag2(path.parent / (path.name + f'_part{i}'), chunk)
             for i, chunk in enumerate((messages[:half], messages[half:]))]
    path.mkdir()
    metas = [yaml.safe_load((p / 'metadata.yaml').read_text()) for p in parts]
    merged = yaml.safe_load((parts[0] / 'metadata.yaml').read_text())
    info = merged['rosbag2_bagfile_information']
    info['relative_file_paths'] = []
    info['files'] = []
    counts = {}
    for i, (part, meta) in enumerate(zip(parts, metas)):
        part_info = meta['rosbag2_bagfile_information']
        name = f'{path.name}_{i}.db3'
        (part / part_info['relative_file_paths'][0]).rename(path / name)
        info['relative_file_paths'].append(name)
        file_entry = dict(part_info['files'][0])
        file_entry['path'] = name
        info['files'].append(file_entry)
        for topic in part_info['topics_with_message_count']:
            name_ = topic['topic_metadata']['name']
            counts[name_] = counts.get(name_, 0) + topic['message_count']
    info['message_count'] = sum(counts.values())
    for topic in info['topics_with_message_count']:
        topic['message_count'] = counts[topic['topic_metadata']['name']]
    last = metas[1]['rosbag2_bagfile_information']
    info['duration']['nanoseconds'] = (last['starting_time']['nanoseconds_since_epoch']
                                       + last['duration']['nanoseconds']
                                       - info['starting_time']['nanoseconds_since_epoch'])
    (path / 'metadata.yaml').write_text(yaml.safe_dump(merged))
    return path


def write_ros1_bag(path, messages):
    """A ROS 1 bag of the same messages (headers gain ROS 1's `seq`)."""
    ros2 = get_typestore(Stores.ROS2_HUMBLE)
    ros1 = get_typestore(Stores.ROS1_NOETIC)
    header_cls = ros1.types['std_msgs/msg/Header']
    with Ros1Writer(Path(path)) as writer:
        connections = {}
        for seq, (topic, stamp, msg) in enumerate(messages):
            msgtype = TYPES[type(msg)]
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=ros1)
            obj = ros2.deserialize_cdr(serialize_message(msg), msgtype)
            header = header_cls(seq=seq, stamp=obj.header.stamp, frame_id=obj.header.frame_id)
            obj = dataclasses.replace(obj, header=header)
            writer.write(connections[topic], stamp, ros1.serialize_ros1(obj, msgtype))
    return Path(path)


def messages_from_bag(path, rename=None):
    """(topic, stamp_ns, rclpy message) of a bag's Imu / PointCloud2 / Odometry topics, in order;
    `rename` maps old topic names to new ones."""
    from terrain_ssl.replay.bag import Bag, ReadCounts

    rename = rename or {}
    with Bag(path) as bag:
        topics = [name for name, info in bag.topics().items() if info.msgtype in TYPES.values()]
        return [(rename.get(m.topic, m.topic), m.stamp_ns, m.message)
                for m in bag.messages(topics, ReadCounts())]
