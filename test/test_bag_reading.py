"""Reading bags of every supported kind into rclpy messages, with counts checked."""

from pathlib import Path

import numpy as np
from sensor_msgs.msg import PointCloud2
import pytest
from bag_factory import (make_messages, write_empty_rosbag2, write_ros1_bag, write_rosbag2,
                         write_split_rosbag2)

from terrain_ssl.replay.bag import Bag, BagError, ReadCounts
from terrain_ssl.ros.conversions import pointcloud2_to_xyz, stamp_to_ns


def _read_all(path, overrides=None):
    counts = ReadCounts()
    with Bag(path) as bag:
        roles = bag.resolve_inputs(overrides)
        messages = list(bag.messages(roles.values(), counts))
    return roles, messages, counts


def _check_same(messages, expected):
    assert len(messages) == len(expected)
    for got, (topic, stamp, msg) in zip(messages, expected):
        assert got.topic == topic and got.stamp_ns == stamp
        assert stamp_to_ns(got.message.header.stamp) == stamp
        assert type(got.message) is type(msg)
    clouds = [(g.message, m) for g, (_, _, m) in zip(messages, expected)
              if isinstance(m, PointCloud2)]
    for got, sent in clouds:
        np.testing.assert_array_equal(pointcloud2_to_xyz(got), pointcloud2_to_xyz(sent))


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_rosbag2_both_storages(tmp_path, storage):
    expected = make_messages()
    path = write_rosbag2(tmp_path / 'bag', expected, storage)
    roles, messages, counts = _read_all(path)
    assert roles == {'imu': '/imu/data', 'points': '/points', 'odom': '/odom'}
    _check_same(messages, expected)
    assert counts.mismatches() == {} and counts.read['/imu/data'] == 100


@pytest.mark.parametrize('chunk', [{'chunk_messages': 1}, {'chunk_messages': 7},
                                   {'chunk_bytes': 1}, {'chunk_messages': 10_000}])
def test_chunked_reading_keeps_every_message_in_order(tmp_path, chunk):
    """Messages are deserialised a chunk at a time; any chunk size gives the same stream, and
    the counts hold at the end."""
    expected = make_messages()
    path = write_rosbag2(tmp_path / 'bag', expected, 'mcap')
    counts = ReadCounts()
    with Bag(path) as bag:
        messages = list(bag.messages(bag.resolve_inputs().values(), counts, **chunk))
    _check_same(messages, expected)
    assert counts.mismatches() == {} and sum(counts.read.values()) == len(expected)


def test_a_time_window_reads_its_messages_and_no_loss_is_reported(tmp_path):
    """--start / --duration: the messages stamped in the window, and the window's own count is
    what is expected (fewer than the bag holds, by design, not a loss)."""
    expected = make_messages(duration_s=2.0)
    path = write_rosbag2(tmp_path / 'bag', expected, 'mcap')
    start_ns, end_ns = expected[0][1] + 500_000_000, expected[0][1] + 1_200_000_000
    in_window = [m for m in expected if start_ns <= m[1] < end_ns]
    counts = ReadCounts()
    with Bag(path) as bag:
        messages = list(bag.messages(bag.resolve_inputs().values(), counts, start_ns, end_ns,
                                     chunk_messages=16))
    _check_same(messages, in_window)
    assert 0 < len(messages) < len(expected)
    assert counts.mismatches() == {} and counts.read['/imu/data'] == 70


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
@pytest.mark.parametrize('compression', ['file', 'message'])
def test_zstd_compressed_bags(tmp_path, storage, compression):
    """Bags recorded with zstd compression, per file or per message, read like the others."""
    expected = make_messages()
    path = write_rosbag2(tmp_path / 'bag', expected, storage, compression=compression)
    if compression == 'file':
        assert any(name.suffix == '.zstd' for name in path.iterdir())
    _, messages, counts = _read_all(path)
    _check_same(messages, expected)
    assert counts.mismatches() == {} and counts.undecodable == {}


def test_single_file_of_a_bag(tmp_path):
    path = write_rosbag2(tmp_path / 'bag', make_messages(), 'mcap')
    (mcap_file,) = path.glob('*.mcap')
    _, messages, _ = _read_all(mcap_file)
    assert len(messages) == len(make_messages())


def test_split_bag(tmp_path):
    expected = make_messages(duration_s=2.0)
    path = write_split_rosbag2(tmp_path / 'split', expected)
    assert len(list(path.glob('*.db3'))) == 2
    _, messages, counts = _read_all(path)
    _check_same(messages, expected)
    assert counts.mismatches() == {}


def test_ros1_bag(tmp_path):
    expected = make_messages()
    path = write_ros1_bag(tmp_path / 'drive.bag', expected)
    roles, messages, counts = _read_all(path)
    assert roles['points'] == '/points'
    _check_same(messages, expected)
    imu = next(m.message for m in messages if m.topic == '/imu/data')
    assert imu.linear_acceleration.z == pytest.approx(9.81)
    assert imu.header.frame_id == 'imu_link'


def test_non_default_topic_names_detected_by_type(tmp_path):
    expected = make_messages(imu_topic='/vectornav/imu', points_topic='/os1/points',
                             odom_topic='/wheel/odometry')
    path = write_rosbag2(tmp_path / 'bag', expected)
    roles, messages, _ = _read_all(path)
    assert roles == {'imu': '/vectornav/imu', 'points': '/os1/points', 'odom': '/wheel/odometry'}
    assert len(messages) == len(expected)


def test_ambiguous_and_explicit_topics(tmp_path):
    messages = make_messages() + [(t.replace('/points', '/points2'), s, m)
                                  for t, s, m in make_messages() if t == '/points']
    messages.sort(key=lambda item: item[1])
    path = write_rosbag2(tmp_path / 'bag', messages)
    with pytest.raises(BagError, match='several sensor_msgs/msg/PointCloud2 topics'):
        _read_all(path)
    roles, _, _ = _read_all(path, {'points': '/points2'})
    assert roles['points'] == '/points2'
    with pytest.raises(BagError, match='/nope'):
        _read_all(path, {'points': '/nope'})


def test_missing_topic_named(tmp_path):
    path = write_rosbag2(tmp_path / 'bag', [m for m in make_messages() if m[0] != '/odom'])
    with pytest.raises(BagError, match='no nav_msgs/msg/Odometry topic'):
        _read_all(path)


def test_empty_bag(tmp_path):
    path = write_empty_rosbag2(tmp_path / 'bag', [('/imu/data', 'sensor_msgs/msg/Imu'),
                                                  ('/points', 'sensor_msgs/msg/PointCloud2'),
                                                  ('/odom', 'nav_msgs/msg/Odometry')])
    roles, messages, counts = _read_all(path)
    assert messages == [] and counts.mismatches() == {}


def test_not_a_bag(tmp_path):
    with pytest.raises(BagError, match='does not exist'):
        Bag(tmp_path / 'nothing')
    (tmp_path / 'dir').mkdir()
    with pytest.raises(BagError, match='metadata.yaml'):
        Bag(tmp_path / 'dir')


def bag_with_messages_in_its_write_ahead_log(source, target, from_ns):
    """A copy of sqlite3 bag `source` whose messages from `from_ns` on are still in the
    database's write-ahead log (-wal file), as when a recorder stops before a checkpoint.
    rosbags opens the database immutable, so it reads only the main file: the bag reads short,
    while its index (the `messages` table, read through sqlite) holds every message."""
    import shutil
    import sqlite3

    scratch = target.with_name(target.name + '_scratch')  # the source stays as it was
    shutil.copytree(source, scratch)
    (database,) = scratch.glob('*.db3')
    connection = sqlite3.connect(database)
    connection.execute('PRAGMA journal_mode=WAL')
    connection.execute('PRAGMA wal_autocheckpoint=0')  # the log keeps what follows
    rows = connection.execute('SELECT * FROM messages WHERE timestamp >= ?',
                              (from_ns,)).fetchall()
    connection.execute('DELETE FROM messages WHERE timestamp >= ?', (from_ns,))
    connection.commit()
    connection.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    connection.executemany(f'INSERT INTO messages VALUES ({",".join("?" * len(rows[0]))})',
                           rows)
    connection.commit()
    target.mkdir()
    for path in scratch.iterdir():  # copied while open: the log is not checkpointed
        shutil.copy(path, target / path.name)
    connection.close()
    shutil.rmtree(scratch)
    return target, len(rows)


def test_a_bag_that_reads_short_is_a_loss_in_full_and_in_a_window(tmp_path):
    """Loss detection does not depend on the window: the expected counts come from the bag's
    index within the window, never from what was read."""
    expected = make_messages(duration_s=2.0)
    path = write_rosbag2(tmp_path / 'bag', expected, 'sqlite3')
    t0 = expected[0][1]
    short, in_log = bag_with_messages_in_its_write_ahead_log(path, tmp_path / 'short',
                                                              t0 + 1_500_000_000)
    assert in_log > 0
    for window in [(None, None), (t0 + 1_000_000_000, t0 + 1_800_000_000)]:
        counts = ReadCounts()
        with Bag(short) as bag:
            list(bag.messages(bag.resolve_inputs().values(), counts, *window))
        lost = counts.mismatches()
        assert lost and all(read < bag_has for bag_has, read in lost.values())
        assert sum(e - r for e, r in lost.values()) == sum(
            1 for _, stamp, _ in expected if stamp >= t0 + 1_500_000_000
            and (window[1] is None or stamp < window[1]))


@pytest.mark.parametrize('version', [4, 9, 10])
def test_metadata_versions(tmp_path, version):
    """Versions 1-9 read alike (metadata.yaml only names the files); a newer one is refused in
    one line."""
    import yaml

    expected = make_messages()
    path = write_rosbag2(tmp_path / 'bag', expected, 'mcap')
    metadata = yaml.safe_load((path / 'metadata.yaml').read_text())
    metadata['rosbag2_bagfile_information']['version'] = version
    (path / 'metadata.yaml').write_text(yaml.safe_dump(metadata))
    if version > 9:
        with pytest.raises(BagError, match='version 10 is not supported'):
            Bag(path)
        return
    _, messages, counts = _read_all(path)
    _check_same(messages, expected)
    assert counts.mismatches() == {}


def test_play_names_a_loss_in_one_line(tmp_path):
    """`terrain-ssl play` compares what it read with the bag's index: a bag that reads short
    exits 1 with one `messages lost` line, after publishing what it could read."""
    import subprocess
    import sys

    expected = make_messages(duration_s=1.0)
    path = write_rosbag2(tmp_path / 'bag', expected, 'sqlite3')
    short, in_log = bag_with_messages_in_its_write_ahead_log(path, tmp_path / 'short',
                                                             expected[0][1] + 500_000_000)
    result = subprocess.run([sys.executable, '-m', 'terrain_ssl.cli', 'play', str(short),
                             '--rate', '10'], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'messages lost while reading' in errors[0]
    assert 'Traceback' not in result.stderr
    assert f'published {len(expected) - in_log} messages' in result.stdout
