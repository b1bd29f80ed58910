"""Message counts of an MCAP file from its own index, without reading the messages."""

from __future__ import annotations

import struct
from pathlib import Path

_MESSAGE_INDEX = 0x07


def mcap_counts_between(path: Path, low_ns: int, high_ns: int) -> dict:
    """Topic -> messages with log time in [low_ns, high_ns), from the file's message indexes.

    A chunk wholly inside the window counts by its message index sizes; one that straddles it
    by the index's timestamps. A file without a summary (a recording cut short) has no index:
    its messages' log times are read instead (the mcap library, not the replay's reader).
    """
    from mcap.reader import make_reader

    counts: dict = {}
    with open(path, 'rb') as stream:
        reader = make_reader(stream)
        summary = reader.get_summary()
        if summary is None or not summary.chunk_indexes:
            for _, channel, message in reader.iter_messages(start_time=low_ns,
                                                            end_time=high_ns):
                counts[channel.topic] = counts.get(channel.topic, 0) + 1
            return counts
        topics = {channel_id: channel.topic for channel_id, channel in summary.channels.items()}
        for chunk in summary.chunk_indexes:
            if chunk.message_end_time < low_ns or chunk.message_start_time >= high_ns:
                continue
            stream.seek(chunk.chunk_start_offset + chunk.chunk_length)
            block = stream.read(chunk.message_index_length)
            for channel_id, stamps in _message_indexes(block):
                inside = int(((stamps >= low_ns) & (stamps < high_ns)).sum())
                topic = topics.get(channel_id, str(channel_id))
                counts[topic] = counts.get(topic, 0) + inside
    return counts


def _message_indexes(block: bytes):
    """(channel id, log times) of each MessageIndex record (opcode 0x07) in `block`, the
    records that follow a chunk (MCAP spec: opcode u8, length u64, channel u16, then a u32
    byte count of (log time u64, offset u64) pairs)."""
    import numpy as np

    offset = 0
    while offset + 9 <= len(block):
        opcode, length = struct.unpack_from('<BQ', block, offset)
        body = offset + 9
        if opcode == _MESSAGE_INDEX:
            (channel_id, size) = struct.unpack_from('<HI', block, body)
            pairs = np.frombuffer(block, '<u8', count=size // 8, offset=body + 6)
            yield channel_id, pairs[0::2]
        offset = body + length


def mcap_time_bounds(path: Path):
    """(first, last) message log time in ns, or None for a file without messages."""
    from mcap.reader import make_reader

    with open(path, 'rb') as stream:
        reader = make_reader(stream)
        summary = reader.get_summary()
        # The chunk indexes first: some writers' statistics disagree with them (rosbag2's
        # `rewriter_a` test bag: a message at 0 ns, statistics starting at 1 ms).
        if summary is not None and summary.chunk_indexes:
            return (min(chunk.message_start_time for chunk in summary.chunk_indexes),
                    max(chunk.message_end_time for chunk in summary.chunk_indexes))
        if summary is not None and summary.statistics is not None:
            if not summary.statistics.message_count:
                return None
            return summary.statistics.message_start_time, summary.statistics.message_end_time
        stamps = [message.log_time for _, _, message in reader.iter_messages()]
    return (min(stamps), max(stamps)) if stamps else None
