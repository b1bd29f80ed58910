"""`terrain-ssl calibrate` on real drives (BorealTC runs as rosbag2, the ROS 1 Husky bag) and on
a simulated one, whose params.yaml then drives a replay and a labeler node."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

import borealtc_bags
from realdata import realdata
from terrain_ssl.cli import main as cli_main

# Runs that calibrate, and three that cannot: too short, too little driving, no IMU.
BOREALTC_RUNS = (('ASPHALT', '00'), ('SANDY_LOAM', '01'), ('SNOW', '01'), ('FLOORING', '01'),
                 ('SANDY_LOAM', '00'))


@pytest.fixture(scope='module')
def borealtc_bag_dirs(tmp_path_factory):
    root = realdata('borealtc')
    out = tmp_path_factory.mktemp('borealtc')
    bags = [borealtc_bags.write_bag(root, surface, run, out / f'{surface}_{run}')
            for surface, run in BOREALTC_RUNS]
    bags.append(borealtc_bags.write_bag(root, 'MIXED', '00', out / 'MIXED_00', imu=False))
    return bags


def read_windows(path) -> list:
    with open(path, newline='', encoding='utf-8') as stream:
        return list(csv.DictReader(stream))


def labeler_values(path) -> dict:
    return yaml.safe_load(path.read_text())['/**/roughness_labeler']['ros__parameters']


def test_borealtc_bags_calibrate(borealtc_bag_dirs, tmp_path, capsys):
    out = tmp_path / 'calibration'
    small_ugv = preset('small_ugv.yaml')
    code = cli_main(['calibrate', *map(str, borealtc_bag_dirs), '--out', str(out),
                     '--config', str(small_ugv)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    lines = {line.split()[0]: line for line in printed.splitlines() if line.strip()}
    assert 'not calibrated: no IMU' in lines['MIXED_00']
    assert 'not calibrated: too short' in lines['SANDY_LOAM_00']
    for name in ('ASPHALT_00', 'SANDY_LOAM_01', 'SNOW_01'):
        assert 'not calibrated' not in lines[name]
    values = labeler_values(out / 'params.yaml')
    assert values['footprint.length'] == 0.85  # the robot's own values carried over
    assert 0.0 < values['label.min_speed'] < 0.2  # labels at the Husky's 0.2 m/s
    assert 0.0 <= values['label.moderate_threshold'] < values['label.rough_threshold']
    rows = read_windows(out / 'windows.csv')
    assert {'bag', 't', 'speed', 'shock', 'roughness'} <= set(rows[0])
    bags = {row['bag'] for row in rows}
    assert bags == {'ASPHALT_00', 'SANDY_LOAM_01', 'SNOW_01', 'FLOORING_01'}
    roughness = {bag: np.median([float(r['roughness']) for r in rows if r['bag'] == bag])
                 for bag in bags}
    assert roughness['SNOW_01'] > 2 * roughness['ASPHALT_00']  # snow shakes, asphalt does not
    assert (out / 'roughness_vs_speed.png').stat().st_size > 10_000


def preset(name) -> Path:
    return Path(__file__).resolve().parents[1] / 'config' / 'presets' / name


def test_ros1_husky_bag_at_30_hz_with_gravity_on_y(tmp_path, capsys):
    bag = realdata('husky_imu_odom', 'test1.bag')
    out = tmp_path / 'husky'
    code = cli_main(['calibrate', str(bag), '--out', str(out), '--comfort',
                     'a_little_uncomfortable', '--config',
                     str(preset('small_ugv.yaml'))])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert 'ISO 2631-1 a_little_uncomfortable' in printed
    values = labeler_values(out / 'params.yaml')
    assert values['vibration.shock_measure'] == 'wk_rms'
    rows = read_windows(out / 'windows.csv')
    speed = np.array([float(r['speed']) for r in rows])
    shock = np.array([float(r['shock']) for r in rows])
    assert len(rows) > 100 and np.median(speed) == pytest.approx(1.0, abs=0.1)
    # Gravity (on the IMU's y axis) is not in the vibration: shocks are a fraction of 1 g.
    assert 0.01 < np.median(shock) < 1.0
    assert values['label.rough_threshold'] > values['label.moderate_threshold'] > 0.0


def test_bad_bags_and_limits_are_one_line_errors(borealtc_bag_dirs, tmp_path, capsys):
    no_imu = [str(bag) for bag in borealtc_bag_dirs if bag.name == 'MIXED_00']
    assert cli_main(['calibrate', *no_imu, '--out', str(tmp_path / 'x')]) == 1
    captured = capsys.readouterr()
    assert 'error: no drive could be calibrated' in captured.err
    assert 'Traceback' not in captured.err and not (tmp_path / 'x').exists()
    missing = cli_main(['calibrate', str(tmp_path / 'nothing'), '--out', str(tmp_path / 'y')])
    assert missing == 1 and 'cannot read' in capsys.readouterr().out
    asphalt = [str(bag) for bag in borealtc_bag_dirs if bag.name == 'ASPHALT_00']
    assert cli_main(['calibrate', *asphalt, '--out', str(tmp_path / 'z'),
                     '--shock-limit', '-1']) == 2
    assert 'error: --shock-limit must be a positive number' in capsys.readouterr().err


def test_shock_limit_sets_the_thresholds(borealtc_bag_dirs, tmp_path, capsys):
    asphalt = [str(bag) for bag in borealtc_bag_dirs if bag.name == 'ASPHALT_00']
    thresholds = []
    for limit in ('0.5', '1.0'):
        out = tmp_path / limit
        assert cli_main(['calibrate', *asphalt, '--out', str(out), '--shock-limit', limit]) == 0
        assert f'shock limit {limit} m/s^2' in capsys.readouterr().out
        values = labeler_values(out / 'params.yaml')
        thresholds.append((values['label.moderate_threshold'], values['label.rough_threshold']))
    # A twice higher limit: rough starts at a higher label, moderate too.
    assert thresholds[1][1] > thresholds[0][1] and thresholds[1][0] > thresholds[0][0]


def test_params_file_drives_replay_and_node(tmp_path, capsys):
    from terrain_ssl.core.labeler import classify
    from terrain_ssl.replay.runner import ReplayOptions, run_replay
    from terrain_ssl.ros.labeler_node import RoughnessLabelerNode
    from terrain_ssl.sim.bag import simulate_bag

    bag = simulate_bag(tmp_path / 'drive', duration_s=20.0, seed=2, speed='2:6')
    out = tmp_path / 'calibration'
    assert cli_main(['calibrate', str(bag), '--out', str(out)]) == 0
    capsys.readouterr()
    values = labeler_values(out / 'params.yaml')
    record = run_replay(ReplayOptions(bag=str(bag), config=str(out / 'params.yaml'),
                                      progress=False, processes=1))
    roughness = np.asarray(record.samples['roughness'])
    classes = np.asarray(record.samples['roughness_class'])
    assert roughness.shape[0] > 100
    assert np.array_equal(classes, classify(roughness, values['label.moderate_threshold'],
                                            values['label.rough_threshold']))
    assert not np.array_equal(classes, classify(roughness, 0.1, 0.3))  # not the defaults
    import rclpy
    from rclpy.context import Context

    context = Context()  # the node reads the same file through --params-file
    rclpy.init(args=['node', '--ros-args', '--params-file', str(out / 'params.yaml')],
               context=context)
    try:
        node = RoughnessLabelerNode(context=context)
        config = node.labeler.config
        assert config.label_floor == pytest.approx(values['label.floor'])
        assert config.label_speed_exponent == pytest.approx(values['label.speed_exponent'])
        assert config.label_rough_threshold == pytest.approx(values['label.rough_threshold'])
        node.destroy_node()
    finally:
        context.try_shutdown()


def test_a_drive_that_never_moves_is_too_slow():
    from terrain_ssl.core.calibration import drive_windows

    rng = np.random.default_rng(0)
    imu_t = np.arange(3000, dtype=np.int64) * 10_000_000          # 30 s at 100 Hz
    accel = np.column_stack([rng.normal(0, 0.05, (3000, 2)), 9.81 + rng.normal(0, 0.05, 3000)])
    odom_t = np.arange(600, dtype=np.int64) * 50_000_000           # 30 s at 20 Hz
    crawl = np.full(600, 0.01)                                     # m/s: wheels barely turning
    windows = drive_windows('parked', imu_t, accel, odom_t, crawl)
    assert windows.problem == 'too slow (never moved)'
    assert windows.speed.shape[0] > 0 and np.all(windows.speed < 0.02)  # standstill windows
    moving = drive_windows('moving', imu_t, accel, odom_t, np.full(600, 1.5))
    assert moving.problem == '' and moving.moving.sum() >= 3
