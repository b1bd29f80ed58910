"""Calibrate the labeler on a robot's own drives: IMU + odometry in, label parameters out.

    drive (IMU samples, odometry speeds) --drive_windows--> windows (t, speed, shock)
    windows of all drives --fit_label_model--> vibration floor + speed exponent
    labels of all windows --> min_speed, moderate / rough thresholds --> labeler parameters

A window is the stretch of driving one label measures: the footprint crossing one cell, i.e.
`footprint.length + patch.size` metres of travel (at least `label.min_window_s`), one ending
every `patch.size` metres, with the labeler's own vibration filter and shock measure.
Standstill stretches give fixed windows of STANDSTILL_WINDOW_S that measure the floor. No
lidar is needed.

Thresholds come either from the label distribution (the roughest 10% of what was driven is
rough, the next 30% moderate) or from a shock limit (m/s^2): rough where the robot's typical
speed would shake it beyond the limit, moderate beyond half of it. ISO 2631-1:1997 Annex C's
comfort classes name such limits (weighted RMS, so they select the `wk_rms` shock measure).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from terrain_ssl.core.comfort import ISO2631_COMFORT_LIMITS
from terrain_ssl.core.label_model import STANDSTILL_MPS, LabelModel, fit_label_model
from terrain_ssl.core.labeler import LabelerConfig
from terrain_ssl.core.vibration import VibrationFilter

NS_PER_S = 1_000_000_000
STANDSTILL_WINDOW_S = 2.0
MAX_WINDOW_S = 20.0           # a longer stretch per window is stop-and-go, not a crossing
MIN_MOVING_WINDOWS = 3        # fewer in a drive: it cannot be calibrated
SEGMENT_S = 10.0              # stretch of a drive assumed to be one terrain in the fit (s)
MIN_DURATION_S = 15.0         # a shorter drive is too short to calibrate (filters settle 2 s)
LABEL_QUANTILES = (0.6, 0.9)  # moderate, rough thresholds from the label distribution


@dataclass
class DriveWindows:
    """The windows of one drive, or why it has none usable (`problem`)."""

    name: str
    t_s: np.ndarray = field(default_factory=lambda: np.zeros(0))      # window centre, from start
    speed: np.ndarray = field(default_factory=lambda: np.zeros(0))    # mean ground speed, m/s
    shock: np.ndarray = field(default_factory=lambda: np.zeros(0))    # m/s^2
    problem: str = ''
    imu_rate_hz: float = float('nan')

    @property
    def moving(self) -> np.ndarray:
        return self.speed >= STANDSTILL_MPS


def _distance_boundaries(odom_t_ns: np.ndarray, speed: np.ndarray, window_m: float):
    """Stamps (ns) at which the travelled distance passes multiples of window_m."""
    dt_s = np.diff(odom_t_ns) / NS_PER_S
    distance = np.r_[0.0, np.cumsum(0.5 * (speed[1:] + speed[:-1]) * dt_s)]
    marks = np.arange(0.0, distance[-1], window_m)
    keep = np.r_[True, np.diff(distance) > 0]  # np.interp needs increasing x
    return np.interp(marks, distance[keep], odom_t_ns[keep].astype(np.float64)).astype(np.int64)


def _standstill_windows(odom_t_ns: np.ndarray, speed: np.ndarray):
    """(start, end) stamps of STANDSTILL_WINDOW_S windows in which every speed is ~0."""
    step = int(STANDSTILL_WINDOW_S * NS_PER_S)
    starts = np.arange(int(odom_t_ns[0]), int(odom_t_ns[-1]) - step, step, dtype=np.int64)
    if not starts.shape[0]:
        return starts, starts
    moving_before = np.r_[0, np.cumsum(speed >= STANDSTILL_MPS)]
    lo = np.searchsorted(odom_t_ns, starts, side='left')
    hi = np.searchsorted(odom_t_ns, starts + step, side='right')
    still = (hi - lo >= 2) & (moving_before[hi] == moving_before[lo])
    return starts[still], starts[still] + step


def drive_windows(name: str, imu_t_ns, imu_accel, odom_t_ns, odom_speed,
                  config: Optional[LabelerConfig] = None, imu_quat=None) -> DriveWindows:
    """Windows (speed, shock) of one drive; `problem` says why there are none usable.

    imu_t_ns (N,), imu_accel (N, 3) specific force m/s^2 in the IMU frame, imu_quat (N, 4) or
    None; odom_t_ns (M,), odom_speed (M,) horizontal ground speed m/s. Stamps increasing.
    """
    c = config or LabelerConfig()
    imu_t = np.asarray(imu_t_ns, dtype=np.int64).reshape(-1)
    odom_t = np.asarray(odom_t_ns, dtype=np.int64).reshape(-1)
    speed = np.abs(np.asarray(odom_speed, dtype=np.float64).reshape(-1))
    if imu_t.shape[0] < 100:
        return DriveWindows(name, problem=f'no IMU ({imu_t.shape[0]} samples)')
    if odom_t.shape[0] < 10:
        return DriveWindows(name, problem=f'no odometry ({odom_t.shape[0]} messages)')
    duration_s = (min(imu_t[-1], odom_t[-1]) - max(imu_t[0], odom_t[0])) / NS_PER_S
    vibration = VibrationFilter(c.vibration_band_low_hz, c.vibration_band_high_hz,
                                c.vibration_band_order, c.vibration_gravity_source,
                                c.vibration_gravity_tau_s, c.imu_max_gap_s,
                                history_s=(imu_t[-1] - imu_t[0]) / NS_PER_S + 1.0)
    accel = np.asarray(imu_accel, dtype=np.float64).reshape(-1, 3).tolist()
    quats = [None] * len(accel) if imu_quat is None else np.asarray(imu_quat, float).tolist()
    for t, a, q in zip(imu_t.tolist(), accel, quats):
        vibration.add(t, a, q)
    # One window per cell driven over, as the labeler makes one label per cell: a window ends
    # every patch.size metres and spans the footprint's length plus the cell's.
    bounds = _distance_boundaries(odom_t, speed, c.patch_size)
    span = max(1, int(round((c.footprint_length + c.patch_size) / c.patch_size)))
    start, end = bounds[:-span], bounds[span:]
    half_window = int(0.5 * c.label_min_window_s * NS_PER_S)
    centre = (start + end) // 2
    start, end = np.minimum(start, centre - half_window), np.maximum(end, centre + half_window)
    keep = (end - start) <= MAX_WINDOW_S * NS_PER_S
    still_start, still_end = _standstill_windows(odom_t, speed)
    start = np.r_[start[keep], still_start]
    end = np.r_[end[keep], still_end]
    shock, _ = vibration.shocks(start, end, c.vibration_shock_measure)
    mean_speed = _mean_speeds(odom_t, speed, start, end)
    usable = np.isfinite(shock) & np.isfinite(mean_speed)
    order = np.argsort(start[usable], kind='stable')
    windows = DriveWindows(name, t_s=((start + end) // 2 - imu_t[0])[usable][order] / NS_PER_S,
                           speed=mean_speed[usable][order], shock=shock[usable][order],
                           imu_rate_hz=vibration.rate_hz or float('nan'))
    moving = int(windows.moving.sum())
    if duration_s < MIN_DURATION_S:
        windows.problem = (f'too short ({duration_s:.1f} s of IMU with odometry, need '
                           f'{MIN_DURATION_S:.0f} s)')
    elif moving < MIN_MOVING_WINDOWS:
        if float(np.max(speed)) < STANDSTILL_MPS:
            windows.problem = 'too slow (never moved)'
        else:
            windows.problem = (f'too little driving: {moving} windows of '
                               f'{c.footprint_length + c.patch_size:.2f} m with IMU '
                               f'(need {MIN_MOVING_WINDOWS})')
    return windows


def _mean_speeds(odom_t: np.ndarray, speed: np.ndarray, start, end) -> np.ndarray:
    """Mean odometry speed per window [start, end] (m/s), NaN without odometry in it."""
    before = np.r_[0.0, np.cumsum(speed)]
    lo = np.searchsorted(odom_t, start, side='left')
    hi = np.searchsorted(odom_t, end, side='right')
    count = hi - lo
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(count > 0, (before[hi] - before[lo]) / np.maximum(count, 1), np.nan)


@dataclass
class Calibration:
    """The fitted label model, the thresholds and where they came from."""

    model: LabelModel
    min_speed: float          # m/s
    moderate_threshold: float
    rough_threshold: float
    shock_measure: str
    threshold_source: str     # 'labels', 'shock limit X m/s^2', 'ISO 2631-1 NAME (X m/s^2)'
    typical_speed: float      # median moving window speed, m/s

    def parameters(self) -> dict:
        """roughness_labeler parameters (ROS names) that apply this calibration."""
        return {'label.floor': round(self.model.floor, 6),
                'label.speed_exponent': round(self.model.speed_exponent, 6),
                'label.reference_speed': round(self.model.reference_speed, 6),
                'label.min_speed': round(self.min_speed, 6),
                'label.moderate_threshold': round(self.moderate_threshold, 6),
                'label.rough_threshold': round(self.rough_threshold, 6),
                'vibration.shock_measure': self.shock_measure}


def calibrate(drives, config: Optional[LabelerConfig] = None,
              shock_limit: Optional[float] = None, limit_name: str = '') -> Calibration:
    """Fit the label model and thresholds to the usable drives (DriveWindows without a problem).

    Raises ValueError when they hold too few moving windows or the limit is below the floor.
    """
    c = config or LabelerConfig()
    usable = [drive for drive in drives if not drive.problem]
    if not usable:
        raise ValueError('no drive could be calibrated')
    speed = np.concatenate([drive.speed for drive in usable])
    shock = np.concatenate([drive.shock for drive in usable])
    # Terrain changes along a drive, and a driver slows down for rough stretches: each
    # SEGMENT_S of each drive may have its own roughness, so only speed changes within a
    # segment tell the exponent (whole drives as groups gave 0.2 on the simulator, where the
    # true exponent is ~1; segments give 0.9 there and the same 0.4 on BorealTC's runs).
    group = np.concatenate([i * 1_000_000 + (drive.t_s // SEGMENT_S).astype(np.int64)
                            for i, drive in enumerate(usable)])
    moving_speed = speed[speed >= STANDSTILL_MPS]
    # Labels at every speed the robot drove: from half its slowest usual speed.
    min_speed = max(STANDSTILL_MPS, 0.5 * float(np.percentile(moving_speed, 10)))
    model = fit_label_model(speed, shock, group, min_speed=min_speed,
                            default_exponent=c.label_speed_exponent)
    typical = float(np.median(moving_speed))
    model = model.with_reference_speed(typical)  # the advisor's v = limit / r is exact there
    labeled = speed >= min_speed
    labels = model.roughness(shock[labeled], speed[labeled])
    if shock_limit is None:
        moderate, rough = (float(q) for q in np.quantile(labels, LABEL_QUANTILES))
        source = 'labels'
    else:
        rough, moderate = (float(model.roughness(limit, typical))
                           for limit in (shock_limit, 0.5 * shock_limit))
        if rough <= 0.0:
            raise ValueError(f'the shock limit {shock_limit} m/s^2 is not above the vibration '
                             f'floor {model.floor:.3f} m/s^2: every label would be rough')
        source = limit_name or f'shock limit {shock_limit} m/s^2'
    moderate = min(moderate, 0.999 * rough)
    return Calibration(model=model, min_speed=min_speed, moderate_threshold=moderate,
                       rough_threshold=rough, shock_measure=c.vibration_shock_measure,
                       threshold_source=source, typical_speed=typical)


__all__ = ['Calibration', 'DriveWindows', 'ISO2631_COMFORT_LIMITS', 'calibrate',
           'drive_windows']
