"""roughness_labeler: IMU vibration labels the lidar patches the vehicle has driven over.

In:  imu/data (sensor_msgs/Imu), points (sensor_msgs/PointCloud2), odom (nav_msgs/Odometry),
     all with the sensor-data QoS
Out: terrain_ssl/lookahead_patches  PointCloud2, one point per ground cell of each scan:
                                    x, y, z (odom, m) + terrain_ssl.core.patches.FEATURE_NAMES
     terrain_ssl/labeled_patches    the same fields as seen before the crossing, plus roughness
                                    ((m/s^2)/(m/s)), roughness_class (0 smooth, 1 moderate,
                                    2 rough), shock (m/s^2), speed (m/s), seen_to_cross_s (s)
     /diagnostics                   input rates, labels emitted, rejects by reason

All algorithmic time comes from message stamps (so replays and use_sim_time work); the node clock
only paces diagnostics. Every threshold and size is a parameter, validated on set and applied
live (see terrain_ssl.core.labeler.LabelerConfig for what each change rebuilds).
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Imu, PointCloud2

from terrain_ssl.core.deskew import STAMP_CONVENTIONS
from terrain_ssl.core.ground import GROUND_METHODS
from terrain_ssl.core.labeler import Labeler, LabelerConfig
from terrain_ssl.core.patches import FEATURE_NAMES
from terrain_ssl.core.vibration import GRAVITY_SOURCES, SHOCK_MEASURES
from terrain_ssl.ros.diagnostics import DIAG_OK, DIAG_WARN, DiagnosticsPublisher, RejectCounter
from terrain_ssl.ros.linked_publisher import LinkedPublisher
from terrain_ssl.ros.node_main import run_node
from terrain_ssl.ros.parameters import LiveParameters, ParamSpec
from terrain_ssl.ros.qos import HIGH_RATE_SENSOR_QOS, LABELS_QOS, RELIABLE_QOS, SENSOR_QOS
from terrain_ssl.ros.tf_extrinsic import TfExtrinsic, set_by_hand, tf2_available
from terrain_ssl.ros.conversions import (MalformedCloudError, float_matrix_to_pointcloud2,
                                         pointcloud2_point_times, pointcloud2_xyz_view,
                                         stamp_to_ns)

_DEFAULT = LabelerConfig()
# Fields of the output clouds, in order (all float32).
LOOKAHEAD_FIELDS = ('x', 'y', 'z') + FEATURE_NAMES
LABELED_FIELDS = LOOKAHEAD_FIELDS + ('roughness', 'roughness_class', 'shock', 'speed',
                                     'seen_to_cross_s')
_RATE_STREAMS = ('imu', 'odometry', 'scans', 'labels')


def _spec(name, description, **limits) -> ParamSpec:
    """A parameter mirroring LabelerConfig field `name` with its first '.' as '_'."""
    return ParamSpec(name, getattr(_DEFAULT, name.replace('.', '_', 1)), description, **limits)


# Parameter `a.b_c` <-> LabelerConfig field `a_b_c`.
CONFIG_PARAMS = [
    _spec('vibration.band_low_hz', 'Band-pass low corner (Hz) on vertical acceleration.',
          min=0.05, max=50.0),
    _spec('vibration.band_high_hz', 'Band-pass high corner (Hz); capped at 0.45 x IMU rate.',
          min=0.5, max=500.0),
    _spec('vibration.band_order', 'Butterworth order per band edge.', min=1, max=8),
    _spec('vibration.gravity_source', 'Up direction: auto/orientation (IMU quaternion when '
          'valid, else estimated), estimate (low-pass of specific force).',
          choices=GRAVITY_SOURCES),
    _spec('vibration.gravity_tau_s', 'Time constant of the up-direction estimate (s).',
          min=0.05, max=60.0),
    _spec('vibration.shock_measure', 'Shock over a crossing: peak |a|, rms, or wk_rms '
          '(ISO 2631-1 Wk weighted) (m/s^2).', choices=SHOCK_MEASURES),
    _spec('imu.max_gap_s', 'IMU stamp step beyond which samples are missing (s).',
          min=0.001, max=5.0),
    _spec('imu.max_wait_s', 'Crossings wait at most this long for IMU data (s).',
          min=0.1, max=60.0),
    _spec('patch.size', 'Ground cell edge (m); a change restarts the cell map.',
          min=0.05, max=5.0),
    _spec('patch.min_points', 'Ground returns a cell needs to become a patch.', min=3,
          max=100000),
    _spec('patch.ground_band', 'Points higher than this above the lowest point of their cell '
          'are not ground (m).', min=0.0, max=10.0),
    _spec('patch.min_range', 'Ignore returns closer to the lidar than this (m, horizontal).',
          min=0.0, max=100.0),
    _spec('patch.max_range', 'Ignore returns farther from the lidar than this (m, horizontal).',
          min=1.0, max=300.0),
    _spec('ground.method', 'Ground segmentation: envelope (lower envelope of the scan\'s cells), '
          'patchwork (Patchwork++, needs pypatchworkpp) or none (every return).',
          choices=GROUND_METHODS),
    _spec('ground.window', 'Lower-envelope window edge (m): wider than what stands up.',
          min=0.5, max=50.0),
    _spec('ground.max_height', 'Cells higher than this above the local ground are not ground '
          '(m).', min=0.01, max=10.0),
    _spec('ground.max_slope', 'Cells steeper than this are faces, not ground (rad).',
          min=0.05, max=1.57),
    _spec('deskew.stamp', 'Header stamp of clouds with a per-point time field: auto (from the '
          'sign), start, end; none: no deskew.', choices=STAMP_CONVENTIONS + ('none',)),
    _spec('lidar.x', 'Lidar position in base_link, x (m).', min=-10.0, max=10.0),
    _spec('lidar.y', 'Lidar position in base_link, y (m).', min=-10.0, max=10.0),
    _spec('lidar.z', 'Lidar position in base_link, z (m).', min=-10.0, max=10.0),
    _spec('lidar.roll', 'Lidar roll in base_link (rad).', min=-np.pi, max=np.pi),
    _spec('lidar.pitch', 'Lidar pitch in base_link (rad).', min=-np.pi, max=np.pi),
    _spec('lidar.yaw', 'Lidar yaw in base_link (rad).', min=-np.pi, max=np.pi),
    _spec('map.max_cells', 'Cells kept ahead at most (memory bound); stalest evicted.',
          min=1, max=10_000_000),
    _spec('map.max_age_s', 'Cells not seen for this long are dropped (s).', min=0.1,
          max=3600.0),
    _spec('footprint.length', 'Footprint length along base_link x (m), front to rear tyre.',
          min=0.05, max=50.0),
    _spec('footprint.width', 'Footprint width along base_link y (m).', min=0.05, max=50.0),
    _spec('footprint.offset_x', 'Footprint centre ahead of base_link (m).', min=-50.0,
          max=50.0),
    _spec('label.min_speed', 'No label below this ground speed (m/s).', min=0.0, max=100.0),
    _spec('label.speed_exponent', 'roughness = sqrt(shock^2 - floor^2) / speed**exponent x '
          'reference_speed**(exponent - 1) ((m/s^2)/(m/s)); `terrain-ssl calibrate` fits it.',
          min=0.0, max=3.0),
    _spec('label.reference_speed', 'Speed at which roughness x speed is the terrain shock '
          '(m/s); no effect at speed_exponent 1. `terrain-ssl calibrate` sets the typical speed.',
          min=0.01, max=100.0),
    _spec('label.floor', 'Vibration floor (motor, drivetrain, IMU noise) removed from each '
          'shock before the speed normalisation (m/s^2); `terrain-ssl calibrate` fits it.',
          min=0.0, max=100.0),
    _spec('label.min_window_s', 'Shortest shock window around a crossing (s).', min=0.005,
          max=10.0),
    _spec('label.batch_s', 'A crossing covered by the IMU waits up to this long for the ones '
          'completing after it, to be labeled and published together (s); 0: at once.',
          min=0.0, max=5.0),
    _spec('label.moderate_threshold', 'Roughness ((m/s^2)/(m/s)) from which a label is '
          'moderate; applies to the next label.', min=0.0, max=1e6),
    _spec('label.rough_threshold', 'Roughness ((m/s^2)/(m/s)) from which a label is rough; '
          'applies to the next label.', min=0.0, max=1e6),
    _spec('time.reset_backwards_s', 'A jump back this far (s) resets all state once its stream '
          'stays on the new time line or another stream agrees (looping bag); a lone stamp that '
          'far back is dropped (stamp_out_of_line), smaller steps back as out of order.',
          min=0.001, max=3600.0),
    _spec('odom.max_extrapolation_s', 'A scan may be newer than the last odometry by at most '
          'this (s).', min=0.0, max=5.0),
    _spec('odom.max_interval_s', 'Odometry bracketing a scan at most this far apart (s).',
          min=0.01, max=10.0),
]
NODE_PARAMS = [
    ParamSpec('diagnostics_period_s', 1.0, 'Period of /diagnostics (s).', min=0.05, max=60.0,
              read_only=True),
    ParamSpec('publish_lookahead', True, 'Publish terrain_ssl/lookahead_patches.'),
    ParamSpec('frames.base', 'base_link', 'Vehicle frame of the lidar extrinsic (TF lookups).',
              read_only=True),
    ParamSpec('frames.lidar', '', 'Lidar frame for TF lookups; empty: the clouds\' frame_id.',
              read_only=True),
    ParamSpec('frames.use_tf', True, 'Take the lidar mount (lidar.*) from TF when tf2_ros is '
              'installed and lidar.* are at their defaults.', read_only=True),
]


def config_from_values(values: dict) -> LabelerConfig:
    """Parameter values (dict name -> value) -> LabelerConfig."""
    names = {f.name for f in fields(LabelerConfig)}
    kwargs = {}
    for spec in CONFIG_PARAMS:
        field_name = spec.name.replace('.', '_', 1)
        assert field_name in names, field_name
        kwargs[field_name] = values[spec.name]
    return LabelerConfig(**kwargs)


class RoughnessLabelerNode(Node):
    """Thin ROS shell over terrain_ssl.core.labeler.Labeler (see module docstring)."""

    def __init__(self, context=None, **kwargs):
        super().__init__('roughness_labeler', context=context, **kwargs)
        self.rejects = RejectCounter(self.get_logger())
        self.params = LiveParameters(self, CONFIG_PARAMS + NODE_PARAMS,
                                     validate=lambda values: config_from_values(values).validate(),
                                     on_change=self._apply)
        self.labeler = Labeler(config_from_values(self.params.values),
                               on_reject=self.rejects.reject)
        self.odom_frame = 'odom'
        self.lookahead_outlet = LinkedPublisher(self, PointCloud2,
                                                'terrain_ssl/lookahead_patches', RELIABLE_QOS)
        self.labeled_outlet = LinkedPublisher(self, PointCloud2, 'terrain_ssl/labeled_patches',
                                              LABELS_QOS)
        self.create_subscription(Imu, 'imu/data', self.on_imu, HIGH_RATE_SENSOR_QOS)
        self.create_subscription(PointCloud2, 'points', self.on_points, SENSOR_QOS)
        self.create_subscription(Odometry, 'odom', self.on_odometry, HIGH_RATE_SENSOR_QOS)
        self.tf_extrinsic = self._tf_extrinsic()
        self._rate_marks = None  # (clock ns, counts) at the previous diagnostics
        self.rates_hz = {stream: 0.0 for stream in _RATE_STREAMS}
        self.diagnostics = DiagnosticsPublisher(
            self, self.params.values['diagnostics_period_s'], self.collect_diagnostics)

    def _tf_extrinsic(self):
        """A TF listener for the lidar mount, or None where the lidar.* parameters stand."""
        defaults = {spec.name: spec.default for spec in CONFIG_PARAMS}
        if not self.params.values['frames.use_tf']:
            return None
        if set_by_hand(self.params.values, defaults):
            self.get_logger().info('lidar extrinsic: the lidar.* parameters (set by hand)')
            return None
        if not tf2_available():
            self.get_logger().info('lidar extrinsic: the lidar.* parameters (tf2_ros is not '
                                   'installed, so TF cannot be asked)')
            return None
        return TfExtrinsic(self, self.params.values['frames.base'])

    def _extrinsic_from_tf(self, lidar_frame: str) -> None:
        """Once TF knows base -> lidar: the lidar.* parameters become it, and TF is left."""
        values = self.tf_extrinsic.lookup(lidar_frame)
        base = self.tf_extrinsic.base_frame
        if values is None:
            self.get_logger().warning(
                f'lidar extrinsic: TF has no {base} -> {lidar_frame} yet; the lidar.* '
                'parameters meanwhile', throttle_duration_sec=10.0)
            return
        self.tf_extrinsic.close()
        self.tf_extrinsic = None
        # All six or none: a mount half applied would be worse than either.
        result = self.set_parameters_atomically([Parameter(name, value=float(value))
                                                 for name, value in values.items()])
        if not result.successful:
            self.get_logger().error(f'lidar extrinsic: TF\'s {base} -> {lidar_frame} refused '
                                    f'({result.reason}); the lidar.* parameters stand')
            return
        self.get_logger().info(
            f'lidar extrinsic: {base} -> {lidar_frame} = '
            + ' '.join(f'{value:.4g}' for value in values.values())
            + ' (x y z m, roll pitch yaw rad) from TF')

    def _apply(self, values: dict) -> None:
        """Accepted parameter change: reconfigure the core (it raises ValueError if refused)."""
        self.labeler.reconfigure(config_from_values(values))

    # -- inputs --------------------------------------------------------------------------------

    def on_imu(self, msg: Imu) -> None:
        # The 200 Hz path: plain tuples, no gyro, no numpy round trip (imu_to_arrays costs more
        # than the labeler's own work here). Same rule as imu_to_arrays for the orientation:
        # covariance[0] == -1 means none (REP 145); add_imu drops non-finite or zero ones.
        accel = msg.linear_acceleration
        quat = None
        if msg.orientation_covariance[0] != -1.0:
            q = msg.orientation
            quat = (q.x, q.y, q.z, q.w)
        self.labeler.add_imu(stamp_to_ns(msg.header.stamp), (accel.x, accel.y, accel.z), quat)
        if self.labeler.has_labels:
            self._publish_labels()

    def on_odometry(self, msg: Odometry) -> None:
        # Plain tuples, as for the IMU: add_odometry works on floats (odometry_to_arrays' numpy
        # arrays would be taken apart again).
        pose, twist = msg.pose.pose, msg.twist.twist
        p, q, v, w = pose.position, pose.orientation, twist.linear, twist.angular
        if msg.header.frame_id:
            self.odom_frame = msg.header.frame_id
        self.labeler.add_odometry(stamp_to_ns(msg.header.stamp), (p.x, p.y, p.z),
                                  (q.x, q.y, q.z, q.w), (v.x, v.y, v.z), (w.x, w.y, w.z))
        if self.labeler.has_labels:
            self._publish_labels()

    def on_points(self, msg: PointCloud2) -> None:
        try:
            # Keep non-finite points: the core drops and counts them (and converts to float64
            # only the finite ones).
            points = pointcloud2_xyz_view(msg)
        except MalformedCloudError as error:
            reason = 'missing_fields' if 'field (fields' in str(error) else 'malformed_cloud'
            self.rejects.reject(reason, str(error))
            return
        if self.tf_extrinsic is not None:
            self._extrinsic_from_tf(self.params.values['frames.lidar'] or msg.header.frame_id)
        t_ns = stamp_to_ns(msg.header.stamp)
        patches = self.labeler.add_scan(t_ns, points, pointcloud2_point_times(msg))
        if patches is None or not len(patches) or not self.params.values['publish_lookahead']:
            return
        # Straight into float32, the cloud's type (np.hstack made a float64 copy first).
        values = np.empty((len(patches), len(LOOKAHEAD_FIELDS)), dtype=np.float32)
        values[:, :3] = patches.centres
        values[:, 3:] = patches.features
        self.lookahead_outlet.publish(float_matrix_to_pointcloud2(
            LOOKAHEAD_FIELDS, values, self.odom_frame, t_ns))

    def flush_labels(self) -> None:
        """Publish now every label whose IMU window is covered (end of a recording: the batch
        they wait for would never complete)."""
        self.labeler.flush_labels()
        if self.labeler.has_labels:
            self._publish_labels()

    def _publish_labels(self) -> None:
        labels = self.labeler.pop_labels()
        if labels is None:
            return
        values = np.column_stack([labels.centres, labels.features, labels.roughness,
                                  labels.roughness_class, labels.shock, labels.speed,
                                  labels.seen_to_cross_s])
        self.labeled_outlet.publish(
            float_matrix_to_pointcloud2(LABELED_FIELDS, values, self.odom_frame, labels.t_ns))

    # -- diagnostics ---------------------------------------------------------------------------

    def _update_rates(self) -> None:
        now_ns = self.get_clock().now().nanoseconds
        counts = {stream: self.labeler.stats[stream] for stream in _RATE_STREAMS}
        if self._rate_marks is not None:
            then_ns, before = self._rate_marks
            if now_ns > then_ns:
                seconds = (now_ns - then_ns) / 1e9
                self.rates_hz = {stream: max(counts[stream] - before[stream], 0) / seconds
                                 for stream in _RATE_STREAMS}
        self._rate_marks = (now_ns, counts)

    def collect_diagnostics(self):
        self._update_rates()
        labeler = self.labeler
        stats = labeler.stats
        values = {
            'imu_rate_hz': self.rates_hz['imu'],
            'odometry_rate_hz': self.rates_hz['odometry'],
            'scan_rate_hz': self.rates_hz['scans'],
            'label_rate_hz': self.rates_hz['labels'],
            'imu_rate_measured_hz': labeler.vibration.rate_hz or 0.0,
            'imu_accepted': stats['imu'],
            'odometry_accepted': stats['odometry'],
            'scans_accepted': stats['scans'],
            'labels_emitted': stats['labels'],
            'patches_seen': stats['patches'],
            'cells_in_map': len(labeler.cells),
            'cells_evicted': labeler.cells.evicted,
            'crossings_below_min_speed': stats['below_min_speed'],
            'points_nonfinite': stats['points_nonfinite'],
            'resets': stats['resets'],
            'lookahead_published': self.lookahead_outlet.published,
            'labeled_published': self.labeled_outlet.published,
            'rejected': self.rejects.total,
        }
        for reason, count in sorted(self.rejects.counts.items()):
            values[f'rejected_{reason}'] = count
        if stats['imu'] == 0 or stats['scans'] == 0 or stats['odometry'] == 0:
            missing = [name for name in ('imu', 'scans', 'odometry') if stats[name] == 0]
            return DIAG_WARN, 'waiting for ' + ', '.join(missing), values
        if self.rates_hz['imu'] == 0.0 or self.rates_hz['scans'] == 0.0:
            return DIAG_WARN, 'an input stopped (IMU or scans)', values
        return DIAG_OK, f'labeling: {stats["labels"]} labels', values


def main(args=None) -> int:
    return run_node(RoughnessLabelerNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
