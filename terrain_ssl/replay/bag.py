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

from rosbags.typesys import Stores, get_typestore

from terrain_ssl.replay.rosbag2_files import (STORAGE_SUFFIXES, Rosbag2Files, StorageError,
                                              normalise_type)

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


def _bag_path(path: Path) -> Path:
    """The path to open: a rosbag2 directory (also for one file of it), a storage file without
    metadata.yaml, or a ROS 1 .bag file."""
    if not path.exists():
        raise BagError(f'{path} does not exist')
    if path.is_dir():
        if not (path / 'metadata.yaml').exists() and not any(
                p.suffix in STORAGE_SUFFIXES for p in path.iterdir()):
            raise BagError(f'{path} is a directory without metadata.yaml or .db3/.mcap files: '
                           f'not a rosbag2 bag')
        return path
    if path.suffix == '.bag':
        return path
    if path.suffix in STORAGE_SUFFIXES or path.name.endswith(('.db3.zstd', '.mcap.zstd')):
        if (path.parent / 'metadata.yaml').exists():
            return path.parent  # one file of a (possibly split) rosbag2 directory
        return path
    raise BagError(f'{path}: expected a rosbag2 directory, a .db3/.mcap file or a ROS 1 .bag')


def message_class(msgtype: str):
    """'sensor_msgs/msg/Imu' (or 'sensor_msgs/Imu') -> the rclpy message class; BagError when
    it is not installed here."""
    parts = normalise_type(msgtype).split('/')
    if len(parts) != 3 or not all(parts):
        raise BagError(f'message type {msgtype!r} is not a ROS type name')
    package, kind, name = parts
    try:
        return getattr(importlib.import_module(f'{package}.{kind}'), name)
    except (ImportError, AttributeError) as error:
        raise BagError(f'message type {msgtype} is not installed: {error}') from error


class Bag:
    """A recorded drive opened for reading. Use as a context manager.

    rosbag2 bags are read from their storage files as they are (rosbag2_files.Rosbag2Files:
    whatever metadata.yaml says); ROS 1 bags through rosbags' AnyReader. `notes` says, one line
    each, where a bag's metadata and storage disagree.
    """

    def __init__(self, path):
        self.path = Path(path)
        opened = _bag_path(self.path)
        self._ros1 = None
        self._files = None
        if opened.suffix == '.bag':
            from rosbags.highlevel import AnyReader
            self._ros1 = AnyReader([opened], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
        else:
            try:
                self._files = Rosbag2Files(opened)
            except StorageError as error:
                raise BagError(str(error)) from None
        self._classes: dict = {}  # message type name -> rclpy class

    def __enter__(self) -> 'Bag':
        from rosbags.highlevel import AnyReaderError
        try:
            if self._ros1 is not None:
                self._ros1.open()
            else:
                self._files.__enter__()
        except AnyReaderError as error:
            raise BagError(f'cannot open {self.path}: {error}') from error
        except StorageError as error:
            raise BagError(str(error)) from None
        return self

    def __exit__(self, *exc) -> None:
        if self._ros1 is not None:
            self._ros1.close()
        else:
            self._files.close()

    @property
    def notes(self) -> list:
        """One line per disagreement between the bag's metadata and its storage files."""
        return [] if self._files is None else list(self._files.notes)

    @property
    def start_ns(self) -> int:
        return int(self._ros1.start_time) if self._ros1 is not None else self._files.start_ns

    @property
    def end_ns(self) -> int:
        return int(self._ros1.end_time) if self._ros1 is not None else self._files.end_ns

    def topics(self) -> dict:
        """Topic name -> TopicInfo, counts summed over connections (or split files)."""
        if self._files is not None:
            return {name: TopicInfo(name, topic.msgtype, topic.count)
                    for name, topic in self._files.topics.items()}
        topics: dict = {}
        for connection in self._ros1.connections:
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

    def expected_counts(self, topics, start_ns: Optional[int] = None,
                        end_ns: Optional[int] = None) -> dict:
        """Topic -> messages the bag holds on it in [start_ns, end_ns) by its own index (the
        sqlite3 `messages` table, write-ahead log included; the mcap message indexes; the ROS 1
        index), counted apart from the reading."""
        topics = list(topics)
        if self._files is not None:
            try:
                return self._files.counts_between(topics, start_ns, end_ns)
            except StorageError as error:
                raise BagError(str(error)) from None
        return self._ros1_counts_between(topics, start_ns, end_ns)

    def _ros1_counts_between(self, topics, start_ns, end_ns) -> dict:
        """ROS 1: the bag's index (connection -> stamps), which rosbags reads at open."""
        low, high = start_ns or 0, end_ns if end_ns is not None else 2 ** 63 - 1
        counts = {name: 0 for name in topics}
        for connection in self._ros1.connections:
            if connection.topic in counts:
                owner = connection.owner
                stamps = [entry.time for entry in owner.indexes.get(connection.id, [])]
                counts[connection.topic] += sum(1 for t in stamps if low <= t < high)
        return counts

    def raw_messages(self, topics, start_ns: Optional[int] = None,
                     end_ns: Optional[int] = None) -> Iterator[tuple]:
        """(topic, msgtype, stamp_ns, payload) in recording order: CDR for rosbag2, the
        recorded ROS 1 bytes for a ROS 1 bag."""
        if self._files is not None:
            try:
                yield from self._files.messages(topics, start_ns, end_ns)
            except StorageError as error:
                raise BagError(str(error)) from None
            return
        wanted = [c for c in self._ros1.connections if c.topic in set(topics)]
        for connection, stamp_ns, raw in self._ros1.messages(connections=wanted, start=start_ns,
                                                             stop=end_ns):
            yield connection.topic, connection.msgtype, stamp_ns, raw

    def messages(self, topics, counts: ReadCounts, start_ns: Optional[int] = None,
                 end_ns: Optional[int] = None, chunk_messages: int = READ_CHUNK_MESSAGES,
                 chunk_bytes: int = 32 << 20) -> Iterator[BagMessage]:
        """Messages on `topics` in recording order, deserialised by rclpy, counted in `counts`.

        `counts.expected` gets the bag's own count of each topic within the window, from its
        index, so that `counts.mismatches()` after the last message shows what was lost.
        They are read and deserialised a chunk at a time (up to `chunk_messages`, or
        `chunk_bytes` of payload), then handed out one by one: reading and deserialising keep
        their caches warm instead of refilling them after every scan (see
        bench/bench_replay.py --compare-read-chunk).
        """
        topics = list(topics)
        for name, count in self.expected_counts(topics, start_ns, end_ns).items():
            counts.expected[name] = counts.expected.get(name, 0) + count
        raw_messages = self.raw_messages(topics, start_ns, end_ns)
        chunk: list = []
        while True:
            chunk_size = 0
            for item in raw_messages:
                chunk.append(item)
                chunk_size += len(item[3])
                if len(chunk) >= chunk_messages or chunk_size >= chunk_bytes:
                    break
            if not chunk:
                break
            decoded = self._decode(chunk, counts)
            chunk.clear()  # the raw payloads go before the nodes see the messages
            yield from decoded

    def _decode(self, raw_messages, counts: ReadCounts) -> list:
        """(topic, type, stamp, raw payload) -> BagMessages, in order; undecodable ones
        counted."""
        from rclpy.serialization import deserialize_message

        decoded = []
        classes = self._classes
        ros1 = self._ros1 is not None
        for topic, msgtype, stamp_ns, raw in raw_messages:
            counts.read[topic] = counts.read.get(topic, 0) + 1
            cls = classes.get(msgtype)
            if cls is None:
                cls = classes[msgtype] = message_class(msgtype)
            try:
                if ros1:
                    cdr = None
                    message = self._ros1_to_rclpy(raw, msgtype, cls)
                else:
                    cdr = bytes(raw)
                    message = deserialize_message(cdr, cls)
            except Exception as error:  # a corrupt record: count it and go on
                counts.undecodable[topic] = counts.undecodable.get(topic, 0) + 1
                counts.last_error = f'{topic}: {error}'
                continue
            decoded.append(BagMessage(topic, msgtype, int(stamp_ns), message, cdr))
        return decoded

    def _ros1_to_rclpy(self, raw, msgtype, cls):
        """ROS 1 payload -> rclpy message: rosbags decodes it, fields are copied by name
        (ROS 1 headers carry a `seq` that ROS 2 dropped; stamps are already sec/nanosec)."""
        source = self._ros1.deserialize(raw, msgtype)
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
