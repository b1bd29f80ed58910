"""roughness_labeler node: real DDS in and out, live parameters, bad input, simulated bags.

The bag tests drive the node's own subscription callbacks with messages read by rosbags and
deserialised by rclpy (as replay does), and score the labels against the simulator's truth.
"""

import math
import os
from dataclasses import replace

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.serialization import deserialize_message
from scipy.stats import spearmanr
from sensor_msgs.msg import Imu, PointCloud2, PointField

from conftest import spin_until
from test_labeler_core import synthetic_drive
from terrain_ssl.core.patches import FEATURE_NAMES
from terrain_ssl.ros.qos import RELIABLE_QOS, SENSOR_QOS
from terrain_ssl.ros.conversions import (ns_to_stamp, pointcloud2_to_array,
                                         xyz_fields_to_pointcloud2)
from terrain_ssl.ros.labeler_node import RoughnessLabelerNode

pytestmark = pytest.mark.ros

S = 1_000_000_000
LABELED_FIELDS = ('x', 'y', 'z') + FEATURE_NAMES + (
    'roughness', 'roughness_class', 'shock', 'speed', 'seen_to_cross_s')


# -- messages ----------------------------------------------------------------------------------

def imu_msg(t_ns, accel, quat=None):
    msg = Imu()
    msg.header.stamp = ns_to_stamp(t_ns)
    msg.header.frame_id = 'imu_link'
    msg.linear_acceleration.x, msg.linear_acceleration.y, msg.linear_acceleration.z = \
        (float(v) for v in accel)
    if quat is None:
        msg.orientation_covariance[0] = -1.0
    else:
        o = msg.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in quat)
    return msg


def odom_msg(t_ns, position, quat, velocity):
    msg = Odometry()
    msg.header.stamp = ns_to_stamp(t_ns)
    msg.header.frame_id = 'odom'
    msg.child_frame_id = 'base_link'
    p = msg.pose.pose.position
    p.x, p.y, p.z = (float(v) for v in position)
    o = msg.pose.pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in quat)
    msg.twist.twist.linear.x, msg.twist.twist.linear.y, msg.twist.twist.linear.z = \
        (float(v) for v in velocity)
    return msg


def scan_msg(t_ns, points):
    return xyz_fields_to_pointcloud2({'x': points[:, 0], 'y': points[:, 1], 'z': points[:, 2]},
                                     'lidar_link', t_ns)


def to_message(event):
    kind, t_ns, *payload = event
    if kind == 'imu':
        return 'imu', imu_msg(t_ns, *payload)
    if kind == 'odom':
        return 'odom', odom_msg(t_ns, *payload)
    return 'points', scan_msg(t_ns, payload[0])


def parameter(name, value):
    if isinstance(value, float):
        return Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE,
                                                         double_value=value))
    raise TypeError(value)


# -- DDS ---------------------------------------------------------------------------------------

def test_over_dds_labels_flow_and_class_thresholds_change_live(ros_context):
    from rclpy.node import Node
    from rclpy.parameter import Parameter as NodeParameter

    # The synthetic drive labels ~1.5 on smooth and ~9 on rough ground: classes split at 2 / 5.
    # A namespace of its own: another run on the same ROS domain cannot mix its labels in.
    namespace = f'/labeler_test_{os.getpid()}'
    labeler = RoughnessLabelerNode(context=ros_context, namespace=namespace, parameter_overrides=[
        NodeParameter('label.moderate_threshold', value=2.0),
        NodeParameter('label.rough_threshold', value=5.0)])
    peer = Node('labeler_test_peer', context=ros_context, namespace=namespace)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(labeler)
    executor.add_node(peer)
    try:
        received = {'n': 0}
        for subscription in labeler.subscriptions:  # count arrivals to pace the publisher
            original = subscription.callback

            def counted(msg, original=original):
                received['n'] += 1
                original(msg)
            subscription.callback = counted
        publishers = {'imu': peer.create_publisher(Imu, 'imu/data', SENSOR_QOS),
                      'odom': peer.create_publisher(Odometry, 'odom', SENSOR_QOS),
                      'points': peer.create_publisher(PointCloud2, 'points', SENSOR_QOS)}
        labeled, diagnostics = [], []
        peer.create_subscription(PointCloud2, 'terrain_ssl/labeled_patches', labeled.append,
                                 RELIABLE_QOS)
        peer.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
        assert spin_until(executor, lambda: all(
            p.get_subscription_count() > 0 for p in publishers.values())
            and labeler.labeled_outlet.publisher.get_subscription_count() > 0, 10.0)

        def play(events):
            for event in events:
                topic, msg = to_message(event)
                target = received['n'] + 1
                publishers[topic].publish(msg)
                # Best-effort sensor QoS drops what a slow reader misses: wait for each one.
                assert spin_until(executor, lambda: received['n'] >= target, 5.0), topic

        drive = synthetic_drive(duration_s=10.0, start_s=22.0)  # crosses the rough stretch
        play([e for e in drive if e[1] < 107 * S])  # into the smooth ground after it
        # Every label published so far has arrived (none still in flight when the thresholds
        # change below).
        published = labeler.labeled_outlet
        assert spin_until(executor, lambda: len(labeled) == published.published > 0, 10.0)
        first = pointcloud2_to_array(labeled[-1])
        assert first.dtype.names == LABELED_FIELDS
        assert labeled[-1].header.frame_id == 'odom'
        classes_before = np.concatenate(
            [pointcloud2_to_array(m)['roughness_class'] for m in labeled])
        assert len(set(classes_before.tolist())) >= 2  # not all rough yet

        client = peer.create_client(SetParameters,
                                    labeler.get_fully_qualified_name() + '/set_parameters')
        assert client.wait_for_service(timeout_sec=5.0)

        def set_parameters(*parameters):
            future = client.call_async(SetParameters.Request(parameters=list(parameters)))
            assert spin_until(executor, future.done, 5.0)
            return future.result().results

        results = set_parameters(parameter('label.moderate_threshold', 1e-6),
                                 parameter('label.rough_threshold', 2e-6))
        assert all(result.successful for result in results)
        n_before = len(labeled)
        play([e for e in drive if e[1] >= 107 * S])
        assert spin_until(executor, lambda: len(labeled) == published.published > n_before,
                          10.0)
        classes_after = np.concatenate(
            [pointcloud2_to_array(m)['roughness_class'] for m in labeled[n_before:]])
        assert (classes_after == 2.0).all()

        # Invalid: out of range, and moderate above rough. Refused with a reason; value kept.
        refused = set_parameters(parameter('label.rough_threshold', -1.0))
        refused += set_parameters(parameter('label.moderate_threshold', 5.0))
        assert not any(result.successful for result in refused)
        assert 'range' in refused[0].reason and 'moderate' in refused[1].reason
        assert labeler.params.values['label.moderate_threshold'] == 1e-6
        assert labeler.get_parameter('label.rough_threshold').value == 2e-6
        assert labeler.labeler.config.label_rough_threshold == 2e-6

        # /diagnostics: our status with labels emitted (timer on the wall clock here).
        def ours():
            return [status for message in diagnostics for status in message.status
                    if status.hardware_id == labeler.get_fully_qualified_name()]
        assert spin_until(executor, lambda: len(ours()) > 0, 5.0)
        values = {kv.key: kv.value for kv in ours()[-1].values}
        assert int(values['labels_emitted']) > 0
        assert float(values['imu_rate_measured_hz']) == pytest.approx(200.0, rel=0.01)
    finally:
        executor.shutdown()
        labeler.destroy_node()
        peer.destroy_node()


def test_bad_input_is_counted_in_diagnostics(ros_context):
    node = RoughnessLabelerNode(context=ros_context)
    try:
        drive = synthetic_drive(duration_s=3.0)
        for event in drive:
            topic, msg = to_message(event)
            {'imu': node.on_imu, 'odom': node.on_odometry, 'points': node.on_points}[topic](msg)
        t_ns = drive[-1][1] + S // 100
        node.on_imu(imu_msg(t_ns, [math.nan, 0.0, 9.8]))
        node.on_imu(imu_msg(t_ns, [math.inf, 0.0, 9.8]))
        node.on_points(scan_msg(t_ns, np.zeros((0, 3))))                      # empty
        node.on_points(scan_msg(t_ns + 1, np.full((50, 3), np.nan)))           # all NaN
        no_xyz = xyz_fields_to_pointcloud2({'range': np.ones(10)}, 'lidar_link', t_ns)
        node.on_points(no_xyz)                                                 # no x/y/z fields
        broken = scan_msg(t_ns, np.ones((10, 3)))
        broken.fields = list(broken.fields) + [PointField(name='i', offset=100, datatype=7,
                                                          count=1)]
        node.on_points(broken)                                                 # field past end
        node.on_points(scan_msg(t_ns + 10 * S, np.ones((100, 3))))             # no odometry then
        node.on_imu(imu_msg(t_ns + S // 2, [0.0, 0.0, 9.8]))                   # IMU gap
        node.on_imu(imu_msg(t_ns - 50 * S, [0.0, 0.0, 9.8]))                   # out of line
        for step in range(1, 5):                                               # bag loops: reset
            node.on_imu(imu_msg(t_ns - 50 * S + step * S // 100, [0.0, 0.0, 9.8]))
        level, message, values = node.collect_diagnostics()
        assert values['rejected_nonfinite_imu'] == 2
        assert values['rejected_empty_cloud'] == 2
        assert values['rejected_missing_fields'] == 1
        assert values['rejected_malformed_cloud'] == 1
        assert values['rejected_odom_missing'] >= 1
        assert values['rejected_imu_gap'] == 1
        assert values['rejected_time_backwards'] == 1 and values['resets'] == 1
        assert values['rejected_stamp_out_of_line'] == 4  # held until the jump was believed
        assert values['points_nonfinite'] == 50
        assert len(node.labeler.cells) == 0  # the reset forgot the map
    finally:
        node.destroy_node()


# -- simulated bags ----------------------------------------------------------------------------

def label_bag(node, bag_dir):
    """Play a bag's inputs into the node's callbacks in recorded order; returns label clouds."""
    from rosbags.rosbag2 import Reader

    types = {'/imu/data': (Imu, node.on_imu), '/odom': (Odometry, node.on_odometry),
             '/points': (PointCloud2, node.on_points)}
    clouds = []
    node.labeled_outlet.connect(clouds.append)
    with Reader(bag_dir) as reader:
        connections = [c for c in reader.connections if c.topic in types]
        for connection, _, raw in reader.messages(connections=connections):
            msg_type, callback = types[connection.topic]
            callback(deserialize_message(raw, msg_type))
    if not clouds:
        return None
    return np.concatenate([pointcloud2_to_array(cloud) for cloud in clouds])


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    from terrain_ssl.sim.bag import simulate_bag
    from terrain_ssl.sim.world import WorldConfig

    root = tmp_path_factory.mktemp('labeler_bags')
    # Half the VLP-16's columns keeps the bags small and quick to simulate; cells still fill up.
    base = WorldConfig(lidar_overrides=(('columns', 900),))
    slow = replace(base, initial_speed_mps=3.0)
    fast = replace(base, initial_speed_mps=6.0)
    # Same terrain (seed) and stretch of route (from 100 m: classes B -> C -> D) for 3 and 6 m/s.
    made = {
        'varying': simulate_bag(root / 'varying', duration_s=28.0, seed=1, speed='3:7:14',
                                start_s_m=0.0, world_config=base),
        'slow': simulate_bag(root / 'slow', duration_s=14.0, seed=1, speed='3', start_s_m=100.0,
                             world_config=slow),
        'fast': simulate_bag(root / 'fast', duration_s=7.0, seed=1, speed='6', start_s_m=100.0,
                             world_config=fast),
        'slow_y_up': simulate_bag(root / 'slow_y_up', duration_s=14.0, seed=1, speed='3',
                                  start_s_m=100.0, imu_mount='y_up', world_config=slow),
    }
    return made


@pytest.fixture(scope='module')
def labels(bags):
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    try:
        result = {}
        for name, path in bags.items():
            node = RoughnessLabelerNode(context=context)
            result[name] = label_bag(node, path)
            node.destroy_node()
        return result
    finally:
        context.try_shutdown()


def by_cell(labels, size=0.5):
    keys = (np.floor(labels['x'] / size).astype(np.int64) * 1_000_003
            + np.floor(labels['y'] / size).astype(np.int64))
    return keys


def test_labels_rank_like_the_true_roughness(bags, labels):
    from terrain_ssl.sim.ground_truth import GroundTruth

    truth = GroundTruth.load(bags['varying'])
    got = labels['varying']
    true_roughness = truth.roughness_at(np.column_stack([got['x'], got['y']]))
    known = np.isfinite(true_roughness)
    rho = spearmanr(got['roughness'][known], true_roughness[known]).statistic
    print(f'\nSpearman(label, true cell roughness) = {rho:.3f} over {known.sum()} labels '
          f'(28 s drive at 3-7 m/s, classes A-D)')
    assert known.sum() > 400
    # Measured 0.868 (a seeded simulation: it repeats); the shock band cut to 4 Hz gives 0.77.
    assert rho >= 0.78
    assert got['speed'].min() >= 1.0  # label.min_speed


def test_speed_normalisation_3_vs_6_mps(labels):
    slow, fast = labels['slow'], labels['fast']
    common, i_slow, i_fast = np.intersect1d(by_cell(slow), by_cell(fast), return_indices=True)
    assert common.shape[0] > 150
    ratio = fast['roughness'][i_fast].mean() / slow['roughness'][i_slow].mean()
    shock_ratio = fast['shock'][i_fast].mean() / slow['shock'][i_slow].mean()
    print(f'\nmean roughness 6 m/s / 3 m/s over {common.shape[0]} cells = {ratio:.3f} '
          f'(shock ratio {shock_ratio:.2f})')
    assert shock_ratio > 1.5  # the shock itself does grow with speed (measured 1.75)
    # Measured 0.872: the shock grows a little slower than the speed here (1.75x for 2x).
    # Within 0.07 below that; above, up to 1.05 (closer to 1 is no regression).
    assert 0.80 <= ratio <= 1.05


def test_imu_mounted_with_gravity_on_plus_y_gives_the_same_labels(labels):
    upright, rotated = labels['slow'], labels['slow_y_up']
    common, i_up, i_rot = np.intersect1d(by_cell(upright), by_cell(rotated), return_indices=True)
    assert common.shape[0] >= 0.9 * upright.shape[0]
    relative = np.abs(rotated['roughness'][i_rot] / upright['roughness'][i_up] - 1.0)
    print(f'\ny_up vs z_up IMU: median relative difference {np.median(relative):.3f}')
    assert np.median(relative) < 0.1
    assert rotated['roughness'][i_rot].mean() == pytest.approx(
        upright['roughness'][i_up].mean(), rel=0.05)


def test_label_speed_exponent_parameter_reaches_the_labeler(ros_context):
    from rclpy.parameter import Parameter as RclpyParameter

    node = RoughnessLabelerNode(context=ros_context, parameter_overrides=[
        RclpyParameter('label.speed_exponent', value=0.5)])
    try:
        assert node.labeler.config.label_speed_exponent == 0.5
        result = node.set_parameters([RclpyParameter('label.speed_exponent', value=1.5)])[0]
        assert result.successful and node.labeler.config.label_speed_exponent == 1.5
        refused = node.set_parameters([RclpyParameter('label.speed_exponent', value=-1.0)])[0]
        assert not refused.successful and node.labeler.config.label_speed_exponent == 1.5
    finally:
        node.destroy_node()
