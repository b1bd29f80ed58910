"""speed_advisor node over real DDS: speed limit, uncertainty, stale fallback, cmd_vel capping,
parameters. Time is simulated (/clock), so staleness never races the machine's speed."""

import itertools
import math
import os

import numpy as np
import pytest
from conftest import spin_until
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.time import Time
from rosgraph_msgs.msg import Clock
from rclpy.parameter import Parameter
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Float32

from terrain_ssl.ros.advisor_node import SpeedAdvisorNode
from terrain_ssl.ros.qos import RELIABLE_QOS, SENSOR_QOS
from terrain_ssl.ros.conversions import xyz_fields_to_pointcloud2

CELL = 0.5
_RUNS = itertools.count()


def roughness_map_msg(rough_from_m, rough_to_m, roughness_rough=4.0, roughness_smooth=0.3,
                      uncertainty=0.0):
    xs = (np.arange(0, 200) + 0.5) * CELL
    ys = (np.arange(-4, 4) + 0.5) * CELL
    gx, gy = np.meshgrid(xs, ys, indexing='ij')
    x, y = gx.ravel(), gy.ravel()
    rough = (x >= rough_from_m) & (x <= rough_to_m)
    return xyz_fields_to_pointcloud2(
        {'x': x, 'y': y, 'z': np.zeros_like(x),
         'roughness': np.where(rough, roughness_rough, roughness_smooth),
         'uncertainty': np.full_like(x, uncertainty)}, 'odom', 0)


def odom_msg(x_m, speed_mps):
    msg = Odometry()
    msg.header.frame_id = 'odom'
    msg.child_frame_id = 'base_link'
    msg.pose.pose.position.x = float(x_m)
    msg.pose.pose.orientation.w = 1.0
    msg.twist.twist.linear.x = float(speed_mps)
    return msg


class Harness:
    """The advisor node on simulated time: the test publishes /clock, odometry and maps over
    DDS step by step, waiting (with generous timeouts) until the node has each one, so what
    the node saw when it published a limit never depends on how fast the machine is."""

    STEP_S = 0.05

    def __init__(self, context, **overrides):
        params = {'accel_limit_mps2': 50.0, 'stale_timeout_s': 0.4, 'rate_hz': 20.0,
                  'diagnostics_period_s': 0.1, 'shock_limit_mps2': 6.0, 'v_max_mps': 6.0,
                  'cautious_speed_mps': 1.0, 'map_memory_s': 0.0, 'use_sim_time': True}
        params.update(overrides)
        # A namespace of its own: another test run on the same ROS domain cannot mix its
        # speed limits or diagnostics into these.
        namespace = f'/advisor_test_{os.getpid()}_{next(_RUNS)}'
        self.advisor = SpeedAdvisorNode(
            context=context, namespace=namespace,
            parameter_overrides=[Parameter(name, value=value) for name, value in params.items()])
        self.peer = Node('advisor_test_peer', context=context, namespace=namespace)
        own = self.advisor.get_fully_qualified_name()
        self.clock_pub = self.peer.create_publisher(Clock, '/clock', 10)
        self.map_pub = self.peer.create_publisher(PointCloud2, 'terrain_ssl/roughness_map',
                                                  RELIABLE_QOS)
        self.odom_pub = self.peer.create_publisher(Odometry, 'odom', SENSOR_QOS)
        self.cmd_pub = self.peer.create_publisher(Twist, 'cmd_vel_in', RELIABLE_QOS)
        self.all_limits, self.cmds, self.diags = [], [], []
        self.limits_from = 0
        self.peer.create_subscription(Float32, 'terrain_ssl/speed_limit',
                                      lambda m: self.all_limits.append(m.data), RELIABLE_QOS)
        self.peer.create_subscription(Twist, 'cmd_vel', self.cmds.append, RELIABLE_QOS)
        self.peer.create_subscription(DiagnosticArray, '/diagnostics', lambda m: self.diags.extend(
            status for status in m.status if status.hardware_id == own), 10)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.advisor)
        self.executor.add_node(self.peer)
        assert spin_until(self.executor, lambda: self.map_pub.get_subscription_count() > 0
                          and self.odom_pub.get_subscription_count() > 0
                          and self.cmd_pub.get_subscription_count() > 0
                          and self.clock_pub.get_subscription_count() > 0
                          and self.advisor.speed_limit_outlet.publisher
                          .get_subscription_count() > 0, 10.0)
        self.t_ns = 1000 * 10**9
        self._set_time()

    @property
    def limits(self):
        return self.all_limits[self.limits_from:]

    def _until(self, publish, condition, what):
        """Publish, then spin until `condition`; best-effort topics may drop a sample: resend."""
        for _ in range(10):
            publish()
            if spin_until(self.executor, condition, 3.0):
                return
        raise AssertionError(f'the advisor never received {what}')

    def _set_time(self):
        clock = Clock()
        clock.clock = Time(nanoseconds=self.t_ns).to_msg()
        now = self.advisor.get_clock().now
        self._until(lambda: self.clock_pub.publish(clock),
                    lambda: now().nanoseconds >= self.t_ns, 'the clock')

    def step(self, x_m, speed_mps, map_msg=None, odometry=True):
        """One STEP_S of simulated time: the clock, then odometry and the map."""
        self.t_ns += int(self.STEP_S * 1e9)
        self._set_time()
        if odometry:
            self._until(lambda: self.odom_pub.publish(odom_msg(x_m, speed_mps)),
                        lambda: self.advisor.advisor.state_time_ns == self.t_ns, 'odometry')
        if map_msg is not None:
            received = self.advisor.maps_received
            self.map_pub.publish(map_msg)  # reliable
            assert spin_until(self.executor, lambda: self.advisor.maps_received > received,
                              10.0)

    def feed(self, x_m, speed_mps, map_msg=None, seconds=0.3, odometry=True):
        """Drive `seconds` of simulated time; return the limits published meanwhile (all of
        them delivered: the last one is the node's latest)."""
        self.limits_from = len(self.all_limits)
        for _ in range(round(seconds / self.STEP_S)):
            self.step(x_m, speed_mps, map_msg, odometry)
        published = self.advisor.speed_limit_outlet
        assert spin_until(self.executor, lambda: len(self.all_limits) == published.published,
                          10.0), (len(self.all_limits), published.published)
        return list(self.limits)

    def last_status(self):
        return {kv.key: kv.value for kv in self.diags[-1].values}, self.diags[-1]

    def wait_status(self, text, x_m=0.0, speed_mps=1.0, map_msg=None):
        """Go on driving (simulated time, as `feed`) until /diagnostics says `text`."""
        for _ in range(40):
            if self.diags and text in self.diags[-1].message:
                return self.last_status()
            self.step(x_m, speed_mps, map_msg)
            spin_until(self.executor, lambda: bool(self.diags) and text in
                       self.diags[-1].message, 0.5)
        raise AssertionError(f'diagnostics never said {text!r}: {self.diags[-1].message}')

    def close(self):
        self.executor.shutdown()
        self.advisor.destroy_node()
        self.peer.destroy_node()


@pytest.fixture
def harness(ros_context):
    h = Harness(ros_context)
    yield h
    h.close()


def test_speed_limit_from_the_map_and_cautious_on_stale_inputs(harness):
    # No map yet: the cautious speed, and diagnostics say why.
    limits = harness.feed(0.0, 1.0)
    assert limits and limits[-1] == pytest.approx(1.0)
    values, status = harness.wait_status('no roughness map')
    assert status.level == b'\x01'
    # Clear ground ahead: v_max. A rough band 8 m ahead at 6 m/s: the limit is already down.
    clear = roughness_map_msg(500.0, 501.0)
    assert harness.feed(0.0, 6.0, clear)[-1] == pytest.approx(6.0)
    rough = roughness_map_msg(8.0, 9.0)
    limit = harness.feed(0.0, 6.0, rough)[-1]
    front_offset = harness.advisor.advisor.config.front_offset_m  # base_link -> front axle
    expected = math.sqrt((6.0 / 4.0) ** 2 + 2 * 1.5 * (8.0 - front_offset))
    assert limit == pytest.approx(expected, abs=0.15) and limit < 6.0
    values, status = harness.wait_status('terrain', speed_mps=6.0, map_msg=rough)
    assert values['reason'] == 'terrain' and status.level == b'\x00'
    # The map stops coming (odometry keeps coming): fresh for stale_timeout_s 0.4 s of
    # simulated time, then the cautious speed.
    limits = harness.feed(0.0, 3.0, None, seconds=0.3)
    assert limits[-1] == pytest.approx(limit, abs=0.3)
    limits = harness.feed(0.0, 3.0, None, seconds=0.3)
    assert limits[-1] == pytest.approx(1.0)
    values, status = harness.wait_status('roughness map is stale', speed_mps=3.0)
    assert values['reason'] == 'stale_map'


def test_uncertainty_in_the_map_slows_the_vehicle_over_dds(harness):
    # Roughness 0.3 alone allows 6 / 0.3 = 20 m/s (v_max 6); uncertainty 1.0 at the default
    # weight 1.5 makes it 0.3 + 1.5 = 1.8: 3.33 m/s.
    assert harness.feed(0.0, 3.0, roughness_map_msg(500.0, 501.0))[-1] == pytest.approx(6.0)
    unsure = roughness_map_msg(500.0, 501.0, uncertainty=1.0)
    weight = harness.advisor.advisor.config.uncertainty_weight
    assert harness.feed(0.0, 3.0, unsure)[-1] == pytest.approx(6.0 / (0.3 + weight * 1.0),
                                                               abs=0.02)


def test_stale_odometry_falls_back_to_cautious(harness):
    harness.feed(0.0, 6.0, roughness_map_msg(500.0, 501.0))
    assert harness.limits[-1] == pytest.approx(6.0)
    # Maps keep coming, odometry does not: cautious once 0.4 s of simulated time passed.
    limits = harness.feed(0.0, 6.0, roughness_map_msg(500.0, 501.0), seconds=0.8,
                          odometry=False)
    assert limits[-1] == pytest.approx(1.0)
    assert harness.advisor.advisor.last_advice.reason == 'stale_odometry'


def test_cmd_vel_is_capped_with_curvature_kept_and_slower_passes(harness):
    harness.feed(0.0, 1.0)  # no map: limit = cautious 1.0 m/s
    # Capping is off by default: nothing is forwarded.
    harness.cmd_pub.publish(Twist())
    spin_until(harness.executor, lambda: harness.advisor.cmd_vel_ignored > 0, 2.0)
    assert harness.advisor.cmd_vel_ignored == 1 and not harness.cmds
    harness.advisor.set_parameters([Parameter('cap_cmd_vel', value=True)])
    fast = Twist()
    fast.linear.x, fast.angular.z = 4.0, 0.8
    slow = Twist()
    slow.linear.x, slow.angular.z = 0.5, 0.3
    harness.cmd_pub.publish(fast)
    assert spin_until(harness.executor, lambda: len(harness.cmds) == 1, 2.0)
    harness.cmd_pub.publish(slow)
    assert spin_until(harness.executor, lambda: len(harness.cmds) == 2, 2.0)
    capped, passed = harness.cmds
    assert capped.linear.x == pytest.approx(1.0)
    assert capped.angular.z / capped.linear.x == pytest.approx(0.8 / 4.0)
    assert (passed.linear.x, passed.angular.z) == (0.5, 0.3)


def test_parameters_are_validated_through_the_service_and_bad_maps_rejected(harness):
    client = harness.peer.create_client(
        SetParameters, harness.advisor.get_fully_qualified_name() + '/set_parameters')
    assert client.wait_for_service(timeout_sec=5.0)

    def set_param(name, value):
        future = client.call_async(SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg()]))
        assert spin_until(harness.executor, future.done, 5.0)
        return future.result().results[0]

    v_min_before = harness.advisor.advisor.config.v_min_mps
    refused = set_param('v_min_mps', 10.0)  # above v_max 6.0
    assert not refused.successful and 'v_max' in refused.reason
    assert harness.advisor.advisor.config.v_min_mps == v_min_before
    accepted = set_param('cautious_speed_mps', 2.0)
    assert accepted.successful
    assert harness.feed(0.0, 1.0)[-1] == pytest.approx(2.0)  # applied live
    # A map without the roughness field is rejected and counted, not crashed on.
    bad = xyz_fields_to_pointcloud2({'x': [1.0], 'y': [0.0], 'z': [0.0]}, 'odom', 0)
    harness.map_pub.publish(bad)
    assert spin_until(harness.executor,
                      lambda: harness.advisor.rejects.counts.get('map_fields', 0) == 1, 2.0)
    assert harness.advisor.maps_received == 0
