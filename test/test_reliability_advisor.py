"""speed_advisor under abuse: fuzzed maps, odometry jumps and NaN, huge maps, 10x rates.

Whatever arrives, the node keeps publishing a finite speed limit inside [v_min, v_max], counts
every rejected input by reason in `rejects` and on /diagnostics, and never raises.
"""

import math
import time

import numpy as np
import pytest
import rclpy
from conftest import spin_until
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Float32

import fuzz_messages as fm
from terrain_ssl.ros.qos import RELIABLE_QOS, SENSOR_QOS

pytestmark = pytest.mark.ros

MAP = 'terrain_ssl/roughness_map'
MAP_FIELDS = ['roughness', 'uncertainty']


def make_advisor(context, **overrides):
    from terrain_ssl.ros.advisor_node import SpeedAdvisorNode

    params = {'diagnostics_period_s': 0.2, 'cap_cmd_vel': True}
    params.update(overrides)
    return SpeedAdvisorNode(context=context, parameter_overrides=[
        Parameter(name, value=value) for name, value in params.items()])


def assert_sane_limit(advisor, after_bad_input=False):
    """The limit now is finite and within [v_min, v_max]; after bad input the advisor fails
    closed: at most the cautious speed."""
    limit = advisor.on_timer()
    values = advisor.params.values
    assert math.isfinite(limit)
    assert values['v_min_mps'] - 1e-9 <= limit <= values['v_max_mps'] + 1e-9
    if after_bad_input:
        assert limit <= values['cautious_speed_mps'] + 1e-9, advisor.advisor.last_advice
    return limit


def test_fuzzed_maps_and_odometry_are_counted_and_the_limit_stays_sane(ros_context):
    rng = np.random.default_rng(21)
    advisor = make_advisor(ros_context)
    callbacks = fm.callbacks_by_topic(advisor)
    callbacks['odom'](fm.odom_msg(fm.T0_NS, velocity=(3.0, 0, 0)))
    callbacks[MAP](fm.map_cloud(rng, 2000))
    assert_sane_limit(advisor)

    bad = [(name, cloud) for name, cloud in fm.bad_clouds(rng, extra_fields=MAP_FIELDS)
           if name != 'x_count_3']  # see test_map_with_a_count_3_coordinate_is_rejected
    odd = fm.odd_but_valid_clouds(rng)  # x, y, z only: no roughness / uncertainty
    counts = advisor.rejects.counts
    for name, cloud in bad + odd:
        before = advisor.rejects.total
        callbacks[MAP](cloud)
        assert advisor.rejects.total == before + 1, name  # every one refused
        assert_sane_limit(advisor, after_bad_input=True)
    # random_bytes has a sound layout (refused for its frame, lidar_link, before its garbage
    # values are looked at); every other one for its layout or its fields.
    assert counts['malformed_map'] + counts['map_fields'] == len(bad) - 1 + len(odd)
    assert counts['map_fields'] == len(odd) + 2  # odd ones, plus missing_z, no_fields
    assert counts['map_frame'] == 1

    # A map with NaN / Inf or negative cells is refused as a whole, and counted.
    good = fm.map_cloud(rng, 400)
    for field, value in (('roughness', np.nan), ('uncertainty', np.inf), ('x', -np.inf),
                         ('roughness', -1.0)):
        callbacks[MAP](fm.poison(good, field, value))
        assert_sane_limit(advisor, after_bad_input=True)
    assert counts['map_cells_invalid'] == 4
    # A map in another frame than the odometry is refused.
    frame_before = counts.get('map_frame', 0)  # fuzzed clouds say lidar_link, too
    callbacks[MAP](fm.map_cloud(rng, 100, frame_id='map'))
    assert counts['map_frame'] == frame_before + 1

    # Bad odometry: NaN, Inf, a zero quaternion.
    n_before = counts.get('odometry_non_finite', 0)
    callbacks['odom'](fm.odom_msg(fm.T0_NS, (np.nan, 0, 0)))
    callbacks['odom'](fm.odom_msg(fm.T0_NS, velocity=(np.inf, 0, 0)))
    callbacks['odom'](fm.odom_msg(fm.T0_NS, quat=(0, 0, 0, 0)))
    assert counts['odometry_non_finite'] == n_before + 3
    assert_sane_limit(advisor, after_bad_input=True)
    # Odometry jumps (relocalisation) and stamps going backwards: the limit stays sane.
    for position, stamp in (((5000.0, -3000.0, 0.0), fm.T0_NS - 10**12),
                            ((0.0, 0.0, 0.0), fm.T0_NS), ((1e7, 1e7, 0.0), 0)):
        callbacks['odom'](fm.odom_msg(stamp, position, velocity=(6.0, 0, 0)))
        assert_sane_limit(advisor)

    # cmd_vel_in with NaN is not forwarded; a normal one is capped.
    forwarded = []
    advisor.cmd_vel_outlet.connect(forwarded.append)
    nan_twist = Twist()
    nan_twist.linear.x = float('nan')
    callbacks['cmd_vel_in'](nan_twist)
    assert counts['cmd_vel_non_finite'] == 1 and not forwarded
    fast = Twist()
    fast.linear.x = 1000.0
    callbacks['cmd_vel_in'](fast)
    assert len(forwarded) == 1 and forwarded[0].linear.x <= advisor.params.values['v_max_mps']

    level, message, values = fm.diagnostic_values(advisor)
    assert int(values['rejected']) == advisor.rejects.total
    for reason, count in counts.items():
        assert int(values[f'rejected_{reason}']) == count


def test_map_with_a_count_3_coordinate_is_rejected(ros_context):
    """A map whose x field has count 3 (a subarray per point) is malformed, not a crash."""
    rng = np.random.default_rng(22)
    advisor = make_advisor(ros_context)
    cloud = dict(fm.bad_clouds(rng, extra_fields=MAP_FIELDS))['x_count_3']
    fm.callbacks_by_topic(advisor)[MAP](cloud)
    assert advisor.rejects.total == 1
    assert_sane_limit(advisor, after_bad_input=True)


def test_huge_and_empty_maps(ros_context):
    rng = np.random.default_rng(23)
    advisor = make_advisor(ros_context)
    callbacks = fm.callbacks_by_topic(advisor)
    callbacks['odom'](fm.odom_msg(fm.T0_NS, velocity=(3.0, 0, 0)))
    start = time.perf_counter()
    callbacks[MAP](fm.map_cloud(rng, 500_000))
    assert_sane_limit(advisor)
    assert time.perf_counter() - start < 10.0
    assert len(advisor.advisor.map) <= advisor.params.values['max_map_cells']
    callbacks[MAP](fm.map_cloud(rng, 0))
    assert_sane_limit(advisor)


def test_over_dds_bad_maps_on_diagnostics_and_a_10x_burst(ros_context):
    rng = np.random.default_rng(24)
    advisor = make_advisor(ros_context)
    peer = rclpy.create_node('advisor_reliability_peer', context=ros_context)
    map_publisher = peer.create_publisher(PointCloud2, MAP, RELIABLE_QOS)
    odom_publisher = peer.create_publisher(Odometry, 'odom', SENSOR_QOS)
    limits, diagnostics = [], []
    peer.create_subscription(Float32, 'terrain_ssl/speed_limit',
                             lambda msg: limits.append((time.monotonic(), msg.data)),
                             RELIABLE_QOS)
    peer.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(advisor)
    executor.add_node(peer)
    assert spin_until(executor, lambda: map_publisher.get_subscription_count() > 0
                      and odom_publisher.get_subscription_count() > 0, 10.0)

    def latest_values():
        for array in reversed(diagnostics):
            for status in array.status:
                if status.name.startswith('speed_advisor'):
                    return {kv.key: kv.value for kv in status.values}
        return {}

    bad = [(name, cloud) for name, cloud in fm.bad_clouds(rng, extra_fields=MAP_FIELDS)
           if name != 'x_count_3']
    for _, cloud in bad:  # reliable: every one arrives, every one is refused
        map_publisher.publish(cloud)
        executor.spin_once(timeout_sec=0.01)
    assert spin_until(executor, lambda: int(latest_values().get('rejected', 0))
                      == len(bad), 30.0), latest_values()
    assert int(latest_values()['rejected_malformed_map']) \
        + int(latest_values()['rejected_map_fields']) == len(bad) - 1  # all but random_bytes

    # Maps normally come at 10 Hz and odometry at 50 Hz: send 1.5 s worth at 10x (a fixed
    # count, paced at no more than 10x: a loaded machine that publishes slower sends it all).
    with fm.spinning(executor) as errors:
        start = time.monotonic()
        for sent in range(750):
            t_ns = fm.T0_NS + sent * 2_000_000
            odom_publisher.publish(fm.odom_msg(t_ns, (sent * 0.01, 0, 0), velocity=(5.0, 0, 0)))
            if sent % 5 == 0:
                map_publisher.publish(fm.map_cloud(rng, 3000, t_ns))
            time.sleep(max(0.0, start + (sent + 1) / 500.0 - time.monotonic()))  # the rate
        burst_end = time.monotonic()
    assert not errors, errors
    # The limit kept coming through the burst, and keeps coming after it; the maps got
    # through (reliable, keep-last 10: a few may be overwritten while the node is busy).
    assert any(start <= stamp <= burst_end for stamp, _ in limits)
    after = len(limits)
    assert spin_until(executor, lambda: len(limits) >= after + 5, 30.0)
    assert spin_until(executor, lambda: advisor.maps_received >= 30, 30.0), \
        advisor.maps_received
    assert all(math.isfinite(value) for _, value in limits)


def test_plans_in_another_frame_or_with_nan_are_rejected_and_a_good_one_is_followed(ros_context):
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Path

    def plan(points, frame='odom'):
        msg = Path()
        msg.header.frame_id = frame
        for x, y in points:
            pose = PoseStamped()
            pose.pose.position.x, pose.pose.position.y = float(x), float(y)
            msg.poses.append(pose)
        return msg

    advisor = make_advisor(ros_context)
    try:
        callbacks = fm.callbacks_by_topic(advisor)
        callbacks['odom'](fm.odom_msg(fm.T0_NS))  # fixes the odom frame
        callbacks['plan'](plan([(0, 0), (10, 0)], frame='map'))
        callbacks['plan'](plan([(0, 0), (np.nan, 0)]))
        counts = advisor.rejects.counts
        assert counts['plan_frame'] == 1 and counts['plan_non_finite'] == 1
        assert advisor.advisor.path_xy_m is None
        callbacks['plan'](plan([(0, 0), (5, 1), (10, 0)]))
        assert advisor.advisor.path_xy_m.shape == (3, 2)
        callbacks['plan'](plan([]))  # an empty plan: back to the heading
        assert advisor.advisor.path_xy_m is None and advisor.plans_received == 2
    finally:
        advisor.destroy_node()
