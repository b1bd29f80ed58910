"""The simulated world: terrain + vehicle + sensors, advanced in fixed physics steps.

`World.step(dt_s, commanded_speed_mps)` advances time and returns the sensor messages produced
(CDR-serialised, see `messages.SimMessage`), so the same stepping serves bag writing
(`terrain_ssl.sim.bag`) and closed loops (the advisor's recommended speed drives the vehicle).

Time: physics step k (default 1 kHz) is at start_time_ns + k * step. The IMU samples at steps
that are multiples of physics_rate / imu_rate (first sample one IMU period after the start),
odometry likewise; lidar revolution i covers steps [i K, (i + 1) K) with K = physics_rate /
lidar_rate, is stamped at its first (or last) column and delivered when it completes.
"""

from dataclasses import asdict, dataclass, field

import numpy as np

from terrain_ssl.sim import messages
from terrain_ssl.sim.ground_truth import GroundTruth
from terrain_ssl.sim.lidar import LidarCaster, lidar_preset
from terrain_ssl.sim.terrain import Terrain, TerrainConfig
from terrain_ssl.sim.vehicle import FullCarSuspension, VehicleParams, speed_ramp

GRAVITY_MPS2 = 9.80665

# IMU mounts: columns are the IMU's x, y, z axes expressed in base_link.
IMU_MOUNTS = {
    'z_up': np.eye(3),
    'y_up': np.column_stack([[1, 0, 0], [0, 0, 1], [0, -1, 0]]).astype(float),
    'x_up': np.column_stack([[0, 0, 1], [0, 1, 0], [-1, 0, 0]]).astype(float),
    'z_down': np.column_stack([[1, 0, 0], [0, -1, 0], [0, 0, -1]]).astype(float),
}


@dataclass(frozen=True)
class ImuConfig:
    rate_hz: int = 200
    mount: str = 'z_up'                  # one of IMU_MOUNTS: which IMU axis points up
    translation_m: tuple = (0.0, 0.0, 0.4)
    accel_noise_mps2: float = 0.03       # white noise per sample, 1-sigma
    gyro_noise_radps: float = 0.002
    accel_bias_sigma_mps2: float = 0.03  # constant per run, drawn from the seed
    gyro_bias_sigma_radps: float = 0.002
    orientation_sigma_rad: float = 0.002  # reported in the covariance (orientation is exact)

    def __post_init__(self):
        if self.mount not in IMU_MOUNTS:
            raise ValueError(f'unknown imu mount {self.mount!r}; '
                             f'choose one of {sorted(IMU_MOUNTS)}')
        if self.rate_hz <= 0:
            raise ValueError('imu rate must be > 0 Hz')


@dataclass(frozen=True)
class OdometryConfig:
    rate_hz: int = 50
    speed_noise_mps: float = 0.02
    gyro_noise_radps: float = 0.002
    position_noise_m: float = 0.0        # odom pose is the true pose plus this white noise

    def __post_init__(self):
        if self.rate_hz <= 0:
            raise ValueError('odometry rate must be > 0 Hz')


@dataclass(frozen=True)
class WorldConfig:
    terrain: TerrainConfig = field(default_factory=TerrainConfig)
    vehicle: VehicleParams = field(default_factory=VehicleParams)
    imu: ImuConfig = field(default_factory=ImuConfig)
    odometry: OdometryConfig = field(default_factory=OdometryConfig)
    lidar: str | None = 'vlp16'          # preset name, or None for no lidar
    lidar_overrides: tuple = ()          # ((field, value), ...) applied to the preset
    lidar_translation_m: tuple = (0.3, 0.0, 1.6)
    lidar_rpy_rad: tuple = (0.0, 0.0, 0.0)
    # As drivers: each column from the pose at its firing time (False: all from the first's).
    lidar_motion_distortion: bool = True
    lidar_stamp: str = 'start'           # sweep start (times >= 0) or 'end' (<= 0, Velodyne)
    start_s_m: float = 0.0               # where on the route the vehicle starts (arc length)
    initial_speed_mps: float = 0.0
    lateral_wander_m: float = 1.0        # the driven line weaves about the centreline
    start_time_ns: int = 1_700_000_000_000_000_000
    odom_frame: str = 'odom'
    base_frame: str = 'base_link'
    imu_frame: str = 'imu_link'
    lidar_frame: str = 'lidar_link'
    imu_topic: str = '/imu/data'
    points_topic: str = '/points'
    odom_topic: str = '/odom'
    tf_static_topic: str = '/tf_static'

    def __post_init__(self):
        if self.lidar_stamp not in ('start', 'end'):
            raise ValueError(f"lidar_stamp must be 'start' or 'end', not {self.lidar_stamp!r}")

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ('terrain', 'vehicle')}
        d['terrain'] = self.terrain.to_dict()
        d['vehicle'] = self.vehicle.to_dict()
        d['lidar_overrides'] = dict(self.lidar_overrides)
        return d


@dataclass(frozen=True)
class VehicleState:
    time_ns: int
    x_m: float
    y_m: float
    z_m: float
    yaw_rad: float
    pitch_rad: float
    roll_rad: float
    speed_mps: float
    distance_m: float      # travelled since the start
    route_s_m: float       # arc length along the route, in [0, route length)
    lap: int               # times the start line (route s = 0) was crossed


def rotation_matrices(yaw, pitch, roll):
    """(n, 3, 3) rotations R = Rz(yaw) Ry(pitch) Rx(roll) (body to world)."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    r = np.empty(np.shape(yaw) + (3, 3))
    r[..., 0, 0] = cy * cp
    r[..., 0, 1] = cy * sp * sr - sy * cr
    r[..., 0, 2] = cy * sp * cr + sy * sr
    r[..., 1, 0] = sy * cp
    r[..., 1, 1] = sy * sp * sr + cy * cr
    r[..., 1, 2] = sy * sp * cr - cy * sr
    r[..., 2, 0] = -sp
    r[..., 2, 1] = cp * sr
    r[..., 2, 2] = cp * cr
    return r


def quaternion_from_ypr(yaw, pitch, roll):
    """(n, 4) quaternions x, y, z, w of Rz(yaw) Ry(pitch) Rx(roll)."""
    cy, sy = np.cos(0.5 * yaw), np.sin(0.5 * yaw)
    cp, sp = np.cos(0.5 * pitch), np.sin(0.5 * pitch)
    cr, sr = np.cos(0.5 * roll), np.sin(0.5 * roll)
    return np.stack([sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy,
                     cr * cp * sy - sr * sp * cy, cr * cp * cy + sr * sp * sy], axis=-1)


def quaternion_from_matrix(m):
    """Quaternion x, y, z, w of a proper rotation matrix (3, 3)."""
    w = 0.5 * np.sqrt(max(1.0 + m[0, 0] + m[1, 1] + m[2, 2], 0.0))
    if w > 1e-6:
        return np.array([(m[2, 1] - m[1, 2]) / (4 * w), (m[0, 2] - m[2, 0]) / (4 * w),
                         (m[1, 0] - m[0, 1]) / (4 * w), w])
    i = int(np.argmax(np.diag(m)))
    j, k = (i + 1) % 3, (i + 2) % 3
    q = np.empty(4)
    q[i] = 0.5 * np.sqrt(max(1.0 + m[i, i] - m[j, j] - m[k, k], 0.0))
    q[j] = (m[j, i] + m[i, j]) / (4 * q[i])
    q[k] = (m[k, i] + m[i, k]) / (4 * q[i])
    q[3] = (m[k, j] - m[j, k]) / (4 * q[i])
    return q


def quaternion_multiply(a, b):
    """Hamilton product of (..., 4) xyzw quaternions."""
    ax, ay, az, aw = np.moveaxis(np.asarray(a), -1, 0)
    bx, by, bz, bw = np.moveaxis(np.asarray(b), -1, 0)
    return np.stack([aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw,
                     aw * bw - ax * bx - ay * by - az * bz], axis=-1)


def _divisor(physics_hz, rate_hz, what):
    ratio = physics_hz / rate_hz
    if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
        raise ValueError(f'{what} rate {rate_hz} Hz must divide the physics rate '
                         f'{physics_hz} Hz')
    return int(round(ratio))


class World:
    """Terrain, vehicle and sensors; deterministic for (config, seed)."""

    def __init__(self, config: WorldConfig = WorldConfig(), seed: int = 0, terrain=None):
        self.config = config
        self.seed = int(seed)
        if terrain is not None and terrain.config != config.terrain:
            raise ValueError('the terrain passed in was built from a different TerrainConfig')
        self.terrain = terrain if terrain is not None else Terrain(config.terrain, seed)
        self.route = self.terrain.route
        vp = config.vehicle
        self.vehicle = vp
        self.suspension = FullCarSuspension(vp)
        self.step_ns = 1_000_000_000 // vp.physics_rate_hz
        if self.step_ns * vp.physics_rate_hz != 1_000_000_000:
            raise ValueError('physics_rate_hz must divide 1e9 (whole nanosecond steps)')
        self.imu_every = _divisor(vp.physics_rate_hz, config.imu.rate_hz, 'imu')
        self.odom_every = _divisor(vp.physics_rate_hz, config.odometry.rate_hz, 'odometry')
        if not np.isfinite(config.initial_speed_mps) or not (
                0.0 <= config.initial_speed_mps <= vp.max_speed_mps):
            raise ValueError('initial_speed_mps must be within [0, max_speed_mps]')

        seeds = np.random.SeedSequence([self.seed, 2024]).spawn(4)
        self._imu_rng, self._odom_rng, wander_rng, lidar_seed = (
            np.random.default_rng(s) for s in seeds)
        imu = config.imu
        self._accel_bias = self._imu_rng.normal(0.0, imu.accel_bias_sigma_mps2, 3)
        self._gyro_bias = self._imu_rng.normal(0.0, imu.gyro_bias_sigma_radps, 3)
        self._imu_mount = IMU_MOUNTS[imu.mount]
        self._imu_mount_q = quaternion_from_matrix(self._imu_mount)
        # Lateral wander: three sinusoids in arc length, not periodic with the lap.
        self._wander_amp = np.full(3, config.lateral_wander_m / 3.0)
        self._wander_k = 2.0 * np.pi / wander_rng.uniform(25.0, 70.0, 3)
        self._wander_phase = wander_rng.uniform(0.0, 2.0 * np.pi, 3)

        self.lidar = None
        self.lidar_every = 0
        if config.lidar is not None:
            preset = lidar_preset(config.lidar, **dict(config.lidar_overrides))
            self.lidar_every = _divisor(vp.physics_rate_hz, preset.rate_hz, 'lidar')
            self.lidar = LidarCaster(preset, self.terrain, int(lidar_seed.integers(2 ** 31)))
            self._lidar_mount = rotation_matrices(*np.array(config.lidar_rpy_rad)[::-1])
            self._lidar_columns_step = np.minimum(
                np.round(np.arange(preset.columns) * self.lidar_every / preset.columns)
                .astype(np.int64), self.lidar_every - 1)

        # Vehicle state at step 0.
        self._k = 0
        self._distance = 0.0
        self._v = float(config.initial_speed_mps)
        pose = self._kinematics(np.array([config.start_s_m]))
        self._yaw_prev = float(pose['yaw'][0])
        self._x_susp = self.suspension.steady_state(self._road_heights(pose)[0])
        body = self._body_pose(pose, self._x_susp[None, :])
        self._last = {key: value[0] for key, value in body.items()}
        self._last.update(speed=self._v, s=config.start_s_m)
        # Poses (base_link) per physics step since the current lidar revolution began.
        self._pose_log_k0 = 0
        self._pose_log = [np.array([[body['x'][0], body['y'][0], body['z'][0], body['yaw'][0],
                                     body['pitch'][0], body['roll'][0]]])]
        self._next_scan = 0
        self._tf_sent = False
        self._trajectory = {k: [] for k in ('t_ns', 'x_m', 'y_m', 'yaw_rad', 'speed_mps', 's_m')}

    # -- public accessors ----------------------------------------------------------------
    @property
    def time_ns(self) -> int:
        return self.config.start_time_ns + self._k * self.step_ns

    @property
    def state(self) -> VehicleState:
        s = self._last['s']
        length = self.route.length_m
        return VehicleState(
            time_ns=self.time_ns, x_m=float(self._last['x']), y_m=float(self._last['y']),
            z_m=float(self._last['z']), yaw_rad=float(self._last['yaw']),
            pitch_rad=float(self._last['pitch']), roll_rad=float(self._last['roll']),
            speed_mps=float(self._v), distance_m=float(self._distance),
            route_s_m=float(np.mod(s, length)),
            lap=int(s // length - self.config.start_s_m // length))

    @property
    def ground_truth(self) -> GroundTruth:
        gt = self.terrain.ground_truth
        trajectory = {k: np.asarray(v) for k, v in self._trajectory.items()}
        return GroundTruth(gt.roughness_rms_m, gt.iso_class, gt.origin_xy_m, gt.cell_size,
                           trajectory=trajectory, config=self.config_dict())

    def extrinsics(self) -> list:
        """Static transforms (parent, child, translation m, quaternion xyzw)."""
        cfg = self.config
        out = [(cfg.base_frame, cfg.imu_frame, tuple(cfg.imu.translation_m),
                tuple(self._imu_mount_q))]
        if self.lidar is not None:
            out.append((cfg.base_frame, cfg.lidar_frame, tuple(cfg.lidar_translation_m),
                        tuple(quaternion_from_matrix(self._lidar_mount))))
        return out

    def config_dict(self) -> dict:
        d = self.config.to_dict()
        d['seed'] = self.seed
        d['physics_step_ns'] = self.step_ns
        d['lidar_preset'] = self.lidar.preset.to_dict() if self.lidar else None
        d['extrinsics'] = [{'parent': p, 'child': c, 'translation_m': list(map(float, t)),
                            'rotation_xyzw': list(map(float, q))}
                           for p, c, t, q in self.extrinsics()]
        d['route_length_m'] = self.route.length_m
        d['segments_s_m'] = [[float(a), float(b), 'ABCDEF'[c]] for a, b, c in zip(
            self.terrain.segment_start_s, self.terrain.segment_end_s,
            self.terrain.segment_class)]
        return d

    # -- stepping ------------------------------------------------------------------------
    def step(self, dt_s: float, commanded_speed_mps: float) -> list:
        """Advance by `dt_s` (s, rounded to whole physics steps) driving toward
        `commanded_speed_mps` (m/s) within the acceleration limits. Returns the SimMessages
        produced in that time, ordered by log time."""
        if not np.isfinite(dt_s) or dt_s < 0:
            raise ValueError(f'dt_s must be finite and >= 0, got {dt_s}')
        if not np.isfinite(commanded_speed_mps) or commanded_speed_mps < 0:
            raise ValueError(f'commanded speed must be finite and >= 0 m/s (no reversing), '
                             f'got {commanded_speed_mps}')
        target = min(float(commanded_speed_mps), self.vehicle.max_speed_mps)
        out = []
        if not self._tf_sent:
            out.append(messages.SimMessage(
                self.config.tf_static_topic, self.time_ns, messages.TFMESSAGE_TYPE,
                messages.tf_static_cdr(self.time_ns, self.extrinsics()), self.time_ns))
            self._tf_sent = True
        elapsed_ns = self._k * self.step_ns
        n = int(round((elapsed_ns + dt_s * 1e9) / self.step_ns)) - self._k
        if n <= 0:
            return out
        out.extend(self._advance(n, target))
        out.sort(key=lambda m: (m.receive_ns, m.topic))
        return out

    def _advance(self, n, target_mps):
        vp = self.vehicle
        h = 1.0 / vp.physics_rate_hz
        ks = self._k + 1 + np.arange(n)
        v = speed_ramp(self._v, target_mps, n, h, vp.max_accel_mps2, vp.max_decel_mps2)
        v_before = np.concatenate([[self._v], v[:-1]])
        accel_lon = (v - v_before) / h
        s = self._last['s'] + np.cumsum(0.5 * (v + v_before) * h)
        pose = self._kinematics(s)
        u = self._road_heights(pose)
        states, accel = self.suspension.simulate(self._x_susp, u)
        body = self._body_pose(pose, states)
        yaw = np.unwrap(np.concatenate([[self._yaw_prev], pose['yaw']]))
        yaw_rate = np.diff(yaw) / h

        out = []
        imu_rows = np.nonzero(ks % self.imu_every == 0)[0]
        if len(imu_rows):
            out.extend(self._imu_messages(ks[imu_rows], body, states, accel, v, accel_lon,
                                          yaw_rate, imu_rows))
        odom_rows = np.nonzero(ks % self.odom_every == 0)[0]
        if len(odom_rows):
            out.extend(self._odom_messages(ks[odom_rows], body, states, v, yaw_rate, s,
                                           odom_rows))

        # Commit the new state.
        self._k = int(ks[-1])
        self._v = float(v[-1])
        self._distance += float(s[-1] - self._last['s'])
        self._x_susp = states[-1]
        self._yaw_prev = float(pose['yaw'][-1])
        self._last = {key: value[-1] for key, value in body.items()}
        self._last.update(speed=self._v, s=float(s[-1]))
        if self.lidar is not None:
            self._pose_log.append(np.column_stack([body['x'], body['y'], body['z'], body['yaw'],
                                                   body['pitch'], body['roll']]))
            out.extend(self._lidar_messages())
        return out

    # -- physics helpers -----------------------------------------------------------------
    def _kinematics(self, s):
        """Rear-axle-centre (base_link) ground position and yaw for route arc lengths s."""
        x_c, y_c, heading, _ = self.route.pose_at(s)
        phase = np.outer(s, self._wander_k) + self._wander_phase
        offset = np.sin(phase) @ self._wander_amp
        offset_slope = np.cos(phase) @ (self._wander_amp * self._wander_k)
        x = x_c - offset * np.sin(heading)
        y = y_c + offset * np.cos(heading)
        return {'x': x, 'y': y, 'yaw': heading + np.arctan(offset_slope)}

    def _road_heights(self, pose):
        """Road heights (n, 4) under the wheels, averaged over the tyre contact length."""
        vp = self.vehicle
        wheels = vp.wheel_positions_from_cg() + np.array([vp.cg_to_rear_axle_m, 0.0])
        along = np.linspace(-0.5, 0.5, vp.tyre_envelope_samples) * vp.tyre_contact_length_m
        cos_y, sin_y = np.cos(pose['yaw'])[:, None, None], np.sin(pose['yaw'])[:, None, None]
        fx = wheels[None, :, 0:1] + along[None, None, :]
        fy = np.broadcast_to(wheels[None, :, 1:2], fx.shape)
        wx = pose['x'][:, None, None] + fx * cos_y - fy * sin_y
        wy = pose['y'][:, None, None] + fx * sin_y + fy * cos_y
        heights = self.terrain.height_at(wx, wy).astype(np.float64).mean(axis=2)
        if np.isnan(heights).any():
            raise RuntimeError('the vehicle left the terrain map (route outside the height map?)')
        return heights

    def _body_pose(self, pose, states):
        """base_link pose (on the ground under the rear axle, moving with the body)."""
        vp = self.vehicle
        pitch, roll = states[:, 1], states[:, 2]
        # The CG is b ahead of the rear axle; base_link sits b behind and cg_height below it.
        cg_x = pose['x'] + vp.cg_to_rear_axle_m * np.cos(pose['yaw'])
        cg_y = pose['y'] + vp.cg_to_rear_axle_m * np.sin(pose['yaw'])
        cg_z = states[:, 0] + vp.cg_height_m
        r = rotation_matrices(pose['yaw'], pitch, roll)
        offset = r @ np.array([-vp.cg_to_rear_axle_m, 0.0, -vp.cg_height_m])
        return {'x': cg_x + offset[:, 0], 'y': cg_y + offset[:, 1], 'z': cg_z + offset[:, 2],
                'yaw': pose['yaw'], 'pitch': pitch, 'roll': roll}

    def _body_rates(self, states, yaw_rate, rows):
        """Angular velocity (m, 3) in base_link from Euler rates (ZYX)."""
        pitch, roll = states[rows, 1], states[rows, 2]
        pitch_rate, roll_rate = states[rows, 8], states[rows, 9]
        psi = yaw_rate[rows]
        return np.column_stack([
            roll_rate - psi * np.sin(pitch),
            pitch_rate * np.cos(roll) + psi * np.cos(pitch) * np.sin(roll),
            -pitch_rate * np.sin(roll) + psi * np.cos(pitch) * np.cos(roll)])

    # -- sensors -------------------------------------------------------------------------
    def _stamp(self, k):
        return self.config.start_time_ns + int(k) * self.step_ns

    def _imu_messages(self, ks, body, states, accel, v, accel_lon, yaw_rate, rows):
        cfg, vp = self.config.imu, self.vehicle
        tx, ty, tz = cfg.translation_m
        x_rel = tx - vp.cg_to_rear_axle_m
        h_rel = tz - vp.cg_height_m
        z_acc, pitch_acc, roll_acc = accel[rows, 0], accel[rows, 1], accel[rows, 2]
        # Body-frame horizontal accelerations of the IMU point (path + pitch/roll lever arm).
        a_fwd = accel_lon[rows] + h_rel * pitch_acc
        a_left = v[rows] * yaw_rate[rows] - h_rel * roll_acc
        yaw = body['yaw'][rows]
        r = rotation_matrices(yaw, body['pitch'][rows], body['roll'][rows])
        a_world = np.column_stack([
            a_fwd * np.cos(yaw) - a_left * np.sin(yaw),
            a_fwd * np.sin(yaw) + a_left * np.cos(yaw),
            z_acc - x_rel * pitch_acc + ty * roll_acc + GRAVITY_MPS2])   # specific force
        f_body = np.einsum('nji,nj->ni', r, a_world)                     # R^T f
        w_body = self._body_rates(states, yaw_rate, rows)
        m = self._imu_mount
        f_imu = f_body @ m + self._accel_bias + self._imu_rng.normal(
            0.0, cfg.accel_noise_mps2, f_body.shape)
        w_imu = w_body @ m + self._gyro_bias + self._imu_rng.normal(
            0.0, cfg.gyro_noise_radps, w_body.shape)
        q = quaternion_multiply(quaternion_from_ypr(yaw, body['pitch'][rows], body['roll'][rows]),
                                self._imu_mount_q)
        topic, frame = self.config.imu_topic, self.config.imu_frame
        out = []
        for i, k in enumerate(ks):
            stamp = self._stamp(k)
            out.append(messages.SimMessage(topic, stamp, messages.IMU_TYPE, messages.imu_cdr(
                stamp, frame, q[i], w_imu[i], f_imu[i], cfg.orientation_sigma_rad,
                cfg.gyro_noise_radps, cfg.accel_noise_mps2), stamp))
        return out

    def _odom_messages(self, ks, body, states, v, yaw_rate, s, rows):
        cfg = self.config.odometry
        rng = self._odom_rng
        w_body = self._body_rates(states, yaw_rate, rows)
        q = quaternion_from_ypr(body['yaw'][rows], body['pitch'][rows], body['roll'][rows])
        position = np.column_stack([body['x'][rows], body['y'][rows], body['z'][rows]])
        position_noisy = position + rng.normal(0.0, cfg.position_noise_m, position.shape)
        speed = v[rows] + rng.normal(0.0, cfg.speed_noise_mps, len(rows))
        w_noisy = w_body + rng.normal(0.0, cfg.gyro_noise_radps, w_body.shape)
        c = self.config
        out = []
        for i, k in enumerate(ks):
            stamp = self._stamp(k)
            out.append(messages.SimMessage(c.odom_topic, stamp, messages.ODOMETRY_TYPE,
                                           messages.odometry_cdr(
                stamp, c.odom_frame, c.base_frame, position_noisy[i], q[i],
                (speed[i], 0.0, 0.0), w_noisy[i], max(cfg.position_noise_m, 1e-3),
                max(cfg.speed_noise_mps, 1e-3), max(cfg.gyro_noise_radps, 1e-4)), stamp))
            tr = self._trajectory
            tr['t_ns'].append(stamp)
            tr['x_m'].append(position[i, 0])
            tr['y_m'].append(position[i, 1])
            tr['yaw_rad'].append(body['yaw'][rows[i]])
            tr['speed_mps'].append(v[rows[i]])
            tr['s_m'].append(s[rows[i]])
        return out

    def _lidar_messages(self):
        out = []
        every = self.lidar_every
        poses = np.concatenate(self._pose_log)   # rows for steps _pose_log_k0 .. _k
        while (self._next_scan + 1) * every <= self._k:
            k_start = self._next_scan * every
            rows = k_start - self._pose_log_k0 + self._lidar_columns_step * int(
                self.config.lidar_motion_distortion)
            p = poses[rows]
            r_body = rotation_matrices(p[:, 3], p[:, 4], p[:, 5])
            origins = p[:, :3] + r_body @ np.asarray(self.config.lidar_translation_m)
            rotations = r_body @ self._lidar_mount
            scan = self.lidar.cast(origins, rotations)
            cloud = np.zeros(scan.ring.shape, dtype=messages.CLOUD_DTYPE)  # zeroed padding
            for axis, name in enumerate('xyz'):
                cloud[name] = scan.xyz_m[..., axis]
            cloud['intensity'] = scan.intensity
            cloud['ring'] = scan.ring
            cloud['time'] = scan.time_offset_s
            stamp = self._stamp(k_start + every * (self.config.lidar_stamp == 'end'))
            if self.config.lidar_stamp == 'end':
                cloud['time'] -= np.float32(1.0 / self.lidar.preset.rate_hz)
            out.append(messages.SimMessage(
                self.config.points_topic, stamp, messages.POINTCLOUD2_TYPE,
                messages.pointcloud2_cdr(stamp, self.config.lidar_frame, cloud),
                self._stamp(k_start + every)))
            self._next_scan += 1
        # Drop poses older than the next revolution's first step.
        keep_from = self._next_scan * every - self._pose_log_k0
        if keep_from > 0:
            self._pose_log = [poses[keep_from:]]
            self._pose_log_k0 += keep_from
        return out
