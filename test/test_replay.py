"""`terrain-ssl replay`: deterministic, every bag kind, clear errors, a report that renders."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from bag_factory import (messages_from_bag, write_empty_rosbag2, write_rosbag2,
                         write_split_rosbag2)

from terrain_ssl.cli import main as cli_main


@pytest.fixture(scope='module')
def sim_bag(tmp_path_factory):
    from terrain_ssl.sim.bag import simulate_bag
    # Start where class B turns into C and D: labels of every class within a short drive.
    return simulate_bag(tmp_path_factory.mktemp('replay') / 'drive', duration_s=16.0, seed=5,
                        storage='mcap', speed='3:6', start_s_m=60.0)


def _replay(bag, out, *extra) -> int:
    return cli_main(['replay', str(bag), '--out', str(out), '--no-progress', *extra])


def _labels(out) -> np.ndarray:
    return np.genfromtxt(Path(out) / 'labels.csv', delimiter=',', names=True)


def test_replay_is_deterministic_and_the_report_renders(sim_bag, tmp_path):
    from matplotlib.image import imread

    assert _replay(sim_bag, tmp_path / 'a') == 0
    assert _replay(sim_bag, tmp_path / 'b') == 0
    for name in ('metrics.json', 'labels.csv'):
        assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes(), name
    metrics = json.loads((tmp_path / 'a' / 'metrics.json').read_text())
    assert metrics['labels'] > 100
    assert metrics['info']['messages_read']['/imu/data'] == 16 * 200
    assert metrics['ground_truth']['spearman_label_vs_truth'] > 0.5
    timing = json.loads((tmp_path / 'a' / 'timing.json').read_text())
    assert timing['realtime_factor'] > 1.0
    report = (tmp_path / 'a' / 'report.md').read_text()
    for plot in ('learning_curve', 'predicted_vs_measured', 'roughness_map', 'speed'):
        path = tmp_path / 'a' / f'{plot}.png'
        assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
        pixels = imread(path)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 300
        assert pixels[..., :3].std() > 0.05, f'{plot}.png is blank'
        assert f'({plot}.png)' in report
    assert (tmp_path / 'a' / 'model.npz').stat().st_size > 1000
    # The bag's other topics are named, not silently left out.
    assert metrics['info']['topics_not_replayed'] == {'/tf_static': 'tf2_msgs/msg/TFMessage'}
    assert '`/tf_static` (tf2_msgs/msg/TFMessage)' in report


def test_model_out_then_in(sim_bag, tmp_path):
    from terrain_ssl.core.learner import OnlineRoughnessRegressor

    assert _replay(sim_bag, tmp_path / 'cold') == 0
    cold_model = tmp_path / 'cold' / 'model.npz'
    assert _replay(sim_bag, tmp_path / 'warm', '--model-in', str(cold_model)) == 0
    cold, warm = _labels(tmp_path / 'cold'), _labels(tmp_path / 'warm')
    assert np.isnan(cold['predicted'][0])  # a cold start has nothing to predict with
    assert np.isfinite(warm['predicted']).all()  # the loaded model predicts from the first label
    learned = OnlineRoughnessRegressor.load(cold_model).n_samples_seen_
    assert learned == cold.shape[0]
    assert OnlineRoughnessRegressor.load(tmp_path / 'warm' / 'model.npz').n_samples_seen_ \
        == 2 * learned


def test_damaged_records_are_skipped_counted_and_reported(sim_bag, tmp_path, capsys):
    """A record rclpy cannot deserialise is skipped, not fatal, and not silent: counted per
    topic in metrics.json, and named in the printed summary and in report.md."""
    messages = messages_from_bag(sim_bag)
    imu = [index for index, (topic, _, _) in enumerate(messages) if topic == '/imu/data']
    damaged = write_rosbag2(tmp_path / 'damaged', messages, 'mcap', corrupt={imu[500], imu[900]})
    assert _replay(damaged, tmp_path / 'out') == 0
    metrics = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
    assert metrics['info']['messages_undecodable'] == {'/imu/data': 2}
    assert metrics['info']['messages_read']['/imu/data'] == len(imu)  # read, none lost
    assert 'failed to deserialize' in metrics['info']['last_undecodable_error']
    assert metrics['labels'] > 100
    printed = capsys.readouterr().out
    assert 'warning: 2 recorded message(s) could not be deserialised' in printed
    assert '/imu/data: 2' in (tmp_path / 'out' / 'report.md').read_text()


def test_start_and_duration_replay_a_window_of_the_bag(sim_bag, tmp_path):
    """--start / --duration: only that part of the bag is replayed (its own message counts are
    what is expected: no 'messages lost' error), and its labels are those of that part."""
    assert _replay(sim_bag, tmp_path / 'window', '--start', '4', '--duration', '8') == 0
    metrics = json.loads((tmp_path / 'window' / 'metrics.json').read_text())
    assert abs(metrics['info']['messages_read']['/imu/data'] - 8 * 200) <= 1
    assert 7.9 <= metrics['info']['bag_duration_s'] <= 8.0
    labels = _labels(tmp_path / 'window')
    assert labels.shape[0] > 20
    assert labels['t_s'].min() >= 0.0 and labels['t_s'].max() <= 8.0


@pytest.mark.parametrize('kind', ['sqlite3', 'ros1', 'split', 'renamed'])
def test_every_bag_kind_gives_the_same_labels(sim_bag, tmp_path, kind):
    from rosbags.convert import convert

    reference = tmp_path / 'reference'
    assert _replay(sim_bag, reference) == 0
    if kind == 'sqlite3':
        converted = tmp_path / 'sqlite_bag'
        write_rosbag2(converted, messages_from_bag(sim_bag), 'sqlite3')
    elif kind == 'ros1':
        converted = tmp_path / 'drive.bag'
        convert([Path(sim_bag)], converted, dst_storage='sqlite3', dst_version=None,
                compress=None, compress_mode='file', default_typestore=None, typestore=None,
                exclude_topics=['/tf_static'], include_topics=[], exclude_msgtypes=[],
                include_msgtypes=[])
    elif kind == 'split':
        converted = write_split_rosbag2(tmp_path / 'split_bag', messages_from_bag(sim_bag))
    else:
        converted = tmp_path / 'renamed_bag'
        write_rosbag2(converted, messages_from_bag(sim_bag, rename={
            '/imu/data': '/vectornav/imu', '/points': '/ouster/points',
            '/odom': '/odometry/filtered'}))
    for name in ('ground_truth.json', 'ground_truth.npz'):  # truth beside the bag
        shutil.copy(Path(sim_bag) / name, converted.parent if converted.is_file() else converted)
    assert _replay(converted, tmp_path / 'out') == 0
    expected, got = _labels(reference), _labels(tmp_path / 'out')
    assert got.shape == expected.shape and got.shape[0] > 100
    for column in ('x', 'y', 'roughness', 'predicted'):
        np.testing.assert_allclose(got[column], expected[column], rtol=1e-5, atol=1e-6)


def test_empty_bag_and_missing_topic_are_clear(tmp_path, capsys):
    empty = write_empty_rosbag2(tmp_path / 'empty', [
        ('/imu/data', 'sensor_msgs/msg/Imu'), ('/points', 'sensor_msgs/msg/PointCloud2'),
        ('/odom', 'nav_msgs/msg/Odometry')])
    assert _replay(empty, tmp_path / 'out_empty') == 0
    assert json.loads((tmp_path / 'out_empty' / 'metrics.json').read_text())['labels'] == 0

    no_odom = write_empty_rosbag2(tmp_path / 'no_odom', [
        ('/imu/data', 'sensor_msgs/msg/Imu'), ('/points', 'sensor_msgs/msg/PointCloud2')])
    assert _replay(no_odom, tmp_path / 'out_missing') == 1
    assert 'no nav_msgs/msg/Odometry topic' in capsys.readouterr().err

    assert _replay(tmp_path / 'no_such_bag', tmp_path / 'out_none') == 1
    assert 'does not exist' in capsys.readouterr().err


def test_two_processes_give_the_same_results(sim_bag, tmp_path):
    """--processes 2 (learner and advisor fed through a pipe, in bag-time order) changes where
    the nodes run, not what they compute: every output file is byte-identical."""
    assert _replay(sim_bag, tmp_path / 'one') == 0
    assert _replay(sim_bag, tmp_path / 'two', '--processes', '2') == 0
    for name in ('metrics.json', 'labels.csv'):
        assert (tmp_path / 'one' / name).read_bytes() == (tmp_path / 'two' / name).read_bytes(), \
            name
    timing = json.loads((tmp_path / 'two' / 'timing.json').read_text())
    assert timing['processes'] == 2 and timing['stage_process']['cpu_s'] > 0


def test_a_failing_learner_advisor_process_is_reported(sim_bag, tmp_path):
    from terrain_ssl.replay.runner import ReplayError, ReplayOptions, run_replay

    broken = tmp_path / 'broken_model.npz'
    broken.write_bytes(b'not a model')
    with pytest.raises(ReplayError, match='learner-advisor process failed'):
        run_replay(ReplayOptions(bag=str(sim_bag), model_in=str(broken), progress=False,
                                 processes=2))


def test_stage_process_event_batches_round_trip_and_refuse_malformed_bytes():
    """The two-process replay's event stream is plain bytes, decoded exactly, never unpickled."""
    from terrain_ssl.replay.stage_process import (ADVANCE, DELIVER, FINISH, decode_events,
                                                  encode_events)

    events = [(ADVANCE, 1_700_000_000_123_456_789), (DELIVER, '/odom', b'\x00\x01cdr\xff'),
              (DELIVER, '/terrain_ssl/labeled_patches', b''), (ADVANCE, -5),
              (FINISH, None), (FINISH, 42)]
    payload = encode_events(events)
    assert decode_events(payload) == events
    with pytest.raises(ValueError, match='truncated'):
        decode_events(payload[:12])
    with pytest.raises(ValueError, match='unknown event kind'):
        decode_events(b'\x07' + payload)


def test_rare_garbage_collection_restores_the_collector():
    """The replay loop's collector settings are undone afterwards, even after an error."""
    import gc

    from terrain_ssl.replay.runtime import rare_garbage_collection

    before = gc.get_threshold()
    with pytest.raises(RuntimeError):
        with rare_garbage_collection(young_threshold=12345):
            assert gc.get_threshold() == (12345, *before[1:])
            assert gc.get_freeze_count() > 0  # what was alive is out of the scans
            raise RuntimeError('a replay failing half way')
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_labeler_callbacks_never_read_the_node_clock(sim_bag, tmp_path, monkeypatch):
    """The replay sets the labeler's clock only when its timers fire (BagTimeDriver with
    callbacks_read_clock=False). That is right only while its input callbacks take all time
    from message stamps: a clock read there would see a stale time."""
    from terrain_ssl.ros.labeler_node import RoughnessLabelerNode

    reads = {'inputs': 0, 'timers': 0}
    in_callback = []

    def counted_get_clock(node):
        reads['inputs' if in_callback else 'timers'] += 1
        return super(RoughnessLabelerNode, node).get_clock()

    def flagged(method):
        def call(node, *args):
            in_callback.append(method.__name__)
            try:
                return method(node, *args)
            finally:
                in_callback.pop()
        return call

    monkeypatch.setattr(RoughnessLabelerNode, 'get_clock', counted_get_clock)
    for name in ('on_imu', 'on_points', 'on_odometry', 'flush_labels'):
        monkeypatch.setattr(RoughnessLabelerNode, name,
                            flagged(getattr(RoughnessLabelerNode, name)))
    assert _replay(sim_bag, tmp_path / 'out') == 0
    assert reads['timers'] > 0  # the diagnostics read it: the hook sees reads
    assert reads['inputs'] == 0
    labels = _labels(tmp_path / 'out')
    assert labels.shape[0] > 100  # the callbacks ran


@pytest.mark.parametrize('override, processes, expected', [
    ('label.batch_s:=-1.0', '2', 'invalid parameter at start-up: label.batch_s'),
    ('label.batch_s:=0', '1', 'a decimal parameter needs a decimal value'),
    ('train_batch_size:=0', '2', 'invalid parameter at start-up: train_batch_size'),  # 2nd process
    ('label.batchs:=0.2', '2', "no node has a parameter 'label.batchs'; did you mean "
                               "label.batch_s"),
    ('label.batch_s', '1', 'expected NAME:=VALUE'),
])
def test_invalid_parameters_stop_the_replay_with_one_line(sim_bag, tmp_path, capsys, override,
                                                          processes, expected):
    """A -p the nodes refuse (range, type), a misspelt name (rclpy would ignore it silently) or
    a malformed one: exit 1 with the reason, no traceback, before any message is read."""
    code = _replay(sim_bag, tmp_path / 'out', '-p', override, '--processes', processes)
    err = capsys.readouterr().err
    assert code == 1 and expected in err, err
    assert 'Traceback' not in err
    assert not (tmp_path / 'out' / 'metrics.json').exists()


def test_a_parameters_file_rcl_cannot_parse_is_a_clear_error(sim_bag, tmp_path, capsys):
    broken = tmp_path / 'broken.yaml'
    broken.write_text('/**/roughness_labeler:\n  ros__parameters:\n    label.batch_s: [1, 2\n')
    assert _replay(sim_bag, tmp_path / 'out', '--config', str(broken)) == 1
    err = capsys.readouterr().err
    assert "error: ROS arguments: failed to initialize rcl: Couldn't parse params file" in err
    assert 'Traceback' not in err


@pytest.mark.parametrize('arguments, expected', [
    (['--duration', '-1'], 'duration must be > 0 s'),
    (['--start', '-5'], 'start must be >= 0 s'),
    (['--start', '1000'], 'start 1000 s is past the end of the bag (16.0 s long)'),
    (['--model-in', 'BROKEN'], '--model-in: model file'),  # a file that is not a model
    (['--model-in', 'MISSING'], 'does not exist'),
])
def test_bad_window_or_model_file_is_a_clear_error(sim_bag, tmp_path, capsys, arguments,
                                                    expected):
    """An empty or impossible window, or a model file that does not load: exit 1 with the
    reason (it used to be an empty report, or a traceback)."""
    broken = tmp_path / 'broken.npz'
    broken.write_bytes(b'not a model')
    paths = {'BROKEN': str(broken), 'MISSING': str(tmp_path / 'missing.npz')}
    arguments = [paths.get(argument, argument) for argument in arguments]
    assert _replay(sim_bag, tmp_path / 'out', *arguments) == 1
    err = capsys.readouterr().err
    assert expected in err and 'Traceback' not in err, err


@pytest.mark.parametrize('rate', ['0', '-1', 'nan', 'inf'])
def test_play_refuses_a_rate_that_is_not_a_positive_number(sim_bag, capsys, rate):
    """0 divided by zero, a negative or NaN rate published the whole bag at once."""
    assert cli_main(['play', str(sim_bag), '--rate', rate]) == 2
    assert '--rate must be a positive number' in capsys.readouterr().err
    from terrain_ssl.replay.player import play
    with pytest.raises(ValueError, match='positive'):
        play(sim_bag, rate=float(rate))


@pytest.mark.parametrize('command', ['replay', 'demo'])
def test_an_output_folder_that_cannot_be_made_is_a_clear_error(sim_bag, tmp_path, capsys,
                                                                command):
    """Checked before anything runs: one line, exit 1 (it was a traceback)."""
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    arguments = ([command, str(sim_bag), '--no-progress'] if command == 'replay' else
                 [command, '--quick'])
    assert cli_main(arguments + ['--out', str(blocker / 'out')]) == 1
    err = capsys.readouterr().err
    assert f'error: cannot create the output folder {blocker / "out"}' in err, err
