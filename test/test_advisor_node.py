"""speed_advisor node over real DDS: speed limit, stale fallback, cmd_vel capping, parameters."""

import math

import numpy as np
import pytest
from conftest import spin_until
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Float32

from terrain_ssl.ros.advisor_node import SpeedAdvisorNode
from terrain_ssl.ros.qos import RELIABLE_QOS, SENSOR_QOS
from terrain_ssl.ros.conversions import xyz_fields_to_pointcloud2

CELL = 0.5


def roughness_map_msg(rough_from_m, rough_to_m, roughness_rough=4.0, roughness_smooth=0.3):
    xs = (np.arange(0, 200) + 0.5) * CELL
    ys = (np.arange(-4, 4) + 0.5) * CELL
    gx, gy = np.meshgrid(xs, ys, indexing='ij')
    x, y = gx.ravel(), gy.ravel()
    rough = (x >= rough_from_m) & (x <= rough_to_m)
    return xyz_fields_to_pointcloud2(
        {'x': x, 'y': y, 'z': np.zeros_like(x),
         'roughness': np.where(rough, roughness_rough, roughness_smooth),
         'uncertainty': np.zeros_like(x)}, 'odom', 0)


def odom_msg(x_m, speed_mps):
    msg = Odometry()
    msg.header.frame_id = 'odom'
    msg.child_frame_id = 'base_link'
    msg.pose.pose.position.x = float(x_m)
    msg.pose.pose.orientation.w = 1.0
    msg.twist.twist.linear.x = float(speed_mps)
    return msg


class Harness:
    def __init__(self, context, **overrides):
        params = {'accel_limit_mps2': 50.0, 'stale_timeout_s': 0.4, 'rate_hz': 20.0,
                  'diagnostics_period_s': 0.1, 'shock_limit_mps2': 6.0, 'v_max_mps': 6.0,
                  'cautious_speed_mps': 1.0, 'map_memory_s': 0.0}
        params.update(overrides)
        self.advisor = SpeedAdvisorNode(
            context=context,
            parameter_overrides=[Parameter(name, value=value) for name, value in params.items()])
        self.peer = Node('advisor_test_peer', context=context)
        self.map_pub = self.peer.create_publisher(PointCloud2, 'terrain_ssl/roughness_map',
                                                  RELIABLE_QOS)
        self.odom_pub = self.peer.create_publisher(Odometry, 'odom', SENSOR_QOS)
        self.cmd_pub = self.peer.create_publisher(Twist, 'cmd_vel_in', RELIABLE_QOS)
        self.limits, self.cmds, self.diags = [], [], []
        self.peer.create_subscription(Float32, 'terrain_ssl/speed_limit',
                                      lambda m: self.limits.append(m.data), RELIABLE_QOS)
        self.peer.create_subscription(Twist, 'cmd_vel', self.cmds.append, RELIABLE_QOS)
        self.peer.create_subscription(DiagnosticArray, '/diagnostics',
                                      lambda m: self.diags.extend(m.status), 10)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.advisor)
        self.executor.add_node(self.peer)
        assert spin_until(self.executor, lambda: self.map_pub.get_subscription_count() > 0
                          and self.odom_pub.get_subscription_count() > 0
                          and self.cmd_pub.get_subscription_count() > 0, 10.0)

    def feed(self, x_m, speed_mps, map_msg=None, seconds=0.3):
        """Publish odometry (and a map) repeatedly for `seconds`; return the limits received."""
        self.limits.clear()
        import time
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.odom_pub.publish(odom_msg(x_m, speed_mps))
            if map_msg is not None:
                self.map_pub.publish(map_msg)
            spin_until(self.executor, lambda: False, 0.05)
        return list(self.limits)

    def last_status(self):
        return {kv.key: kv.value for kv in self.diags[-1].values}, self.diags[-1]

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
    values, status = harness.last_status()
    assert status.level == b'\x01' and 'no roughness map' in status.message
    # Clear ground ahead: v_max. A rough band 8 m ahead at 6 m/s: the limit is already down.
    clear = roughness_map_msg(500.0, 501.0)
    assert harness.feed(0.0, 6.0, clear)[-1] == pytest.approx(6.0)
    rough = roughness_map_msg(8.0, 9.0)
    limit = harness.feed(0.0, 6.0, rough)[-1]
    front_offset = harness.advisor.advisor.config.front_offset_m  # base_link -> front axle
    expected = math.sqrt((6.0 / 4.0) ** 2 + 2 * 1.5 * (8.0 - front_offset))
    assert limit == pytest.approx(expected, abs=0.15) and limit < 6.0
    values, status = harness.last_status()
    assert values['reason'] == 'terrain' and status.level == b'\x00'
    # The map stops coming (odometry keeps coming): cautious speed once stale.
    limits = harness.feed(0.0, 3.0, None, seconds=0.8)
    assert limits[-1] == pytest.approx(1.0)
    spin_until(harness.executor, lambda: 'stale' in harness.diags[-1].message, 1.0)
    values, status = harness.last_status()
    assert 'roughness map is stale' in status.message and values['reason'] == 'stale_map'


def test_stale_odometry_falls_back_to_cautious(harness):
    harness.feed(0.0, 6.0, roughness_map_msg(500.0, 501.0))
    assert harness.limits[-1] == pytest.approx(6.0)
    import time
    end = time.monotonic() + 0.8
    while time.monotonic() < end:  # maps keep coming, odometry does not
        harness.map_pub.publish(roughness_map_msg(500.0, 501.0))
        spin_until(harness.executor, lambda: False, 0.05)
    assert harness.limits[-1] == pytest.approx(1.0)
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
    client = harness.peer.create_client(SetParameters, '/speed_advisor/set_parameters')
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
