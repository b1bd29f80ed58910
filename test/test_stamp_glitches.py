"""Stamp glitches and bad odometry on a simulated drive cost no more than their own share.

A 30 s drive is simulated into a real rosbag2 (with its ground truth), read back, and fed to the
labeler three times: clean; with 2% of the IMU messages stamped 3 s in the past (a driver
hiccup); with 2% of the odometry messages carrying an infinite position or a zero quaternion.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from terrain_ssl.core.labeler import Labeler, LabelerConfig

S = 1_000_000_000


@pytest.fixture(scope='module')
def drive(tmp_path_factory):
    """(events in bag order, ground truth, (labels, Spearman) of the clean drive) of a 30 s
    simulated drive at 3-7 m/s."""
    from terrain_ssl.replay.bag import Bag, ReadCounts
    from terrain_ssl.ros.conversions import pointcloud2_xyz_view, stamp_to_ns
    from terrain_ssl.sim.bag import simulate_bag
    from terrain_ssl.sim.ground_truth import GroundTruth

    bag_dir = simulate_bag(tmp_path_factory.mktemp('glitches') / 'drive', duration_s=30.0,
                           seed=5, speed='3:7')
    events = []
    with Bag(bag_dir) as bag:
        topics = bag.resolve_inputs()
        for item in bag.messages(list(topics.values()), ReadCounts()):
            msg = item.message
            t_ns = stamp_to_ns(msg.header.stamp)
            if item.topic == topics['imu']:
                a, q = msg.linear_acceleration, msg.orientation
                events.append(('imu', t_ns, (a.x, a.y, a.z), (q.x, q.y, q.z, q.w)))
            elif item.topic == topics['odom']:
                pose, twist = msg.pose.pose, msg.twist.twist
                p, q, v, w = pose.position, pose.orientation, twist.linear, twist.angular
                events.append(('odom', t_ns, (p.x, p.y, p.z), (q.x, q.y, q.z, q.w),
                               (v.x, v.y, v.z), (w.x, w.y, w.z)))
            else:
                events.append(('scan', t_ns, np.array(pointcloud2_xyz_view(msg))))
    truth = GroundTruth.load(bag_dir)
    return events, truth, label_drive(events, truth)[:2]


def label_drive(events, truth, imu_glitch=0.0, bad_odometry=0.0, seed=0):
    """Feed the drive to a Labeler, glitching the given shares of messages: (labels, Spearman
    of labels vs true roughness, labeler, odometry messages made bad)."""
    rng = np.random.default_rng(seed)
    labeler = Labeler(LabelerConfig())
    corrupted = 0  # odometry messages made bad here
    batches = []
    for event in events:
        if event[0] == 'imu':
            t_ns = event[1] - 3 * S if rng.random() < imu_glitch else event[1]
            labeler.add_imu(t_ns, event[2], event[3])
        elif event[0] == 'odom':
            _, t_ns, position, quat, linear, angular = event
            if rng.random() < bad_odometry:
                corrupted += 1
                if rng.random() < 0.5:
                    position = (math.inf, position[1], position[2])
                else:
                    quat = (0.0, 0.0, 0.0, 0.0)
            labeler.add_odometry(t_ns, position, quat, linear, angular)
        else:
            labeler.add_scan(event[1], event[2])
        if labeler.has_labels:
            batches.append(labeler.pop_labels())
    labeler.flush_labels()
    if labeler.has_labels:
        batches.append(labeler.pop_labels())
    if not batches:
        return 0, float('nan'), labeler, corrupted
    centres = np.concatenate([batch.centres for batch in batches])
    roughness = np.concatenate([batch.roughness for batch in batches])
    true = truth.roughness_at(centres[:, :2])
    inside = np.isfinite(true)
    rho = float(spearmanr(roughness[inside], true[inside])[0])
    return roughness.shape[0], rho, labeler, corrupted


def test_imu_stamps_out_of_line_keep_the_labels(drive):
    events, truth, (clean, clean_rho) = drive
    assert clean > 500 and clean_rho > 0.8
    labels, rho, labeler, _ = label_drive(events, truth, imu_glitch=0.02)
    assert labels >= 0.95 * clean
    assert rho == pytest.approx(clean_rho, abs=0.02)
    assert labeler.stats['resets'] == 0
    imu_messages = sum(1 for event in events if event[0] == 'imu')
    # Every glitched stamp dropped and counted (2% +- 4 sigma of the binomial).
    expected, sigma = 0.02 * imu_messages, math.sqrt(0.02 * 0.98 * imu_messages)
    assert abs(labeler.rejects['stamp_out_of_line'] - expected) < 4 * sigma


def test_bad_odometry_costs_no_more_than_its_share(drive):
    events, truth, (clean, clean_rho) = drive
    labels, rho, labeler, corrupted = label_drive(events, truth, bad_odometry=0.02)
    assert abs(labels - clean) <= 0.03 * clean
    assert rho == pytest.approx(clean_rho, abs=0.03 * clean_rho)
    # Every bad message rejected (an accepted infinite position sends the footprint away and
    # back: every cell under it completes a crossing early, and the labels get worse).
    assert labeler.rejects['nonfinite_odometry'] == corrupted > 0
    assert rho == pytest.approx(clean_rho, abs=0.005)


def test_a_looping_drive_still_resets(drive):
    events, truth, (first, _) = drive
    labels, _, labeler, _ = label_drive(events + events, truth)
    assert labeler.stats['resets'] == 1 and labeler.rejects['time_backwards'] == 1
    assert labels >= 1.9 * first  # the second lap labeled again after the reset
