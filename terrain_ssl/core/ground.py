"""Ground segmentation: only ground returns become terrain patches.

Walls, vehicles, tree trunks and overhanging vegetation are not terrain: their cells would be
learned as extremely rough ground and would pollute the neighbourhood features of the real ground
around them. They are dropped here, and reported (`GroundRejects`) with the reason.

Methods (`GroundConfig.method`):

- ``envelope`` (default): a morphological lower envelope of the scan's own cells. A first pass of
  `compute_patches_xyz` gives each cell the height of the plane through its lowest returns. A
  grey opening of that height grid (erosion then dilation over a square window of
  `window_m`) is the local ground: it keeps slopes, ditches and anything wider than the window,
  and removes what stands up from the ground over a smaller footprint (vehicles, trunks, bushes,
  wall tops). Cells higher than `max_height_m` above it (``above_ground``) or steeper than
  `max_slope_rad` (``steep``: wall faces) are rejected, and the patches are computed again from
  the accepted cells only, so that neighbourhood features see ground only.
  Small surfaces, and surfaces with nothing lower within the window, are also measured against
  the lowest cell around them plus the height a ground slope explains: at the edge of a scan
  a lone roof or wall top is otherwise its own envelope. Cells wider than the window that stand
  on nothing lower (a large flat roof seen alone) stay.
- ``patchwork``: Patchwork++ (`pypatchworkpp`, optional) on the returns within `max_range`,
  in a frame at the sensor with odom's (gravity-aligned) axes; its ground returns make the
  patches. Slower per scan than ``envelope`` (see bench/bench_ground.py).
- ``none``: every return, as before segmentation existed.

Everything works in the odom frame (z up) on the points of one scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from terrain_ssl.core import kernels
from terrain_ssl.core.patches import (FEATURE_INDEX, CellPlaneFits, PatchSet, cell_indices,
                                      cell_plane_fits, compute_patches_xyz, patches_of_fits)

GROUND_METHODS = ('envelope', 'patchwork', 'none')
# Why a cell was judged not to be ground (GroundRejects.reasons indexes this).
REJECT_REASONS = ('above_ground', 'steep', 'patchwork_nonground')


@dataclass(frozen=True)
class GroundConfig:
    method: str = 'envelope'
    window_m: float = 5.0            # opening window edge (m): wider than what stands up
    max_height_m: float = 0.3        # a cell this far above the local ground is not ground (m)
    max_slope_rad: float = 0.7       # a steeper cell is a face, not ground (rad, ~40 deg)
    max_step_m: float = 0.25         # neighbour cells this close in height: one surface (m)
    min_surface_cells: int = 4       # smaller surfaces are judged against a 3x wider window
    edge_slope_rad: float = 0.26     # ground slope (rad) that explains a cell above the lowest
    sensor_height_m: float = 1.6     # patchwork: sensor above the ground under the robot (m)

    @classmethod
    def of_labeler(cls, config) -> 'GroundConfig':
        """The ground settings of a LabelerConfig (its ground_* fields and lidar height)."""
        return cls(method=config.ground_method, window_m=config.ground_window,
                   max_height_m=config.ground_max_height, max_slope_rad=config.ground_max_slope,
                   sensor_height_m=max(config.lidar_z, 0.1))

    def validate(self) -> Optional[str]:
        if self.method not in GROUND_METHODS:
            return f'ground method must be one of {GROUND_METHODS}, not {self.method!r}'
        for name in ('window_m', 'max_height_m', 'max_slope_rad', 'max_step_m',
                     'min_surface_cells', 'edge_slope_rad', 'sensor_height_m'):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                return f'ground {name} must be > 0, got {value}'
        if self.method == 'patchwork' and not patchwork_available():
            return ('ground method patchwork needs the pypatchworkpp package '
                    '(pip install pypatchworkpp)')
        return None


@dataclass
class GroundRejects:
    """Cells of one scan judged not to be ground: one row each (odom frame)."""

    centres: np.ndarray       # (K, 3) cell centre, z of the plane through its lowest returns (m)
    reasons: np.ndarray       # (K,) int, index into REJECT_REASONS
    height_above_ground: np.ndarray  # (K,) m above the local ground (NaN when not measured)
    slope: np.ndarray         # (K,) rad
    point_count: np.ndarray   # (K,) returns in the cell's lowest band

    def __len__(self) -> int:
        return self.reasons.shape[0]

    @staticmethod
    def empty() -> 'GroundRejects':
        return GroundRejects(np.zeros((0, 3)), np.zeros(0, dtype=np.int64), np.zeros(0),
                             np.zeros(0), np.zeros(0))

    def counts(self) -> dict:
        """Reason name -> rejected cells."""
        return {name: int(np.count_nonzero(self.reasons == index))
                for index, name in enumerate(REJECT_REASONS)
                if np.any(self.reasons == index)}


def patchwork_available() -> bool:
    try:
        import pypatchworkpp  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class CellGeometry:
    """Cell size and range limits of compute_patches_xyz (the labeler's patch.* settings)."""

    cell_size: float = 0.5
    min_points: int = 5
    ground_band: float = 0.3
    min_range: float = 2.0
    max_range: float = 25.0

    def patches(self, x, y, z, origin, t_ns: int) -> PatchSet:
        return compute_patches_xyz(x, y, z, origin, t_ns, self.cell_size, self.min_points,
                                   self.ground_band, self.min_range, self.max_range)

    def plane_fits(self, x, y, z, origin) -> CellPlaneFits:
        return cell_plane_fits(x, y, z, origin, self.cell_size, self.min_points,
                               self.ground_band, self.min_range, self.max_range)

    def patches_of(self, fits: CellPlaneFits, origin, t_ns: int) -> PatchSet:
        return patches_of_fits(fits, origin, t_ns, self.cell_size)


class GroundSegmenter:
    """Points of one scan (odom, m) -> the patches of their ground, and what was rejected."""

    def __init__(self, config: Optional[GroundConfig] = None):
        self.config = config or GroundConfig()
        problem = self.config.validate()
        if problem:
            raise ValueError(problem)
        self._patchwork = None
        self.last_rejects = GroundRejects.empty()

    def patches(self, x, y, z, origin, t_ns: int, geometry: CellGeometry) -> PatchSet:
        """Ground patches of the points x, y, z ((N,) each, odom, m) seen from `origin` (m);
        the rejected cells are left in `last_rejects`."""
        method = self.config.method
        if method == 'none':
            self.last_rejects = GroundRejects.empty()
            return geometry.patches(x, y, z, origin, t_ns)
        if method == 'patchwork':
            return self._patchwork_patches(x, y, z, origin, t_ns, geometry)
        return self._envelope_patches(x, y, z, origin, t_ns, geometry)

    # -- envelope ------------------------------------------------------------------------------

    def _envelope_patches(self, x, y, z, origin, t_ns, geometry: CellGeometry) -> PatchSet:
        fits = geometry.plane_fits(x, y, z, origin)
        first = geometry.patches_of(fits, origin, t_ns)
        if not len(first):
            self.last_rejects = GroundRejects.empty()
            return first
        ix, iy = cell_indices(first.keys)
        ix0, iy0 = int(ix.min()), int(iy.min())
        shape = (int(ix.max()) - ix0 + 1, int(iy.max()) - iy0 + 1)
        local = (ix - ix0, iy - iy0)
        window_cells = self.config.window_m / geometry.cell_size
        opened, eroded = lower_envelope(local, first.centres[:, 2], shape, window_cells)
        # Standing above the opening is not enough where the lowest cell around is close: a
        # ground slope of up to `edge_slope_rad` descends that much within the window (the
        # rim of a ramp or of a ditch).
        allowance = np.tan(self.config.edge_slope_rad) * self.config.window_m / np.sqrt(2)
        height_above = first.centres[:, 2] - np.maximum(opened, eroded + allowance)
        slope = first.features[:, FEATURE_INDEX['slope']]
        steep = slope > self.config.max_slope_rad
        # A cell above the envelope is still ground when the smooth surface it belongs to is
        # mostly not: the edge of a terrace above a ramp or a ditch is as high above the
        # envelope as a car roof, but it continues into ground that is not.
        surface = smooth_surfaces(local, first.centres[:, 2], shape, ~steep,
                                  self.config.max_step_m)
        # A surface with nothing lower within the window (no cell of it stands above the
        # envelope), or of a few cells only, is often a roof or a wall top seen without the
        # ground beside it: it is measured against a window three times wider, and against the
        # lowest cell around it too, since at the edge of the scan a window that holds nothing
        # else makes such a cell its own envelope.
        sizes = np.bincount(surface)
        highest = np.zeros(sizes.shape[0])
        np.maximum.at(highest, surface, height_above)
        unsupported = (sizes[surface] < self.config.min_surface_cells) \
            | (highest[surface] < 0.5 * self.config.max_height_m)
        if unsupported.any():
            wide = first.centres[:, 2] - lower_envelope(
                local, first.centres[:, 2], shape, 3 * window_cells)[0]
            wide = np.maximum(wide, first.centres[:, 2] - (eroded + allowance))
            height_above = np.where(unsupported, wide, height_above)
        above = height_above > self.config.max_height_m
        above_share = np.bincount(surface, weights=above) / sizes
        reasons = np.full(len(first), -1, dtype=np.int64)
        reasons[steep] = REJECT_REASONS.index('steep')
        reasons[above & (above_share[surface] > 0.5)] = REJECT_REASONS.index('above_ground')
        rejected = reasons >= 0
        self.last_rejects = GroundRejects(
            first.centres[rejected], reasons[rejected], height_above[rejected], slope[rejected],
            first.features[rejected, FEATURE_INDEX['point_count']])
        if not rejected.any():
            return first
        # The accepted cells' own fits stand; their neighbourhood features are computed again
        # over accepted cells only, so that they see ground only.
        accepted = np.isin(fits.keys(), first.keys[~rejected], assume_unique=True)
        return geometry.patches_of(fits.subset(accepted), origin, t_ns)

    # -- patchwork -----------------------------------------------------------------------------

    def _patchwork_patches(self, x, y, z, origin, t_ns, geometry: CellGeometry) -> PatchSet:
        if self._patchwork is None:
            import pypatchworkpp
            params = pypatchworkpp.Parameters()
            params.sensor_height = self.config.sensor_height_m
            params.max_range = geometry.max_range
            params.min_range = 0.0
            params.verbose = False
            self._patchwork = pypatchworkpp.patchworkpp(params)
        dx, dy = x - origin[0], y - origin[1]
        near = np.flatnonzero(dx * dx + dy * dy <= geometry.max_range ** 2)
        cloud = np.empty((near.shape[0], 4))
        cloud[:, 0], cloud[:, 1] = dx[near], dy[near]
        cloud[:, 2] = z[near] - origin[2]
        cloud[:, 3] = 0.0  # no intensity: Patchwork++'s reflected-noise removal stays idle
        self._patchwork.estimateGround(cloud)
        ground = near[np.asarray(self._patchwork.getGroundIndices(), dtype=np.int64)]
        nonground = np.ones(x.shape[0], dtype=bool)
        nonground[ground] = False
        nonground_cells = geometry.patches(x[nonground], y[nonground], z[nonground], origin,
                                           t_ns)
        patches = geometry.patches(x[ground], y[ground], z[ground], origin, t_ns)
        dropped = ~np.isin(nonground_cells.keys, patches.keys)
        self.last_rejects = GroundRejects(
            nonground_cells.centres[dropped],
            np.full(int(dropped.sum()), REJECT_REASONS.index('patchwork_nonground')),
            np.full(int(dropped.sum()), np.nan),
            nonground_cells.features[dropped, FEATURE_INDEX['slope']],
            nonground_cells.features[dropped, FEATURE_INDEX['point_count']])
        return patches


def lower_envelope(cells, heights, shape, window_cells: float) -> tuple:
    """(opening, erosion) of the cell heights (m) over a square window `window_cells` wide, at
    the cells themselves: the local ground under each cell, and the lowest cell around it.
    `cells` is (ix, iy) in a grid of `shape`; cells without a height take no part."""
    size = max(int(round(window_cells)) | 1, 3)  # odd, so that the window is centred
    grid = np.full(shape, np.inf)
    grid[cells] = heights
    eroded = ndimage.minimum_filter(grid, size=size, mode='constant', cval=np.inf)
    lowest = eroded[cells]
    # Dilate the eroded surface back, over the cells that have one (others: -inf, no part).
    eroded[~np.isfinite(eroded)] = -np.inf
    opened = ndimage.maximum_filter(eroded, size=size, mode='constant', cval=-np.inf)
    return opened[cells], lowest


def smooth_surfaces(cells, heights, shape, usable, max_step: float) -> np.ndarray:
    """Label per cell: cells joined through 8-neighbours whose heights (m) differ by at most
    `max_step` (m) share a label; cells not `usable` are alone. `cells` is (ix, iy) in a grid of
    `shape`."""
    labels = np.empty(heights.shape[0], dtype=np.int64)
    kernels.smooth_surfaces(np.ascontiguousarray(cells[0], dtype=np.int64),
                            np.ascontiguousarray(cells[1], dtype=np.int64),
                            np.ascontiguousarray(heights, dtype=np.float64),
                            np.ascontiguousarray(usable, dtype=np.uint8),
                            int(shape[0]), int(shape[1]), float(max_step), labels)
    return labels


__all__ = ['GROUND_METHODS', 'REJECT_REASONS', 'CellGeometry', 'GroundConfig',
           'GroundRejects', 'GroundSegmenter', 'lower_envelope', 'patchwork_available']
