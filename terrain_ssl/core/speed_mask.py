"""Nav2 outputs: a speed-filter mask and a roughness costmap around the vehicle.

Nav2's SpeedFilter reads one OccupancyGrid cell, the one under the robot's base frame, and turns
its value into a speed limit (filter type 1: percent of the controller's maximum speed,
limit = base + multiplier * value, with base 0 and multiplier 1 in the shipped configuration;
0 and -1 mean "no limit"). So each mask cell must hold the speed allowed *while base_link is
over it*, which is what the speed advisor computes along its corridor, here for every cell:

    conservative roughness r = prediction + uncertainty_weight * uncertainty   (per map cell)
    -> target speed          clamp(shock_limit / r, v_min, v_max); unknown ground: cautious
    -> footprint             the lowest target under the vehicle's footprint, placed at each
                             base_link cell (a grey erosion with the footprint as kernel, turned
                             to the current heading): a rough cell limits the speed while any
                             part of the vehicle is over it
    -> braking               the speed from which braking at decel_limit still reaches every
                             cell's target: min over cells of sqrt(v^2 + 2 a d), computed per
                             speed level with a Euclidean distance transform
    -> percent of v_max      rounded down, at least 1 (0 would mean "no limit" to Nav2)

The braking step is isotropic: the mask does not know which way the vehicle will drive, so
rough ground behind the vehicle lowers the limit as ground ahead would, within braking distance.

The costmap holds the same conservative roughness scaled to 0..100 (-1 unknown), widened by the
vehicle's half width so that a path whose centre passes beside a rough cell still pays for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from terrain_ssl.core.advisor import AdvisorConfig, RoughnessMap

__all__ = ['MaskConfig', 'GridWindow', 'Nav2Grids', 'nav2_grids', 'mask_speed_at',
           'SPEED_FILTER_TYPE_PERCENT']

SPEED_FILTER_TYPE_PERCENT = 1  # CostmapFilterInfo.type: speed limit in % of maximum speed
UNKNOWN = -1


@dataclass(frozen=True)
class MaskConfig:
    """The Nav2 grids' own settings (the speed rule's come from AdvisorConfig)."""

    size_m: float = 40.0                  # side of the square window centred on the vehicle, m
    footprint_length_m: float = 3.4       # the vehicle's outline, m
    footprint_width_m: float = 1.8
    footprint_offset_x_m: float = 1.3     # outline centre ahead of base_link, m
    unknown_is_cautious: bool = True      # unknown ground: cautious speed (else no limit)
    speed_step_percent: int = 5           # speed levels of the braking step (% of v_max)
    costmap_full_scale: float = 1.0       # conservative roughness ((m/s^2)/(m/s)) -> cost 100

    def __post_init__(self):
        for name in ('size_m', 'footprint_length_m', 'footprint_width_m', 'costmap_full_scale'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f'{name} must be a finite number > 0, got {value}')
        if not math.isfinite(self.footprint_offset_x_m):
            raise ValueError(f'footprint_offset_x_m must be finite, got '
                             f'{self.footprint_offset_x_m}')
        if not 1 <= self.speed_step_percent <= 50:
            raise ValueError(f'speed_step_percent must be in [1, 50], got '
                             f'{self.speed_step_percent}')


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


def _braking_limit(target: np.ndarray, decel_mps2: float, resolution_m: float,
                   levels: np.ndarray) -> np.ndarray:
    """min over cells c' of sqrt(level(c')^2 + 2 a d(c, c')), with targets rounded down to
    `levels`: one Euclidean distance transform per level present. The 5x5 chamfer transform is
    within 2% of the exact distance (a quarter of the cost): distances are shrunk by that 2% so
    that the limit never comes out above the exact rule's."""
    allowed = np.full(target.shape, np.inf)
    scale = resolution_m / 1.02
    for level in levels:
        slow = target <= level + 1e-9
        if not slow.any():
            continue
        far = np.where(slow, 0, 255).astype(np.uint8)  # distance to the nearest zero pixel
        distance_m = cv2.distanceTransform(far, cv2.DIST_L2, cv2.DIST_MASK_5)
        distance_m = np.maximum(distance_m * scale - 0.5 * resolution_m, 0.0)
        np.minimum(allowed, np.sqrt(level * level + 2.0 * decel_mps2 * distance_m), out=allowed)
    return allowed


def nav2_grids(map_: Optional[RoughnessMap], position_xy_m, yaw_rad: float,
               advisor: AdvisorConfig, cfg: MaskConfig) -> Nav2Grids:
    """The speed mask and the roughness costmap in a window centred on the vehicle."""
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
    # Round down to the speed levels first, so the braking step sees a handful of levels.
    step = advisor.v_max_mps * cfg.speed_step_percent / 100.0
    target = np.maximum(np.floor(target / step + 1e-9) * step, min(step, advisor.v_min_mps))
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
    levels = np.unique(under_footprint)
    levels = levels[levels < advisor.v_max_mps]
    allowed = np.minimum(_braking_limit(under_footprint, advisor.decel_limit_mps2, res, levels),
                         advisor.v_max_mps)
    percent = np.clip(np.floor(100.0 * allowed / advisor.v_max_mps + 1e-6), 1, 100)
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
