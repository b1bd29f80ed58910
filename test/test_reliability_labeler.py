"""roughness_labeler under abuse: fuzzed clouds, IMU bursts, odometry jumps, loops, 10x rates.

The node must keep running (no callback raises), count every rejected input by reason in its
`rejects` and on /diagnostics, keep its buffers bounded, and go on labeling afterwards.
"""

import time

import numpy as np
import pytest
import rclpy
from conftest import spin_until
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import Imu, PointCloud2

import fuzz_messages as fm
from terrain_ssl.ros.qos import RELIABLE_QOS, SENSOR_QOS

pytestmark = pytest.mark.ros

S = fm.S
MS = 1_000_000


def make_labeler(context, **overrides):
    from terrain_ssl.ros.labeler_node import RoughnessLabelerNode

    params = {'diagnostics_period_s': 0.2}
    params.update(overrides)
    return RoughnessLabelerNode(context=context, parameter_overrides=[
        Parameter(name, value=value) for name, value in params.items()])


def play(node, messages):
    callbacks = fm.callbacks_by_topic(node)
    for topic, msg in messages:
        callbacks[topic](msg)


def count_labels(node):
    labels = []
    node.labeled_outlet.connect(lambda msg: labels.append(msg.width))
    return labels


def test_fuzzed_clouds_are_counted_and_labeling_goes_on(ros_context):
    rng = np.random.default_rng(11)
    labeler = make_labeler(ros_context)
    labels = count_labels(labeler)
    callbacks = fm.callbacks_by_topic(labeler)
    drive = fm.drive_messages(8.0, seed=1)
    scan_stamps = [msg.header.stamp for topic, msg in drive if topic == 'points']
    bad = fm.bad_clouds(rng)
    odd = fm.odd_but_valid_clouds(rng)
    injected = iter(bad + odd)
    n_scans = 0
    for topic, msg in drive:
        callbacks[topic](msg)
        if topic == 'points':
            n_scans += 1
            item = next(injected, None) if n_scans > 5 else None  # after odometry exists
            if item is not None:
                stamp_ns = msg.header.stamp.sec * S + msg.header.stamp.nanosec + MS
                cloud = item[1]
                cloud.header.stamp = fm.ns_to_stamp(stamp_ns)
                callbacks['points'](cloud)
    assert next(injected, None) is None, 'drive too short for all injected clouds'
    counts = labeler.rejects.counts
    stats = labeler.labeler.stats
    # Every broken layout is refused, not interpreted. (random_bytes has a sound layout: its
    # values are garbage, counted as non-finite points or dropped by range below.)
    broken = [name for name, _ in bad if name != 'random_bytes']
    assert counts.get('malformed_cloud', 0) + counts.get('missing_fields', 0) == len(broken)
    assert counts.get('missing_fields', 0) == 2  # missing_z, no_fields
    # Empty, organised-empty, all-NaN and all-Inf clouds: nothing to use.
    assert counts.get('empty_cloud', 0) >= 4
    assert stats['points_nonfinite'] >= 2 * 500 + 250
    # The drive's own scans all went through; labels kept coming.
    assert stats['scans'] >= len(scan_stamps) - 1
    assert sum(labels) > 50
    level, message, values = fm.diagnostic_values(labeler)
    assert int(values['rejected']) == labeler.rejects.total
    for reason, count in counts.items():
        assert int(values[f'rejected_{reason}']) == count


def test_huge_cloud_is_processed(ros_context):
    labeler = make_labeler(ros_context)
    lookahead = []
    labeler.lookahead_outlet.connect(lookahead.append)
    play(labeler, fm.drive_messages(1.0))
    t_ns = fm.T0_NS + int(1.01 * S)
    fm.callbacks_by_topic(labeler)['odom'](fm.odom_msg(t_ns, (4.04, 0, 0), velocity=(4, 0, 0)))
    n_before = len(lookahead)
    start = time.perf_counter()
    fm.callbacks_by_topic(labeler)['points'](fm.huge_cloud(500_000, t_ns + MS))
    elapsed = time.perf_counter() - start
    assert len(lookahead) == n_before + 1 and lookahead[-1].width > 100
    assert elapsed < 10.0  # generous: a huge scan is slow, never stuck
    assert len(labeler.labeler.cells) <= labeler.params.values['map.max_cells']


def test_imu_bursts_nan_and_odometry_jumps(ros_context):
    labeler = make_labeler(ros_context, **{'map.max_cells': 3000})
    labels = count_labels(labeler)
    callbacks = fm.callbacks_by_topic(labeler)
    drive = fm.drive_messages(8.0, seed=2)
    counts = labeler.rejects.counts
    half = len(drive) // 2
    play(labeler, drive[:half])
    last_imu = next(msg for topic, msg in reversed(drive[:half]) if topic == 'imu/data')
    stamp_ns = last_imu.header.stamp.sec * S + last_imu.header.stamp.nanosec
    # A zero-length burst: 50 IMU samples with one stamp (a driver flushing its FIFO).
    for _ in range(50):
        callbacks['imu/data'](fm.imu_msg(stamp_ns + MS // 2, (0.0, 0.0, 9.9)))
    assert counts['out_of_order'] == 49
    # NaN / Inf IMU and odometry, a zero quaternion.
    callbacks['imu/data'](fm.imu_msg(stamp_ns + MS, (np.nan, 0.0, 9.8)))
    callbacks['imu/data'](fm.imu_msg(stamp_ns + MS, (0.0, np.inf, 9.8)))
    callbacks['odom'](fm.odom_msg(stamp_ns + MS, (np.nan, 0, 0)))
    callbacks['odom'](fm.odom_msg(stamp_ns + MS, quat=(0, 0, 0, 0)))
    callbacks['odom'](fm.odom_msg(stamp_ns + MS, velocity=(np.inf, 0, 0)))
    assert counts['nonfinite_imu'] == 2 and counts['nonfinite_odometry'] == 3
    # An odometry jump (relocalisation): 5 km sideways for 0.1 s, then back.
    jumped = []
    for topic, msg in drive[half:]:
        if topic == 'odom' and len(jumped) < 5:
            msg.pose.pose.position.y += 5000.0
            jumped.append(msg)
        callbacks[topic](msg)
    assert len(jumped) == 5
    assert len(labeler.labeler.cells) <= 3000
    assert labeler.labeler.stats['labels'] > 0 and sum(labels) > 0
    _, _, values = fm.diagnostic_values(labeler)
    assert int(values['rejected_out_of_order']) >= 49
    assert int(values['rejected_nonfinite_imu']) == 2


def test_stamps_backwards_and_a_looping_bag_reset_and_relabel(ros_context):
    labeler = make_labeler(ros_context)
    labels = count_labels(labeler)
    drive = fm.drive_messages(6.0, seed=3)
    play(labeler, drive)
    first_loop = sum(labels)
    assert first_loop > 0
    callbacks = fm.callbacks_by_topic(labeler)
    # Small steps back are out of order (dropped); a big step back is a new run (reset).
    last_imu = next(msg for topic, msg in reversed(drive) if topic == 'imu/data')
    end_ns = last_imu.header.stamp.sec * S + last_imu.header.stamp.nanosec
    callbacks['imu/data'](fm.imu_msg(end_ns - 10 * MS))
    assert labeler.rejects.counts['out_of_order'] >= 1
    play(labeler, drive)  # the bag loops: same stamps again
    assert labeler.rejects.counts['time_backwards'] >= 1
    assert labeler.labeler.stats['resets'] >= 1
    second_loop = sum(labels) - first_loop
    assert second_loop >= 0.8 * first_loop  # labeling resumed after the reset
    _, _, values = fm.diagnostic_values(labeler)
    assert int(values['resets']) >= 1 and int(values['rejected_time_backwards']) >= 1


def test_over_dds_bad_input_on_diagnostics_and_a_10x_burst(ros_context):
    rng = np.random.default_rng(12)
    labeler = make_labeler(ros_context)
    peer = rclpy.create_node('labeler_reliability_peer', context=ros_context)
    publishers = {'imu/data': peer.create_publisher(Imu, 'imu/data', SENSOR_QOS),
                  'odom': peer.create_publisher(Odometry, 'odom', SENSOR_QOS),
                  'points': peer.create_publisher(PointCloud2, 'points', SENSOR_QOS)}
    labeled, diagnostics = [], []
    peer.create_subscription(PointCloud2, 'terrain_ssl/labeled_patches', labeled.append,
                             RELIABLE_QOS)
    peer.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(labeler)
    executor.add_node(peer)
    assert spin_until(executor, lambda: all(p.get_subscription_count() > 0
                                            for p in publishers.values()), 10.0)

    def latest_values():
        for array in reversed(diagnostics):
            for status in array.status:
                if status.name.startswith('roughness_labeler'):
                    return {kv.key: kv.value for kv in status.values}
        return {}

    bad = [(name, cloud) for name, cloud in fm.bad_clouds(rng) if name != 'random_bytes']
    # Count what reaches the node's points callback (the executor looks it up per message).
    arrived = []
    subscription = next(sub for sub in labeler.subscriptions if sub.topic_name == '/points')
    on_points = subscription.callback

    def counting(msg):
        arrived.append(msg)
        on_points(msg)
    subscription.callback = counting

    def refused():
        return labeler.rejects.counts.get('malformed_cloud', 0) \
            + labeler.rejects.counts.get('missing_fields', 0)
    for count, (name, cloud) in enumerate(bad, start=1):
        # Best effort: a sample the transport drops is sent again (a late one then arrives
        # twice); every one that arrives must be refused.
        for _ in range(5):
            publishers['points'].publish(cloud)
            if spin_until(executor, lambda: len(arrived) >= count, 10.0):
                break
        assert len(arrived) >= count, name
    assert spin_until(executor, lambda: refused() == len(arrived) >= len(bad), 10.0), \
        (len(arrived), dict(labeler.rejects.counts))
    subscription.callback = on_points
    assert spin_until(executor, lambda: int(latest_values().get('rejected_malformed_cloud', 0))
                      + int(latest_values().get('rejected_missing_fields', 0))
                      == refused(), 10.0), latest_values()

    # 10x the normal rates (IMU 2 kHz, odometry 500 Hz, lidar 100 Hz) for 1.5 s of real time.
    burst = fm.drive_messages(1.5, rate_scale=10.0, points_per_scan=2000, seed=4,
                              t0_ns=fm.T0_NS + 100 * S)
    with fm.spinning(executor) as errors:
        start = time.monotonic()
        stamps = np.array([msg.header.stamp.sec * S + msg.header.stamp.nanosec
                           for _, msg in burst])
        offsets = (stamps - stamps[0]) / S
        for offset, (topic, msg) in zip(offsets, burst):
            delay = start + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            publishers[topic].publish(msg)
    assert not errors, errors
    stats = labeler.labeler.stats
    # It kept up with a good part of it (best effort: the rest may be dropped by design).
    assert spin_until(executor, lambda: stats['imu'] > 300 and stats['scans'] > 5, 30.0), stats
    # Afterwards the node is not stuck: a normal stream is labeled again.
    n_labeled = len(labeled)
    for topic, msg in fm.drive_messages(6.0, seed=5, t0_ns=fm.T0_NS + 200 * S):
        publishers[topic].publish(msg)
        executor.spin_once(timeout_sec=0.0)
    assert spin_until(executor, lambda: len(labeled) > n_labeled, 10.0)
