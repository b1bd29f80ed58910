"""How a measured shock becomes a speed-independent roughness label, and how to fit that model.

Model: the shock a window measures (RMS of the band-passed vertical acceleration, m/s^2) is the
terrain's part, which grows with ground speed v, plus a vibration floor that does not (motor and
drivetrain vibration, IMU noise: it dominates a small robot at 0.2-0.5 m/s). Independent
vibrations add in power, so

    shock^2 = floor^2 + (k * v^e)^2        k: the terrain's roughness, e: the speed exponent

and the label is k, expressed in the units the rest of the package uses, (m/s^2)/(m/s): the
terrain's shock per unit speed at a reference speed v_ref,

    roughness = sqrt(max(shock^2 - floor^2, 0)) / v^e * v_ref^(e - 1)
              = terrain shock / (v * (v / v_ref)^(e - 1))

so that roughness * v_ref is the terrain's shock at v_ref, whatever e: the speed advisor's rule
v = shock_limit / roughness is exact at v_ref and approximate around it. With floor 0 and e 1 it
is the plain shock / speed the simulator's defaults use (a car at 3-7 m/s has a floor far below
its terrain shocks; v_ref then does not matter). `fit_label_model` finds floor and e from a
robot's own drives: windows of (speed, shock), grouped (each group may have its own roughness
k; floor and e are shared), in log space with a robust loss.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import least_squares

# Exponent range a fit may return: below 0.2 the label would no longer follow speed at all,
# above 2 a small speed error would swing it wildly.
MIN_EXPONENT, MAX_EXPONENT = 0.2, 2.0
STANDSTILL_MPS = 0.02  # windows slower than this measure the floor alone
MIN_SPEED_SPREAD = 1.5  # fastest / slowest usual speed a drive needs to tell the exponent


def label_roughness(shock, speed, floor: float = 0.0, exponent: float = 1.0,
                    reference_speed: float = 1.0) -> np.ndarray:
    """Roughness labels ((m/s^2)/(m/s)) of shocks (m/s^2) at ground speeds (m/s)."""
    shock = np.asarray(shock, dtype=np.float64)
    speed = np.asarray(speed, dtype=np.float64)
    if floor > 0.0:
        shock = np.sqrt(np.maximum(shock * shock - floor * floor, 0.0))
    if exponent == 1.0:
        return shock / speed
    return shock / speed ** exponent * reference_speed ** (exponent - 1.0)


@dataclass(frozen=True)
class LabelModel:
    """shock^2 = floor^2 + (k * speed^speed_exponent)^2, roughness = k * v_ref^(e - 1) (see
    the module docstring)."""

    floor: float = 0.0             # m/s^2
    speed_exponent: float = 1.0
    reference_speed: float = 1.0   # m/s
    windows: int = 0               # moving windows the fit used
    standstill_floor: float = float('nan')  # median shock at standstill (m/s^2), if measured
    fitted: bool = True            # False: speeds too alike, exponent kept at its default

    def roughness(self, shock, speed) -> np.ndarray:
        return label_roughness(shock, speed, self.floor, self.speed_exponent,
                               self.reference_speed)

    def shock(self, roughness, speed) -> np.ndarray:
        """The shock (m/s^2) the model expects for `roughness` at `speed` (m/s)."""
        e = self.speed_exponent
        k = np.asarray(roughness, float) / self.reference_speed ** (e - 1.0)
        terrain = k * np.asarray(speed, float) ** e
        return np.sqrt(self.floor ** 2 + terrain * terrain)

    def with_reference_speed(self, reference_speed: float) -> 'LabelModel':
        return replace(self, reference_speed=float(reference_speed))


def fit_label_model(speed, shock, group=None, min_speed: float = 0.05,
                    default_exponent: float = 1.0) -> LabelModel:
    """Fit floor and speed exponent to windows of (speed m/s, shock m/s^2).

    `group` (one label per window, e.g. the drive it came from) lets each group have its own
    terrain roughness k: the exponent then comes from how the shock changes with speed within a
    group, not from one drive being faster and rougher than another. The floor is fitted from
    the slow windows and capped at the 10th percentile of the moving shocks (the quietest
    driving), so that it never swallows most labels; the median shock at standstill
    (< STANDSTILL_MPS) is reported beside it. Drives at one speed cannot tell the exponent:
    when the moving windows' 90th / 10th speed percentiles are less than MIN_SPEED_SPREAD
    apart, the exponent stays `default_exponent` and the floor is the standstill shock, capped
    likewise (`fitted` False).
    Raises ValueError when fewer than 3 moving windows remain.
    """
    speed = np.asarray(speed, dtype=np.float64).reshape(-1)
    shock = np.asarray(shock, dtype=np.float64).reshape(-1)
    group = np.zeros(speed.shape[0], dtype=np.int64) if group is None else np.asarray(group)
    if speed.shape != shock.shape or group.shape != speed.shape:
        raise ValueError('speed, shock and group need one value per window')
    finite = np.isfinite(speed) & np.isfinite(shock) & (shock > 0)
    still = finite & (speed < STANDSTILL_MPS)
    moving = finite & (speed >= max(min_speed, STANDSTILL_MPS))
    if moving.sum() < 3:
        raise ValueError(f'{int(moving.sum())} moving windows (>= {min_speed} m/s): need 3')
    standstill = float(np.median(shock[still])) if still.any() else float('nan')
    # The standstill shock is reported, not imposed: with the motors on, a robot standing on a
    # slope or being jostled can shake more than it does driving slowly.
    lower_floor = 0.0
    v, s = speed[moving], shock[moving]
    low_v, high_v = np.percentile(v, [10, 90])
    upper_floor = float(np.percentile(s, 10))
    if high_v < MIN_SPEED_SPREAD * low_v:
        floor = min(standstill, upper_floor) if np.isfinite(standstill) else 0.0
        return LabelModel(floor=floor, speed_exponent=default_exponent,
                          windows=int(moving.sum()), standstill_floor=standstill,
                          fitted=False)
    names, index = np.unique(group[moving], return_inverse=True)

    def residuals(p):
        floor = lower_floor + (upper_floor - lower_floor) / (1.0 + np.exp(-p[0]))
        k = np.exp(p[2:])[index]
        return np.log(s) - 0.5 * np.log(floor * floor + (k * v ** p[1]) ** 2)

    start_k = [np.log(np.median(s[index == i] / v[index == i])) for i in range(len(names))]
    start = np.r_[0.0, 1.0, start_k]
    lower = np.r_[-30.0, MIN_EXPONENT, np.full(len(names), -30.0)]
    upper = np.r_[30.0, MAX_EXPONENT, np.full(len(names), 30.0)]
    fit = least_squares(residuals, np.clip(start, lower + 1e-9, upper - 1e-9),
                        bounds=(lower, upper), loss='soft_l1', f_scale=0.3)
    floor = lower_floor + (upper_floor - lower_floor) / (1.0 + np.exp(-fit.x[0]))
    return LabelModel(floor=float(floor) if floor > 0.01 * upper_floor else 0.0,
                      speed_exponent=float(fit.x[1]), windows=int(moving.sum()),
                      standstill_floor=standstill, fitted=True)


def speed_ratio(labels, speed) -> float:
    """Median label of the faster half of windows / median of the slower half (1: the label
    does not follow speed)."""
    labels = np.asarray(labels, float)
    order = np.argsort(np.asarray(speed, float), kind='stable')
    half = order.shape[0] // 2
    if half == 0:
        return float('nan')
    slow = np.median(labels[order[:half]])
    fast = np.median(labels[order[half:]])
    return float(fast / slow) if slow > 0 else float('nan')


__all__ = ['MAX_EXPONENT', 'MIN_EXPONENT', 'MIN_SPEED_SPREAD', 'STANDSTILL_MPS', 'LabelModel',
           'fit_label_model', 'label_roughness', 'speed_ratio']
