"""The labeler node takes the lidar mount from TF, unless its lidar.* parameters say otherwise
(issue 18).

tf2_ros comes with a ROS distro and cannot be installed from PyPI, so it cannot run here. These
tests give the real node (real rclpy) a stand-in `tf2_ros` module with the part of tf2_ros's
Python API the node uses: Buffer.lookup_transform(target, source, time) -> TransformStamped,
TransformListener(buffer, node).unregister() and TransformException. They check the node's side:
which frames it asks for, what it does with the answer, and that explicit parameters win.
"""

import importlib.machinery
import math
import sys
import types

import numpy as np
import pytest
from geometry_msgs.msg import TransformStamped
from rclpy.parameter import Parameter

from test_labeler_node import scan_msg
from terrain_ssl.core.geometry import quat_from_rpy
from terrain_ssl.ros.labeler_node import RoughnessLabelerNode

pytestmark = pytest.mark.ros


class StandInTf:
    """What the stand-in tf2_ros knows (parent, child) -> TransformStamped, and what was asked."""

    def __init__(self):
        self.transforms = {}
        self.asked = []
        self.listeners = 0

    def add(self, parent, child, xyz, rpy):
        stamped = TransformStamped()
        stamped.header.frame_id, stamped.child_frame_id = parent, child
        t = stamped.transform.translation
        t.x, t.y, t.z = xyz
        q = stamped.transform.rotation
        q.x, q.y, q.z, q.w = (float(v) for v in quat_from_rpy(*rpy))
        self.transforms[(parent, child)] = stamped

    def module(self):
        known = self

        class TransformException(Exception):
            pass

        class Buffer:
            def lookup_transform(self, target, source, time):
                known.asked.append((target, source))
                if (target, source) not in known.transforms:
                    raise TransformException(f'"{source}" passed to lookupTransform does not '
                                             'exist')
                return known.transforms[(target, source)]

        class TransformListener:
            def __init__(self, buffer, node):
                known.listeners += 1

            def unregister(self):
                known.listeners -= 1

        module = types.ModuleType('tf2_ros')
        module.__spec__ = importlib.machinery.ModuleSpec('tf2_ros', None)
        module.Buffer, module.TransformListener = Buffer, TransformListener
        module.TransformException = TransformException
        return module


@pytest.fixture
def tf(monkeypatch):
    known = StandInTf()
    monkeypatch.setitem(sys.modules, 'tf2_ros', known.module())
    return known


def one_scan(node, t_ns=1_000_000_000):
    points = np.random.default_rng(0).uniform(-10, 10, (500, 3))
    node.on_points(scan_msg(t_ns, points))  # frame_id lidar_link


def test_the_mount_comes_from_tf_once_tf_knows_it(ros_context, tf):
    node = RoughnessLabelerNode(context=ros_context)
    try:
        default_x = node.params.values['lidar.x']
        one_scan(node)  # TF does not know the mount yet: the parameters stand
        assert tf.asked == [('base_link', 'lidar_link')]
        assert node.params.values['lidar.x'] == default_x and node.tf_extrinsic is not None
        tf.add('base_link', 'lidar_link', (0.55, -0.1, 1.25), (0.0, 0.05, 0.3))
        one_scan(node, 1_100_000_000)
        config = node.labeler.config
        assert (config.lidar_x, config.lidar_y, config.lidar_z) == pytest.approx(
            (0.55, -0.1, 1.25))
        assert (config.lidar_roll, config.lidar_pitch, config.lidar_yaw) == pytest.approx(
            (0.0, 0.05, 0.3), abs=1e-9)
        assert node.params.values['lidar.yaw'] == pytest.approx(0.3)
        # Asked no more once answered, and the listener is gone.
        one_scan(node, 1_200_000_000)
        assert len(tf.asked) == 2 and tf.listeners == 0 and node.tf_extrinsic is None
    finally:
        node.destroy_node()


def test_parameters_set_by_hand_win_over_tf(ros_context, tf):
    tf.add('base_link', 'lidar_link', (0.55, 0.0, 1.25), (0.0, 0.0, 0.0))
    node = RoughnessLabelerNode(context=ros_context, parameter_overrides=[
        Parameter('lidar.z', value=2.0)])
    try:
        one_scan(node)
        assert tf.asked == [] and tf.listeners == 0
        assert node.labeler.config.lidar_z == 2.0
    finally:
        node.destroy_node()


def test_frame_parameters_name_the_lookup_and_use_tf_false_turns_it_off(ros_context, tf):
    tf.add('chassis', 'velodyne', (0.2, 0.0, 0.9), (0.0, 0.0, math.pi / 2))
    node = RoughnessLabelerNode(context=ros_context, parameter_overrides=[
        Parameter('frames.base', value='chassis'), Parameter('frames.lidar', value='velodyne')])
    try:
        one_scan(node)  # the cloud says lidar_link; frames.lidar wins
        assert tf.asked == [('chassis', 'velodyne')]
        assert node.labeler.config.lidar_yaw == pytest.approx(math.pi / 2)
    finally:
        node.destroy_node()
    node = RoughnessLabelerNode(context=ros_context, parameter_overrides=[
        Parameter('frames.use_tf', value=False)])
    try:
        one_scan(node)
        assert tf.asked == [('chassis', 'velodyne')] and node.tf_extrinsic is None
    finally:
        node.destroy_node()


def test_a_mount_out_of_range_is_refused_and_the_parameters_stand(ros_context, tf):
    tf.add('base_link', 'lidar_link', (25.0, 0.0, 1.0), (0.0, 0.0, 0.0))  # lidar.x max is 10 m
    node = RoughnessLabelerNode(context=ros_context)
    try:
        defaults = {name: node.params.values[name] for name in ('lidar.x', 'lidar.z')}
        one_scan(node)
        # None of the six applied (lidar.z = 1.0 would have been valid on its own).
        assert node.labeler.config.lidar_x == defaults['lidar.x']
        assert node.labeler.config.lidar_z == defaults['lidar.z'] != 1.0
        assert node.tf_extrinsic is None
    finally:
        node.destroy_node()
