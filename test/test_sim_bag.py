"""Simulated bags: real rosbag2 files (sqlite3, mcap) that rosbags opens and rclpy deserialises."""

import argparse
import json

import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader

from nav_msgs.msg import Odometry
from sensor_msgs.msg import Imu, PointCloud2
from terrain_ssl.sim import cli as sim_cli
from terrain_ssl.sim.bag import SpeedProfile, simulate_bag
from terrain_ssl.sim.ground_truth import GroundTruth
from terrain_ssl.sim.messages import TYPESTORE
from terrain_ssl.sim.world import World, WorldConfig

RCLPY_TYPES = {'sensor_msgs/msg/Imu': Imu, 'sensor_msgs/msg/PointCloud2': PointCloud2,
               'nav_msgs/msg/Odometry': Odometry}
DURATION_S = 5.0


def read_bag(path):
    """{topic: [(log_time_ns, msgtype, raw)]} plus the bag's own per-topic counts."""
    by_topic, declared = {}, {}
    with Reader(path) as reader:
        for connection in reader.connections:
            declared[connection.topic] = connection.msgcount
        for connection, timestamp, raw in reader.messages():
            by_topic.setdefault(connection.topic, []).append(
                (timestamp, connection.msgtype, bytes(raw)))
    return by_topic, declared


def stamp_ns(msg):
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.fixture(scope='module')
def vlp16_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp('sim') / 'vlp16_sqlite'
    return simulate_bag(path, duration_s=DURATION_S, seed=7, storage='sqlite3', lidar='vlp16',
                        speed='3:7:5')


@pytest.fixture(scope='module')
def vlp16_messages(vlp16_bag):
    return read_bag(vlp16_bag)


def test_every_message_deserialises_and_counts_match(vlp16_messages):
    by_topic, declared = vlp16_messages
    expected = {'/imu/data': 200 * DURATION_S, '/odom': 50 * DURATION_S,
                '/points': 10 * DURATION_S, '/tf_static': 1}
    assert {t: len(m) for t, m in by_topic.items()} == expected
    assert declared == expected      # the bag's metadata agrees with what we read
    for topic, records in by_topic.items():
        for _, msgtype, raw in records:
            if msgtype == 'tf2_msgs/msg/TFMessage':
                # tf2_msgs is not installable from PyPI here, so rosbags deserialises it.
                tf = TYPESTORE.deserialize_cdr(raw, msgtype)
                children = {t.child_frame_id: t for t in tf.transforms}
                assert set(children) == {'imu_link', 'lidar_link'}
                assert {t.header.frame_id for t in tf.transforms} == {'base_link'}
                lidar = children['lidar_link'].transform.translation
                assert (lidar.x, lidar.y, lidar.z) == pytest.approx((0.3, 0.0, 1.6))
            else:
                msg = deserialize_message(raw, RCLPY_TYPES[msgtype])
                assert msg.header.frame_id == {'/imu/data': 'imu_link', '/odom': 'odom',
                                               '/points': 'lidar_link'}[topic]


def test_rates_match_configuration(vlp16_messages):
    by_topic, _ = vlp16_messages
    for topic, period_ns in (('/imu/data', 5_000_000), ('/odom', 20_000_000),
                             ('/points', 100_000_000)):
        msg_type = RCLPY_TYPES[by_topic[topic][0][1]]
        stamps = np.array([stamp_ns(deserialize_message(raw, msg_type))
                           for _, _, raw in by_topic[topic]])
        assert np.all(np.diff(stamps) == period_ns), topic
    log_times = [t for records in by_topic.values() for t, _, _ in records]
    assert max(log_times) - min(log_times) == pytest.approx(DURATION_S * 1e9, abs=1e7)


def test_pointcloud_layout(vlp16_messages):
    by_topic, _ = vlp16_messages
    for log_time, _, raw in by_topic['/points'][:5]:
        cloud = deserialize_message(raw, PointCloud2)
        assert (cloud.height, cloud.width) == (16, 1800)
        assert len(cloud.data) == cloud.width * cloud.height * cloud.point_step
        assert cloud.row_step == cloud.width * cloud.point_step
        assert not cloud.is_dense
        assert [f.name for f in cloud.fields] == ['x', 'y', 'z', 'intensity', 'ring', 'time']
        dtype = np.dtype({'names': [f.name for f in cloud.fields],
                          'formats': ['<u2' if f.datatype == 4 else '<f4' for f in cloud.fields],
                          'offsets': [f.offset for f in cloud.fields],
                          'itemsize': cloud.point_step})
        points = np.frombuffer(bytes(cloud.data), dtype=dtype).reshape(16, 1800)
        assert np.all(points['ring'] == np.arange(16)[:, None])
        assert 0.0 <= points['time'].min() and points['time'].max() < 0.1
        hits = ~np.isnan(points['x'])
        # Downward beams hit the ground; upward beams (rings 8..15) see sky on gentle slopes.
        assert hits[:6].mean() > 0.9 and hits[12:].mean() < 0.05
        ranges = np.linalg.norm(np.stack([points[a][hits] for a in 'xyz'], axis=1), axis=1)
        assert ranges.min() > 3.0 and ranges.max() <= 100.0
        assert log_time == stamp_ns(cloud) + 100_000_000  # delivered when the revolution ends


def test_ground_truth_beside_the_bag(vlp16_bag):
    truth = GroundTruth.load(vlp16_bag)
    assert truth.cell_size == 0.5
    doc = json.loads((vlp16_bag / 'ground_truth.json').read_text())
    assert doc['config']['seed'] == 7 and doc['config']['lidar'] == 'vlp16'
    assert doc['config']['speed'] == '3:7:5'
    assert {e['child'] for e in doc['config']['extrinsics']} == {'imu_link', 'lidar_link'}
    xy = np.column_stack([truth.trajectory['x_m'], truth.trajectory['y_m']])
    assert len(xy) == 50 * DURATION_S
    rms = truth.roughness_at(xy)
    assert np.all(np.isfinite(rms)) and np.all(rms > 0)
    assert set(np.unique(truth.iso_class_at(xy))) <= {0, 1}   # starts on class A, then B
    assert truth.roughness_at(np.array([[1e6, 1e6]]))[0] != truth.roughness_at(xy[:1])[0]
    assert truth.iso_class_at(np.array([[1e6, 1e6]]))[0] == -1
    speeds = truth.trajectory['speed_mps']
    assert speeds[0] < 0.1                                    # starts from rest
    assert speeds.max() > 5.0 and speeds[-1] < 3.5            # speeds up, then slows to 3 m/s


def test_mcap_os128_rotated_imu_at_rest(tmp_path):
    path = simulate_bag(tmp_path / 'os128_mcap', duration_s=1.0, seed=1, storage='mcap',
                        lidar='os128', speed=0.0, imu_mount='y_up')
    by_topic, _ = read_bag(path)
    assert (path / 'metadata.yaml').read_text().count('storage_identifier: mcap') == 1
    assert len(by_topic['/points']) == 10 and len(by_topic['/imu/data']) == 200
    cloud = deserialize_message(by_topic['/points'][0][2], PointCloud2)
    assert (cloud.height, cloud.width) == (128, 1024)
    assert len(cloud.data) == cloud.width * cloud.height * cloud.point_step
    accel = np.array([[m.linear_acceleration.x, m.linear_acceleration.y, m.linear_acceleration.z]
                      for m in (deserialize_message(raw, Imu)
                                for _, _, raw in by_topic['/imu/data'])])
    # Mounted with its y axis up, the IMU at rest feels +1 g along +y.
    assert accel.mean(axis=0) == pytest.approx([0.0, 9.80665, 0.0], abs=0.1)


def test_deterministic_for_a_seed():
    config = WorldConfig(lidar='vlp16')
    streams = []
    for _ in range(2):
        world = World(config, seed=11)
        streams.append([(m.topic, m.stamp_ns, m.cdr_bytes) for _ in range(3)
                        for m in world.step(0.1, 5.0)])
    assert streams[0] == streams[1]
    other = World(WorldConfig(lidar=None), seed=12)
    assert [m.cdr_bytes for m in other.step(0.1, 5.0) if m.topic == '/imu/data'] != [
        b for t, _, b in streams[0] if t == '/imu/data'][:20]


def test_cli_simulate_and_bad_input(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog='terrain-ssl')
    sim_cli.register(parser.add_subparsers(dest='command', required=True))
    out = tmp_path / 'cli_bag'
    args = parser.parse_args(['simulate', str(out), '--duration', '1', '--seed', '2',
                              '--storage', 'mcap', '--lidar', 'none', '--speed', '4',
                              '--imu-mount', 'z_up'])
    assert args.func(args) == 0
    by_topic, _ = read_bag(out)
    assert len(by_topic['/imu/data']) == 200 and '/points' not in by_topic
    assert '1.0/1.0 s sim' in capsys.readouterr().err   # the progress bar finished
    # Exists already, and a bad speed: clear errors, exit code 2, no traceback.
    assert args.func(args) == 2
    bad = parser.parse_args(['simulate', str(tmp_path / 'x'), '--speed', 'fast'])
    assert bad.func(bad) == 2
    assert 'bad speed' in capsys.readouterr().err


def test_speed_profile_parsing():
    assert SpeedProfile.parse('5').at(3.0) == 5.0
    profile = SpeedProfile.parse('3:7:10')
    assert profile.at(0.0) == pytest.approx(3.0) and profile.at(5.0) == pytest.approx(7.0)
    for bad in ('7:3', '-1', 'a:b', '1:2:3:4', '1:2:0'):
        with pytest.raises(ValueError):
            SpeedProfile.parse(bad)
