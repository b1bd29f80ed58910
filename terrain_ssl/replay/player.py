"""Play a bag to DDS in real time with /clock, like `ros2 bag play --clock`, for live nodes.

Messages keep their recorded payload (raw CDR is published as is; ROS 1 records are converted),
sensor topics go out with the sensor-data QoS, and /clock carries bag time so nodes started with
use_sim_time follow the bag.
"""

from __future__ import annotations

import sys
import time

from rosgraph_msgs.msg import Clock

from terrain_ssl.replay.bag import Bag, BagError, ReadCounts, message_class
from terrain_ssl.ros.conversions import ns_to_stamp

SENSOR_TYPES = {'sensor_msgs/msg/Imu', 'sensor_msgs/msg/PointCloud2', 'nav_msgs/msg/Odometry'}


MATCH_SETTLE_S = 0.5  # after discovery, until the DDS endpoints have matched (s)


def _wait_for_subscribers(publishers, start_delay_s: float) -> None:
    """Let subscribers discover the publishers: a message sent before a subscriber has matched
    is lost. Wait until every topic has one (or start_delay_s has passed). The count comes from
    the discovery graph; the writer and the reader match a little later, and what is sent
    before that is lost just the same."""
    deadline = time.monotonic() + start_delay_s
    while time.monotonic() < deadline and not all(
            publisher.get_subscription_count() for publisher in publishers):
        time.sleep(0.05)
    time.sleep(min(MATCH_SETTLE_S, max(deadline - time.monotonic(), 0.0)))


def play(bag_path, rate: float = 1.0, topics=None, remap=None, clock_hz: float = 100.0,
         context=None, progress: bool = True, start_delay_s: float = 3.0) -> ReadCounts:
    """Publish the bag's messages at `rate` x real time; returns what was read and published.

    `remap` maps bag topic -> published topic. Blocks until the bag ends. ValueError for a rate
    that is not a positive number; BagError when no topic of the bag can be played here.
    `counts.expected` holds the bag's own counts of the played topics: compare with
    `counts.mismatches()`.
    """
    if not 0.0 < rate < float('inf'):  # (NaN too) 0 would never end, < 0 would not wait at all
        raise ValueError(f'rate must be a positive number, not {rate}')
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, qos_profile_sensor_data

    remap = dict(remap or {})
    own_context = context is None
    if own_context:
        from rclpy.context import Context
        context = Context()
        rclpy.init(args=[], context=context)
    node = Node('terrain_ssl_player', context=context)
    counts = ReadCounts()
    try:
        with Bag(bag_path) as bag:
            for note in bag.notes:
                print(f'note: {note}', file=sys.stderr)
            info = bag.topics()
            chosen = []
            publishers = {}
            for name in info:
                if topics is not None and name not in topics:
                    continue
                try:
                    cls = message_class(info[name].msgtype)
                except BagError:  # e.g. tf2_msgs without a ROS distro: say so, play the rest
                    counts.unknown_types[name] = info[name].msgtype
                    print(f'not playing {name}: type {info[name].msgtype} is not installed',
                          file=sys.stderr)
                    continue
                qos = qos_profile_sensor_data if info[name].msgtype in SENSOR_TYPES \
                    else QoSProfile(depth=10)
                publishers[name] = node.create_publisher(cls, remap.get(name, name), qos)
                chosen.append(name)
            if not chosen:
                raise BagError(f'nothing to play in {bag_path}: '
                               + (f'message types not installed here: '
                                  f'{", ".join(sorted(set(counts.unknown_types.values())))}'
                                  if counts.unknown_types else 'no topics'))
            clock = node.create_publisher(Clock, '/clock', 10)
            _wait_for_subscribers(publishers.values(), start_delay_s)
            wall_start = time.monotonic()
            bag_start = bag.start_ns
            next_clock_ns = bag_start
            period_ns = int(1e9 / clock_hz)
            # One message at a time: deserialising a chunk at once would publish the messages
            # after it late by as long (tens of ms); one by one, it fits in the waits between.
            for index, record in enumerate(bag.messages(chosen, counts, chunk_messages=1)):
                while next_clock_ns <= record.stamp_ns:  # /clock keeps ticking through gaps
                    _sleep_until(wall_start, (next_clock_ns - bag_start) / 1e9 / rate)
                    clock.publish(Clock(clock=ns_to_stamp(next_clock_ns)))
                    next_clock_ns += period_ns
                _sleep_until(wall_start, (record.stamp_ns - bag_start) / 1e9 / rate)
                publishers[record.topic].publish(record.message)
                if progress and index % 500 == 0:
                    print(f'\rplaying {bag_path}: {(record.stamp_ns - bag_start) / 1e9:7.1f} s',
                          end='', file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr)
    finally:
        node.destroy_node()
        if own_context:
            context.try_shutdown()
    return counts


def _sleep_until(wall_start: float, offset_s: float) -> None:
    delay = wall_start + offset_s - time.monotonic()
    if delay > 0:
        time.sleep(delay)
