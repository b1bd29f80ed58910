"""Nav2 outputs: the speed-filter mask and the roughness costmap (core, then over real DDS)."""

import math

import numpy as np
import pytest

from terrain_ssl.core.advisor import AdvisorConfig, RoughnessMap, SpeedAdvisor, VehicleState
from terrain_ssl.core.speed_mask import (MaskConfig, braking_profile, footprint_kernel,
                                         mask_speed_at, nav2_grids)

CELL = 0.5
ADVISOR = AdvisorConfig(shock_limit_mps2=6.0, v_min_mps=1.0, v_max_mps=6.0,
                        cautious_speed_mps=1.5, decel_limit_mps2=1.5, uncertainty_weight=1.5,
                        margin_m=0.0, front_offset_m=0.0, corridor_half_width_m=0.0)
# No reaction time: braking alone, the advisor's rule (the reaction has its own test).
MASK = MaskConfig(size_m=40.0, footprint_length_m=2.0, footprint_width_m=1.0,
                  footprint_offset_x_m=0.0, reaction_s=0.0)


def field(rough_x_m=(10.0, 11.0), rough=3.0, smooth=0.3, uncertainty=0.0):
    """A 60 m x 60 m map, smooth but for a strip across x in `rough_x_m`."""
    centres = (np.arange(-120, 120) + 0.5) * CELL
    x, y = (v.ravel() for v in np.meshgrid(centres, centres))
    r = np.where((x >= rough_x_m[0]) & (x <= rough_x_m[1]), rough, smooth)
    return RoughnessMap(np.column_stack((x, y)), r, np.full(x.size, uncertainty), CELL)


def test_the_rough_strip_slows_the_vehicle_on_a_braking_profile_before_it():
    grids = nav2_grids(field(), (0.0, 0.0), 0.0, ADVISOR, MASK)
    speed = [mask_speed_at(grids, (x, 0.25), ADVISOR.v_max_mps) for x in np.arange(0, 14, 0.5)]
    at_strip = 6.0 / 3.0
    # Over the strip (base_link within half a footprint of it): the strip's own speed.
    assert mask_speed_at(grids, (10.25, 0.25), 6.0) == pytest.approx(at_strip, abs=0.06)
    assert mask_speed_at(grids, (9.25, 0.25), 6.0) == pytest.approx(at_strip, abs=0.06)
    # Ahead of it, braking at decel_limit from where the footprint's front meets the strip.
    for x in (2.25, 4.25, 6.25):
        distance = max(10.0 - (x + 1.0) - 0.25, 0.0)  # footprint front -> strip's near edge
        expected = min(math.sqrt(at_strip**2 + 2 * 1.5 * distance), 6.0)
        assert mask_speed_at(grids, (x, 0.25), 6.0) == pytest.approx(expected, abs=0.35)
    # Monotone: the limit never rises on the way to the strip.
    approach = speed[:19]
    assert all(b <= a + 1e-9 for a, b in zip(approach, approach[1:]))
    # Far from any rough ground: no limit below v_max.
    assert mask_speed_at(nav2_grids(field(rough_x_m=(99, 99)), (0, 0), 0.0, ADVISOR, MASK),
                         (0.25, 0.25), 6.0) == pytest.approx(6.0)


def test_the_same_speed_as_the_advisor_over_known_ground():
    """The mask at the vehicle and the advisor's allowed speed come from one rule."""
    roughness_map = field()
    advisor = SpeedAdvisor(ADVISOR)
    advisor.set_map(roughness_map, 0)
    for x in (3.0, 5.0, 7.0):
        advisor.set_state(VehicleState(x, 0.25, 0.0, 6.0), 0)  # sees 12 m ahead
        grids = nav2_grids(roughness_map, (x, 0.25), 0.0, ADVISOR,
                           MaskConfig(size_m=40.0, footprint_length_m=0.01,
                                      footprint_width_m=0.01, footprint_offset_x_m=0.0,
                                      reaction_s=0.0))
        assert mask_speed_at(grids, (x, 0.25), 6.0) == pytest.approx(
            advisor.allowed(0).allowed_mps, abs=0.3)


def test_the_mask_brakes_earlier_by_the_distance_driven_before_the_vehicle_reacts():
    """Nav2 reads the mask once per costmap update and the controller acts a cycle later: the
    vehicle covers v * t_r before it brakes, so the limit falls that much earlier; over the
    strip itself, the strip's own speed (the reaction must not slow the vehicle below it)."""
    reaction_s, a, at_strip = 0.3, 1.5, 2.0
    slow_to_react = MaskConfig(size_m=40.0, footprint_length_m=2.0, footprint_width_m=1.0,
                               footprint_offset_x_m=0.0, reaction_s=reaction_s)
    grids = nav2_grids(field(), (0.0, 0.0), 0.0, ADVISOR, slow_to_react)
    at_once = nav2_grids(field(), (0.0, 0.0), 0.0, ADVISOR, MASK)
    for x in (2.25, 4.25, 6.25, 7.75):
        distance = max(10.0 - (x + 1.0) - 0.25, 0.0)  # footprint front -> strip's near edge
        lag = a * reaction_s
        expected = min(math.sqrt(lag**2 + at_strip**2 + 2 * a * distance) - lag, 6.0)
        assert mask_speed_at(grids, (x, 0.25), 6.0) == pytest.approx(expected, abs=0.35)
        assert mask_speed_at(grids, (x, 0.25), 6.0) < mask_speed_at(at_once, (x, 0.25), 6.0)
    for x in (8.75, 9.25, 10.25):
        assert mask_speed_at(grids, (x, 0.25), 6.0) == pytest.approx(at_strip, abs=0.06)


def test_braking_profile_is_the_pairwise_rule_exactly():
    """Against the rule written out per pair of samples: v_i = min over j >= i of
    max(v_j, sqrt((a t)^2 + v_j^2 + 2 a d_ij) - a t), d_ij = (j - i) spacing - edge >= 0."""
    rng = np.random.default_rng(3)
    a, spacing, edge, v_max = 1.5, 0.25, 0.25, 6.0
    for reaction_s in (0.0, 0.15, 0.6):
        target = rng.choice([1.0, 2.0, 3.5, 6.0], size=(4, 60), p=[0.05, 0.1, 0.15, 0.7])
        got = braking_profile(target, spacing, edge, a, reaction_s, v_max)
        lag = a * reaction_s
        for row in range(target.shape[0]):
            for i in range(target.shape[1]):
                ahead = target[row, i:]
                d = np.maximum(np.arange(ahead.size) * spacing - edge, 0.0)
                d[0] = 0.0
                rule = np.maximum(ahead, np.sqrt(lag**2 + ahead**2 + 2 * a * d) - lag)
                assert got[row, i] == pytest.approx(rule.min(), abs=1e-9)


def test_a_rough_cell_the_wheels_have_left_no_longer_limits_the_speed():
    """The default outline is where the vehicle touches the ground (the labeler's footprint):
    from 0.1 m behind base_link (the rear wheels' contact) to the front wheels'. The strip ends
    at x = 11 m: with base_link at 11.25 m the rear wheels have left it; at 10.75 m they have
    not."""
    contact = MaskConfig(reaction_s=0.0)
    grids = nav2_grids(field(), (8.0, 0.0), 0.0, ADVISOR, contact)
    assert mask_speed_at(grids, (11.25, 0.25), 6.0) == pytest.approx(6.0)
    assert mask_speed_at(grids, (10.75, 0.25), 6.0) == pytest.approx(2.0, abs=0.06)


def test_braking_looks_along_the_heading_not_behind_or_beside():
    ahead = nav2_grids(field(), (5.0, 0.0), 0.0, ADVISOR, MASK)
    behind = nav2_grids(field(), (5.0, 0.0), math.pi, ADVISOR, MASK)
    sideways = nav2_grids(field(), (5.0, 0.0), math.pi / 2, ADVISOR, MASK)
    at = (5.25, 0.25)  # 4.75 m before the strip's near edge
    assert mask_speed_at(ahead, at, 6.0) < 4.5
    assert mask_speed_at(behind, at, 6.0) == pytest.approx(6.0)
    assert mask_speed_at(sideways, at, 6.0) == pytest.approx(6.0)
    # Driving diagonally towards it, the strip is farther along the heading: faster than
    # straight at it, slower than with the strip out of the way.
    diagonal = mask_speed_at(nav2_grids(field(), (5.0, 0.0), math.pi / 4, ADVISOR, MASK), at,
                             6.0)
    assert mask_speed_at(ahead, at, 6.0) < diagonal < 6.0


def test_uncertainty_slows_the_mask_and_raises_the_cost():
    certain = nav2_grids(field(), (0.0, 0.0), 0.0, ADVISOR, MASK)
    unsure = nav2_grids(field(uncertainty=1.0), (0.0, 0.0), 0.0, ADVISOR, MASK)
    at = (10.25, 0.25)
    assert mask_speed_at(unsure, at, 6.0) < 0.7 * mask_speed_at(certain, at, 6.0)
    assert unsure.cost.astype(int).sum() > certain.cost.astype(int).sum()


def test_the_footprint_turns_with_the_vehicle():
    along_x, _ = footprint_kernel(MaskConfig(footprint_length_m=4.0, footprint_width_m=0.5,
                                             footprint_offset_x_m=1.0), 0.0, CELL)
    along_y, _ = footprint_kernel(MaskConfig(footprint_length_m=4.0, footprint_width_m=0.5,
                                             footprint_offset_x_m=1.0), math.pi / 2, CELL)
    # Rows run along +y, columns along +x: driving along +x the outline spans columns.
    assert np.ptp(np.nonzero(along_x)[1]) > 2 * np.ptp(np.nonzero(along_x)[0])
    assert np.ptp(np.nonzero(along_y)[0]) == np.ptp(np.nonzero(along_x)[1])
    # The outline sits ahead of base_link (the anchor): in +x, then in +y once turned.
    anchor = along_x.shape[0] // 2
    assert np.nonzero(along_x)[1].mean() > anchor + 1
    assert np.nonzero(along_y)[0].mean() > anchor + 1


def test_unknown_ground_is_cautious_or_free_by_setting():
    empty = RoughnessMap.empty(CELL)
    cautious = nav2_grids(empty, (0, 0), 0.0, ADVISOR, MASK)
    assert mask_speed_at(cautious, (0.25, 0.25), 6.0) == pytest.approx(1.5, abs=0.06)
    assert (cautious.cost == -1).all()
    free = nav2_grids(empty, (0, 0), 0.0, ADVISOR,
                      MaskConfig(unknown_is_cautious=False))
    assert mask_speed_at(free, (0.25, 0.25), 6.0) == pytest.approx(6.0)


def test_mask_values_are_what_nav2_speed_filter_reads():
    grids = nav2_grids(field(), (0.0, 0.0), 0.0, ADVISOR, MASK)
    # Type 1 (percent), base 0, multiplier 1: 1..100, never 0 ("no limit") or -1 ("unknown").
    assert grids.speed_percent.dtype == np.int8
    assert grids.speed_percent.min() >= 1 and grids.speed_percent.max() <= 100
    assert grids.cost.min() >= -1 and grids.cost.max() <= 100
    w = grids.window
    assert w.size_cells == 80 and w.resolution_m == CELL
    # Cells line up with the map's: origin on a cell boundary of the map grid.
    assert (w.origin_x_m / CELL) == pytest.approx(round(w.origin_x_m / CELL))


def test_bad_settings_are_refused_with_a_reason():
    with pytest.raises(ValueError, match='footprint_width_m'):
        MaskConfig(footprint_width_m=0.0)
    with pytest.raises(ValueError, match='size_m'):
        MaskConfig(size_m=float('nan'))


@pytest.mark.ros
def test_the_advisor_node_publishes_latched_grids_nav2_can_read(ros_context):
    from conftest import spin_until
    from nav_msgs.msg import OccupancyGrid, Odometry
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import PointCloud2

    from terrain_ssl.ros.advisor_node import SpeedAdvisorNode
    from terrain_ssl.ros.qos import RELIABLE_QOS, SENSOR_QOS
    from terrain_ssl.ros.conversions import xyz_fields_to_pointcloud2
    from terrain_ssl.ros.nav2_outputs import LATCHED_QOS
    from terrain_ssl.ros.wiring import linked_publishers_of

    node = SpeedAdvisorNode(context=ros_context, parameter_overrides=[
        Parameter('nav2_rate_hz', value=20.0), Parameter('footprint_offset_x_m', value=0.0),
        Parameter('stale_timeout_s', value=30.0)])
    peer = Node('nav2_peer', context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    executor.add_node(peer)
    # In-process wiring (replay, bringup, closed loop) finds the grids among the node's outlets.
    assert {'/terrain_ssl/speed_mask', '/terrain_ssl/roughness_costmap'} <= {
        outlet.topic_name for outlet in linked_publishers_of(node)}
    try:
        map_pub = peer.create_publisher(PointCloud2, 'terrain_ssl/roughness_map', RELIABLE_QOS)
        odom_pub = peer.create_publisher(Odometry, 'odom', SENSOR_QOS)
        masks, costs = [], []
        # Subscribed as Nav2's costmap filters subscribe: reliable, transient local.
        peer.create_subscription(OccupancyGrid, 'terrain_ssl/speed_mask', masks.append,
                                 LATCHED_QOS)
        peer.create_subscription(OccupancyGrid, 'terrain_ssl/roughness_costmap', costs.append,
                                 LATCHED_QOS)
        assert spin_until(executor, lambda: map_pub.get_subscription_count() > 0
                          and odom_pub.get_subscription_count() > 0)
        rough = field(rough=3.0, uncertainty=0.2)
        centres = rough.centres_xy_m
        map_msg = xyz_fields_to_pointcloud2(
            {'x': centres[:, 0], 'y': centres[:, 1], 'z': np.zeros(len(rough)),
             'roughness': rough.roughness, 'uncertainty': rough.uncertainty}, 'odom', 0)
        odom = Odometry()
        odom.header.frame_id = 'odom'
        odom.pose.pose.position.x = 9.0
        odom.pose.pose.orientation.w = 1.0

        def fed():
            map_pub.publish(map_msg)
            odom_pub.publish(odom)
            return node.advisor.map is not None and node.advisor.state is not None

        assert spin_until(executor, fed, 10.0)
        masks.clear()
        costs.clear()
        assert spin_until(executor, lambda: masks and costs, 10.0)
        mask = masks[-1]
        assert mask.header.frame_id == 'odom' and mask.info.resolution == pytest.approx(CELL)
        n = mask.info.width
        values = np.frombuffer(bytes(mask.data), dtype=np.int8).reshape(n, n)
        column = int((9.0 - mask.info.origin.position.x) // CELL)
        row = int((0.0 - mask.info.origin.position.y) // CELL)
        limit_percent = 100.0 * 6.0 / (3.0 + 1.5 * 0.2) / 6.0  # the strip's conservative speed
        assert values[row, column] == pytest.approx(limit_percent, abs=2)
        cost = np.frombuffer(bytes(costs[-1].data), dtype=np.int8)
        assert cost.max() == 100 and (cost >= 0).all()
    finally:
        executor.shutdown()
        node.destroy_node()
        peer.destroy_node()


def test_cells_the_lidar_missed_beside_known_ones_do_not_make_the_ground_unknown():
    full = field()
    sparse = RoughnessMap(full.centres_xy_m[::3], full.roughness[::3], full.uncertainty[::3],
                          CELL)  # two cells in three missing
    grids = nav2_grids(sparse, (0.0, 0.0), 0.0, ADVISOR, MASK)
    assert mask_speed_at(grids, (0.25, 0.25), 6.0) > 4.0  # not the cautious 1.5 m/s
    assert mask_speed_at(grids, (10.25, 0.25), 6.0) == pytest.approx(2.0, abs=0.06)


def test_the_mask_never_reads_below_v_min():
    slow = AdvisorConfig(shock_limit_mps2=6.0, v_min_mps=1.0, v_max_mps=6.0,
                         cautious_speed_mps=1.5)
    grids = nav2_grids(field(rough=100.0), (0.0, 0.0), 0.0, slow, MASK)
    assert grids.speed_percent.min() == 17  # ceil(100 * 1.0 / 6.0): 1.02 m/s, not 0.96
    assert mask_speed_at(grids, (10.25, 0.25), 6.0) >= 1.0


def test_braking_follows_the_plan_through_a_curve():
    """A plan that turns left 90 degrees at x = 5 m onto a rough strip across y = 8..9 m: the
    heading points at smooth ground, the plan at rough ground."""
    centres = (np.arange(-120, 120) + 0.5) * CELL
    x, y = (v.ravel() for v in np.meshgrid(centres, centres))
    r = np.where((y >= 8.0) & (y <= 9.0) & (x > 3.0) & (x < 7.0), 3.0, 0.3)
    roughness_map = RoughnessMap(np.column_stack((x, y)), r, np.zeros(x.size), CELL)
    plan = np.array([(0.0, 0.0), (5.0, 0.0), (5.0, 20.0)])
    at = (4.25, 0.25)
    straight = nav2_grids(roughness_map, at, 0.0, ADVISOR, MASK)
    planned = nav2_grids(roughness_map, at, 0.0, ADVISOR, MASK, path_xy_m=plan)
    assert mask_speed_at(straight, at, 6.0) == pytest.approx(6.0)
    distance = (5.0 - 4.25) + 8.0 - 1.0 - 0.25  # along the plan to where the outline meets it
    expected = math.sqrt(2.0**2 + 2 * 1.5 * distance)  # 5.1 m/s
    assert mask_speed_at(planned, at, 6.0) == pytest.approx(expected, abs=0.3)
