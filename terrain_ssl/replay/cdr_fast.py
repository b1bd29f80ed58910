"""CDR serialisation of the replay's two bulky output types, in rclpy's layout.

rclpy's serialize_message copies a message's uint8[] / int8[] payload element by element (about
1 ms for a 26 kB PointCloud2); these write it as one block (about a tenth of that). Only the
layouts of sensor_msgs/PointCloud2 and nav_msgs/OccupancyGrid are written here; every other
type goes through rclpy. The bytes are rclpy's except the alignment padding, which rclpy leaves
uninitialised and these write as zeros; test_outputs_mcap checks that rclpy reads them back as
the same message.
"""

from __future__ import annotations

import struct

_ENCAPSULATION = b'\x00\x01\x00\x00'  # CDR, little endian


class _Buffer:
    """CDR body: primitives aligned to their size from the start of the body."""

    def __init__(self):
        self.parts: list = []
        self.size = 0

    def _align(self, alignment: int) -> None:
        padding = -self.size % alignment
        if padding:
            self.parts.append(b'\x00' * padding)
            self.size += padding

    def pack(self, alignment: int, fmt: str, *values) -> None:
        self._align(alignment)
        data = struct.pack('<' + fmt, *values)
        self.parts.append(data)
        self.size += len(data)

    def string(self, text: str) -> None:
        data = text.encode() + b'\x00'
        self.pack(4, 'I', len(data))
        self.parts.append(data)
        self.size += len(data)

    def octets(self, data) -> None:
        """A uint8[] / int8[] sequence: length, then the bytes as they are."""
        data = memoryview(data).cast('B')
        self.pack(4, 'I', len(data))
        self.parts.append(data)
        self.size += len(data)

    def header(self, header) -> None:
        self.pack(4, 'iI', header.stamp.sec, header.stamp.nanosec)
        self.string(header.frame_id)

    def result(self) -> bytes:
        return _ENCAPSULATION + b''.join(self.parts)


def _point_fields(fields: tuple) -> bytes:
    """The PointField sequence: it starts 4-aligned and each element is a multiple of 4 bytes
    long, so its bytes do not depend on where it sits (cached: a topic's fields stay put)."""
    encoded = _FIELDS_CACHE.get(fields)
    if encoded is None:
        parts = [struct.pack('<I', len(fields))]
        for name, offset, datatype, count in fields:
            text = name.encode() + b'\x00'
            parts += [struct.pack('<I', len(text)), text, b'\x00' * (-len(text) % 4),
                      struct.pack('<IB3xI', offset, datatype, count)]
        encoded = b''.join(parts)
        if len(_FIELDS_CACHE) < 64:
            _FIELDS_CACHE[fields] = encoded
    return encoded


_FIELDS_CACHE: dict = {}


def pointcloud2_cdr(msg) -> bytes:
    buffer = _Buffer()
    buffer.header(msg.header)
    buffer.pack(4, 'II', msg.height, msg.width)
    fields = _point_fields(tuple((f.name, f.offset, f.datatype, f.count) for f in msg.fields))
    buffer.parts.append(fields)
    buffer.size += len(fields)
    buffer.pack(1, 'B', msg.is_bigendian)
    buffer.pack(4, 'II', msg.point_step, msg.row_step)
    buffer.octets(msg.data)
    buffer.pack(1, 'B', msg.is_dense)
    return buffer.result()


def occupancy_grid_cdr(msg) -> bytes:
    buffer = _Buffer()
    buffer.header(msg.header)
    info = msg.info
    buffer.pack(4, 'iI', info.map_load_time.sec, info.map_load_time.nanosec)
    buffer.pack(4, 'fII', info.resolution, info.width, info.height)
    position, orientation = info.origin.position, info.origin.orientation
    buffer.pack(8, 'ddddddd', position.x, position.y, position.z,
                orientation.x, orientation.y, orientation.z, orientation.w)
    buffer.octets(msg.data)
    return buffer.result()


def serializer_for(message_class):
    """The fast writer for `message_class`, or rclpy's serialize_message."""
    from rclpy.serialization import serialize_message

    name = f'{message_class.__module__.split(".")[0]}/{message_class.__name__}'
    return {'sensor_msgs/PointCloud2': pointcloud2_cdr,
            'nav_msgs/OccupancyGrid': occupancy_grid_cdr}.get(name, serialize_message)
