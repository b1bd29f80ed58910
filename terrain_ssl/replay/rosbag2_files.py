"""The storage files of a rosbag2 bag, read as they are, whatever its metadata.yaml says.

rosbags' bag reader matches each topic of metadata.yaml with the storage file's own topic record,
QoS profiles included, and reads nothing, without an error, where a recorder wrote them
differently (rosbag2's own `talker` test bags). Its storage readers (one sqlite3 or mcap file
each) have no such step: the topics, types and counts here are the storage files' own, and
metadata.yaml only names the files, their compression and what the recorder meant to write.
Where the two disagree, `notes` says so in one line and the storage files are read.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import yaml

try:
    from compression import zstd  # Python >= 3.14
except ImportError:  # the backport rosbags depends on
    from backports import zstd

STORAGE_SUFFIXES = {'.db3': 'sqlite3', '.mcap': 'mcap'}


class StorageError(RuntimeError):
    """A rosbag2 bag whose files cannot be read; the message names the cause."""


def normalise_type(msgtype: str) -> str:
    """'pkg/Name' (as some recorders wrote it) -> 'pkg/msg/Name'; other names unchanged."""
    parts = msgtype.split('/')
    return f'{parts[0]}/msg/{parts[1]}' if len(parts) == 2 else msgtype


@dataclass
class StoredTopic:
    name: str
    msgtype: str  # normalised ('pkg/msg/Name')
    count: int  # messages in the storage files' own index
    serialization_format: str = 'cdr'


def _file_index(path: Path) -> tuple:
    """Order split files by their numeric suffix (bag_2 before bag_10)."""
    match = re.search(r'_(\d+)$', path.name.split('.')[0])
    return (int(match.group(1)) if match else -1, path.name)


def _load_metadata(directory: Path) -> dict:
    try:
        document = yaml.safe_load((directory / 'metadata.yaml').read_text())
        return dict(document['rosbag2_bagfile_information'])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise StorageError(f'{directory / "metadata.yaml"} cannot be read: {detail}') from None


def _metadata_topics(metadata: dict) -> dict:
    """Topic name -> (type, count, serialisation format) as metadata.yaml records them."""
    topics: dict = {}
    for entry in metadata.get('topics_with_message_count') or []:
        topic = entry.get('topic_metadata') or {}
        name = topic.get('name')
        if name is None:
            continue
        previous = topics.get(name, (None, 0, None))
        topics[name] = (normalise_type(str(topic.get('type', ''))),
                        previous[1] + int(entry.get('message_count') or 0),
                        topic.get('serialization_format'))
    return topics


class Rosbag2Files:
    """A rosbag2 directory (or one storage file) opened for reading. Use as a context manager.

    `topics` are the storage files' own; `notes` say, one line each, where metadata.yaml
    disagrees with them; `messages` yields (topic, msgtype, stamp_ns, CDR bytes) in order.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.notes: list = []
        self.metadata: dict = {}
        self.compression_mode = ''
        self.directory = self.path if self.path.is_dir() else self.path.parent
        if self.path.is_dir():
            if (self.path / 'metadata.yaml').exists():
                self.metadata = _load_metadata(self.path)
                self.files = self._files_from_metadata()
            else:
                self.files = sorted((p for p in self.path.iterdir()
                                     if p.suffix in STORAGE_SUFFIXES), key=_file_index)
                if not self.files:
                    raise StorageError(f'{self.path} holds neither metadata.yaml nor '
                                       f'.db3/.mcap files: not a rosbag2 bag')
                self.notes.append(f'{self.path} has no metadata.yaml: reading its '
                                  f'{len(self.files)} storage file(s) in name order')
        else:
            self.files = [self.path]
        self._storages: list = []
        self._storage_files: list = []
        self._tmpdir = None
        self._bounds = None
        self.topics: dict = {}

    def _files_from_metadata(self) -> list:
        metadata = self.metadata
        version = metadata.get('version')
        if not isinstance(version, int) or not 1 <= version <= 9:
            raise StorageError(f'{self.path}: rosbag2 metadata version {version!r} is not '
                               f'supported (1-9)')
        names = metadata.get('relative_file_paths') or [
            item.get('path') for item in metadata.get('files') or [] if item.get('path')]
        files = [self.path / Path(str(name)).name for name in names]
        missing = [str(f.name) for f in files if not f.exists()]
        if missing:
            raise StorageError(f'{self.path}: storage file(s) listed in metadata.yaml are '
                               f'missing: {", ".join(missing)}')
        if not files:
            raise StorageError(f'{self.path}: metadata.yaml lists no storage files')
        mode = str(metadata.get('compression_mode') or '').lower()
        self.compression_mode = '' if mode == 'none' else mode
        compression = str(metadata.get('compression_format') or '')
        if self.compression_mode and compression != 'zstd':
            raise StorageError(f'{self.path}: compression {compression!r} is not supported '
                               f'(zstd is)')
        return files

    def __enter__(self) -> 'Rosbag2Files':
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self) -> None:
        from rosbags.rosbag2.errors import ReaderError
        from rosbags.rosbag2.storage_mcap import McapReader
        from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader

        readers = {'sqlite3': Sqlite3Reader, 'mcap': McapReader}
        for path in self.files:
            storage_path = self._decompressed(path)
            kind = STORAGE_SUFFIXES.get(storage_path.suffix)
            if kind is None:
                raise StorageError(f'{path.name}: not a .db3 or .mcap storage file')
            storage = readers[kind](storage_path)
            try:
                storage.open()
            except (ReaderError, sqlite3.Error, OSError, ValueError, AssertionError) as error:
                raise StorageError(f'cannot read {path}: {error}') from None
            self._storages.append(storage)
            self._storage_files.append(storage_path)
        for storage in self._storages:
            for connection in storage.connections:
                topic = self.topics.setdefault(connection.topic, StoredTopic(
                    connection.topic, normalise_type(connection.msgtype), 0,
                    connection.ext.serialization_format))
                topic.count += int(connection.msgcount)
        self._compare_with_metadata()

    def _decompressed(self, path: Path) -> Path:
        """A file compressed whole (`compression_mode: file`) -> its decompressed copy."""
        if self.compression_mode != 'file' and path.suffix != '.zstd':
            return path
        if self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix='terrain_ssl_bag_')
        target = Path(self._tmpdir.name) / (path.stem if path.suffix == '.zstd' else path.name)
        try:
            with path.open('rb') as source, zstd.open(source, 'rb') as unpacked, \
                    target.open('wb') as output:
                shutil.copyfileobj(unpacked, output)
        except (OSError, zstd.ZstdError) as error:
            raise StorageError(f'cannot decompress {path}: {error}') from None
        return target

    def _compare_with_metadata(self) -> None:
        """One note per kind of disagreement between metadata.yaml and the storage files."""
        if not self.metadata:
            return
        recorded = _metadata_topics(self.metadata)
        stored = self.topics
        differ = sorted(name for name in set(recorded) & set(stored)
                        if recorded[name][:2] != (stored[name].msgtype, stored[name].count)
                        or recorded[name][2] != stored[name].serialization_format)
        only_meta = sorted(set(recorded) - set(stored))
        only_storage = sorted(set(stored) - set(recorded))
        if differ or only_meta or only_storage:
            parts = [f'{name} ({self._difference(recorded[name], stored[name])})'
                     for name in differ]
            parts += [f'{name} (only in metadata.yaml)' for name in only_meta]
            parts += [f'{name} (only in the storage)' for name in only_storage]
            self.notes.append(f'{self.path}: metadata.yaml and the storage files disagree on '
                              f'{", ".join(parts)}; reading the storage files as they are')
        if self._qos_differs():
            self.notes.append(f'{self.path}: the QoS profiles in metadata.yaml differ from the '
                              f'storage files\'; reading the storage files as they are')

    @staticmethod
    def _difference(recorded: tuple, stored: StoredTopic) -> str:
        if recorded[0] != stored.msgtype:
            return f'type {recorded[0]} vs {stored.msgtype}'
        if recorded[2] != stored.serialization_format:
            return f'format {recorded[2]} vs {stored.serialization_format}'
        return f'{recorded[1]} vs {stored.count} messages'

    def _qos_differs(self) -> bool:
        from rosbags.rosbag2.metadata import parse_qos

        recorded = {}
        for entry in self.metadata.get('topics_with_message_count') or []:
            topic = entry.get('topic_metadata') or {}
            try:
                recorded[topic.get('name')] = parse_qos(topic.get('offered_qos_profiles', []))
            except (TypeError, ValueError, KeyError, AttributeError, yaml.YAMLError):
                recorded[topic.get('name')] = None  # unreadable: not compared
        for storage in self._storages:
            for connection in storage.connections:
                qos = recorded.get(connection.topic)
                if qos is not None and qos != connection.ext.offered_qos_profiles:
                    return True
        return False

    @property
    def start_ns(self) -> int:
        """The first message's stamp (0 for a bag without messages)."""
        return min((bounds[0] for bounds in self._time_bounds()), default=0)

    @property
    def end_ns(self) -> int:
        """The last message's stamp (0 for a bag without messages)."""
        return max((bounds[1] for bounds in self._time_bounds()), default=0)

    def _time_bounds(self) -> list:
        """(first, last) stamp of each storage file with messages, from its own index."""
        from terrain_ssl.replay.mcap_index import mcap_time_bounds

        if self._bounds is None:
            self._bounds = []
            for path in self._storage_files:
                if path.suffix == '.db3':
                    bounds = _sqlite_query(path, 'SELECT MIN(timestamp), MAX(timestamp) '
                                                 'FROM messages', ())[0]
                    bounds = None if bounds[0] is None else bounds
                else:
                    bounds = mcap_time_bounds(path)
                if bounds is not None:
                    self._bounds.append((int(bounds[0]), int(bounds[1])))
        return self._bounds

    def messages(self, topics, start_ns: Optional[int] = None,
                 end_ns: Optional[int] = None) -> Iterator[tuple]:
        """(topic, msgtype, stamp_ns, CDR payload) for `topics`, file after file, in order."""
        topics = set(topics)
        for name in topics:
            if self.topics[name].serialization_format != 'cdr':
                raise StorageError(f'{self.path}: topic {name} is stored as '
                                   f'{self.topics[name].serialization_format!r}, not CDR')
        per_message = self.compression_mode == 'message'
        for storage in self._storages:
            wanted = [c for c in storage.connections if c.topic in topics]
            if not wanted:
                continue
            types = {c.id: self.topics[c.topic].msgtype for c in wanted}
            for connection, stamp_ns, raw in storage.messages(wanted, start_ns, end_ns):
                if per_message:
                    raw = zstd.decompress(raw)
                yield connection.topic, types[connection.id], stamp_ns, raw

    def counts_between(self, topics, start_ns: Optional[int],
                       end_ns: Optional[int]) -> dict:
        """Messages per topic stamped in [start_ns, end_ns), from the files' own indexes (the
        sqlite3 `messages` table, the mcap message index), not from reading them."""
        from terrain_ssl.replay.mcap_index import mcap_counts_between

        counts = {name: 0 for name in topics}
        low, high = start_ns or 0, end_ns if end_ns is not None else 2 ** 63 - 1
        for path in self._storage_files:
            if path.suffix == '.db3':
                found = _sqlite_counts_between(path, low, high)
            else:
                found = mcap_counts_between(path, low, high)
            for name, count in found.items():
                if name in counts:
                    counts[name] += count
        return counts

    def close(self) -> None:
        for storage in self._storages:
            storage.close()
        self._storages = []
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None


def _sqlite_counts_between(path: Path, low: int, high: int) -> dict:
    return dict(_sqlite_query(
        path, 'SELECT topics.name, COUNT(*) FROM messages JOIN topics '
              'ON messages.topic_id = topics.id WHERE messages.timestamp >= ? '
              'AND messages.timestamp < ? GROUP BY topics.name', (low, high)))


def _sqlite_query(path: Path, query: str, arguments: tuple) -> list:
    for mode in ('ro', 'ro&immutable=1'):  # immutable: a read-only folder with a -wal file
        try:
            with sqlite3.connect(f'file:{path}?mode={mode}', uri=True) as database:
                return database.execute(query, arguments).fetchall()
        except sqlite3.Error as error:
            last_error = error
    raise StorageError(f'cannot query {path}: {last_error}')
