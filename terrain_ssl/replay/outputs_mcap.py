"""A replay's outputs as one MCAP file (`outputs.mcap`): every topic the nodes publish, stamped
in bag time, with ROS 2 schemas, so that Foxglove (or `ros2 bag play`) shows them with no set-up.

Messages are serialised by rclpy (the CDR the nodes would send over DDS) and written with the
`mcap` library; the schemas are the `ros2msg` definitions rosbags' type store generates (the
installed packages' own .msg files for types it does not know). With two replay processes,
each writes its own nodes' messages; the learner-advisor process's part file is copied into the
main one at the end (MCAP readers order messages by log time through the file's index).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable, Optional

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.serialization import serialize_message

from terrain_ssl.replay.cdr_fast import serializer_for
from terrain_ssl.ros.diagnostics import DiagnosticsPublisher
from terrain_ssl.ros.linked_publisher import LinkedPublisher

STAGE_PART_SUFFIX = '.stage.part'


def ros_type_name(message_class) -> str:
    """rclpy message class -> 'pkg/msg/Name'."""
    return f'{message_class.__module__.split(".")[0]}/msg/{message_class.__name__}'


def message_definition(msgtype: str) -> str:
    """The `ros2msg` schema text of `msgtype` with its dependencies, as ROS 2 tools write it."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)  # a fresh one: types get registered into it
    missing = [msgtype]
    while missing:  # types the store lacks: from the installed packages' .msg files
        name = missing.pop()
        if name in store.fielddefs:
            continue
        _register_installed(store, name)
        missing += [field for field in _dependencies(store, name) if field not in store.fielddefs]
    return store.generate_msgdef(msgtype, ros_version=2)[0]


def _register_installed(store, msgtype: str) -> None:
    """Register `msgtype` from its package's share/PKG/msg/NAME.msg: under a ROS distro's
    prefixes (AMENT_PREFIX_PATH), or this Python environment's (the PyPI wheels install there)."""
    from rosbags.typesys import get_types_from_msg

    package, _, name = msgtype.split('/')
    prefixes = [p for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    for prefix in prefixes + [sys.prefix]:
        path = Path(prefix) / 'share' / package / 'msg' / f'{name}.msg'
        if path.exists():
            store.register(get_types_from_msg(path.read_text(), msgtype))
            return
    raise ValueError(f'no message definition for {msgtype} (share/{package}/msg/{name}.msg) '
                     f'under {prefixes + [sys.prefix]}')


def _dependencies(store, msgtype: str) -> list:
    """The message types `msgtype`'s fields use (rosbags' field definitions: (kind, detail),
    an array or sequence wrapping its element's (kind, detail))."""
    names = []
    for _, (kind, detail) in store.fielddefs[msgtype][1]:
        if kind.name in ('ARRAY', 'SEQUENCE'):
            kind, detail = detail[0]
        if kind.name == 'NAME':
            names.append(detail)
    return names


TF_TYPE = 'tf2_msgs/msg/TFMessage'


@functools.lru_cache(maxsize=1)
def _kilted_store():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)  # the installed rclpy's distribution


def odometry_as_tf(odometry) -> bytes:
    """An Odometry message's pose as a serialised tf2_msgs/TFMessage (CDR), written with
    rosbags' type store: tf2_msgs is not among the installed rclpy packages."""
    store = _kilted_store()
    types = store.types
    stamp = odometry.header.stamp
    pose = odometry.pose.pose
    transform = types['geometry_msgs/msg/TransformStamped'](
        header=types['std_msgs/msg/Header'](
            stamp=types['builtin_interfaces/msg/Time'](sec=stamp.sec, nanosec=stamp.nanosec),
            frame_id=odometry.header.frame_id),
        child_frame_id=odometry.child_frame_id,
        transform=types['geometry_msgs/msg/Transform'](
            translation=types['geometry_msgs/msg/Vector3'](
                x=pose.position.x, y=pose.position.y, z=pose.position.z),
            rotation=types['geometry_msgs/msg/Quaternion'](
                x=pose.orientation.x, y=pose.orientation.y, z=pose.orientation.z,
                w=pose.orientation.w)))
    return bytes(store.serialize_cdr(types[TF_TYPE](transforms=[transform]), TF_TYPE))


def published_counts(nodes) -> dict:
    """Topic -> messages the nodes' outlets and diagnostics published (their own counters)."""
    counts: dict = {}
    for node in nodes:
        for value in vars(node).values():
            if isinstance(value, LinkedPublisher):
                topic, published = value.topic_name, value.published
            elif isinstance(value, DiagnosticsPublisher):
                topic, published = '/diagnostics', value.published
            else:
                continue
            if published:
                counts[topic] = counts.get(topic, 0) + published
    return counts


class McapOutputs:
    """Writes messages to an MCAP file as they are published. `attach(nodes, now_ns)` hears
    every outlet and diagnostics publisher of `nodes`; `tap_inputs(messages)` also writes bag
    messages as they pass; `close()` finishes the file and returns topic -> messages written."""

    def __init__(self, path, chunk_size: int = 4 << 20, compression: str = 'lz4'):
        from mcap.writer import CompressionType, Writer

        self.path = Path(path)
        self._file = open(self.path, 'wb')
        self._writer = Writer(self._file, chunk_size=chunk_size,
                              compression=CompressionType[compression.upper()])
        self._writer.start(profile='ros2', library='terrain_ssl')
        self._channels: dict = {}  # topic -> channel id
        self._schemas: dict = {}  # type name -> schema id
        self.counts: dict = {}

    def attach(self, nodes, now_ns: Callable[[], Optional[int]]) -> None:
        for node in nodes:
            for value in vars(node).values():
                if isinstance(value, LinkedPublisher):
                    topic, message_class = value.topic_name, value.publisher.msg_type
                elif isinstance(value, DiagnosticsPublisher):
                    topic, message_class = '/diagnostics', DiagnosticArray
                else:
                    continue
                value.connect(self._listener(topic, message_class, now_ns))

    def _listener(self, topic: str, message_class, now_ns: Callable[[], Optional[int]]):
        channel = self._channel(topic, ros_type_name(message_class))
        add_message = self._writer.add_message
        serialize = serializer_for(message_class)
        counts = self.counts

        def write(message) -> None:
            stamp_ns = now_ns() or 0
            add_message(channel, log_time=stamp_ns, publish_time=stamp_ns,
                        data=serialize(message))
            counts[topic] = counts.get(topic, 0) + 1
        return write

    def _channel(self, topic: str, msgtype: str) -> int:
        if topic not in self._channels:
            if msgtype not in self._schemas:
                self._schemas[msgtype] = self._writer.register_schema(
                    msgtype, 'ros2msg', message_definition(msgtype).encode())
            self._channels[topic] = self._writer.register_channel(
                topic, 'cdr', self._schemas[msgtype])
        return self._channels[topic]

    def tap_inputs(self, messages):
        """Yield `messages` (bag.BagMessage) unchanged, writing each one first. Odometry also
        goes out as /tf (its frame -> its child frame), so that viewers can place the lidar
        scans in the odometry frame with the map and the patches."""
        for message in messages:
            channel = self._channels.get(message.topic)
            if channel is None:
                channel = self._channel(message.topic, message.msgtype)
            data = message.cdr if message.cdr is not None else serialize_message(message.message)
            self.write_raw(channel, message.topic, message.stamp_ns, data)
            if message.msgtype == 'nav_msgs/msg/Odometry':
                self.write_raw(self._channel('/tf', TF_TYPE), '/tf', message.stamp_ns,
                               odometry_as_tf(message.message))
            yield message

    def write_raw(self, channel: int, topic: str, stamp_ns: int, data: bytes) -> None:
        self._writer.add_message(channel, log_time=stamp_ns, publish_time=stamp_ns, data=data)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def copy_static_transforms(self, bag_path) -> None:
        """The bag's /tf_static (the sensors' mounting), as recorded."""
        from terrain_ssl.replay.bag import Bag

        if Path(bag_path).suffix == '.bag':  # ROS 1 records are not CDR
            return
        with Bag(bag_path) as bag:
            topics = [name for name, info in bag.topics().items()
                      if name == '/tf_static' and info.msgtype == TF_TYPE]
            for topic, msgtype, stamp_ns, raw in bag.raw_messages(topics):
                self.write_raw(self._channel(topic, msgtype), topic, stamp_ns, bytes(raw))

    def copy_from(self, part_path) -> None:
        """Add every message of another MCAP file (the learner-advisor process's part), then delete
        it."""
        from mcap.reader import make_reader

        part_path = Path(part_path)
        with open(part_path, 'rb') as stream:
            reader = make_reader(stream)
            for schema, channel, message in reader.iter_messages(log_time_order=False):
                target = self._channels.get(channel.topic)
                if target is None:
                    if schema.name not in self._schemas:
                        self._schemas[schema.name] = self._writer.register_schema(
                            schema.name, schema.encoding, schema.data)
                    target = self._channels[channel.topic] = self._writer.register_channel(
                        channel.topic, channel.message_encoding, self._schemas[schema.name])
                self._writer.add_message(target, log_time=message.log_time,
                                         publish_time=message.publish_time, data=message.data)
                self.counts[channel.topic] = self.counts.get(channel.topic, 0) + 1
        os.unlink(part_path)

    def close(self) -> dict:
        """Finish the file (summary and indexes); topic -> messages written."""
        if self._file is not None:
            try:
                self._writer.finish()
            finally:
                self._file.close()
                self._file = None
        return dict(self.counts)

    def discard(self) -> None:
        """After a failed replay: no half-written file left behind, nor the learner-advisor
        process's part (call once that process has stopped)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)
        Path(str(self.path) + STAGE_PART_SUFFIX).unlink(missing_ok=True)


def open_outputs(options, stage_part: bool = False) -> Optional[McapOutputs]:
    """The replay's MCAP recorder when `options.outputs_mcap` names a file, else None. The
    learner-advisor process writes an uncompressed part next to it (copied in at the end)."""
    path = getattr(options, 'outputs_mcap', None)
    if not path:
        return None
    if stage_part:
        return McapOutputs(str(path) + STAGE_PART_SUFFIX, compression='none')
    outputs = McapOutputs(path)
    if getattr(options, 'mcap_inputs', False):
        outputs.copy_static_transforms(options.bag)
    return outputs
