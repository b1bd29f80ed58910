"""Speed advice: the fastest speed that keeps the predicted shock under a limit, planned ahead.

Roughness r is a speed-normalised shock ((m/s^2)/(m/s)), so crossing a cell at speed v gives a
shock of about r * v and the cell allows v_target = shock_limit / r. A cell `d` metres ahead
allows sqrt(v_target^2 + 2 a_dec d) *now*: the speed from which the vehicle, braking at a_dec,
still reaches v_target when its front gets there. Taking the minimum (or a low quantile) of that
over a corridor ahead makes the limit fall *before* the rough ground, along a braking profile
the vehicle can follow, and lets it rise again only at the acceleration limit.

Pipeline per update:
    corridor samples (stations along heading or path x lateral offsets)
    -> cell lookup in the roughness map (sorted integer cell keys, binary search)
    -> conservative roughness per station: max over its known samples of
       roughness + k * uncertainty
       (a station with no known sample is unknown ground -> cautious speed)
    -> allowed speed now per station (braking profile) -> min or low quantile over stations
    -> acceleration rate limit -> speed limit (m/s)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Optional

import numpy as np

from terrain_ssl.core.roughness_map import RoughnessMap

__all__ = ['AdvisorConfig', 'VehicleState', 'Advice', 'SpeedAdvisor',
           'corridor_samples', 'allowed_speed_now', 'cap_twist']

_NS_PER_S = 1e9


@dataclass(frozen=True)
class AdvisorConfig:
    """Every tunable of the advisor (units in the names)."""

    shock_limit_mps2: float = 6.0          # shock the vehicle should not exceed, m/s^2
    v_min_mps: float = 1.0                 # never advise slower than this, m/s (keep >= the
    #                                        labeler's label.min_speed, or learning stops)
    v_max_mps: float = 6.0                 # never advise faster than this, m/s
    cautious_speed_mps: float = 1.5        # advice with no (fresh) prediction, m/s
    accel_limit_mps2: float = 1.0          # the advice rises at most this fast, m/s^2
    decel_limit_mps2: float = 1.5          # braking the plan assumes ahead of rough cells, m/s^2
    corridor_half_width_m: float = 1.0     # lateral half-width of the corridor, m
    margin_m: float = 3.0                  # look this far beyond the stopping distance, m
    front_offset_m: float = 2.6            # base_link to the front axle, m (cells hit first there)
    uncertainty_weight: float = 1.5        # conservative roughness = roughness + k * uncertainty
    #                                        (docs/design.md: why the margin pays in closed loop)
    quantile: float = 1.0                  # 1.0: the worst sample decides; 0.95: ignore worst 5%
    cell_size_m: float = 0.5               # the map's cell size, m (also the sampling step)
    path_max_offset_m: float = 2.0         # farther than this from the planned path: the path is
    #                                        not being followed: the corridor follows the heading
    stale_timeout_s: float = 1.0           # inputs older than this are stale -> cautious speed
    map_memory_s: float = 20.0             # keep predicted cells this long after their last map, s
    max_map_cells: int = 200_000           # memory bound of the merged map (newest cells kept)

    def __post_init__(self):
        problem = self.problem()
        if problem:
            raise ValueError(problem)

    def problem(self) -> Optional[str]:
        """Why this configuration is invalid, or None."""
        for item in fields(self):
            value = getattr(self, item.name)
            if not math.isfinite(value):
                return f'{item.name} must be finite, got {value}'
        positive = ('shock_limit_mps2', 'v_min_mps', 'accel_limit_mps2', 'decel_limit_mps2',
                    'cell_size_m', 'stale_timeout_s')
        for name in positive:
            if getattr(self, name) <= 0.0:
                return f'{name} must be > 0, got {getattr(self, name)}'
        if self.max_map_cells < 1:
            return f'max_map_cells must be >= 1, got {self.max_map_cells}'
        for name in ('corridor_half_width_m', 'margin_m', 'front_offset_m', 'uncertainty_weight',
                     'map_memory_s', 'path_max_offset_m'):
            if getattr(self, name) < 0.0:
                return f'{name} must be >= 0, got {getattr(self, name)}'
        if self.v_max_mps < self.v_min_mps:
            return f'v_max_mps ({self.v_max_mps}) must be >= v_min_mps ({self.v_min_mps})'
        if not self.v_min_mps <= self.cautious_speed_mps <= self.v_max_mps:
            return (f'cautious_speed_mps ({self.cautious_speed_mps}) must lie in '
                    f'[v_min_mps, v_max_mps] = [{self.v_min_mps}, {self.v_max_mps}]')
        if not 0.5 <= self.quantile <= 1.0:
            return f'quantile must be in [0.5, 1], got {self.quantile}'
        return None


@dataclass(frozen=True)
class VehicleState:
    """Pose of base_link in the map frame and forward speed."""

    x_m: float
    y_m: float
    yaw_rad: float
    speed_mps: float


def corridor_samples(state: VehicleState, length_m: float, half_width_m: float, step_m: float,
                     path_xy_m: Optional[np.ndarray] = None,
                     path_max_offset_m: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """Corridor ahead: (xy (S, W, 2) m, stations (S,) m from base_link, heading (S,) rad).

    Along `path_xy_m` (polyline, (M, 2), odom frame) from the path point closest to the vehicle,
    when the vehicle is within `path_max_offset_m` of it; else along the heading. Stations every
    `step_m` from 0 to `length_m`; W lateral offsets every `step_m` across +-`half_width_m`.
    Half-cell steps make sure no cell is skipped.
    """
    stations = np.arange(0.0, length_m + 1e-9, step_m)
    n_side = int(math.floor(half_width_m / step_m + 1e-9))
    lateral = np.arange(-n_side, n_side + 1) * step_m
    walked = None
    if path_xy_m is not None and len(path_xy_m) >= 2:
        walked = _walk_path(np.asarray(path_xy_m, dtype=np.float64),
                            np.array([state.x_m, state.y_m]), stations)
        if walked[2] > path_max_offset_m:
            walked = None
    if walked is None:
        heading = np.full(stations.shape, state.yaw_rad)
        centre = _columns(state.x_m + stations * np.cos(state.yaw_rad),
                          state.y_m + stations * np.sin(state.yaw_rad))
    else:
        centre, heading, _ = walked
    normal = _columns(-np.sin(heading), np.cos(heading))
    xy = centre[:, None, :] + lateral[None, :, None] * normal[:, None, :]
    return xy, stations, heading


def _columns(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """np.stack([first, second], axis=1) for two 1-D float arrays, without its generic
    handling (the advisor stacks a few per update, at the advice rate)."""
    out = np.empty((first.shape[0], 2))
    out[:, 0] = first
    out[:, 1] = second
    return out


def _walk_path(path: np.ndarray, position: np.ndarray, stations: np.ndarray):
    """Points and headings at arc lengths `stations` along `path`, from the closest path point,
    and the distance (m) from `position` to that point."""
    start, end = path[:-1], path[1:]
    segment = end - start
    length = np.hypot(segment[:, 0], segment[:, 1])
    usable = length > 1e-9
    start, segment, length = start[usable], segment[usable], length[usable]
    if length.size == 0:
        raise ValueError('path has no segment longer than 1e-9 m')
    t = np.clip(np.einsum('ij,ij->i', position - start, segment) / length**2, 0.0, 1.0)
    gap = np.hypot(*(start + t[:, None] * segment - position).T)
    nearest = int(np.argmin(gap))
    cumulative = np.concatenate([[0.0], np.cumsum(length)])
    s = cumulative[nearest] + t[nearest] * length[nearest] + stations
    # Beyond the path's end, continue straight along the last segment.
    index = np.clip(np.searchsorted(cumulative, s, side='right') - 1, 0, length.size - 1)
    along = s - cumulative[index]
    direction = segment[index] / length[index, None]
    return (start[index] + along[:, None] * direction,
            np.arctan2(direction[:, 1], direction[:, 0]), float(gap[nearest]))


def allowed_speed_now(target_mps, distance_m, decel_mps2: float) -> np.ndarray:
    """Fastest speed now from which braking at `decel_mps2` reaches `target_mps` within
    `distance_m`."""
    distance = np.maximum(np.asarray(distance_m, dtype=np.float64), 0.0)
    return np.sqrt(np.square(target_mps) + 2.0 * decel_mps2 * distance)


def cap_twist(linear, angular, speed_limit_mps: float):
    """Scale a twist so its planar linear speed is at most the limit; the curvature is kept.

    Linear and angular parts are scaled by the same factor, so the path (angular / linear) does
    not change. A twist already within the limit, or a pure rotation, passes unchanged.
    Returns (linear (3,), angular (3,), scale).
    """
    linear = np.asarray(linear, dtype=np.float64)
    angular = np.asarray(angular, dtype=np.float64)
    speed = math.hypot(linear[0], linear[1])
    if not math.isfinite(speed) or speed <= speed_limit_mps:
        return linear, angular, 1.0
    scale = max(speed_limit_mps, 0.0) / speed
    return linear * scale, angular * scale, scale


@dataclass(frozen=True)
class Advice:
    """One recommendation and why."""

    speed_limit_mps: float
    reason: str                  # 'terrain', 'unknown_terrain', 'no_map', 'stale_map', ...
    allowed_mps: float           # before the acceleration limit
    worst_roughness: float       # conservative roughness of the deciding sample (nan if none)
    worst_distance_m: float      # its distance ahead of the front axle (nan if none)
    lookahead_m: float
    unknown_fraction: float      # share of corridor stations with no prediction at all


class SpeedAdvisor:
    """Keeps the latest map and vehicle state; `update(now_ns)` gives the speed limit.

    Times are the caller's clock in ns (the node clock, sim time in replay); stamps on inputs are
    when they were received, so staleness means "nothing new for stale_timeout_s".
    """

    def __init__(self, config: AdvisorConfig = AdvisorConfig()):
        self.config = config
        self.map: Optional[RoughnessMap] = None
        self.map_time_ns: Optional[int] = None
        self.state: Optional[VehicleState] = None
        self.state_time_ns: Optional[int] = None
        self.path_xy_m: Optional[np.ndarray] = None
        self.last_advice: Optional[Advice] = None
        self._last_speed: Optional[float] = None
        self._last_time_ns: Optional[int] = None
        self.late_hazards = 0  # drops well beyond decel_limit: a hazard seen inside braking range
        self._map_is_own = False  # self.map was made here by merging (may be updated in place)
        # The latest map / odometry message was unusable (malformed, NaN, negative roughness):
        # fail closed, the cautious speed until a good one arrives.
        self.map_bad = False
        self.state_bad = False

    def reconfigure(self, config: AdvisorConfig) -> None:
        """Apply new settings live; the map keeps its own cell size until the next map arrives."""
        self.config = config

    def set_map(self, roughness_map: RoughnessMap, now_ns: int) -> None:
        """Take a new prediction map (received at `now_ns`).

        Predictions usually cover only the latest scan's patches, so the cells of earlier maps
        (e.g. the ground now too close to the lidar to see) are kept for `map_memory_s`.
        The merged map is the advisor's own object and is updated in place where possible:
        copy it to keep a snapshot.
        """
        cfg = self.config
        if cfg.map_memory_s > 0.0:
            oldest_ns = int(now_ns - cfg.map_memory_s * _NS_PER_S)
            if not (self._map_is_own and self.map is not None
                    and self.map.absorb_newer(roughness_map, oldest_ns, cfg.max_map_cells)):
                self.map = roughness_map.merged_with(self.map, oldest_ns, cfg.max_map_cells)
            self._map_is_own = True
        else:
            self.map = roughness_map
            self._map_is_own = False
        self.map_time_ns = int(now_ns)
        self.map_bad = False

    def set_state(self, state: VehicleState, now_ns: int) -> None:
        self.state = state
        self.state_time_ns = int(now_ns)
        self.state_bad = False

    def reject_map(self) -> None:
        """The latest map was unusable: advise the cautious speed until the next good map."""
        self.map_bad = True

    def reject_state(self) -> None:
        """The latest odometry was unusable: the cautious speed until the next good one."""
        self.state_bad = True

    def set_path(self, path_xy_m: Optional[np.ndarray]) -> None:
        self.path_xy_m = None if path_xy_m is None else np.asarray(path_xy_m, dtype=np.float64)

    def reset(self) -> None:
        """Forget everything (e.g. time jumped backwards in a looping replay)."""
        self.__init__(self.config)

    def _stale(self, stamp_ns: Optional[int], now_ns: int) -> bool:
        return stamp_ns is None or (now_ns - stamp_ns) > self.config.stale_timeout_s * _NS_PER_S

    def allowed(self, now_ns: int) -> Advice:
        """The speed allowed by the terrain ahead, before the acceleration limit."""
        cfg = self.config
        nan = float('nan')
        if self.state_bad or self._stale(self.state_time_ns, now_ns):
            reason = 'no_odometry' if self.state is None else 'stale_odometry'
            reason = 'bad_odometry' if self.state_bad else reason
            return Advice(cfg.cautious_speed_mps, reason, cfg.cautious_speed_mps, nan, nan,
                          0.0, 1.0)
        state = self.state
        reference = max(abs(state.speed_mps), self._last_speed or 0.0)
        lookahead = reference**2 / (2.0 * cfg.decel_limit_mps2) + cfg.margin_m + cfg.front_offset_m
        if self.map_bad or self._stale(self.map_time_ns, now_ns):
            reason = 'no_map' if self.map is None else 'stale_map'
            reason = 'bad_map' if self.map_bad else reason
            return Advice(cfg.cautious_speed_mps, reason, cfg.cautious_speed_mps, nan, nan,
                          lookahead, 1.0)
        step = 0.5 * cfg.cell_size_m
        xy, stations, heading = corridor_samples(state, lookahead, cfg.corridor_half_width_m,
                                                 step, self.path_xy_m, cfg.path_max_offset_m)
        flat = xy.reshape(-1, 2)
        roughness, uncertainty, known, centres = self.map.lookup_with_centres(flat)
        shape = xy.shape[:2]
        known = known.reshape(shape)
        conservative = (roughness + cfg.uncertainty_weight * uncertainty).reshape(shape)
        with np.errstate(divide='ignore'):
            target = np.where(conservative > 0.0, cfg.shock_limit_mps2 / conservative, np.inf)
        target = np.clip(target, cfg.v_min_mps, cfg.v_max_mps)
        # A station with no known sample across the corridor is unknown ground (cautious speed);
        # single missing cells beside known ones (occlusion, sparse rings) are ignored.
        station_known = known.any(axis=1)
        unknown_target = np.where(station_known, np.inf, cfg.cautious_speed_mps)[:, None]
        target = np.where(known, target, unknown_target)
        # Distance from the front axle to the near edge of each sample's cell, along the corridor:
        # continuous in the vehicle's position, so the limit follows a smooth braking profile.
        offset = (centres - flat).reshape(xy.shape)
        # offset . (cos, sin) per sample, written out: two products and one sum.
        along = stations[:, None] + (offset[:, :, 0] * np.cos(heading)[:, None]
                                     + offset[:, :, 1] * np.sin(heading)[:, None])
        distance = np.maximum(along - cfg.front_offset_m - 0.5 * cfg.cell_size_m, 0.0)
        per_sample = allowed_speed_now(np.minimum(target, 1e3), distance, cfg.decel_limit_mps2)
        per_sample = np.where(np.isfinite(target), per_sample, np.inf)
        worst_sample = np.argmin(per_sample, axis=1)
        rows = np.arange(shape[0])
        allowed = per_sample[rows, worst_sample]
        station_rough = np.where(known, conservative, np.nan)[rows, worst_sample]
        distance = distance[rows, worst_sample]
        if cfg.quantile >= 1.0:
            deciding = int(np.argmin(allowed))
            speed = float(allowed[deciding])
        else:
            speed = float(np.quantile(allowed, 1.0 - cfg.quantile))
            deciding = int(np.argmin(np.abs(allowed - speed)))
        speed = min(speed, cfg.v_max_mps)
        # (the mean of a bool array, without np.mean's dispatch)
        unknown_fraction = 1.0 - np.count_nonzero(station_known) / station_known.size
        reason = 'terrain' if station_known[deciding] else 'unknown_terrain'
        if speed >= cfg.v_max_mps:
            reason = 'clear'
        worst = float(station_rough[deciding])
        return Advice(speed, reason, speed, worst, float(distance[deciding]), lookahead,
                      unknown_fraction)

    def update(self, now_ns: int) -> Advice:
        """The speed limit now (m/s): the terrain's allowed speed, rising at most at accel_limit.

        Drops are not delayed: the braking profile already plans them at decel_limit, so a drop
        faster than that means a hazard appeared inside braking range, and the vehicle should
        brake as hard as it can (counted in `late_hazards`).
        """
        now_ns = int(now_ns)
        if self._last_time_ns is not None and now_ns < self._last_time_ns:
            self.reset()
        advice = self.allowed(now_ns)
        cfg = self.config
        if self._last_speed is None:
            base = max(cfg.cautious_speed_mps,
                       abs(self.state.speed_mps) if self.state is not None else 0.0)
            dt = 0.0
        else:
            base = self._last_speed
            dt = (now_ns - self._last_time_ns) / _NS_PER_S
        ceiling = base + cfg.accel_limit_mps2 * dt
        speed = min(advice.allowed_mps, ceiling)
        # Following the braking profile drops the limit at about decel_limit; twice that (plus a
        # little for a coarse update rate) means the hazard appeared inside braking range.
        if self._last_speed is not None and \
                speed < self._last_speed - 2.0 * cfg.decel_limit_mps2 * dt - 0.05 and \
                advice.reason in ('terrain', 'unknown_terrain'):
            self.late_hazards += 1
        speed = min(max(speed, cfg.v_min_mps), cfg.v_max_mps)  # (floats: no np.clip needed)
        advice = replace(advice, speed_limit_mps=speed)
        self._last_speed = speed
        self._last_time_ns = now_ns
        self.last_advice = advice
        return advice
