"""Reading recorded drives: rosbag2 (sqlite3, mcap, split) and ROS 1 bags, as rclpy messages.

rosbags reads the files without a ROS installation; rclpy deserialises the stored CDR, so the
nodes receive exactly the message objects they get live. ROS 1 payloads are converted to CDR by
rosbags first. Every message read is counted per topic and compared with the bag's own counts at
the end: a replay never loses messages silently.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.typesys import Stores, get_typestore

# The inputs the pipeline needs, by message type; the role names match the CLI options.
INPUT_TYPES = {
    'imu': 'sensor_msgs/msg/Imu',
    'points': 'sensor_msgs/msg/PointCloud2',
    'odom': 'nav_msgs/msg/Odometry',
}


# Messages read and deserialised at a time before the nodes get them (see Bag.messages).
READ_CHUNK_MESSAGES = 256


class BagError(RuntimeError):
    """A bag that cannot be replayed as asked; the message says what to do."""


@dataclass
class TopicInfo:
    name: str
    msgtype: str
    count: int  # as recorded in the bag's own index / metadata


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    stamp_ns: int  # receive (recording) time
    message: object  # rclpy message instance
    cdr: Optional[bytes] = None  # the recorded CDR payload (rosbag2 only), as `message` came from


@dataclass
class ReadCounts:
    """What a replay read, per topic, against what the bag says it holds."""

    expected: dict = field(default_factory=dict)
    read: dict = field(default_factory=dict)
    undecodable: dict = field(default_factory=dict)
    last_error: str = ''
    unknown_types: dict = field(default_factory=dict)  # topic -> type not installed here

    def mismatches(self) -> dict:
        return {topic: (self.expected[topic], self.read.get(topic, 0))
                for topic in self.expected if self.read.get(topic, 0) != self.expected[topic]}


def _bag_paths(path: Path) -> list:
    """The paths AnyReader wants: a rosbag2 directory, or ROS 1 .bag file(s)."""
    if path.is_dir():
        if not (path / 'metadata.yaml').exists():
            raise BagError(f'{path} is a directory without metadata.yaml: not a rosbag2 bag')
        return [path]
    if not path.exists():
        raise BagError(f'{path} does not exist')
    if path.suffix == '.bag':
        return [path]
    if path.suffix in ('.db3', '.mcap'):
        if (path.parent / 'metadata.yaml').exists():
            return [path.parent]  # one file of a (possibly split) rosbag2 directory
        return [path]
    raise BagError(f'{path}: expected a rosbag2 directory, a .db3/.mcap file or a ROS 1 .bag')


def message_class(msgtype: str):
    """'sensor_msgs/msg/Imu' -> the rclpy message class; BagError when not installed."""
    package, kind, name = msgtype.split('/')
    try:
        return getattr(importlib.import_module(f'{package}.{kind}'), name)
    except (ImportError, AttributeError) as error:
        raise BagError(f'message type {msgtype} is not installed: {error}') from error


class Bag:
    """A recorded drive opened for reading. Use as a context manager."""

    def __init__(self, path):
        self.path = Path(path)
        self._classes: dict = {}  # message type name -> rclpy class
        self._reader = AnyReader(_bag_paths(self.path),
                                 default_typestore=get_typestore(Stores.ROS2_HUMBLE))

    def __enter__(self) -> 'Bag':
        try:
            self._reader.open()
        except AnyReaderError as error:
            raise BagError(f'cannot open {self.path}: {error}') from error
        self._is_ros1 = not self._reader.is2
        return self

    def __exit__(self, *exc) -> None:
        self._reader.close()

    @property
    def start_ns(self) -> int:
        return int(self._reader.start_time)

    @property
    def end_ns(self) -> int:
        return int(self._reader.end_time)

    def topics(self) -> dict:
        """Topic name -> TopicInfo, counts summed over connections."""
        topics: dict = {}
        for connection in self._reader.connections:
            info = topics.setdefault(connection.topic,
                                     TopicInfo(connection.topic, connection.msgtype, 0))
            info.count += int(connection.msgcount)
        return topics

    def resolve_inputs(self, overrides: Optional[dict] = None) -> dict:
        """Role ('imu', 'points', 'odom') -> topic name, by type unless given explicitly."""
        overrides = {k: v for k, v in (overrides or {}).items() if v}
        topics = self.topics()
        resolved = {}
        for role, msgtype in INPUT_TYPES.items():
            if role in overrides:
                name = overrides[role]
                if name not in topics:
                    raise BagError(f'topic {name} (given for {role}) is not in {self.path}; '
                                   f'topics: {sorted(topics)}')
                if topics[name].msgtype != msgtype:
                    raise BagError(f'topic {name} is {topics[name].msgtype}, expected {msgtype}')
                resolved[role] = name
                continue
            candidates = sorted(t.name for t in topics.values() if t.msgtype == msgtype)
            if not candidates:
                raise BagError(f'{self.path} has no {msgtype} topic (needed for {role}); '
                               f'topics: {sorted(topics)}')
            if len(candidates) > 1:
                raise BagError(f'{self.path} has several {msgtype} topics {candidates}: '
                               f'choose one with --{role}-topic')
            resolved[role] = candidates[0]
        return resolved

    def messages(self, topics, counts: ReadCounts, start_ns: Optional[int] = None,
                 end_ns: Optional[int] = None, chunk_messages: int = READ_CHUNK_MESSAGES,
                 chunk_bytes: int = 32 << 20) -> Iterator[BagMessage]:
        """Messages on `topics` in recording order, deserialised by rclpy, counted in `counts`.

        They are read and deserialised a chunk at a time (up to `chunk_messages`, or
        `chunk_bytes` of payload), then handed out one by one: interleaved with the nodes'
        work message by message, reading and deserialising ran ~20% slower, their caches
        refilled after every scan (7-10% of a replay's wall time on the 120 s drive; measured
        by bench/bench_replay.py --compare-read-chunk 1).
        """
        wanted = [c for c in self._reader.connections if c.topic in set(topics)]
        in_window = start_ns is None and end_ns is None
        for connection in wanted:
            counts.expected[connection.topic] = (counts.expected.get(connection.topic, 0)
                                                 + int(connection.msgcount))
        raw_messages = self._reader.messages(connections=wanted, start=start_ns, stop=end_ns)
        chunk: list = []
        while True:
            chunk_size = 0
            for item in raw_messages:
                chunk.append(item)
                chunk_size += len(item[2])
                if len(chunk) >= chunk_messages or chunk_size >= chunk_bytes:
                    break
            if not chunk:
                break
            decoded = self._decode(chunk, counts)
            chunk.clear()  # the raw payloads go before the nodes see the messages
            yield from decoded
        if not in_window:  # a time window reads fewer messages than the bag holds, by design
            counts.expected = dict(counts.read)

    def _decode(self, raw_messages, counts: ReadCounts) -> list:
        """(connection, stamp, raw payload) -> BagMessages, in order; undecodable ones counted."""
        from rclpy.serialization import deserialize_message

        decoded = []
        classes = self._classes
        for connection, stamp_ns, raw in raw_messages:
            topic = connection.topic
            counts.read[topic] = counts.read.get(topic, 0) + 1
            cls = classes.get(connection.msgtype)
            if cls is None:
                cls = classes[connection.msgtype] = message_class(connection.msgtype)
            try:
                if self._is_ros1:
                    cdr = None
                    message = self._ros1_to_rclpy(raw, connection, cls)
                else:
                    cdr = bytes(raw)
                    message = deserialize_message(cdr, cls)
            except Exception as error:  # a corrupt record: count it and go on
                counts.undecodable[topic] = counts.undecodable.get(topic, 0) + 1
                counts.last_error = f'{topic}: {error}'
                continue
            decoded.append(BagMessage(topic, connection.msgtype, int(stamp_ns), message, cdr))
        return decoded

    def _ros1_to_rclpy(self, raw, connection, cls):
        """ROS 1 payload -> rclpy message: rosbags decodes it, fields are copied by name
        (ROS 1 headers carry a `seq` that ROS 2 dropped; stamps are already sec/nanosec)."""
        source = self._reader.deserialize(raw, connection.msgtype)
        message = cls()
        _copy_fields(source, message)
        return message


def _copy_fields(source, target) -> None:
    """Copy a rosbags message object into an rclpy message, recursively, by field name."""
    import numpy as np

    for slot, slot_type in zip(target.__slots__, target.SLOT_TYPES):
        name = slot.lstrip('_')
        if name == 'check_fields' or not hasattr(source, name):
            continue
        value = getattr(source, name)
        current = getattr(target, name)
        if hasattr(current, 'get_fields_and_field_types'):  # nested message
            _copy_fields(value, current)
        elif isinstance(value, np.ndarray):
            setattr(target, name, value.tobytes() if value.dtype == np.uint8 else value)
        elif isinstance(value, list) and value and hasattr(value[0], '__dataclass_fields__'):
            element = slot_type.value_type
            module = importlib.import_module('.'.join(element.namespaces))
            items = []
            for item in value:
                copy = getattr(module, element.name)()
                _copy_fields(item, copy)
                items.append(copy)
            setattr(target, name, items)
        else:
            setattr(target, name, value)
