"""Nav2 outputs: a speed-filter mask and a roughness costmap around the vehicle.

Nav2's SpeedFilter reads one OccupancyGrid cell, the one under the robot's base frame, and turns
its value into a speed limit (filter type 1: percent of the controller's maximum speed,
limit = base + multiplier * value, with base 0 and multiplier 1 in the shipped configuration;
0 and -1 mean "no limit"). So each mask cell must hold the speed allowed *while base_link is
over it*, which is what the speed advisor computes along its corridor, here for every cell:

    conservative roughness r = prediction + uncertainty_weight * uncertainty   (per map cell)
    -> target speed          clamp(shock_limit / r, v_min, v_max); unknown ground: cautious
    -> footprint             the lowest target under the vehicle's footprint (where it touches
                             the ground), placed at each base_link cell (a grey erosion with the
                             footprint as kernel, turned to the current heading): a rough cell
                             limits the speed while the wheels are over it, not once they
                             have left it
    -> braking               the speed from which the vehicle, reacting after reaction_s (Nav2
                             reads the mask once per costmap update, the controller acts on
                             its next cycle) and then braking at decel_limit, still reaches the
                             target of every cell ahead along the plan (the heading off it):
                             v^2 + 2 a t_r v <= v_target^2 + 2 a d, as the advisor's corridor
                             (whose width the footprint step already gives)
    -> percent of v_max      rounded down, at least 1 (0 would mean "no limit" to Nav2)

Braking looks along the plan or the current heading, not in every direction: Nav2 reads the
mask where the vehicle is, which is where the plan leads in the next update, and rough ground
beside or behind the vehicle must not slow it (counted in every direction, the rough patches
within braking distance of anywhere kept the vehicle near its slowest speed).

The costmap holds the same conservative roughness scaled to 0..100 (-1 unknown), widened by the
vehicle's half width so that a path whose centre passes beside a rough cell still pays for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from terrain_ssl.core.advisor import AdvisorConfig, RoughnessMap, VehicleState, corridor_samples

__all__ = ['MaskConfig', 'GridWindow', 'Nav2Grids', 'nav2_grids', 'mask_speed_at',
           'SPEED_FILTER_TYPE_PERCENT']

SPEED_FILTER_TYPE_PERCENT = 1  # CostmapFilterInfo.type: speed limit in % of maximum speed
UNKNOWN = -1


@dataclass(frozen=True)
class MaskConfig:
    """The Nav2 grids' own settings (the speed rule's come from AdvisorConfig)."""

    size_m: float = 40.0                  # side of the square window centred on the vehicle, m
    # Where the vehicle touches the ground (wheels, tracks), as the labeler's footprint whose
    # crossings define roughness: body overhangs do not feel the ground.
    footprint_length_m: float = 2.8       # m
    footprint_width_m: float = 1.8
    footprint_offset_x_m: float = 1.3     # centre ahead of base_link, m
    reaction_s: float = 0.1               # base_link entering a cell -> the vehicle following
    #                                       the speed read there (Nav2's costmap update period
    #                                       + the controller's, 20 Hz each), s
    unknown_is_cautious: bool = True      # unknown ground: cautious speed (else no limit)
    costmap_full_scale: float = 1.0       # conservative roughness ((m/s^2)/(m/s)) -> cost 100

    def __post_init__(self):
        for name in ('size_m', 'footprint_length_m', 'footprint_width_m', 'costmap_full_scale'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f'{name} must be a finite number > 0, got {value}')
        if not math.isfinite(self.footprint_offset_x_m):
            raise ValueError(f'footprint_offset_x_m must be finite, got '
                             f'{self.footprint_offset_x_m}')
        if not (math.isfinite(self.reaction_s) and self.reaction_s >= 0.0):
            raise ValueError(f'reaction_s must be a finite number >= 0, got {self.reaction_s}')


@dataclass(frozen=True)
class GridWindow:
    """Placement of a square grid in the map frame (row along +y, column along +x)."""

    origin_x_m: float      # lower-left corner of cell (0, 0)
    origin_y_m: float
    resolution_m: float
    size_cells: int


@dataclass(frozen=True)
class Nav2Grids:
    window: GridWindow
    speed_percent: np.ndarray   # (size, size) int8, 1..100: speed allowed over the cell, % v_max
    cost: np.ndarray            # (size, size) int8, 0..100, -1 unknown


def grid_window(map_: RoughnessMap, centre_xy_m, size_m: float) -> GridWindow:
    """A window on the map's own cell grid (cells line up one to one), centred on a point."""
    res = map_.cell_size_m
    n = max(1, int(round(size_m / res)))
    centre_index = np.rint((np.asarray(centre_xy_m, dtype=np.float64) - map_.origin_xy_m) / res)
    first = centre_index - n // 2  # index of cell (0, 0)
    lower_left = map_.origin_xy_m + first * res - 0.5 * res
    return GridWindow(float(lower_left[0]), float(lower_left[1]), float(res), n)


def _rasterise(map_: RoughnessMap, window: GridWindow, uncertainty_weight: float):
    """Conservative roughness per window cell; NaN where the map has no prediction. A lookup of
    the window's cell centres: its cost does not grow with the size of the map."""
    n, res = window.size_cells, window.resolution_m
    centres = (np.arange(n) + 0.5) * res
    x, y = np.meshgrid(window.origin_x_m + centres, window.origin_y_m + centres)
    roughness, uncertainty, known = map_.lookup(np.column_stack((x.ravel(), y.ravel())))
    conservative = np.where(known, roughness + uncertainty_weight * uncertainty, np.nan)
    return conservative.reshape(n, n)


def footprint_kernel(cfg: MaskConfig, yaw_rad: float, resolution_m: float):
    """(kernel uint8, anchor (x, y)): the cells under the footprint, relative to base_link's."""
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    reach = math.hypot(abs(cfg.footprint_offset_x_m) + 0.5 * cfg.footprint_length_m,
                       0.5 * cfg.footprint_width_m)
    half = int(math.ceil(reach / resolution_m)) + 1
    offsets = np.arange(-half, half + 1) * resolution_m
    dx, dy = np.meshgrid(offsets, offsets)  # rows along y, columns along x
    along = dx * c + dy * s - cfg.footprint_offset_x_m
    across = -dx * s + dy * c
    # A cell counts when any part of it is under the outline: grow the outline by half a cell.
    grow = 0.5 * resolution_m
    inside = ((np.abs(along) <= 0.5 * cfg.footprint_length_m + grow)
              & (np.abs(across) <= 0.5 * cfg.footprint_width_m + grow))
    return inside.astype(np.uint8), (half, half)


def braking_profile(target: np.ndarray, spacing_m: float, edge_m: float, decel_mps2: float,
                    reaction_s: float, v_max_mps: float) -> np.ndarray:
    """Per sample along the last axis (samples `spacing_m` apart, the vehicle driving towards
    higher indices), the fastest speed there from which the vehicle, holding it for
    `reaction_s` and then braking at `decel_mps2`, is at or under the target of every sample
    ahead when it gets there; a sample's target holds from `edge_m` before it.

    Without reaction time this is min over samples ahead of sqrt(v^2 + 2 a d). With it, a
    vehicle at v covers v * t_r first: v^2 + 2 a t_r v <= v_target^2 + 2 a d, i.e.
    v <= sqrt((a t_r)^2 + v_target^2 + 2 a d) - a t_r; and a sample it may reach before it
    reacts (d <= v_target * t_r) must already allow v: max(v_target, that) per sample, exactly.
    That pairwise form is needed only within the reaction distance at v_max; beyond, the
    second term is the larger, and one running minimum per row gives it.
    """
    n = target.shape[-1]
    squared = np.square(target)
    lag = decel_mps2 * reaction_s  # a * t_r, m/s

    def after_reaction(squared_reach):
        return np.sqrt(lag * lag + np.maximum(squared_reach, 0.0)) - lag

    allowed = np.array(target, dtype=np.float64)
    near = min(int(math.floor((v_max_mps * reaction_s + edge_m) / spacing_m + 1e-9)), n - 1)
    for k in range(1, near + 1):
        reach = 2.0 * decel_mps2 * max(k * spacing_m - edge_m, 0.0)
        per_sample = np.maximum(target[..., k:], after_reaction(squared[..., k:] + reach))
        allowed[..., :-k] = np.minimum(allowed[..., :-k], per_sample)
    first = near + 1
    if first < n:
        gain = 2.0 * decel_mps2 * spacing_m * np.arange(n)
        ahead = np.minimum.accumulate((squared + gain)[..., ::-1], axis=-1)[..., ::-1]
        far = ahead[..., first:] - gain[:n - first] - 2.0 * decel_mps2 * edge_m
        allowed[..., :n - first] = np.minimum(allowed[..., :n - first], after_reaction(far))
    return allowed


def _braking_along_heading(target: np.ndarray, yaw_rad: float, advisor: AdvisorConfig,
                           reaction_s: float, resolution_m: float) -> np.ndarray:
    """Per cell, `braking_profile` along the heading.

    The grid is turned so that the heading runs along its rows (nearest cell: the footprint
    step has already widened every slow cell by the vehicle's outline), each row is one
    profile, and the result is turned back. A cell's target counts from its near edge, half a
    cell before its centre, as the advisor measures to a cell's near edge.
    """
    import cv2  # see nav2_grids

    n = target.shape[0]
    v_max = advisor.v_max_mps
    m = int(math.ceil(n * math.sqrt(2.0))) + 2  # holds the window at any angle
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    centre_in, centre_out = (n - 1) / 2.0, (m - 1) / 2.0
    # turned (u, v) -> window (x, y): centre_in + u * heading + v * left
    to_window = np.array([[c, -s, centre_in - c * centre_out + s * centre_out],
                          [s, c, centre_in - s * centre_out - c * centre_out]])
    turned = cv2.warpAffine(target.astype(np.float32), to_window, (m, m),
                            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=float(v_max))
    allowed_turned = braking_profile(turned.astype(np.float64), resolution_m,
                                     0.5 * resolution_m, advisor.decel_limit_mps2, reaction_s,
                                     v_max).astype(np.float32)
    allowed = cv2.warpAffine(allowed_turned, cv2.invertAffineTransform(to_window), (n, n),
                             flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=float(v_max))
    return np.minimum(allowed.astype(np.float64), target)


def _braking_along_path(allowed: np.ndarray, target: np.ndarray, window: GridWindow,
                        position_xy_m, yaw_rad: float, path_xy_m, advisor: AdvisorConfig,
                        reaction_s: float, reach_m: float) -> np.ndarray:
    """`allowed` with the cells along the plan ahead set by braking along the plan, as the
    advisor's corridor follows it (through curves, where the heading points off the road)."""
    res, n = window.resolution_m, window.size_cells
    state = VehicleState(float(position_xy_m[0]), float(position_xy_m[1]), yaw_rad, 0.0)
    xy, _, _ = corridor_samples(state, reach_m, advisor.corridor_half_width_m, 0.5 * res,
                                path_xy_m, advisor.path_max_offset_m)
    cell = np.floor((xy - (window.origin_x_m, window.origin_y_m)) / res).astype(np.int64)
    inside = ((cell >= 0) & (cell < n)).all(axis=2)
    flat = np.where(inside, cell[..., 1] * n + cell[..., 0], 0)
    centre = xy.shape[1] // 2  # base_link on the plan: the outline step already has the width
    v_station = np.where(inside[:, centre], target.reshape(-1)[flat[:, centre]],
                         advisor.v_max_mps)
    # Stations half a cell apart; a station's target counts from half a cell before it, as a
    # cell's from its near edge along the heading.
    along = braking_profile(v_station, 0.5 * res, 0.5 * res, advisor.decel_limit_mps2,
                            reaction_s, advisor.v_max_mps)
    painted = np.full(n * n, np.inf)
    np.minimum.at(painted, flat[inside], np.broadcast_to(along[:, None], flat.shape)[inside])
    painted = painted.reshape(n, n)
    return np.where(np.isfinite(painted), painted, allowed)


def nav2_grids(map_: Optional[RoughnessMap], position_xy_m, yaw_rad: float,
               advisor: AdvisorConfig, cfg: MaskConfig, path_xy_m=None) -> Nav2Grids:
    """The speed mask and the roughness costmap in a window centred on the vehicle; braking
    follows `path_xy_m` (the plan, odom frame) where the vehicle is on it, else the heading."""
    # OpenCV is loaded on the first mask, i.e. only where Nav2 subscribes to one: it adds
    # ~15 MB to the resident memory of a node process that never makes a mask.
    import cv2

    if map_ is None:
        map_ = RoughnessMap.empty(advisor.cell_size_m)
    window = grid_window(map_, position_xy_m, cfg.size_m)
    res = window.resolution_m
    roughness = _rasterise(map_, window, advisor.uncertainty_weight)
    known = np.isfinite(roughness)
    with np.errstate(divide='ignore', invalid='ignore'):
        target = np.where(roughness > 0.0, advisor.shock_limit_mps2 / roughness, np.inf)
    target = np.clip(target, advisor.v_min_mps, advisor.v_max_mps)
    unknown_speed = advisor.cautious_speed_mps if cfg.unknown_is_cautious else advisor.v_max_mps
    # The lowest known target under the outline. As in the advisor's corridor, cells the lidar
    # missed beside known ones (occlusion, sparse rings, the blind spot under the vehicle) do
    # not count; only an outline over no known cell at all is unknown ground.
    kernel, anchor = footprint_kernel(cfg, yaw_rad, res)
    known_target = np.where(known, target, advisor.v_max_mps).astype(np.float32)
    under_footprint = cv2.erode(known_target, kernel, anchor=anchor,
                                borderType=cv2.BORDER_CONSTANT,
                                borderValue=float(advisor.v_max_mps)).astype(np.float64)
    any_known = cv2.dilate(known.astype(np.uint8), kernel, anchor=anchor,
                           borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    under_footprint = np.where(any_known, under_footprint, unknown_speed)
    allowed = _braking_along_heading(under_footprint, yaw_rad, advisor, cfg.reaction_s, res)
    if path_xy_m is not None and len(path_xy_m) >= 2:
        allowed = _braking_along_path(allowed, under_footprint, window, position_xy_m, yaw_rad,
                                      path_xy_m, advisor, cfg.reaction_s, 0.5 * cfg.size_m)
    allowed = np.minimum(allowed, advisor.v_max_mps)
    # Rounded down (never faster than the rule), but not below v_min, which the rule never goes.
    v_min_percent = math.ceil(100.0 * advisor.v_min_mps / advisor.v_max_mps - 1e-6)
    percent = np.clip(np.floor(100.0 * allowed / advisor.v_max_mps + 1e-6),
                      max(v_min_percent, 1), 100)
    cost = np.where(known, np.clip(np.rint(100.0 * roughness / cfg.costmap_full_scale), 0, 100),
                    UNKNOWN)
    radius_cells = int(round(0.5 * cfg.footprint_width_m / res))
    if radius_cells > 0:
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                         (2 * radius_cells + 1, 2 * radius_cells + 1))
        cost = cv2.dilate(cost.astype(np.int16), disc, borderType=cv2.BORDER_CONSTANT,
                          borderValue=UNKNOWN)
    return Nav2Grids(window, percent.astype(np.int8), cost.astype(np.int8))


def mask_speed_at(grids: Nav2Grids, xy_m, v_max_mps: float) -> float:
    """The speed (m/s) Nav2's SpeedFilter would allow with base_link at `xy_m` (type 1, base 0,
    multiplier 1); v_max outside the mask or where a cell says "no limit"."""
    w = grids.window
    column = int(math.floor((xy_m[0] - w.origin_x_m) / w.resolution_m))
    row = int(math.floor((xy_m[1] - w.origin_y_m) / w.resolution_m))
    if not (0 <= column < w.size_cells and 0 <= row < w.size_cells):
        return float(v_max_mps)
    value = int(grids.speed_percent[row, column])
    if value <= 0:
        return float(v_max_mps)
    return v_max_mps * value / 100.0
