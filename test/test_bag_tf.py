"""Extrinsics from a bag's /tf_static: a replay uses them with no flag (issue 18)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from terrain_ssl.cli import main as cli_main
from terrain_ssl.replay.bag_tf import (bag_extrinsic_parameters, lookup, read_bag_frames,
                                       xyz_rpy)

# A mount unlike the labeler's defaults (0.3, 0, 1.6, level): a replay that ignored the bag's
# TF would move every point by ~0.5 m and tilt it.
MOUNT_XYZ = (0.8, -0.2, 1.9)
MOUNT_RPY = (0.0, 0.06, 0.1)


@pytest.fixture(scope='module')
def tf_bag(tmp_path_factory):
    from terrain_ssl.sim.bag import simulate_bag
    from terrain_ssl.sim.world import WorldConfig
    config = replace(WorldConfig(), lidar_translation_m=MOUNT_XYZ, lidar_rpy_rad=MOUNT_RPY)
    return simulate_bag(tmp_path_factory.mktemp('tf') / 'drive', duration_s=10.0, seed=5,
                        storage='mcap', speed='5', start_s_m=60.0, world_config=config)


def _labels(out) -> np.ndarray:
    return np.genfromtxt(Path(out) / 'labels.csv', delimiter=',', names=True)


def test_the_bag_tf_gives_the_simulated_mount(tf_bag):
    frames = read_bag_frames(tf_bag)
    assert frames.cloud_frame == 'lidar_link'
    values = xyz_rpy(lookup(frames.edges, 'base_link', 'lidar_link'))
    np.testing.assert_allclose(values, MOUNT_XYZ + MOUNT_RPY, atol=1e-9)
    overrides, line = bag_extrinsic_parameters(tf_bag, [])
    assert len(overrides) == 6 and '/tf_static' in line and 'lidar_link' in line
    # An explicit extrinsic wins, and says so.
    overrides, line = bag_extrinsic_parameters(tf_bag, ['lidar.z:=1.0'])
    assert overrides == [] and 'given parameters' in line


def test_lookup_composes_a_chain_and_inverts():
    from terrain_ssl.core.geometry import make_transform, quat_from_rpy
    a = make_transform([1.0, 0.0, 0.5], quat_from_rpy(0.0, 0.0, 0.3))
    b = make_transform([0.0, 0.2, 0.1], quat_from_rpy(0.1, 0.0, 0.0))
    edges = {('base_link', 'mount'): a, ('mount', 'lidar'): b, ('base_link', 'imu'): np.eye(4)}
    np.testing.assert_allclose(lookup(edges, 'base_link', 'lidar'), a @ b, atol=1e-12)
    np.testing.assert_allclose(lookup(edges, 'imu', 'lidar'), a @ b, atol=1e-12)
    np.testing.assert_allclose(lookup(edges, 'lidar', 'base_link'), np.linalg.inv(a @ b),
                               atol=1e-12)
    assert lookup(edges, 'base_link', 'camera') is None


def test_replay_uses_tf_static_with_no_flag_like_the_true_extrinsic_by_hand(tf_bag, tmp_path,
                                                                           capsys):
    common = ['--no-progress', '--processes', '1']
    assert cli_main(['replay', str(tf_bag), '--out', str(tmp_path / 'tf'), *common]) == 0
    assert 'from the bag\'s /tf_static' in capsys.readouterr().err
    by_hand = [str(v) for v in MOUNT_XYZ + MOUNT_RPY]
    assert cli_main(['replay', str(tf_bag), '--out', str(tmp_path / 'hand'), *common,
                     '--lidar-extrinsic', *by_hand]) == 0
    assert 'given parameters' in capsys.readouterr().err
    wrong = ['0.3', '0', '1.6', '0', '0', '0']  # the labeler's defaults
    assert cli_main(['replay', str(tf_bag), '--out', str(tmp_path / 'wrong'), *common,
                     '--lidar-extrinsic', *wrong]) == 0
    tf, hand, wrong = (_labels(tmp_path / name) for name in ('tf', 'hand', 'wrong'))
    assert len(tf) > 20
    assert tf.shape == hand.shape
    for name in tf.dtype.names:
        np.testing.assert_allclose(tf[name], hand[name], rtol=1e-6, atol=1e-6, err_msg=name)
    # The test can tell: the defaults give other labels on this bag.
    assert tf.shape != wrong.shape or not np.allclose(tf['x'], wrong['x'], atol=1e-3)
