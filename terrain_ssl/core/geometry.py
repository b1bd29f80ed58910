"""Rotations and rigid transforms (quaternions x, y, z, w as ROS orders them) and a pose history.

Everything is vectorised over a leading axis where it makes sense, so a whole scan or a whole
batch of IMU samples is one numpy call.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from terrain_ssl.core import kernels

NS_PER_S = 1_000_000_000


def quat_to_matrix(quat_xyzw) -> np.ndarray:
    """Unit quaternion(s) (..., 4) x, y, z, w -> rotation matrix(es) (..., 3, 3).

    Quaternions are normalised first, so slightly denormalised driver output is fine.
    """
    q = np.asarray(quat_xyzw, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    matrix = np.empty(q.shape[:-1] + (3, 3))
    matrix[..., 0, 0] = 1 - 2 * (y * y + z * z)
    matrix[..., 0, 1] = 2 * (x * y - z * w)
    matrix[..., 0, 2] = 2 * (x * z + y * w)
    matrix[..., 1, 0] = 2 * (x * y + z * w)
    matrix[..., 1, 1] = 1 - 2 * (x * x + z * z)
    matrix[..., 1, 2] = 2 * (y * z - x * w)
    matrix[..., 2, 0] = 2 * (x * z - y * w)
    matrix[..., 2, 1] = 2 * (y * z + x * w)
    matrix[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return matrix


def quat_from_rpy(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Roll, pitch, yaw (rad, fixed axes x-y-z, as URDF) -> quaternion x, y, z, w."""
    cr, sr = np.cos(roll / 2), np.sin(roll / 2)
    cp, sp = np.cos(pitch / 2), np.sin(pitch / 2)
    cy, sy = np.cos(yaw / 2), np.sin(yaw / 2)
    return np.array([sr * cp * cy - cr * sp * sy,
                     cr * sp * cy + sr * cp * sy,
                     cr * cp * sy - sr * sp * cy,
                     cr * cp * cy + sr * sp * sy])


def quat_multiply(a, b) -> np.ndarray:
    """Hamilton product a * b of quaternions (..., 4) x, y, z, w."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ax, ay, az, aw = np.moveaxis(a, -1, 0)
    bx, by, bz, bw = np.moveaxis(b, -1, 0)
    return np.stack([aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw,
                     aw * bw - ax * bx - ay * by - az * bz], axis=-1)


def quat_slerp(q0, q1, fraction) -> np.ndarray:
    """Spherical interpolation between unit quaternions q0 and q1 (..., 4); fraction in [0, 1]."""
    q0 = np.asarray(q0, dtype=np.float64)
    q1 = np.asarray(q1, dtype=np.float64)
    fraction = np.asarray(fraction, dtype=np.float64)[..., None]
    dot = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)  # the short way round
    dot = np.abs(dot)
    nearly_parallel = dot > 0.9995
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_theta = np.where(nearly_parallel, 1.0, np.sin(theta))
    w0 = np.where(nearly_parallel, 1.0 - fraction, np.sin((1.0 - fraction) * theta) / sin_theta)
    w1 = np.where(nearly_parallel, fraction, np.sin(fraction * theta) / sin_theta)
    out = w0 * q0 + w1 * q1
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


def yaw_from_quat(quat_xyzw) -> np.ndarray:
    """Heading about +z (rad) of quaternion(s) (..., 4)."""
    q = np.asarray(quat_xyzw, dtype=np.float64)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def make_transform(translation, quat_xyzw) -> np.ndarray:
    """Translation (3,) m and rotation quaternion -> 4x4 homogeneous transform."""
    transform = np.eye(4)
    transform[:3, :3] = quat_to_matrix(quat_xyzw)
    transform[:3, 3] = np.asarray(translation, dtype=np.float64)
    return transform


def xyz_rpy(transform: np.ndarray) -> tuple:
    """4x4 -> (x, y, z, roll, pitch, yaw) (m, rad; rotation = Rz(yaw) Ry(pitch) Rx(roll))."""
    r = transform[:3, :3]
    pitch = math.asin(max(-1.0, min(1.0, -r[2, 0])))
    roll = math.atan2(r[2, 1], r[2, 2])
    yaw = math.atan2(r[1, 0], r[0, 0])
    x, y, z = (float(v) for v in transform[:3, 3])
    return x, y, z, roll, pitch, yaw


class PoseHistory:
    """Recent odometry (odom <- base_link poses and body-frame velocities), newest last.

    Keeps `horizon_s` of history in numpy arrays so that queries (interpolate a pose, average a
    speed) are a searchsorted away. Stamps must increase; the caller handles time going backwards.
    """

    def __init__(self, horizon_s: float = 10.0):
        self.horizon_ns = int(horizon_s * NS_PER_S)
        self.clear()

    # Column name -> (dtype, row shape). The public attributes of the same names are views of
    # the live rows [start, end) of preallocated buffers: appending writes in place and the
    # horizon moves `start`, instead of concatenating every array per flush.
    _COLUMNS = {'t_ns': (np.int64, ()), 'position': (np.float64, (3,)),
                'quat': (np.float64, (4,)),
                'linear_velocity': (np.float64, (3,)),   # body frame, m/s
                'angular_velocity': (np.float64, (3,))}  # body frame, rad/s

    def clear(self) -> None:
        self._buffers = {name: np.zeros((256,) + shape, dtype=dtype)
                         for name, (dtype, shape) in self._COLUMNS.items()}
        self._start = self._end = 0
        self._pending: list = []
        self._refresh_views()

    def __len__(self) -> int:
        self._flush()
        return self.t_ns.shape[0]

    @property
    def last_t_ns(self) -> Optional[int]:
        if self._pending:
            return self._pending[-1][0]
        return int(self.t_ns[-1]) if self.t_ns.shape[0] else None

    def append(self, t_ns: int, position, quat_xyzw, linear_velocity, angular_velocity) -> None:
        # Appending to numpy arrays one row at a time is slow; batch rows until a query.
        self._pending.append((int(t_ns), position, quat_xyzw, linear_velocity, angular_velocity))

    def _refresh_views(self) -> None:
        live = slice(self._start, self._end)
        for name, buffer in self._buffers.items():
            setattr(self, name, buffer[live])

    def _flush(self) -> None:
        if not self._pending:
            return
        columns = dict(zip(self._COLUMNS, zip(*self._pending)))
        self._pending = []
        n = len(columns['t_ns'])
        capacity = self._buffers['t_ns'].shape[0]
        if self._end + n > capacity:  # move the live rows to the front, growing if need be
            live = self._end - self._start
            capacity = max(capacity, 2 * (live + n))
            for name, (dtype, shape) in self._COLUMNS.items():
                old = self._buffers[name]
                new = old if capacity == old.shape[0] else np.zeros((capacity,) + shape, dtype)
                new[:live] = old[self._start:self._end]  # numpy handles the overlap
                self._buffers[name] = new
            self._start, self._end = 0, live
        end = self._end + n
        for name, (dtype, _) in self._COLUMNS.items():
            self._buffers[name][self._end:end] = np.asarray(columns[name], dtype=dtype)
        self._end = end
        # Keep horizon_s behind the newest stamp; stamps increase, so that is a suffix.
        t_ns = self._buffers['t_ns']
        self._start += int(np.searchsorted(t_ns[self._start:end], t_ns[end - 1] - self.horizon_ns))
        self._refresh_views()

    def pose_at(self, t_ns: int, max_extrapolation_s: float = 0.1,
                max_interval_s: float = 0.5) -> Optional[tuple]:
        """(position (3,), quat (4,)) of base_link in odom at `t_ns`, or None when unknown.

        Interpolates (linear position, slerp orientation) between the two bracketing poses when
        they are at most `max_interval_s` apart; extrapolates from the newest pose with its
        velocity for at most `max_extrapolation_s` (a scan often arrives before the odometry
        that follows it). Anything else has no pose.
        """
        self._flush()
        n = self.t_ns.shape[0]
        if n == 0:
            return None
        index = int(np.searchsorted(self.t_ns, t_ns, side='right'))
        if index == n:
            dt = (t_ns - int(self.t_ns[-1])) / NS_PER_S
            if dt > max_extrapolation_s:
                return None
            rotation = quat_to_matrix(self.quat[-1])
            position = self.position[-1] + rotation @ self.linear_velocity[-1] * dt
            half_angle = 0.5 * self.angular_velocity[-1] * dt  # small rotation in the body frame
            delta = np.array([half_angle[0], half_angle[1], half_angle[2], 1.0])
            quat = quat_multiply(self.quat[-1], delta / np.linalg.norm(delta))
            return position, quat
        if index == 0:
            return None  # before the history starts
        t0, t1 = int(self.t_ns[index - 1]), int(self.t_ns[index])
        if (t1 - t0) / NS_PER_S > max_interval_s:
            return None
        fraction = (t_ns - t0) / (t1 - t0) if t1 > t0 else 0.0
        position = self.position[index - 1] + fraction * (self.position[index]
                                                          - self.position[index - 1])
        quat = quat_slerp(self.quat[index - 1], self.quat[index], fraction)
        return position, quat

    def mean_speed(self, t0_ns: int, t1_ns: int) -> Optional[float]:
        """Mean horizontal ground speed (m/s) from odometry twists stamped in [t0, t1], or None."""
        speed = float(self.mean_speeds([t0_ns], [t1_ns])[0])
        return None if np.isnan(speed) else speed

    def mean_speeds(self, t0_ns, t1_ns) -> np.ndarray:
        """`mean_speed` over many windows [t0_ns[k], t1_ns[k]] at once: (K,) m/s, NaN for None.

        A window without a twist in it takes the next one (the last one) if that is stamped
        within 0.1 s of the window's start."""
        self._flush()
        t0 = np.asarray(t0_ns, dtype=np.int64).reshape(-1)
        t1 = np.asarray(t1_ns, dtype=np.int64).reshape(-1)
        speeds = np.full(t0.shape[0], np.nan)
        n = self.t_ns.shape[0]
        if n == 0 or not t0.shape[0]:
            return speeds
        lo = np.searchsorted(self.t_ns, t0, side='left')
        hi = np.searchsorted(self.t_ns, t1, side='right')
        empty = hi <= lo
        if empty.any():
            pose_index = np.minimum(lo[empty], n - 1)
            near = np.abs(self.t_ns[pose_index] - t0[empty]) <= 0.1 * NS_PER_S
            lo[empty] = np.where(near, pose_index, 0)
            hi[empty] = np.where(near, pose_index + 1, 0)  # an empty window: no speed
        begin, end = int(lo.min()), int(hi.max())
        velocity = self.linear_velocity[begin:end, :2]
        ground_speed = np.hypot(velocity[:, 0], velocity[:, 1])
        kernels.window_means(ground_speed, lo - begin, hi - begin, speeds)
        return speeds
