"""The speed advisor node's safety behaviour: the uncertainty channel slows the vehicle, the live
`uncertainty_weight` and `quantile` act, and bad or stale input fails closed (cautious speed,
never v_max).

The real SpeedAdvisorNode, fed through its own subscription callbacks, on simulated time
(use_sim_time, the node's ROS clock set by the test): every check is deterministic, none races
the wall clock. Speeds follow from the advisor's rule v = shock_limit / (r + k * u), clipped to
[v_min, v_max], with a braking profile sqrt(v^2 + 2 a d) for cells d metres ahead.
"""

import math

import numpy as np
import pytest
from rclpy.parameter import Parameter
from rclpy.time import Time

import fuzz_messages as fm
from terrain_ssl.ros.conversions import xyz_fields_to_pointcloud2

pytestmark = pytest.mark.ros

MAP = 'terrain_ssl/roughness_map'
MAP_FIELDS = ['roughness', 'uncertainty']
SHOCK, V_MIN, V_MAX, CAUTIOUS = 6.0, 1.0, 6.0, 1.5
CELL = 0.5


def grid_map(roughness=0.5, uncertainty=0.0, rough_x=None, rough_value=30.0, frame_id='odom'):
    """A map of every cell over x in [-10, 60) m, y in [-4, 4) m (centres at (i + 0.5) * CELL);
    cells whose centre lies in `rough_x` = (from, to) get `rough_value`."""
    xs = (np.arange(-20, 120) + 0.5) * CELL
    ys = (np.arange(-8, 8) + 0.5) * CELL
    gx, gy = np.meshgrid(xs, ys, indexing='ij')
    x, y = gx.ravel(), gy.ravel()
    r = np.full(x.size, float(roughness))
    if rough_x is not None:
        r[(x >= rough_x[0]) & (x <= rough_x[1])] = rough_value
    return xyz_fields_to_pointcloud2({'x': x, 'y': y, 'z': np.zeros_like(x), 'roughness': r,
                                      'uncertainty': np.full(x.size, float(uncertainty))},
                                     frame_id, fm.T0_NS)


class SimAdvisor:
    """A SpeedAdvisorNode on simulated time, driven step by step through its callbacks."""

    def __init__(self, context, **overrides):
        from terrain_ssl.ros.advisor_node import SpeedAdvisorNode

        params = {'use_sim_time': True, 'shock_limit_mps2': SHOCK, 'v_min_mps': V_MIN,
                  'v_max_mps': V_MAX, 'cautious_speed_mps': CAUTIOUS, 'accel_limit_mps2': 50.0,
                  'stale_timeout_s': 1.0, 'map_memory_s': 0.0, 'uncertainty_weight': 1.5,
                  'quantile': 1.0}
        params.update(overrides)
        self.node = SpeedAdvisorNode(context=context, parameter_overrides=[
            Parameter(name, value=value) for name, value in params.items()])
        self.callbacks = fm.callbacks_by_topic(self.node)
        self.t_ns = fm.T0_NS
        self._set_clock()

    def _set_clock(self):
        self.node.get_clock().set_ros_time_override(Time(nanoseconds=self.t_ns))

    def step(self, map_msg=None, x_m=0.0, speed_mps=3.0, odom=True, dt_s=0.1) -> float:
        """Advance simulated time by dt_s, deliver odometry (and a map), return the limit."""
        self.t_ns += int(dt_s * 1e9)
        self._set_clock()
        if odom:
            self.callbacks['odom'](fm.odom_msg(self.t_ns, (x_m, 0.0, 0.0),
                                               velocity=(speed_mps, 0.0, 0.0)))
        if map_msg is not None:
            self.callbacks[MAP](map_msg)
        return self.node.on_timer()

    def settle(self, map_msg=None, steps=3, **kwargs) -> float:
        for _ in range(steps):
            limit = self.step(map_msg, **kwargs)
        return limit

    @property
    def reason(self) -> str:
        return self.node.advisor.last_advice.reason

    def set(self, name, value):
        result = self.node.set_parameters([Parameter(name, value=value)])[0]
        assert result.successful, result.reason

    def close(self):
        self.node.destroy_node()


@pytest.fixture
def advisor(ros_context):
    sim = SimAdvisor(ros_context)
    yield sim
    sim.close()


def test_uncertainty_in_the_map_slows_the_vehicle(advisor):
    # Roughness 0.5 alone allows 6 / 0.5 = 12 m/s: v_max. With uncertainty 1.0 at weight 1.5
    # the conservative roughness is 2.0: 3.0 m/s, decided by the cells under the front axle.
    assert advisor.settle(grid_map(0.5, 0.0)) == pytest.approx(V_MAX)
    assert advisor.settle(grid_map(0.5, 1.0)) == pytest.approx(SHOCK / (0.5 + 1.5 * 1.0),
                                                               abs=0.02)
    assert advisor.reason == 'terrain'
    assert float(advisor.node.advisor.last_advice.worst_roughness) == pytest.approx(2.0)


def test_uncertainty_weight_is_applied_live(advisor):
    certain_map = grid_map(0.5, 1.0)
    for weight, expected in ((0.0, V_MAX), (0.5, SHOCK / 1.0), (3.0, SHOCK / 3.5)):
        advisor.set('uncertainty_weight', weight)
        assert advisor.settle(certain_map) == pytest.approx(expected, abs=0.02), weight


def test_quantile_below_one_ignores_a_narrow_outlier_but_one_does_not(advisor):
    # One rough cell row (r = 30: v_min) about 8 m ahead of base_link: with quantile 1.0 it
    # decides the limit (braking profile from v_min over ~5.4 m: ~4.2 m/s); with 0.9 the worst
    # 10% of the corridor's stations are ignored and the smooth rest allows v_max.
    outlier = grid_map(0.5, 0.0, rough_x=(8.2, 8.3))
    strict = advisor.settle(outlier)
    front = advisor.node.advisor.config.front_offset_m
    distance = 8.0 - front - 0.0  # near edge of the cell from the front axle
    assert strict == pytest.approx(math.sqrt(V_MIN ** 2 + 2 * 1.5 * distance), abs=0.3)
    assert strict < V_MAX - 1.0
    advisor.set('quantile', 0.9)
    assert advisor.settle(outlier) == pytest.approx(V_MAX)
    advisor.set('quantile', 1.0)
    assert advisor.settle(outlier) == pytest.approx(strict, abs=1e-6)


def _bad_maps(rng):
    bad = fm.bad_clouds(rng, extra_fields=MAP_FIELDS)
    odd = [(f'{name}_xyz_only', cloud) for name, cloud in fm.odd_but_valid_clouds(rng)]
    good = fm.map_cloud(rng, 400)
    poisoned = [(f'{field}_{value}', fm.poison(good, field, value)) for field, value in
                (('roughness', np.nan), ('uncertainty', np.inf), ('x', -np.inf),
                 ('roughness', -1.0), ('uncertainty', -0.5))]
    return bad + odd + poisoned + [('negative_everywhere', grid_map(-1.0, 0.0)),
                                   ('other_frame', grid_map(0.5, 0.0, frame_id='map'))]


def test_bad_maps_fail_closed_and_a_good_map_recovers(advisor):
    """Every unusable map is rejected and counted, and the advice drops to the cautious speed
    until the next good map: a broken map source must never leave the vehicle at v_max."""
    clear = grid_map(0.5, 0.0)
    assert advisor.settle(clear) == pytest.approx(V_MAX)
    bad = _bad_maps(np.random.default_rng(31))
    for name, cloud in bad:
        rejected_before = advisor.node.rejects.total
        limit = advisor.step(cloud)
        assert advisor.node.rejects.total == rejected_before + 1, name
        assert limit <= CAUTIOUS + 1e-9 and advisor.reason == 'bad_map', (name, limit)
        # Odometry alone keeps coming: still cautious, the last map was unusable.
        assert advisor.step() <= CAUTIOUS + 1e-9, name
        assert advisor.settle(clear) == pytest.approx(V_MAX), name
    assert advisor.node.maps_received == 3 + 3 * len(bad)


def test_bad_odometry_fails_closed(advisor):
    clear = grid_map(0.5, 0.0)
    assert advisor.settle(clear) == pytest.approx(V_MAX)
    for msg in (fm.odom_msg(advisor.t_ns, (np.nan, 0, 0)),
                fm.odom_msg(advisor.t_ns, velocity=(np.inf, 0, 0)),
                fm.odom_msg(advisor.t_ns, quat=(0, 0, 0, 0))):
        advisor.callbacks['odom'](msg)
        assert advisor.step(clear, odom=False) <= CAUTIOUS + 1e-9
        assert advisor.reason == 'bad_odometry'
        assert advisor.settle(clear) == pytest.approx(V_MAX)
    assert advisor.node.rejects.counts['odometry_non_finite'] == 3
    # A jump far away (relocalisation): no prediction there, unknown ground: cautious.
    assert advisor.settle(clear, x_m=1e7) <= CAUTIOUS + 1e-9


def test_stale_map_or_odometry_fails_closed_on_simulated_time(advisor):
    clear = grid_map(0.5, 0.0)
    assert advisor.settle(clear) == pytest.approx(V_MAX)
    # The map stops (odometry goes on): still fresh at 0.9 s, stale after 1.0 s.
    for _ in range(9):
        limit = advisor.step()
    assert limit == pytest.approx(V_MAX)
    assert advisor.settle(steps=2) == pytest.approx(CAUTIOUS)
    assert advisor.reason == 'stale_map'
    assert advisor.settle(clear) == pytest.approx(V_MAX)
    # Odometry stops (maps go on).
    for _ in range(9):
        limit = advisor.step(clear, odom=False)
    assert limit == pytest.approx(V_MAX)
    assert advisor.settle(clear, steps=2, odom=False) == pytest.approx(CAUTIOUS)
    assert advisor.reason == 'stale_odometry'
