"""speed_advisor: recommends a speed that keeps the predicted shock under a limit.

In:  terrain_ssl/roughness_map  (PointCloud2: x, y, z, roughness, uncertainty; odom frame)
     odom                       (nav_msgs/Odometry: pose in odom, twist in base_link)
     cmd_vel_in                 (geometry_msgs/Twist, optional; capped when cap_cmd_vel is true)
     plan                       (nav_msgs/Path, optional, odom frame: the corridor ahead follows
                                 it while the vehicle is within path_max_offset_m of it; an
                                 empty path goes back to the heading)
Out: terrain_ssl/speed_limit    (std_msgs/Float32, m/s, every 1 / rate_hz s)
     cmd_vel                    (geometry_msgs/Twist: cmd_vel_in scaled so its speed <= the limit,
                                 angular scaled alike so the curvature is kept)
     terrain_ssl/speed_mask, terrain_ssl/roughness_costmap  (OccupancyGrid, for Nav2: see
                                 terrain_ssl.ros.nav2_outputs)
     /diagnostics               (limit, why, what decides it, input ages, rejects)

The algorithm lives in terrain_ssl.core.advisor.SpeedAdvisor; this node feeds it the latest map
and odometry (stamped with the node clock on arrival, so staleness = "nothing new for
stale_timeout_s") and publishes its advice on a timer. No map yet, or a stale map or odometry:
the cautious speed, and diagnostics say why. It fails closed: a map or odometry message that
cannot be used (malformed, wrong frame, NaN/Inf, negative roughness or uncertainty) is rejected,
counted, and the cautious speed holds until a good one arrives.
"""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry, Path
from rclpy.node import Node
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Float32

from terrain_ssl.core.advisor import AdvisorConfig, SpeedAdvisor, VehicleState, cap_twist
from terrain_ssl.core.roughness_map import RoughnessMap
from terrain_ssl.ros.diagnostics import DIAG_OK, DIAG_WARN, DiagnosticsPublisher, RejectCounter
from terrain_ssl.ros.linked_publisher import LinkedPublisher
from terrain_ssl.ros.node_main import run_node
from terrain_ssl.ros.parameters import LiveParameters, ParamSpec
from terrain_ssl.ros.qos import RELIABLE_QOS, SENSOR_QOS
from terrain_ssl.ros.conversions import MalformedCloudError, pointcloud2_to_array
from terrain_ssl.ros.nav2_outputs import (NAV2_PARAMS, Nav2Outputs, mask_config_from_values,
                                          nav2_outlets)

_DEFAULTS = AdvisorConfig()

PARAMS = [
    ParamSpec('shock_limit_mps2', _DEFAULTS.shock_limit_mps2,
              'Shock (m/s^2, the labeler\'s shock measure) not to exceed; the advice is '
              'shock_limit / roughness.', min=1e-3, max=1000.0),
    ParamSpec('v_min_mps', _DEFAULTS.v_min_mps, 'Slowest speed ever advised (m/s).',
              min=0.01, max=100.0),
    ParamSpec('v_max_mps', _DEFAULTS.v_max_mps, 'Fastest speed ever advised (m/s).',
              min=0.01, max=100.0),
    ParamSpec('cautious_speed_mps', _DEFAULTS.cautious_speed_mps,
              'Advice with no fresh prediction: no map yet, stale inputs, unknown ground ahead '
              '(m/s).', min=0.01, max=100.0),
    ParamSpec('accel_limit_mps2', _DEFAULTS.accel_limit_mps2,
              'The advice rises at most this fast (m/s^2).', min=0.01, max=100.0),
    ParamSpec('decel_limit_mps2', _DEFAULTS.decel_limit_mps2,
              'Braking the advice plans with ahead of rough ground (m/s^2): the limit starts '
              'falling early enough to reach the safe speed at the rough cell.',
              min=0.01, max=100.0),
    ParamSpec('corridor_half_width_m', _DEFAULTS.corridor_half_width_m,
              'Half-width of the corridor ahead that is checked (m).', min=0.0, max=50.0),
    ParamSpec('margin_m', _DEFAULTS.margin_m,
              'Look this far beyond the stopping distance at the current speed (m).',
              min=0.0, max=500.0),
    ParamSpec('front_offset_m', _DEFAULTS.front_offset_m,
              'Distance from base_link forward to the front axle, where the wheels meet the '
              'ground first (m).', min=0.0, max=50.0),
    ParamSpec('uncertainty_weight', _DEFAULTS.uncertainty_weight,
              'Conservative roughness = roughness + weight * uncertainty (dimensionless).',
              min=0.0, max=100.0),
    ParamSpec('quantile', _DEFAULTS.quantile,
              'Share of the corridor that must be safe: 1.0 = the worst cell decides, 0.95 '
              'ignores the worst 5% of stations (outlier predictions).', min=0.5, max=1.0),
    ParamSpec('path_max_offset_m', _DEFAULTS.path_max_offset_m,
              'The corridor follows the plan (topic plan) only while base_link is within this '
              'distance of it (m); farther, the plan is not being followed and the corridor '
              'runs along the heading.', min=0.0, max=1000.0),
    ParamSpec('cell_size_m', _DEFAULTS.cell_size_m,
              'Cell size of the roughness map (m); the corridor is sampled every half cell.',
              min=0.01, max=10.0),
    ParamSpec('stale_timeout_s', _DEFAULTS.stale_timeout_s,
              'No map or odometry for longer than this (s): cautious speed.', min=0.01,
              max=3600.0),
    ParamSpec('map_memory_s', _DEFAULTS.map_memory_s,
              'Keep predicted cells this long after the map that carried them (s), so ground '
              'too close for the lidar keeps its prediction; 0 = only the latest map.',
              min=0.0, max=3600.0),
    ParamSpec('max_map_cells', _DEFAULTS.max_map_cells,
              'Memory bound of the remembered map (cells, newest kept).', min=1, max=10_000_000),
    ParamSpec('cap_cmd_vel', False, 'Cap cmd_vel_in to the limit and publish it on cmd_vel.'),
    ParamSpec('rate_hz', 20.0, 'Rate of terrain_ssl/speed_limit (Hz).', min=0.1, max=1000.0,
              read_only=True),
    ParamSpec('diagnostics_period_s', 1.0, 'Period of /diagnostics (s).', min=0.05, max=60.0,
              read_only=True),
] + NAV2_PARAMS

_CONFIG_NAMES = [item.name for item in fields(AdvisorConfig)]
_FALLBACK_REASONS = ('no_map', 'stale_map', 'bad_map', 'no_odometry', 'stale_odometry',
                     'bad_odometry')


def config_from_values(values: dict) -> AdvisorConfig:
    """Parameter values -> AdvisorConfig; raises ValueError when they do not fit together."""
    return AdvisorConfig(**{name: values[name] for name in _CONFIG_NAMES})


def yaw_from_quaternion(quat_xyzw) -> float:
    x, y, z, w = quat_xyzw
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


class SpeedAdvisorNode(Node):
    """Thin ROS shell over SpeedAdvisor (see module docstring)."""

    def __init__(self, context=None, **kwargs):
        super().__init__('speed_advisor', context=context, **kwargs)
        self.rejects = RejectCounter(self.get_logger())
        self.params = LiveParameters(self, PARAMS, validate=self._validate,
                                     on_change=self._apply)
        values = self.params.values
        self.advisor = SpeedAdvisor(config_from_values(values))
        self.odom_frame = None
        self.maps_received = 0
        self.cmd_vel_capped = 0
        self.cmd_vel_passed = 0
        self.cmd_vel_ignored = 0
        self.plans_received = 0

        self.speed_limit_outlet = LinkedPublisher(self, Float32, 'terrain_ssl/speed_limit',
                                                  RELIABLE_QOS)
        self.cmd_vel_outlet = LinkedPublisher(self, Twist, 'cmd_vel', RELIABLE_QOS)
        self.create_subscription(PointCloud2, 'terrain_ssl/roughness_map', self.on_map,
                                 RELIABLE_QOS)
        self.create_subscription(Odometry, 'odom', self.on_odom, SENSOR_QOS)
        self.create_subscription(Twist, 'cmd_vel_in', self.on_cmd_vel_in, RELIABLE_QOS)
        self.create_subscription(Path, 'plan', self.on_plan, RELIABLE_QOS)
        self.timer = self.create_timer(1.0 / values['rate_hz'], self.on_timer)
        self.speed_mask_outlet, self.costmap_outlet = nav2_outlets(self)
        self.nav2_outputs = Nav2Outputs(self.speed_mask_outlet, self.costmap_outlet)
        self.mask_config = mask_config_from_values(values)
        self.nav2_timer = self.create_timer(1.0 / values['nav2_rate_hz'], self.on_nav2_timer)
        self.diagnostics = DiagnosticsPublisher(self, values['diagnostics_period_s'],
                                                self.collect_diagnostics)

    # -- parameters ----------------------------------------------------------------------------

    @staticmethod
    def _validate(values: dict):
        try:
            config_from_values(values)
            mask_config_from_values(values)
        except ValueError as error:
            return str(error)
        return None

    def _apply(self, values: dict) -> None:
        if hasattr(self, 'advisor'):
            self.advisor.reconfigure(config_from_values(values))
            self.mask_config = mask_config_from_values(values)

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    # -- inputs --------------------------------------------------------------------------------

    def on_map(self, msg: PointCloud2) -> None:
        points, problem = self._checked_map(msg)
        if problem is not None:
            self.rejects.reject(*problem)
            self.advisor.reject_map()  # fail closed: cautious until a good map arrives
            return
        now = self._now_ns()
        xy = np.stack([points['x'], points['y']], axis=1)
        roughness_map = RoughnessMap(xy, points['roughness'], points['uncertainty'],
                                     self.advisor.config.cell_size_m, stamp_ns=now)
        self.maps_received += 1
        self.advisor.set_map(roughness_map, now)

    def _checked_map(self, msg: PointCloud2):
        """(points, None), or (None, (reject reason, detail)) when the map cannot be used.

        A cell with NaN/Inf or negative roughness or uncertainty means the map's source is
        broken: the whole map is refused, not just the cell (skipping it would let the cells
        beside it decide, fail-open)."""
        try:
            points = pointcloud2_to_array(msg)
        except MalformedCloudError as error:
            return None, ('malformed_map', str(error))
        names = points.dtype.names or ()
        wanted = ('x', 'y', 'roughness', 'uncertainty')
        missing = [name for name in wanted if name not in names]
        if missing:
            return None, ('map_fields', f'roughness map has no {", ".join(missing)} field '
                          f'(fields: {list(names)})')
        vector_fields = [name for name in wanted if points.dtype[name].shape]
        if vector_fields:  # e.g. x with count 3: not one value per cell
            return None, ('malformed_map', f'fields {vector_fields} have count > 1')
        frame = msg.header.frame_id
        if self.odom_frame and frame and frame != self.odom_frame:
            return None, ('map_frame', f'map in frame "{frame}", odometry in '
                          f'"{self.odom_frame}"')
        with np.errstate(invalid='ignore', over='ignore'):
            x, y, roughness, uncertainty = (points[name].astype(np.float64) for name in wanted)
            usable = (np.isfinite(x) & np.isfinite(y) & np.isfinite(roughness)
                      & np.isfinite(uncertainty) & (roughness >= 0.0) & (uncertainty >= 0.0))
        if not usable.all():
            bad = int(usable.size - np.count_nonzero(usable))
            return None, ('map_cells_invalid', f'{bad} of {usable.size} cells with NaN/Inf or '
                          'negative roughness / uncertainty: map refused')
        return points, None

    def on_odom(self, msg: Odometry) -> None:
        # 50-100 Hz: plain floats (numpy arrays of 3 values cost more than the work here).
        pose = msg.pose.pose
        position, orientation, twist = pose.position, pose.orientation, msg.twist.twist.linear
        quat = (orientation.x, orientation.y, orientation.z, orientation.w)
        values = (position.x, position.y, position.z, twist.x, twist.y, twist.z) + quat
        if not all(map(math.isfinite, values)) or sum(q * q for q in quat) < 1e-6:
            self.rejects.reject('odometry_non_finite', 'NaN/Inf or zero quaternion in odometry')
            self.advisor.reject_state()  # fail closed: cautious until good odometry arrives
            return
        self.odom_frame = msg.header.frame_id or self.odom_frame
        # Forward speed with its sign; sideways slip adds to the magnitude.
        speed = math.copysign(math.hypot(twist.x, twist.y), twist.x)
        state = VehicleState(float(position.x), float(position.y), yaw_from_quaternion(quat),
                             speed)
        self.advisor.set_state(state, self._now_ns())

    def on_plan(self, msg: Path) -> None:
        frame = msg.header.frame_id
        if self.odom_frame and frame and frame != self.odom_frame:
            self.rejects.reject('plan_frame', f'plan in frame "{frame}", odometry in '
                                f'"{self.odom_frame}"')
            return
        xy = np.array([(pose.pose.position.x, pose.pose.position.y) for pose in msg.poses],
                      dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(xy).all():
            self.rejects.reject('plan_non_finite', 'NaN/Inf in plan poses; plan ignored')
            return
        self.plans_received += 1
        self.advisor.set_path(xy if xy.shape[0] >= 2 else None)

    def on_cmd_vel_in(self, msg: Twist) -> None:
        if not self.params.values['cap_cmd_vel']:
            self.cmd_vel_ignored += 1
            return
        linear = np.array([msg.linear.x, msg.linear.y, msg.linear.z])
        angular = np.array([msg.angular.x, msg.angular.y, msg.angular.z])
        if not (np.isfinite(linear).all() and np.isfinite(angular).all()):
            self.rejects.reject('cmd_vel_non_finite', 'NaN/Inf in cmd_vel_in: not forwarded')
            return
        advice = self.advisor.last_advice
        limit = advice.speed_limit_mps if advice is not None else self.on_timer()
        linear, angular, scale = cap_twist(linear, angular, limit)
        if scale < 1.0:
            self.cmd_vel_capped += 1
        else:
            self.cmd_vel_passed += 1
        out = Twist()
        out.linear.x, out.linear.y, out.linear.z = (float(value) for value in linear)
        out.angular.x, out.angular.y, out.angular.z = (float(value) for value in angular)
        self.cmd_vel_outlet.publish(out)

    # -- output --------------------------------------------------------------------------------

    def on_timer(self) -> float:
        """Publish the speed limit now (m/s); also returns it."""
        advice = self.advisor.update(self._now_ns())
        self.speed_limit_outlet.publish(Float32(data=float(advice.speed_limit_mps)))
        return advice.speed_limit_mps

    def on_nav2_timer(self) -> bool:
        """Publish the speed mask and the roughness costmap (when anyone listens)."""
        return self.nav2_outputs.publish(self.advisor, self.mask_config,
                                         self.odom_frame or 'odom',
                                         self.get_clock().now().to_msg())

    def collect_diagnostics(self):
        advisor = self.advisor
        advice = advisor.last_advice
        now = self._now_ns()

        def age(stamp):
            return (now - stamp) / 1e9 if stamp is not None else 'never'

        values = {
            'speed_limit_mps': advice.speed_limit_mps if advice else 'none yet',
            'reason': advice.reason if advice else 'not started',
            'allowed_mps': advice.allowed_mps if advice else 'none yet',
            'deciding_roughness': advice.worst_roughness if advice else 'none yet',
            'deciding_distance_m': advice.worst_distance_m if advice else 'none yet',
            'lookahead_m': advice.lookahead_m if advice else 'none yet',
            'unknown_fraction': advice.unknown_fraction if advice else 'none yet',
            'map_age_s': age(advisor.map_time_ns),
            'odometry_age_s': age(advisor.state_time_ns),
            'map_cells': len(advisor.map) if advisor.map is not None else 0,
            'maps_received': self.maps_received,
            'following_plan': advisor.path_xy_m is not None,
            'plans_received': self.plans_received,
            'late_hazards': advisor.late_hazards,
            'cmd_vel_capped': self.cmd_vel_capped,
            'cmd_vel_passed': self.cmd_vel_passed,
            'cmd_vel_ignored': self.cmd_vel_ignored,
            'rejected': self.rejects.total,
        }
        for reason, count in self.rejects.counts.items():
            values[f'rejected_{reason}'] = count
        if advice is None:
            return DIAG_WARN, 'starting', values
        if advice.reason in _FALLBACK_REASONS:
            text = {'no_map': 'no roughness map yet', 'stale_map': 'roughness map is stale',
                    'bad_map': 'the latest roughness map was unusable',
                    'bad_odometry': 'the latest odometry was unusable',
                    'no_odometry': 'no odometry yet', 'stale_odometry': 'odometry is stale'}
            return (DIAG_WARN, f'{text[advice.reason]}: cautious speed '
                    f'{advice.speed_limit_mps:.2f} m/s', values)
        return DIAG_OK, f'speed limit {advice.speed_limit_mps:.2f} m/s ({advice.reason})', values


def main(args=None) -> int:
    return run_node(SpeedAdvisorNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
