"""One lidar scan (already in the odom frame) -> ground cells with geometric features.

Cells are squares of `cell_size` m on a grid fixed in odom, so repeated observations of the same
ground fall into the same cell (its key). Everything is vectorised over the scan: points are binned
into a dense local grid and grouped by cell with one stable argsort, per-cell sums come from
`np.bincount`, per-cell extremes from `np.minimum.reduceat` / `np.maximum.reduceat` over the
grouped runs, and the per-cell plane fits are one batched 3x3 eigen-decomposition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Order of the columns of PatchSet.features (and of the patch-cloud fields after x, y, z).
FEATURE_NAMES = (
    'point_count',     # ground returns in the cell (-)
    'height_std',      # standard deviation of point heights (m)
    'height_range',    # max - min point height (m)
    'plane_residual',  # RMS distance of points to their best-fit plane (line if on one ring) (m)
    'slope',           # angle of the best-fit plane to horizontal (rad)
    'curvature',       # surface variation: smallest / sum of covariance eigenvalues (-)
    'max_step',        # largest jump of a neighbour cell's mean height off this cell's plane (m)
    'range',           # horizontal distance from the sensor to the cell centre (m)
    'grazing_angle',   # angle below horizontal at which the sensor sees the cell (rad)
    # The same measures averaged over the cells of the surrounding window (NEIGHBOURHOOD_CELLS):
    # a shock label describes everything under the tyres, not one 0.5 m cell, and one cell's
    # handful of returns is noisy. On held-out terrain these lift the Spearman rank correlation
    # of predictions with the true roughness from ~0.25 to ~0.8 (bench/bench_learning.py).
    'neighbourhood_height_std',       # (m)
    'neighbourhood_height_range',     # (m)
    'neighbourhood_plane_residual',   # (m)
    'neighbourhood_curvature',        # (-)
)
FEATURE_INDEX = {name: index for index, name in enumerate(FEATURE_NAMES)}
# Features that are lengths, counts or ratios spread over decades (mm to dm): a model should see
# their logarithm.
SCALE_FEATURES = ('point_count', 'height_std', 'height_range', 'plane_residual', 'curvature',
                  'max_step', 'neighbourhood_height_std', 'neighbourhood_height_range',
                  'neighbourhood_plane_residual', 'neighbourhood_curvature')
# What the ground looks like, as opposed to how the lidar saw it (point_count, range,
# grazing_angle): the default inputs of the learner. Sighting conditions repeat with the drive, not
# with the terrain, so a model that learns them memorises the drive: on held-out terrain they cost
# 0.05 of Spearman rank correlation with the true roughness (bench/bench_learning.py).
SIGHTING_FEATURES = ('point_count', 'range', 'grazing_angle')
TERRAIN_FEATURES = tuple(name for name in FEATURE_NAMES if name not in SIGHTING_FEATURES)
# Half-width of the neighbourhood window in cells: 2 -> 5 x 5 cells, 2.5 m at 0.5 m cells, about
# the track width of the vehicle.
NEIGHBOURHOOD_CELLS = 2
_NEIGHBOURHOOD_OF = {'neighbourhood_height_std': 'height_std',
                     'neighbourhood_height_range': 'height_range',
                     'neighbourhood_plane_residual': 'plane_residual',
                     'neighbourhood_curvature': 'curvature'}

# Cell keys pack (ix, iy) into one int64: (ix + OFFSET) * STRIDE + (iy + OFFSET).
_KEY_OFFSET = 1 << 30
_KEY_STRIDE = 1 << 31


def cell_keys(ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Integer cell indices -> int64 keys (unique per cell, sortable)."""
    return (ix.astype(np.int64) + _KEY_OFFSET) * _KEY_STRIDE + (iy.astype(np.int64) + _KEY_OFFSET)


def cell_indices(keys: np.ndarray) -> tuple:
    """Inverse of `cell_keys`: int64 keys -> (ix, iy)."""
    keys = np.asarray(keys, dtype=np.int64)
    return keys // _KEY_STRIDE - _KEY_OFFSET, keys % _KEY_STRIDE - _KEY_OFFSET


@dataclass
class PatchSet:
    """Ground cells seen in one scan; centres (M, 3) in odom, m: cell centre, z of the plane fit."""

    t_ns: int
    keys: np.ndarray       # (M,) int64, sorted
    centres: np.ndarray    # (M, 3) float64
    features: np.ndarray   # (M, len(FEATURE_NAMES)) float64

    def __len__(self) -> int:
        return self.keys.shape[0]

    @staticmethod
    def empty(t_ns: int) -> 'PatchSet':
        return PatchSet(t_ns, np.zeros(0, dtype=np.int64), np.zeros((0, 3)),
                        np.zeros((0, len(FEATURE_NAMES))))


def compute_patches(points: np.ndarray, sensor_origin, t_ns: int, cell_size: float = 0.5,
                    min_points: int = 5, ground_band: float = 0.3, min_range: float = 2.0,
                    max_range: float = 30.0) -> PatchSet:
    """Ground cells and their features from (N, 3) finite points in odom (m).

    Args:
        sensor_origin: lidar position in odom (m), for range and grazing angle.
        cell_size: cell edge (m).
        min_points: cells with fewer ground returns are left out (too little evidence).
        ground_band: points higher than this above the lowest point of their cell are not
            ground (vegetation, the vehicle itself, overhangs) (m).
        min_range, max_range: horizontal distances from the sensor (m) outside which points are
            ignored (self-returns close by; sparse, noisy returns far away).
    """
    origin = np.asarray(sensor_origin, dtype=np.float64)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    distance_sq = (x - origin[0]) ** 2 + (y - origin[1]) ** 2
    keep = (distance_sq >= min_range * min_range) & (distance_sq <= max_range * max_range)
    if not keep.all():
        x, y, z = x[keep], y[keep], z[keep]
    if x.shape[0] == 0:
        return PatchSet.empty(t_ns)

    # Dense local grid over the scan's footprint: flat index per point.
    ix = np.floor(x / cell_size).astype(np.int64)
    iy = np.floor(y / cell_size).astype(np.int64)
    ix0, iy0 = ix.min(), iy.min()
    nx, ny = int(ix.max() - ix0) + 1, int(iy.max() - iy0) + 1
    flat = (ix - ix0) * ny + (iy - iy0)

    # Group the points by cell once (a stable sort keeps each cell's points in scan order):
    # per-cell extremes are then reductions over contiguous runs, ~5x faster than
    # np.minimum.at / np.maximum.at, and per-cell sums run over the few cells present instead
    # of the whole dense grid. `cell` numbers the present cells 0..n_present-1 by flat index.
    by_cell = np.argsort(flat, kind='stable')
    flat_sorted = flat[by_cell]
    new_run = np.concatenate([[False], flat_sorted[1:] != flat_sorted[:-1]])
    run_start = np.concatenate([[0], np.flatnonzero(new_run)])
    present = flat_sorted[run_start]  # flat index of each present cell, ascending
    cell_sorted = np.cumsum(new_run)
    cell = np.empty_like(cell_sorted)
    cell[by_cell] = cell_sorted

    # Ground: within `ground_band` of the cell's lowest point.
    z_min = np.minimum.reduceat(z[by_cell], run_start)
    dz = z - z_min[cell]
    ground = dz <= ground_band
    ground_dz_by_cell = dz[by_cell][ground[by_cell]]  # still grouped by cell, for the maxima
    if not ground.all():
        x, y, dz = x[ground], y[ground], dz[ground]
        cell, ix, iy = cell[ground], ix[ground], iy[ground]

    count = np.bincount(cell, minlength=present.shape[0])
    occupied_cell = np.flatnonzero(count >= min_points)
    if occupied_cell.shape[0] == 0:
        return PatchSet.empty(t_ns)
    occupied = present[occupied_cell]  # flat indices into the dense nx x ny grid

    # Coordinates relative to the cell centre / lowest point: small numbers, no cancellation.
    dx = x - (ix + 0.5) * cell_size
    dy = y - (iy + 0.5) * cell_size

    def cell_sum(weights):
        return np.bincount(cell, weights=weights, minlength=present.shape[0])[occupied_cell]

    n = count[occupied_cell].astype(np.float64)
    mean = np.stack([cell_sum(dx), cell_sum(dy), cell_sum(dz)], axis=1) / n[:, None]
    covariance = np.empty((occupied.shape[0], 3, 3))
    products = {(0, 0): dx * dx, (1, 1): dy * dy, (2, 2): dz * dz,
                (0, 1): dx * dy, (0, 2): dx * dz, (1, 2): dy * dz}
    for (a, b), product in products.items():
        value = cell_sum(product) / n - mean[:, a] * mean[:, b]
        covariance[:, a, b] = covariance[:, b, a] = value
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    normal = eigenvectors[:, :, 0]
    normal_z = np.abs(normal[:, 2])

    # Height range: the highest ground point per cell, from the runs of the grouped points
    # (cells without ground points, only possible with ground_band < 0, keep -inf).
    dz_max = np.full(present.shape[0], -np.inf)
    nonempty = np.flatnonzero(count)
    run_starts = (np.cumsum(count) - count)[nonempty]
    dz_max[nonempty] = np.maximum.reduceat(ground_dz_by_cell, run_starts)

    cell_ix = occupied // ny + ix0
    cell_iy = occupied % ny + iy0
    centres = np.empty((occupied.shape[0], 3))
    centres[:, 0] = (cell_ix + 0.5) * cell_size
    centres[:, 1] = (cell_iy + 0.5) * cell_size
    # Plane gradient dz/dx, dz/dy from the normal (near-vertical planes clipped).
    safe_nz = np.where(normal[:, 2] < 0, -1.0, 1.0) * np.maximum(normal_z, 0.1)
    gradient_x = -normal[:, 0] / safe_nz
    gradient_y = -normal[:, 1] / safe_nz
    # Height of the fitted plane at the cell centre (the points' centroid is rarely there).
    centres[:, 2] = (z_min[occupied_cell] + mean[:, 2] - gradient_x * mean[:, 0]
                     - gradient_y * mean[:, 1])
    max_step = _max_neighbour_step(occupied, centres[:, 2], gradient_x, gradient_y,
                                   nx, ny, cell_size)

    horizontal = np.hypot(centres[:, 0] - origin[0], centres[:, 1] - origin[1])
    features = np.empty((occupied.shape[0], len(FEATURE_NAMES)))
    features[:, FEATURE_INDEX['point_count']] = n
    features[:, FEATURE_INDEX['height_std']] = np.sqrt(covariance[:, 2, 2].clip(0.0))
    features[:, FEATURE_INDEX['height_range']] = dz_max[occupied_cell]
    # A sparse lidar often puts a cell's points on one ring: a line, which fits any plane through
    # it. Then the surface's roughness is the spread about the line (both small eigenvalues).
    xx, yy, xy = covariance[:, 0, 0], covariance[:, 1, 1], covariance[:, 0, 1]
    minor_xy = 0.5 * (xx + yy) - np.sqrt(0.25 * (xx - yy) ** 2 + xy * xy)
    line_like = minor_xy < (0.1 * cell_size) ** 2
    residual_var = np.where(line_like, eigenvalues[:, 0] + eigenvalues[:, 1], eigenvalues[:, 0])
    features[:, FEATURE_INDEX['plane_residual']] = np.sqrt(residual_var)
    features[:, FEATURE_INDEX['slope']] = np.arccos(np.clip(normal_z, 0.0, 1.0))
    features[:, FEATURE_INDEX['curvature']] = residual_var / np.maximum(
        eigenvalues.sum(axis=1), 1e-12)
    features[:, FEATURE_INDEX['max_step']] = max_step
    features[:, FEATURE_INDEX['range']] = horizontal
    features[:, FEATURE_INDEX['grazing_angle']] = np.arctan2(origin[2] - centres[:, 2], horizontal)
    sources = [FEATURE_INDEX[name] for name in _NEIGHBOURHOOD_OF.values()]
    targets = [FEATURE_INDEX[name] for name in _NEIGHBOURHOOD_OF]
    features[:, targets] = _neighbourhood_mean(occupied, features[:, sources], nx, ny,
                                               NEIGHBOURHOOD_CELLS)

    keys = cell_keys(cell_ix, cell_iy)
    order = np.argsort(keys)  # ascending keys let the cell map merge with searchsorted
    return PatchSet(t_ns, keys[order], centres[order], features[order])


def _neighbourhood_mean(occupied, values, nx, ny, half_width):
    """Per occupied cell: mean of `values` (M, C) over the occupied cells of the
    (2 half_width + 1)^2 window centred on it (itself included), from a summed-area table."""
    pad = half_width
    # Summed-area tables with a zero first row/column: window sum = 4 corner lookups.
    shape = (nx + 2 * pad + 1, ny + 2 * pad + 1)
    i = occupied // ny + pad + 1
    j = occupied % ny + pad + 1
    channels = np.zeros((values.shape[1] + 1,) + shape)
    channels[:-1, i, j] = values.T
    channels[-1, i, j] = 1.0  # occupied-cell count
    table = channels.cumsum(axis=1).cumsum(axis=2)
    lo_i, hi_i = i - pad - 1, i + pad
    lo_j, hi_j = j - pad - 1, j + pad
    window = (table[:, hi_i, hi_j] - table[:, lo_i, hi_j] - table[:, hi_i, lo_j]
              + table[:, lo_i, lo_j])
    return (window[:-1] / window[-1]).T


# The 8 neighbour offsets (cells) around a cell: as indices, and as floats for plane heights.
_NEIGHBOUR_DI = np.array([-1, -1, -1, 0, 0, 1, 1, 1])
_NEIGHBOUR_DJ = np.array([-1, 0, 1, -1, 1, -1, 0, 1])
_NEIGHBOUR_DX, _NEIGHBOUR_DY = _NEIGHBOUR_DI.astype(np.float64), _NEIGHBOUR_DJ.astype(np.float64)


def _max_neighbour_step(occupied, mean_z, gradient_x, gradient_y, nx, ny, cell_size):
    """Per occupied cell: max over the 8 neighbours of |neighbour mean z - this plane there| (m)."""
    grid = np.full((nx + 2, ny + 2), np.nan)  # padded so every cell has 8 neighbour slots
    i = occupied // ny + 1
    j = occupied % ny + 1
    grid[i, j] = mean_z
    # All 8 neighbours at once, (cells, 8): one gather instead of a Python loop of 8.
    neighbour = grid[i[:, None] + _NEIGHBOUR_DI, j[:, None] + _NEIGHBOUR_DJ]
    predicted = mean_z[:, None] + (gradient_x[:, None] * _NEIGHBOUR_DX
                                   + gradient_y[:, None] * _NEIGHBOUR_DY) * cell_size
    difference = np.abs(neighbour - predicted)
    return np.fmax.reduce(difference, axis=1, initial=0.0)  # fmax skips empty (NaN) neighbours
