"""Deskew: every point of a spinning-lidar sweep moved into odom with the pose at its own firing
time.

A sweep takes ~0.1 s; at 6 m/s the vehicle moves 0.6 m meanwhile, more than a cell. Drivers
publish each point in the sensor frame at its firing time, with a per-point time field, and stamp
the cloud at the start or at the end of the sweep:

| field         | driver            | unit | relative to                                   |
|---------------|-------------------|------|-----------------------------------------------|
| `time`        | Velodyne          | s    | header stamp (end of sweep: negative values)  |
| `t`           | Ouster            | ns   | header stamp (start of sweep: >= 0)           |
| `offset_time` | Livox             | ns   | header stamp (start: >= 0)                    |
| `timestamp`   | Hesai             | s    | absolute (epoch), or relative when small      |

`point_offsets_s` turns a field into seconds from the header stamp. The stamp convention is
detected from the sign of the values (negative: end-stamped; otherwise start-stamped) and may be
forced: ``end`` on non-negative times (from the sweep start, stamped at its end) shifts them so
that the last point fires at the stamp.

`deskew_to_frame` moves each point with the sensor pose at its firing time, interpolated from
the odometry poses at the first, middle and last firing times of the sweep.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from terrain_ssl.core import kernels
from terrain_ssl.core.patches import readable_points

TIME_FIELDS = ('time', 't', 'offset_time', 'timestamp')  # in the order they are looked for
STAMP_CONVENTIONS = ('auto', 'start', 'end')
# Field -> seconds per unit of its values.
_UNIT_S = {'time': 1.0, 't': 1e-9, 'offset_time': 1e-9, 'timestamp': 1.0}
# Relative offsets are below this (s); larger `timestamp` values are absolute epoch times.
_ABSOLUTE_ABOVE_S = 1e6


def point_offsets_s(field: str, values: np.ndarray, stamp_ns: int,
                    convention: str = 'auto') -> np.ndarray:
    """Per-point firing time (s) relative to the header stamp, float64 (N,).

    Raises ValueError for an unknown field or convention.
    """
    if field not in _UNIT_S:
        raise ValueError(f'unknown time field {field!r}; known: {TIME_FIELDS}')
    if convention not in STAMP_CONVENTIONS:
        raise ValueError(f'stamp convention must be one of {STAMP_CONVENTIONS}')
    offsets = np.asarray(values, dtype=np.float64) * _UNIT_S[field]
    finite = offsets[np.isfinite(offsets)]
    if finite.shape[0] == 0:
        return np.zeros(offsets.shape[0])
    if np.abs(finite).max() > _ABSOLUTE_ABOVE_S:
        offsets = offsets - stamp_ns * 1e-9  # absolute times (Hesai)
        finite = offsets[np.isfinite(offsets)]
    if convention == 'end' and finite.min() >= 0.0:
        offsets = offsets - finite.max()  # times from the sweep start, stamped at its end
    return np.where(np.isfinite(offsets), offsets, 0.0)


def detected_convention(offsets_s: np.ndarray) -> str:
    """'end' when the points fire before the stamp (negative offsets), else 'start'."""
    return 'end' if offsets_s.shape[0] and offsets_s.min() < 0.0 else 'start'


def deskew_to_frame(points: np.ndarray, offsets_s: np.ndarray, stamp_ns: int,
                    frame_at: Callable[[int], Optional[np.ndarray]]) -> Optional[tuple]:
    """Finite points (N, 3) of one sweep (sensor frame, m), each moved with the transform
    (target <- sensor) at its firing time `stamp_ns + offsets_s` (s); returns three float64
    columns x, y, z (m), or None when the middle of the sweep has no transform.

    `frame_at(t_ns)` gives the 4x4 transform at a stamp, or None where unknown (e.g. beyond
    the odometry: the sweep then moves with the twist of the part that has one, or not at all).
    The sensor moves with the constant twist between its poses at the sweep's first and last
    firing times (the odometry is smooth over 0.1 s), about its pose at mid-sweep, so that one
    pass over the points (kernels.deskew_points_to_frame) moves them all, without a pose
    look-up each. Rotation to second order: within 1 mm of the exact rotation for yaw rates up
    to 1 rad/s at 25 m.
    """
    points = readable_points(points)
    offsets_s = np.ascontiguousarray(offsets_s, dtype=np.float64)
    if offsets_s.shape != (points.shape[0],):
        raise ValueError(f'{offsets_s.shape[0]} firing times for {points.shape[0]} points')
    low, high = float(offsets_s.min(initial=0.0)), float(offsets_s.max(initial=0.0))
    middle_s = 0.5 * (low + high)
    middle = frame_at(stamp_ns + int(round(middle_s * 1e9)))
    if middle is None:
        return None
    omega, velocity = _twist(frame_at, stamp_ns, low, high, middle)
    n = points.shape[0]
    x, y, z = np.empty(n), np.empty(n), np.empty(n)
    count = kernels.deskew_points_to_frame(
        points, offsets_s, np.ascontiguousarray(middle[:3, :3], dtype=np.float64),
        np.ascontiguousarray(middle[:3, 3], dtype=np.float64), np.ascontiguousarray(omega),
        np.ascontiguousarray(velocity), middle_s, x, y, z)
    return x[:count], y[:count], z[:count]


def _twist(frame_at, stamp_ns: int, low_s: float, high_s: float, middle: np.ndarray) -> tuple:
    """(rotation vector per s (3,), sensor-origin velocity (3,) m/s) in the target frame
    between the transforms at the sweep's ends (the middle's where an end has none)."""
    ends = [frame_at(stamp_ns + int(round(t * 1e9))) if high_s > low_s else None
            for t in (low_s, high_s)]
    known = [(t, end) for t, end in zip((low_s, high_s), ends) if end is not None]
    if len(known) == 1:
        known.append((0.5 * (low_s + high_s), middle))
    if len(known) < 2 or known[1][0] == known[0][0]:
        return np.zeros(3), np.zeros(3)
    (t0, start), (t1, end) = sorted(known, key=lambda item: item[0])
    delta = end[:3, :3] @ start[:3, :3].T
    vee = 0.5 * np.array([delta[2, 1] - delta[1, 2], delta[0, 2] - delta[2, 0],
                          delta[1, 0] - delta[0, 1]])
    sine = float(np.linalg.norm(vee))
    angle = np.arctan2(sine, 0.5 * (np.trace(delta) - 1.0))
    rotation_vector = vee * (angle / sine if sine > 1e-12 else 1.0)
    return rotation_vector / (t1 - t0), (end[:3, 3] - start[:3, 3]) / (t1 - t0)


__all__ = ['STAMP_CONVENTIONS', 'TIME_FIELDS', 'deskew_to_frame', 'detected_convention',
           'point_offsets_s']
