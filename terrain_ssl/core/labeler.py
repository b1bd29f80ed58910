"""The self-supervised labeler: IMU + odometry + lidar (numpy in) -> lookahead and labeled patches.

    scan  --(pose at scan stamp, lidar extrinsic)--> odom points --> PatchSet --> CellMap
    odom  --> PoseHistory --> footprint over CellMap --> completed Crossings (pending)
    IMU   --> VibrationFilter --> shock over each pending crossing's window / speed --> labels

Inputs are checked here: non-finite values, empty scans, time going backwards (a looping bag:
everything resets; a lone stamp far out of line is dropped, see terrain_ssl.core.stamps),
out-of-order or duplicate stamps, IMU gaps and scans without odometry are counted by reason in
`rejects` (and reported through `on_reject`), never raised.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Callable, Optional

import numpy as np

from terrain_ssl.core.association import CellMap, Crossings
from terrain_ssl.core.deskew import STAMP_CONVENTIONS, deskew_to_frame, point_offsets_s
from terrain_ssl.core.geometry import PoseHistory, make_transform, quat_from_rpy
from terrain_ssl.core.ground import CellGeometry, GroundConfig, GroundSegmenter
from terrain_ssl.core.label_model import label_roughness
from terrain_ssl.core.patches import (FEATURE_NAMES, PatchSet,
                                      count_finite_points, finite_points_to_frame)
from terrain_ssl.core.stamps import ACCEPT, NEW_RUN, OUT_OF_ORDER, StampGuard
from terrain_ssl.core.vibration import GRAVITY_SOURCES, SHOCK_MEASURES, VibrationFilter

NS_PER_S = 1_000_000_000
ROUGHNESS_CLASSES = ('smooth', 'moderate', 'rough')


@dataclass
class LabelerConfig:
    """All tunables. Field `a_b` is ROS parameter `a.b` (first underscore -> dot) in the node."""

    # Vibration
    vibration_band_low_hz: float = 1.0       # band-pass low corner (Hz)
    vibration_band_high_hz: float = 30.0     # band-pass high corner (Hz)
    vibration_band_order: int = 2            # Butterworth order per edge
    vibration_gravity_source: str = 'auto'   # auto | orientation | estimate
    vibration_gravity_tau_s: float = 1.0     # up-direction estimate time constant (s)
    vibration_shock_measure: str = 'rms'     # peak | rms | wk_rms
    imu_max_gap_s: float = 0.05              # larger IMU stamp steps are gaps (s)
    imu_max_wait_s: float = 2.0              # crossings waiting longer for IMU are dropped (s)
    # Patches
    patch_size: float = 0.5                  # cell edge (m)
    patch_min_points: int = 5                # fewer ground returns: no patch
    patch_ground_band: float = 0.3           # max height above the cell's lowest point (m)
    patch_min_range: float = 2.0             # horizontal distance from the lidar (m)
    patch_max_range: float = 25.0            # (m)
    # Ground segmentation (terrain_ssl.core.ground): envelope | patchwork | none
    ground_method: str = 'envelope'
    ground_window: float = 5.0               # lower-envelope window edge (m)
    ground_max_height: float = 0.3           # cells higher above the local ground: not ground (m)
    ground_max_slope: float = 0.7            # steeper cells are faces, not ground (rad)
    # Deskew with the per-point time field: auto (from its sign) | start | end | none
    deskew_stamp: str = 'auto'
    # Lidar extrinsic base_link -> lidar_link
    lidar_x: float = 0.3                     # (m)
    lidar_y: float = 0.0                     # (m)
    lidar_z: float = 1.6                     # (m)
    lidar_roll: float = 0.0                  # (rad)
    lidar_pitch: float = 0.0                 # (rad)
    lidar_yaw: float = 0.0                   # (rad)
    # Association
    map_max_cells: int = 20000               # memory bound of the cell map
    map_max_age_s: float = 20.0              # unseen cells are dropped after (s)
    # Defaults: base_link under the rear axle, wheelbase 2.6 m, track 1.6 m, tyres ~0.2 m.
    footprint_length: float = 2.8            # along base_link x, rear to front tyre (m)
    footprint_width: float = 1.8             # along base_link y (m)
    footprint_offset_x: float = 1.3          # footprint centre ahead of base_link (m)
    # Labels
    label_min_speed: float = 1.0             # no label below this ground speed (m/s)
    # roughness = sqrt(shock^2 - floor^2) / speed**exponent * reference_speed**(exponent - 1)
    # (terrain_ssl.core.label_model); floor 0 and exponent 1 (shock / speed) suit a car at
    # 3-7 m/s, where the vibration floor of motor, drivetrain and IMU is far below the terrain's.
    label_speed_exponent: float = 1.0
    label_floor: float = 0.0                 # vibration floor removed from each shock (m/s^2)
    label_reference_speed: float = 1.0       # where roughness x speed is the terrain's shock (m/s)
    label_min_window_s: float = 0.1          # shortest shock window (s), centred on the crossing
    # A crossing whose window the IMU has covered waits up to this long (s) for the crossings
    # completing right after it: they are measured and published as one batch. 0: each one as
    # soon as it is covered (~20 small label messages a second at 5 m/s, and as many shock
    # computations, learner and advisor updates, for the same labels).
    label_batch_s: float = 0.1
    # On the simulator's vehicle, ISO 8608 classes A/B label ~0.02-0.05, C ~0.1, D ~0.2, E ~0.35.
    label_moderate_threshold: float = 0.1    # roughness at which "moderate" starts
    label_rough_threshold: float = 0.3       # roughness at which "rough" starts
    # Time
    time_reset_backwards_s: float = 1.0      # a jump this far back may be a new run: reset (s)
    odom_max_extrapolation_s: float = 0.1    # scan newer than the last odometry by at most (s)
    odom_max_interval_s: float = 0.5         # odometry bracketing a scan at most this apart (s)

    def validate(self) -> Optional[str]:
        """Why this configuration cannot work, or None."""
        positive = ['vibration_band_low_hz', 'vibration_band_high_hz', 'vibration_gravity_tau_s',
                    'imu_max_gap_s', 'imu_max_wait_s', 'patch_size', 'patch_max_range',
                    'map_max_age_s', 'footprint_length', 'footprint_width',
                    'time_reset_backwards_s', 'odom_max_interval_s', 'label_min_window_s',
                    'label_reference_speed']
        for name in positive:
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                return f'{name} must be > 0, got {value}'
        non_negative = ['patch_ground_band', 'patch_min_range', 'label_min_speed',
                        'label_moderate_threshold', 'label_speed_exponent', 'label_floor',
                        'label_batch_s', 'odom_max_extrapolation_s']
        for name in non_negative:
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                return f'{name} must be >= 0, got {value}'
        if self.vibration_band_low_hz >= self.vibration_band_high_hz:
            return (f'vibration band: low {self.vibration_band_low_hz} Hz must be below '
                    f'high {self.vibration_band_high_hz} Hz')
        if self.vibration_band_order < 1 or self.vibration_band_order > 8:
            return 'vibration_band_order must be in 1..8'
        if self.vibration_gravity_source not in GRAVITY_SOURCES:
            return f'vibration_gravity_source must be one of {GRAVITY_SOURCES}'
        if self.vibration_shock_measure not in SHOCK_MEASURES:
            return f'vibration_shock_measure must be one of {SHOCK_MEASURES}'
        if self.patch_min_range >= self.patch_max_range:
            return 'patch_min_range must be below patch_max_range'
        if self.patch_min_points < 3:
            return 'patch_min_points must be >= 3 (a plane needs 3 points)'
        if self.map_max_cells < 1:
            return 'map_max_cells must be >= 1'
        problem = GroundConfig.of_labeler(self).validate()
        if problem:
            return problem
        if self.deskew_stamp not in STAMP_CONVENTIONS + ('none',):
            return f'deskew_stamp must be one of {STAMP_CONVENTIONS + ("none",)}'
        if self.label_moderate_threshold >= self.label_rough_threshold:
            return (f'label thresholds: moderate ({self.label_moderate_threshold}) must be below '
                    f'rough ({self.label_rough_threshold})')
        return None


@dataclass
class LabeledPatches:
    """Labeled samples: features seen before the crossing + measured roughness (one row each)."""

    t_ns: int                   # latest crossing end in this batch (stamp of the message)
    keys: np.ndarray
    centres: np.ndarray         # (K, 3) odom, m
    features: np.ndarray        # (K, F) FEATURE_NAMES
    roughness: np.ndarray       # (m/s^2)/(m/s)
    roughness_class: np.ndarray  # 0 smooth, 1 moderate, 2 rough
    shock: np.ndarray           # m/s^2
    speed: np.ndarray           # m/s
    seen_to_cross_s: np.ndarray  # first sighting -> footprint entering the cell (s)
    cross_t_ns: np.ndarray      # per-sample crossing stamp (exit)

    def __len__(self) -> int:
        return self.keys.shape[0]


def classify(roughness: np.ndarray, moderate_threshold: float, rough_threshold: float):
    """0 smooth (< moderate), 1 moderate, 2 rough (>= rough), per roughness value."""
    return np.searchsorted(np.array([moderate_threshold, rough_threshold]),
                           np.asarray(roughness), side='right').astype(np.int64)


class Labeler:
    """Streams of numpy samples in; lookahead `PatchSet`s and `LabeledPatches` out.

    Usage: call `add_imu`, `add_odometry` and `add_scan` in stamp order per stream (interleaving
    between streams is free); `add_scan` returns the lookahead patches of that scan (or None);
    `pop_labels()` returns the labels completed since the last call (or None).
    """

    def __init__(self, config: Optional[LabelerConfig] = None,
                 on_reject: Optional[Callable[[str, str], None]] = None):
        self.config = config or LabelerConfig()
        problem = self.config.validate()
        if problem:
            raise ValueError(problem)
        self.on_reject = on_reject
        self.rejects: dict = {}
        self.stats = {'imu': 0, 'odometry': 0, 'scans': 0, 'patches': 0, 'labels': 0,
                      'resets': 0, 'below_min_speed': 0, 'points_nonfinite': 0}
        self._build()

    # -- configuration -----------------------------------------------------------------------

    def _build(self) -> None:
        c = self.config
        self.vibration = VibrationFilter(
            c.vibration_band_low_hz, c.vibration_band_high_hz, c.vibration_band_order,
            c.vibration_gravity_source, c.vibration_gravity_tau_s, c.imu_max_gap_s,
            history_s=max(10.0, 2 * c.imu_max_wait_s + 2.0))
        self.poses = PoseHistory(horizon_s=max(10.0, 2 * c.imu_max_wait_s + 2.0))
        self.cells = CellMap(c.map_max_cells, c.map_max_age_s, c.footprint_length,
                             c.footprint_width, c.footprint_offset_x)
        self._base_to_lidar = make_transform(
            [c.lidar_x, c.lidar_y, c.lidar_z], quat_from_rpy(c.lidar_roll, c.lidar_pitch,
                                                             c.lidar_yaw))
        self.ground = GroundSegmenter(GroundConfig.of_labeler(c))
        self._set_pending(Crossings.empty())
        self._ready: list = []
        self._stamps = StampGuard(('imu', 'odometry', 'scan'), c.time_reset_backwards_s)
        self._last = self._stamps.last  # stream -> last accepted stamp (ns)
        self._imu_gaps_seen = 0

    def reconfigure(self, config: LabelerConfig) -> None:
        """Apply a new configuration live; keeps state where the change allows it.

        Label thresholds, speed normalisation and the shock measure apply to the next label.
        Filter, cell-size or footprint changes rebuild the affected parts (cell keys depend on
        the cell size, so the map restarts).
        """
        problem = config.validate()
        if problem:
            raise ValueError(problem)
        old, self.config = self.config, config
        changed = {f.name for f in fields(LabelerConfig)
                   if getattr(old, f.name) != getattr(config, f.name)}
        rebuild_prefixes = ('vibration_band', 'vibration_gravity', 'imu_max_gap', 'patch_size',
                            'map_', 'footprint_', 'lidar_', 'ground_')
        if any(name.startswith(rebuild_prefixes) for name in changed):
            stats, rejects = self.stats, self.rejects
            self._build()
            self.stats, self.rejects = stats, rejects
        self._stamps.reset_backwards_ns = int(config.time_reset_backwards_s * NS_PER_S)

    # -- bookkeeping -------------------------------------------------------------------------

    def _reject(self, reason: str, detail: str = '') -> None:
        self.rejects[reason] = self.rejects.get(reason, 0) + 1
        if self.on_reject is not None:
            self.on_reject(reason, detail)

    def reset(self) -> None:
        """Forget all state (not the counters): time went backwards, e.g. a looping bag."""
        self.stats['resets'] += 1
        # Crossings the IMU has covered are labels of the old run: kept, not dropped with it.
        self.flush_labels()
        stats, rejects, ready = self.stats, self.rejects, self._ready
        self._build()
        self.stats, self.rejects, self._ready = stats, rejects, ready

    def _accept_stamp(self, stream: str, t_ns: int) -> bool:
        """Stamps must increase per stream; a jump back the streams agree on resets everything
        (see terrain_ssl.core.stamps), a lone stamp out of line is dropped and counted."""
        verdict = self._stamps.check(stream, t_ns)
        if verdict == ACCEPT:
            return True
        if verdict == NEW_RUN:
            self._reject(NEW_RUN, f'{stream} stamps went back to {t_ns} ns: state reset')
            self.reset()
            self._stamps.check(stream, t_ns)
            return True
        detail = ('stamp not after the previous one' if verdict == OUT_OF_ORDER else
                  'stamp far behind the previous one, not (yet) followed by the others')
        self._reject(verdict, f'{stream} {detail}')
        return False

    # -- inputs ------------------------------------------------------------------------------

    def add_imu(self, t_ns: int, accel, quat_xyzw=None) -> None:
        """One IMU sample: specific force (3,) m/s^2 in the IMU frame; orientation or None."""
        # The 200-1000 Hz path: plain floats (numpy's per-call overhead dwarfs 3 values).
        values = _floats(accel, 3)
        if values is None or not _all_finite(values):
            self._reject('nonfinite_imu', f'acceleration {accel}')
            return
        accel = values
        if quat_xyzw is not None:
            quat_xyzw = _floats(quat_xyzw, 4)
            if quat_xyzw is None or not _all_finite(quat_xyzw) \
                    or _dot(quat_xyzw, quat_xyzw) < 1e-6:
                quat_xyzw = None  # a bad orientation is no orientation: estimate gravity
        if not self._accept_stamp('imu', int(t_ns)):
            return
        self.stats['imu'] += 1
        self.vibration.add(int(t_ns), accel, quat_xyzw)
        if self.vibration.gaps > self._imu_gaps_seen:  # counted as it happens, not at the next
            self._count_imu_gaps()                     # odometry (there may be none: a reset)
        self._label_pending()

    def _count_imu_gaps(self) -> None:
        gaps = self.vibration.gaps  # counted by VibrationFilter.add as samples arrive
        for _ in range(gaps - self._imu_gaps_seen):
            self._reject('imu_gap', f'no IMU sample for more than {self.config.imu_max_gap_s} s')
        self._imu_gaps_seen = max(gaps, self._imu_gaps_seen)

    def add_odometry(self, t_ns: int, position, quat_xyzw, linear_velocity,
                     angular_velocity=(0.0, 0.0, 0.0)) -> None:
        """Pose of base_link in odom (m, quaternion) and body-frame twist (m/s, rad/s)."""
        # The 50-100 Hz path: plain floats, as for the IMU (four small numpy arrays and their
        # checks cost more than the rest of the call when no crossing completes).
        values = (_floats(position, 3), _floats(quat_xyzw, 4), _floats(linear_velocity, 3),
                  _floats(angular_velocity, 3))
        if not all(value is not None and _all_finite(value) for value in values) \
                or _dot(values[1], values[1]) < 1e-6:
            self._reject('nonfinite_odometry',
                         'pose or twist not finite or not 3 / 4 values (or zero quaternion)')
            return
        if not self._accept_stamp('odometry', int(t_ns)):
            return
        self.stats['odometry'] += 1
        position, quat, linear, angular = values
        # np.linalg.norm sums the squares in BLAS order, which differs from a plain Python sum
        # in the last bit for ~10% of quaternions: kept so that poses stay bit for bit the same.
        norm = float(np.linalg.norm(quat))
        x, y, z, w = quat = (quat[0] / norm, quat[1] / norm, quat[2] / norm, quat[3] / norm)
        self.poses.append(int(t_ns), position, quat, linear, angular)
        yaw = math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))  # as yaw_from_quat
        done = self.cells.update_footprint(int(t_ns), position, yaw)
        if len(done):
            self._set_pending(Crossings.concatenate([self._pending, done]))
        self._label_pending()

    def add_scan(self, t_ns: int, points_lidar: np.ndarray,
                 point_times: Optional[tuple] = None) -> Optional[PatchSet]:
        """(N, 3) points in the lidar frame (m), stamped t_ns -> lookahead patches, or None.

        Non-finite points (no-return markers) are dropped and counted in stats.
        point_times: (field name, (N,) values) of the driver's per-point time field (see
        terrain_ssl.core.deskew), or None: every point moves with the pose at t_ns.
        """
        t_ns = int(t_ns)
        points = np.asarray(points_lidar)
        if points.ndim != 2 or points.shape[1] != 3:
            self._reject('malformed_cloud', f'points have shape {points.shape}, expected (N, 3)')
            return None
        if points.shape[0] == 0:
            self._reject('empty_cloud', 'scan has no points')
            return None
        finite = count_finite_points(points)
        if finite < points.shape[0]:
            self.stats['points_nonfinite'] += points.shape[0] - finite
            if finite == 0:
                self._reject('empty_cloud', 'scan has no finite points')
                return None
        if not self._accept_stamp('scan', t_ns):
            return None
        pose = self.poses.pose_at(t_ns, self.config.odom_max_extrapolation_s,
                                  self.config.odom_max_interval_s)
        if pose is None:
            self._reject('odom_missing', f'no odometry pose at scan stamp {t_ns} ns')
            return None
        self.stats['scans'] += 1
        patches = self._scan_patches(t_ns, pose, points, point_times)
        self.cells.observe(patches)
        self.stats['patches'] += len(patches)
        return patches

    def _scan_patches(self, t_ns: int, pose, points, point_times) -> PatchSet:
        """The ground patches of one scan: points into odom (deskewed when they carry times),
        then ground segmentation and cell features."""
        c = self.config
        odom_to_lidar = make_transform(*pose) @ self._base_to_lidar
        rotation, origin = odom_to_lidar[:3, :3], odom_to_lidar[:3, 3]
        columns = None
        if point_times is not None and len(point_times[1]) != points.shape[0]:
            self._reject('time_field_length', f'{len(point_times[1])} point times for '
                         f'{points.shape[0]} points: scan not deskewed')
        elif point_times is not None and c.deskew_stamp != 'none':
            offsets = point_offsets_s(point_times[0], point_times[1], t_ns, c.deskew_stamp)
            columns = deskew_to_frame(points, offsets, t_ns, self._odom_to_lidar_at)
        if columns is None:
            columns = finite_points_to_frame(points, rotation, origin)
        geometry = CellGeometry(c.patch_size, c.patch_min_points, c.patch_ground_band,
                                c.patch_min_range, c.patch_max_range)
        return self.ground.patches(*columns, origin, t_ns, geometry)

    def _odom_to_lidar_at(self, t_ns: int):
        pose = self.poses.pose_at(t_ns, self.config.odom_max_extrapolation_s,
                                  self.config.odom_max_interval_s)
        return None if pose is None else make_transform(*pose) @ self._base_to_lidar

    # -- labels ------------------------------------------------------------------------------

    def _set_pending(self, crossings: Crossings) -> None:
        self._pending = crossings
        self._pending_windows = None  # (half window ns, start, end, earliest end), when known

    def flush_labels(self) -> None:
        """Label every crossing the IMU has covered now, without waiting for the rest of its
        batch (`label_batch_s`): at the end of a recording, where no later sample comes."""
        self._label_pending(batch_ns=0)

    def _label_pending(self, batch_ns: Optional[int] = None) -> None:
        """Turn pending crossings into labels once the IMU has covered their windows, in
        batches: when the earliest has been covered for `batch_ns` (default label_batch_s)."""
        c = self.config
        if batch_ns is None:
            batch_ns = int(c.label_batch_s * NS_PER_S)
        half_window = int(0.5 * c.label_min_window_s * NS_PER_S)
        windows = self._pending_windows
        if windows is None or windows[0] != half_window:
            if not len(self._pending):
                return
            centre = (self._pending.enter_ns + self._pending.exit_ns) // 2
            start = np.minimum(self._pending.enter_ns, centre - half_window)
            end = np.maximum(self._pending.exit_ns, centre + half_window)
            windows = self._pending_windows = (half_window, start, end, int(end.min()))
        _, start, end, earliest_end = windows
        imu_until = self.vibration.last_t_ns
        if imu_until is None:
            imu_until = -1
        newest = self._last['odometry'] or 0
        max_wait_ns = c.imu_max_wait_s * NS_PER_S
        # Called on every IMU and odometry message: while the earliest window is neither covered
        # by the IMU (for the batch time) nor waited for too long, no window is (the usual
        # case), so stop here.
        if earliest_end + batch_ns > imu_until and newest - earliest_end <= max_wait_ns:
            return
        waiting = (end > imu_until) & (newest - end <= max_wait_ns)
        ready = self._pending.take(~waiting)
        ready_start, ready_end = start[~waiting], end[~waiting]
        self._set_pending(self._pending.take(waiting))
        all_shock, reasons = self.vibration.shocks(ready_start, ready_end,
                                                   c.vibration_shock_measure)
        all_speed = self.poses.mean_speeds(ready_start, ready_end)
        keep, shock, speed = [], [], []
        # Crossing by crossing, in order: rejects are reported in the order they happen.
        for index, (reason, mean_speed) in enumerate(zip(reasons, all_speed.tolist())):
            t1 = int(ready_end[index])
            if reason:
                reason = 'imu_missing' if reason == 'pending' else reason
                self._reject('label_' + reason, f'no shock for crossing ending at {t1} ns')
                continue
            if math.isnan(mean_speed):
                self._reject('label_odom_missing', f'no speed for crossing ending at {t1} ns')
                continue
            if mean_speed < c.label_min_speed:
                self.stats['below_min_speed'] += 1
                continue
            keep.append(index)
            shock.append(all_shock[index])
            speed.append(mean_speed)
        if not keep:
            return
        labeled = ready.take(np.array(keep, dtype=np.int64))
        shock = np.array(shock)
        speed = np.array(speed)
        roughness = label_roughness(shock, speed, c.label_floor, c.label_speed_exponent,
                                    c.label_reference_speed)
        self._ready.append(LabeledPatches(
            t_ns=int(labeled.exit_ns.max()), keys=labeled.keys, centres=labeled.centres,
            features=labeled.features, roughness=roughness,
            roughness_class=classify(roughness, c.label_moderate_threshold,
                                     c.label_rough_threshold),
            shock=shock, speed=speed,
            seen_to_cross_s=(labeled.enter_ns - labeled.first_seen_ns) / NS_PER_S,
            cross_t_ns=labeled.exit_ns))
        self.stats['labels'] += len(keep)

    @property
    def has_labels(self) -> bool:
        """True when pop_labels() would return labels."""
        return bool(self._ready)

    def pop_labels(self) -> Optional[LabeledPatches]:
        """Labels completed since the last call, as one batch, or None."""
        if not self._ready:
            return None
        parts, self._ready = self._ready, []
        if len(parts) == 1:
            return parts[0]
        return LabeledPatches(
            t_ns=max(part.t_ns for part in parts),
            **{name: np.concatenate([getattr(part, name) for part in parts])
               for name in ('keys', 'centres', 'features', 'roughness', 'roughness_class',
                            'shock', 'speed', 'seen_to_cross_s', 'cross_t_ns')})


def _floats(values, size: int):
    """`values` as a tuple of `size` Python floats, or None when it has another shape."""
    try:
        if len(values) != size:
            return None
        return tuple(map(float, values))
    except (TypeError, ValueError):  # not a sequence of numbers (e.g. nested, or a string)
        return None


def _all_finite(values) -> bool:
    for value in values:
        if not math.isfinite(value):
            return False
    return True


def _dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


def config_as_dict(config: LabelerConfig) -> dict:
    return asdict(config)


__all__ = ['FEATURE_NAMES', 'LabelerConfig', 'Labeler', 'LabeledPatches', 'ROUGHNESS_CLASSES',
           'classify', 'config_as_dict']
