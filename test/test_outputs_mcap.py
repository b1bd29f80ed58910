"""`terrain-ssl replay` writes outputs.mcap: every published topic in bag time, ROS 2 schemas,
as many messages as metrics.json says were published; and bag metadata does not change a
replay's results."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from terrain_ssl.cli import main as cli_main

OUTPUT_TOPICS = {'/terrain_ssl/lookahead_patches', '/terrain_ssl/labeled_patches',
                 '/terrain_ssl/roughness_map', '/terrain_ssl/roughness_grid',
                 '/terrain_ssl/speed_limit', '/terrain_ssl/speed_mask',
                 '/terrain_ssl/roughness_costmap', '/diagnostics'}


@pytest.fixture(scope='module')
def sim_bag(tmp_path_factory):
    from terrain_ssl.sim.bag import simulate_bag
    return simulate_bag(tmp_path_factory.mktemp('mcap') / 'drive', duration_s=10.0, seed=5,
                        storage='sqlite3', speed='3:6', start_s_m=60.0)


def _replay(bag, out, *extra) -> int:
    return cli_main(['replay', str(bag), '--out', str(out), '--no-progress', *extra])


def _mcap_contents(path):
    """Topic -> (schema name, [(log time, decoded message)]), read with the mcap reader and
    decoded from the file's own schemas by mcap-ros2-support (as Foxglove does)."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    contents: dict = {}
    with open(path, 'rb') as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        for schema, channel, message, decoded in reader.iter_decoded_messages(
                log_time_order=True):
            assert schema.encoding == 'ros2msg' and channel.message_encoding == 'cdr'
            entry = contents.setdefault(channel.topic, (schema.name, []))
            entry[1].append((message.log_time, decoded))
    return contents


@pytest.mark.parametrize('processes', ['1', '2'])
def test_outputs_mcap_holds_every_published_message_in_bag_time(sim_bag, tmp_path, processes):
    out = tmp_path / 'out'
    assert _replay(sim_bag, out, '--processes', processes, '--with-inputs') == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    published = metrics['info']['messages_published']
    read = metrics['info']['messages_read']
    contents = _mcap_contents(out / 'outputs.mcap')
    assert OUTPUT_TOPICS <= set(published)
    # the inputs, and odometry as /tf with the bag's /tf_static (lidar placed in odom)
    in_mcap = {topic: len(messages) for topic, (_, messages) in contents.items()}
    assert in_mcap == {**published, **read, '/tf': read['/odom'], '/tf_static': 1}
    assert in_mcap == metrics['info']['messages_in_mcap']
    assert contents['/terrain_ssl/speed_limit'][0] == 'std_msgs/msg/Float32'
    assert contents['/terrain_ssl/roughness_map'][0] == 'sensor_msgs/msg/PointCloud2'
    # bag time: within the bag's span, and a message's header stamp where it has one
    imu = contents['/imu/data'][1]
    first, last = imu[0][0], imu[-1][0]
    for topic, (_, messages) in contents.items():
        if topic != '/tf_static':  # recorded once, at the start of the simulation
            assert all(first <= stamp <= last + 1_000_000_000 for stamp, _ in messages), topic
    tf = contents['/tf'][1][0][1].transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id) == ('odom', 'base_link')
    for stamp, grid in contents['/terrain_ssl/roughness_map'][1]:
        header = grid.header.stamp.sec * 10**9 + grid.header.stamp.nanosec
        assert header <= stamp
    limits = [message.data for _, message in contents['/terrain_ssl/speed_limit'][1]]
    assert min(limits) > 0.0 and len(limits) == published['/terrain_ssl/speed_limit']
    assert not list(out.glob('*.part'))


def test_without_inputs_and_without_mcap(sim_bag, tmp_path):
    assert _replay(sim_bag, tmp_path / 'outputs_only') == 0
    contents = _mcap_contents(tmp_path / 'outputs_only' / 'outputs.mcap')
    assert set(contents) == OUTPUT_TOPICS
    assert _replay(sim_bag, tmp_path / 'none', '--no-mcap') == 0
    assert not (tmp_path / 'none' / 'outputs.mcap').exists()


def test_a_bag_whose_metadata_qos_was_edited_replays_like_the_original(sim_bag, tmp_path):
    """metadata.yaml's QoS no longer matches the storage's (as in rosbag2's talker bags): the
    storage is read, and the labels are byte-identical."""
    edited = tmp_path / 'edited'
    shutil.copytree(sim_bag, edited)
    metadata_path = edited / 'metadata.yaml'
    metadata = yaml.safe_load(metadata_path.read_text())
    for entry in metadata['rosbag2_bagfile_information']['topics_with_message_count']:
        for profile in entry['topic_metadata']['offered_qos_profiles']:
            profile['depth'] += 7
            profile['reliability'] = {'reliable': 'best_effort'}.get(profile['reliability'],
                                                                     'reliable')
    metadata_path.write_text(yaml.safe_dump(metadata))
    from terrain_ssl.replay.bag import Bag
    with Bag(edited) as bag:
        assert any('QoS' in note for note in bag.notes)
    with Bag(sim_bag) as bag:
        assert bag.notes == []
    assert _replay(sim_bag, tmp_path / 'a', '--no-mcap') == 0
    assert _replay(edited, tmp_path / 'b', '--no-mcap') == 0
    original = (tmp_path / 'a' / 'labels.csv').read_bytes()
    assert original.count(b'\n') > 20
    assert (tmp_path / 'b' / 'labels.csv').read_bytes() == original


def test_a_failed_replay_leaves_no_output_folder_and_names_the_loss(sim_bag, tmp_path, capsys):
    """A windowed replay of a bag that reads short (messages still in the sqlite write-ahead
    log): `messages lost` in one line, exit 1, and the folder it made is gone."""
    from test_bag_reading import bag_with_messages_in_its_write_ahead_log

    from terrain_ssl.replay.bag import Bag
    with Bag(sim_bag) as bag:
        middle_ns = (bag.start_ns + bag.end_ns) // 2
    short, _ = bag_with_messages_in_its_write_ahead_log(sim_bag, tmp_path / 'short',
                                                         middle_ns)
    capsys.readouterr()
    out = tmp_path / 'out'
    assert _replay(short, out, '--start', '2', '--duration', '6') == 1
    errors = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith('error:')]
    assert len(errors) == 1 and 'messages lost while reading' in errors[0]
    assert not out.exists()


def test_report_lists_model_file_only_when_written(tmp_path):
    """0 labels -> no model.npz, and report.md does not claim one."""
    from bag_factory import make_messages, write_rosbag2

    bag = write_rosbag2(tmp_path / 'bag', make_messages(duration_s=0.5), 'mcap')
    out = tmp_path / 'out'
    assert _replay(bag, out, '--no-mcap') == 0
    assert not (out / 'model.npz').exists()
    assert 'model.npz' not in (out / 'report.md').read_text()


def test_the_shipped_views_show_the_topics_the_replay_writes():
    """config/foxglove_layout.json and config/terrain_ssl.rviz parse, and every topic they show
    is one outputs.mcap holds (outputs, or inputs with --with-inputs)."""
    import re

    repo = Path(__file__).resolve().parents[1]
    inputs = {'/points', '/imu/data', '/odom'}
    layout = json.loads((repo / 'config' / 'foxglove_layout.json').read_text())
    shown = set(layout['configById']['3D!terrain']['topics'])
    shown |= {path['value'].split('.')[0] for panel in layout['configById'].values()
              for path in panel.get('paths', [])}
    shown.add(layout['configById']['DiagnosticSummary!nodes']['topicToRender'])
    assert shown <= OUTPUT_TOPICS | inputs
    assert {'/terrain_ssl/roughness_map', '/terrain_ssl/speed_limit'} <= shown
    for panel_id in _panel_ids(layout['layout']):
        assert panel_id in layout['configById']
    rviz = yaml.safe_load((repo / 'config' / 'terrain_ssl.rviz').read_text())
    displays = rviz['Visualization Manager']['Displays']
    rviz_topics = {d['Topic']['Value'] for d in displays if 'Topic' in d}
    assert rviz_topics <= OUTPUT_TOPICS | inputs
    assert {'/terrain_ssl/roughness_map', '/terrain_ssl/roughness_grid'} <= rviz_topics
    assert all(re.fullmatch(r'rviz_default_plugins/\w+', d['Class']) for d in displays)


def _panel_ids(node):
    if isinstance(node, str):
        return [node]
    return _panel_ids(node['first']) + _panel_ids(node['second'])


def test_the_fast_cdr_writers_give_what_rclpy_reads_back():
    """PointCloud2 / OccupancyGrid written as one block: rclpy's length, rclpy reads back the
    same message (organised, padded, empty, odd-length names and frames)."""
    import array

    import numpy as np
    from nav_msgs.msg import OccupancyGrid
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import PointCloud2, PointField

    from terrain_ssl.replay.cdr_fast import occupancy_grid_cdr, pointcloud2_cdr

    rng = np.random.default_rng(3)
    for frame in ('', 'o', 'odom', 'lidar_link_x'):
        for n in (0, 1, 3, 401):
            cloud = PointCloud2(height=1 + n % 2, width=n, point_step=64, row_step=64 * n,
                                is_dense=bool(n % 2), is_bigendian=n == 3)
            cloud.header.frame_id = frame
            cloud.header.stamp.sec, cloud.header.stamp.nanosec = -5, 123
            cloud.fields = [PointField(name='f' * (i % 5 + 1), offset=4 * i, datatype=1 + i % 8,
                                       count=1 + i % 2) for i in range(n % 17)]
            cloud.data = rng.random(n * 16 * cloud.height).astype(np.float32).tobytes()
            fast = pointcloud2_cdr(cloud)
            assert len(fast) == len(serialize_message(cloud))
            assert deserialize_message(fast, PointCloud2) == cloud
            grid = OccupancyGrid()
            grid.header.frame_id = frame
            grid.info.resolution, grid.info.width, grid.info.height = 0.5, n, 3
            grid.info.origin.position.x, grid.info.origin.orientation.w = -1.5, 1.0
            grid.info.map_load_time.sec = 7
            grid.data = array.array('b', rng.integers(-1, 100, n * 3).astype(np.int8).tobytes())
            fast = occupancy_grid_cdr(grid)
            assert len(fast) == len(serialize_message(grid))
            assert deserialize_message(fast, OccupancyGrid) == grid
