"""One lidar scan (already in the odom frame) -> ground cells with geometric features.

Cells are squares of `cell_size` m on a grid fixed in odom, so repeated observations of the same
ground fall into the same cell (its key). Everything is vectorised over the scan: points are binned
into a dense local grid and grouped by cell with one stable argsort, per-cell sums come from
`np.bincount`, per-cell extremes from `np.minimum.reduceat` / `np.maximum.reduceat` over the
grouped runs, and the per-cell plane fits are a vectorised closed-form 3x3 eigen-decomposition
(`symmetric_eigen_3x3`; np.linalg.eigh costs ~1.3 us per cell, more than all the rest).

That numpy code is the reference. Built packages run the same steps compiled
(`_kernels.c`, 2.5-3x faster per scan: ~60 whole-array numpy passes of ~10 us each become
a few loops), with the same floating-point operations in the same order, so the results are bit
for bit the same (test/test_kernels.py); cells the closed form is unsure of still go to
np.linalg.eigh in between. `numpy_kernels()` runs the reference instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from terrain_ssl.core import kernels

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
# _kernels.c (cell_features) writes the columns in this order.
assert FEATURE_NAMES[:4] == ('point_count', 'height_std', 'height_range', 'plane_residual') \
    and FEATURE_NAMES[4:9] == ('slope', 'curvature', 'max_step', 'range', 'grazing_angle') \
    and len(FEATURE_NAMES) == 13, 'update the F_ columns of _kernels.c'
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

# Dense scan grids with at most this many cells sort their flat cell indices as uint16.
_UINT16_CELLS = 1 << 16

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
    return compute_patches_xyz(points[:, 0], points[:, 1], points[:, 2], sensor_origin, t_ns,
                               cell_size, min_points, ground_band, min_range, max_range)


def compute_patches_xyz(x: np.ndarray, y: np.ndarray, z: np.ndarray, sensor_origin, t_ns: int,
                        cell_size: float = 0.5, min_points: int = 5, ground_band: float = 0.3,
                        min_range: float = 2.0, max_range: float = 30.0) -> PatchSet:
    """`compute_patches` of the points with coordinates x, y, z, (N,) each (m, odom).

    For callers that have the coordinates as separate arrays (the labeler): contiguous columns
    are read ~2x faster than the strided columns of an (N, 3) array.
    """
    origin = np.asarray(sensor_origin, dtype=np.float64)
    if kernels.current is not None:
        return _compute_patches_compiled(x, y, z, origin, t_ns, cell_size, min_points,
                                         ground_band, min_range, max_range)
    moments = _cell_moments(x, y, z, origin, cell_size, ground_band, min_range, max_range)
    if moments is None:
        return PatchSet.empty(t_ns)
    present, count, z_min, sums, dz_max, ix0, iy0, nx, ny = moments

    occupied_cell = np.flatnonzero(count >= min_points)
    if occupied_cell.shape[0] == 0:
        return PatchSet.empty(t_ns)
    occupied = present[occupied_cell]  # flat indices into the dense nx x ny grid
    cell_ix = occupied // ny + ix0
    cell_iy = occupied % ny + iy0
    (sum_dx, sum_dy, sum_dz, sum_dxdx, sum_dydy, sum_dzdz, sum_dxdy, sum_dxdz,
     sum_dydz) = sums[:, occupied_cell]

    n = count[occupied_cell].astype(np.float64)
    mean_x, mean_y, mean_z = sum_dx / n, sum_dy / n, sum_dz / n
    # The 6 distinct entries of each cell's point covariance (m^2).
    cov_xx = sum_dxdx / n - mean_x * mean_x
    cov_yy = sum_dydy / n - mean_y * mean_y
    cov_zz = sum_dzdz / n - mean_z * mean_z
    cov_xy = sum_dxdy / n - mean_x * mean_y
    cov_xz = sum_dxdz / n - mean_x * mean_z
    cov_yz = sum_dydz / n - mean_y * mean_z
    eigenvalues, normal = symmetric_eigen_3x3(cov_xx, cov_yy, cov_zz, cov_xy, cov_xz, cov_yz)
    eigenvalues = np.maximum(eigenvalues, 0.0)  # ascending
    normal_z = np.abs(normal[:, 2])

    centres = np.empty((occupied.shape[0], 3))
    centres[:, 0] = (cell_ix + 0.5) * cell_size
    centres[:, 1] = (cell_iy + 0.5) * cell_size
    # Plane gradient dz/dx, dz/dy from the normal (near-vertical planes clipped).
    safe_nz = np.where(normal[:, 2] < 0, -1.0, 1.0) * np.maximum(normal_z, 0.1)
    gradient_x = -normal[:, 0] / safe_nz
    gradient_y = -normal[:, 1] / safe_nz
    # Height of the fitted plane at the cell centre (the points' centroid is rarely there).
    centres[:, 2] = (z_min[occupied_cell] + mean_z - gradient_x * mean_x
                     - gradient_y * mean_y)
    max_step = _max_neighbour_step(occupied, centres[:, 2], gradient_x, gradient_y,
                                   nx, ny, cell_size)

    horizontal = np.hypot(centres[:, 0] - origin[0], centres[:, 1] - origin[1])
    features = np.empty((occupied.shape[0], len(FEATURE_NAMES)))
    features[:, FEATURE_INDEX['point_count']] = n
    features[:, FEATURE_INDEX['height_std']] = np.sqrt(np.maximum(cov_zz, 0.0))
    features[:, FEATURE_INDEX['height_range']] = dz_max[occupied_cell]
    # A sparse lidar often puts a cell's points on one ring: a line, which fits any plane through
    # it. Then the surface's roughness is the spread about the line (both small eigenvalues).
    minor_xy = 0.5 * (cov_xx + cov_yy) - np.sqrt(0.25 * (cov_xx - cov_yy) ** 2 + cov_xy * cov_xy)
    line_like = minor_xy < (0.1 * cell_size) ** 2
    residual_var = np.where(line_like, eigenvalues[:, 0] + eigenvalues[:, 1], eigenvalues[:, 0])
    features[:, FEATURE_INDEX['plane_residual']] = np.sqrt(residual_var)
    features[:, FEATURE_INDEX['slope']] = np.arccos(np.minimum(normal_z, 1.0))  # normal_z >= 0
    # The sum written out: .sum(axis=1) over rows of 3 costs ~10 us more (same order).
    eigenvalue_sum = eigenvalues[:, 0] + eigenvalues[:, 1] + eigenvalues[:, 2]
    features[:, FEATURE_INDEX['curvature']] = residual_var / np.maximum(eigenvalue_sum, 1e-12)
    features[:, FEATURE_INDEX['max_step']] = max_step
    features[:, FEATURE_INDEX['range']] = horizontal
    features[:, FEATURE_INDEX['grazing_angle']] = np.arctan2(origin[2] - centres[:, 2], horizontal)
    sources = [FEATURE_INDEX[name] for name in _NEIGHBOURHOOD_OF.values()]
    targets = [FEATURE_INDEX[name] for name in _NEIGHBOURHOOD_OF]
    features[:, targets] = _neighbourhood_mean(occupied, features[:, sources], nx, ny,
                                               NEIGHBOURHOOD_CELLS)

    # Ascending keys let the cell map merge with searchsorted. The occupied cells are in flat
    # index order, i.e. by (ix, iy), which is the keys' order already (unless an index is
    # beyond the key range): sort only if need be.
    keys = cell_keys(cell_ix, cell_iy)
    if not (keys[1:] > keys[:-1]).all():
        order = np.argsort(keys)
        keys, centres, features = keys[order], centres[order], features[order]
    return PatchSet(t_ns, keys, centres, features)


def _cell_moments(x, y, z, origin, cell_size, ground_band, min_range, max_range):
    """The per-point part of compute_patches_xyz, in numpy (the reference of the compiled
    `cell_moments`, which gives bit-identical results ~10x faster).

    Returns None when no point is within range, else (present, count, z_min, sums, dz_max,
    ix0, iy0, nx, ny): the points binned into a dense nx x ny grid of cells starting at cell
    (ix0, iy0), and for each cell with points, in ascending flat index (ix - ix0) * ny +
    (iy - iy0): that index (int64), its lowest point z_min (m), its ground points (within
    `ground_band` of z_min) `count`, the (9, cells) sums over them of dx, dy, dz, dx dx, dy dy,
    dz dz, dx dy, dx dz, dy dz (dx, dy from the cell centre, dz from z_min: small numbers, no
    cancellation) and their highest dz (-inf without ground points: ground_band < 0).
    """
    distance_sq = (x - origin[0]) ** 2 + (y - origin[1]) ** 2
    keep = (distance_sq >= min_range * min_range) & (distance_sq <= max_range * max_range)
    if not keep.all():
        x, y, z = x[keep], y[keep], z[keep]
    if x.shape[0] == 0:
        return None

    # Dense local grid over the scan's footprint: flat index per point. The cell indices stay
    # floats (whole numbers, exact): one conversion, to the sort key, instead of two to int64.
    ix = np.floor(x / cell_size)
    iy = np.floor(y / cell_size)
    ix0, iy0 = ix.min(), iy.min()
    nx, ny = int(ix.max() - ix0) + 1, int(iy.max() - iy0) + 1
    flat = (ix - ix0) * ny + (iy - iy0)
    ix0, iy0 = int(ix0), int(iy0)

    # Group the points by cell once and work on them in that order from here on: a stable sort
    # keeps each cell's points in scan order, so the per-cell sums (np.bincount adds in array
    # order) are bit for bit those of the ungrouped points, while per-cell extremes are
    # reductions over contiguous runs (~5x faster than np.minimum.at / np.maximum.at) and
    # per-point cell values are gathers of per-cell ones by the cell number (no scatter back).
    # numpy's stable sort of 16-bit integers is a radix sort, ~3-10x faster than the merge
    # sort it uses for int64; a 30 m scan at 0.5 m cells has ~10,000 grid cells.
    sort_keys = flat.astype(np.uint16 if nx * ny <= _UINT16_CELLS else np.int64)
    by_cell = np.argsort(sort_keys, kind='stable')
    flat_sorted = sort_keys[by_cell]
    new_run = np.empty(flat_sorted.shape[0], dtype=bool)
    new_run[0] = True
    np.not_equal(flat_sorted[1:], flat_sorted[:-1], out=new_run[1:])
    run_start = np.flatnonzero(new_run)
    present = flat_sorted[run_start].astype(np.int64)  # flat index of each present cell, ascending
    cell = np.cumsum(new_run) - 1  # cell number (0 .. present cells - 1) of each point
    x, y, z = x[by_cell], y[by_cell], z[by_cell]

    # Ground: within `ground_band` of the cell's lowest point.
    z_min = np.minimum.reduceat(z, run_start)
    dz = z - z_min[cell]
    ground = dz <= ground_band
    if ground.all():
        count = np.empty_like(run_start)  # the run lengths
        count[:-1] = run_start[1:] - run_start[:-1]
        count[-1] = flat_sorted.shape[0] - run_start[-1]
    else:
        count = np.add.reduceat(ground, run_start, dtype=np.int64)
        x, y, dz, cell = x[ground], y[ground], dz[ground], cell[ground]

    centre_x = (present // ny + ix0 + 0.5) * cell_size
    centre_y = (present % ny + iy0 + 0.5) * cell_size
    dx = x - centre_x[cell]
    dy = y - centre_y[cell]
    sums = np.empty((9, present.shape[0]))
    for row, weights in enumerate((dx, dy, dz, dx * dx, dy * dy, dz * dz, dx * dy, dx * dz,
                                   dy * dz)):
        sums[row] = np.bincount(cell, weights=weights, minlength=present.shape[0])

    # The highest ground point per cell, from the runs of the grouped points.
    ground_start = np.cumsum(count) - count  # where each cell's ground points start
    if count.all():
        dz_max = np.maximum.reduceat(dz, ground_start)
    else:
        dz_max = np.full(present.shape[0], -np.inf)
        nonempty = np.flatnonzero(count)
        dz_max[nonempty] = np.maximum.reduceat(dz, ground_start[nonempty])
    return present, count, z_min, sums, dz_max, ix0, iy0, nx, ny


def _cell_moments_compiled(x, y, z, origin, cell_size, ground_band, min_range, max_range):
    """`_cell_moments` by the compiled kernel: one pass per step over the points, in C."""
    x, y, z = (np.ascontiguousarray(column, dtype=np.float64) for column in (x, y, z))
    n = x.shape[0]
    if y.shape[0] != n or z.shape[0] != n:
        raise ValueError(f'x, y, z differ in length: {n}, {y.shape[0]}, {z.shape[0]}')
    present, count = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    z_min, sums, dz_max = np.empty(n), np.empty((9, n)), np.empty(n)
    cells, ix0, iy0, nx, ny = kernels.current.cell_moments(
        x, y, z, float(origin[0]), float(origin[1]), float(cell_size), float(ground_band),
        float(min_range), float(max_range), present, count, z_min, sums, dz_max)
    if cells == 0:
        return None
    return (present[:cells], count[:cells], z_min[:cells], sums[:, :cells], dz_max[:cells],
            ix0, iy0, nx, ny)


def _compute_patches_compiled(x, y, z, origin, t_ns, cell_size, min_points, ground_band,
                              min_range, max_range) -> PatchSet:
    """compute_patches_xyz by the compiled kernels: the same steps, three C calls, and
    np.linalg.eigh between the last two for the cells the closed form is unsure of."""
    moments = _cell_moments_compiled(x, y, z, origin, cell_size, ground_band, min_range,
                                     max_range)
    if moments is None:
        return PatchSet.empty(t_ns)
    present, count, z_min, sums, dz_max, ix0, iy0, nx, ny = moments
    cells = present.shape[0]
    occupied, n = np.empty(cells, dtype=np.int64), np.empty(cells)
    z_min_occupied, dz_max_occupied = np.empty(cells), np.empty(cells)
    means, covariances = np.empty((cells, 3)), np.empty((cells, 6))
    eigenvalues, normal = np.empty((cells, 3)), np.empty((cells, 3))
    unsure = np.empty(cells, dtype=bool)
    m = kernels.current.plane_fits(present, count, z_min, np.ascontiguousarray(sums), dz_max,
                            int(min_points), occupied, n, z_min_occupied, dz_max_occupied,
                            means, covariances, eigenvalues, normal, unsure)
    if m == 0:
        return PatchSet.empty(t_ns)
    if m < cells:
        occupied, n, z_min_occupied, dz_max_occupied, means, covariances, eigenvalues, \
            normal, unsure = (a[:m] for a in (occupied, n, z_min_occupied, dz_max_occupied,
                                              means, covariances, eigenvalues, normal, unsure))
    if unsure.any():
        _eigh_rows(unsure, covariances.T, eigenvalues, normal)
    keys, centres = np.empty(m, dtype=np.int64), np.empty((m, 3))
    features = np.empty((m, len(FEATURE_NAMES)))
    ascending = kernels.current.cell_features(
        occupied, n, z_min_occupied, dz_max_occupied, means, covariances, eigenvalues, normal,
        ix0, iy0, nx, ny, float(origin[0]), float(origin[1]), float(origin[2]),
        float(cell_size), NEIGHBOURHOOD_CELLS, keys, centres, features)
    if not ascending:
        order = np.argsort(keys)
        keys, centres, features = keys[order], centres[order], features[order]
    return PatchSet(t_ns, keys, centres, features)


def count_finite_points(points: np.ndarray) -> int:
    """Rows of (N, 3) `points` whose coordinates are all finite (see _finite_points)."""
    if kernels.current is not None and _native_float(points):
        return kernels.current.count_finite(points)
    return int(np.count_nonzero(_finite_points(points[:, 0], points[:, 1], points[:, 2])))


def finite_points_to_frame(points: np.ndarray, rotation, translation) -> tuple:
    """The finite rows p of (N, 3) `points` (m), in order, as rotation @ p + translation: three
    float64 columns x, y, z (m), ready for compute_patches_xyz.

    float64 from here on (exact for float32 input), and in separate contiguous columns:
    column-wise multiply-adds beat an (N, 3) @ (3, 3) matmul, and compute_patches_xyz reads
    them faster than the strided columns of an (N, 3) array. The compiled kernel does the same
    arithmetic in one pass over the points (bit-identical)."""
    rotation = np.asarray(rotation, dtype=np.float64)
    translation = np.asarray(translation, dtype=np.float64)
    if kernels.current is not None and _native_float(points):
        n = points.shape[0]
        x, y, z = np.empty(n), np.empty(n), np.empty(n)
        count = kernels.current.finite_points_to_frame(points, np.ascontiguousarray(rotation),
                                                np.ascontiguousarray(translation), x, y, z)
        return x[:count], y[:count], z[:count]
    columns = [points[:, 0], points[:, 1], points[:, 2]]
    finite = _finite_points(*columns)
    if not finite.all():
        columns = [column[finite] for column in columns]  # per column: ~5x faster than rows
    # One conversion per column is cheaper than mixed-type arithmetic.
    columns = [column.astype(np.float64, copy=False) for column in columns]
    return tuple(rotation[axis, 0] * columns[0] + rotation[axis, 1] * columns[1]
                 + rotation[axis, 2] * columns[2] + translation[axis] for axis in range(3))


def _native_float(points: np.ndarray) -> bool:
    """An (N, 3) float32 / float64 array in native byte order: what the kernels read."""
    return (points.ndim == 2 and points.shape[1] == 3 and points.dtype.isnative
            and points.dtype in (np.float32, np.float64))


def _finite_points(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Mask of the points whose coordinates sum to a finite number (NaN and Inf propagate).

    float64 sums: one pass over the sum is cheaper than testing three columns. Narrower floats
    (float32 clouds) are tested column by column: their sum in float64 cannot overflow, so it is
    finite exactly when the three coordinates are, and this skips three conversions."""
    if x.dtype == np.float64:
        with np.errstate(invalid='ignore', over='ignore'):  # inf - inf, 1e308 + 1e308: rejected
            return np.isfinite(x + y + z)
    finite = np.isfinite(x)
    finite &= np.isfinite(y)
    finite &= np.isfinite(z)
    return finite


def _neighbourhood_mean(occupied, values, nx, ny, half_width):
    """Per occupied cell: mean of `values` (M, C) over the occupied cells of the
    (2 half_width + 1)^2 window centred on it (itself included).

    The window sums are two 1-D box sums: shifted adds along x over a zero-padded dense grid,
    then, along y, only at the occupied cells (a gather per offset). ~4x cheaper than
    summed-area tables (two cumsums over the whole padded grid), and without their
    cancellation (a window sum is a difference of large running totals there)."""
    width = ny + 2 * half_width
    i = occupied // ny
    j = occupied % ny
    # One row per padded cell, channels last: the values, then 1 (to count occupied cells).
    channels = values.shape[1] + 1
    rows = np.empty((occupied.shape[0], channels))
    rows[:, :-1] = values
    rows[:, -1] = 1.0
    grid = np.zeros(((nx + 2 * half_width) * width, channels))
    grid[(i + half_width) * width + j + half_width] = rows
    grid = grid.reshape(nx + 2 * half_width, width * channels)
    along_x = grid[0:nx].copy()  # along_x[i, j'] = sum of grid[i .. i + 2 hw, j']
    for offset in range(1, 2 * half_width + 1):
        along_x += grid[offset:offset + nx]
    along_x = along_x.reshape(nx * width, channels)
    at = i * width + j  # padded column j' = j + offset - half_width, offset 0 .. 2 hw
    window = np.take(along_x, at, axis=0)
    for offset in range(1, 2 * half_width + 1):
        window += np.take(along_x, at + offset, axis=0)
    return window[:, :-1] / window[:, -1:]


# The 8 neighbour offsets (cells) around a cell: as indices, and as floats for plane heights.
_NEIGHBOUR_DI = np.array([-1, -1, -1, 0, 0, 1, 1, 1])
_NEIGHBOUR_DJ = np.array([-1, 0, 1, -1, 1, -1, 0, 1])
_NEIGHBOUR_DX, _NEIGHBOUR_DY = _NEIGHBOUR_DI.astype(np.float64), _NEIGHBOUR_DJ.astype(np.float64)


def _max_neighbour_step(occupied, mean_z, gradient_x, gradient_y, nx, ny, cell_size):
    """Per occupied cell: max over the 8 neighbours of |neighbour mean z - this plane there| (m)."""
    width = ny + 2  # padded so every cell has 8 neighbour slots
    grid = np.full((nx + 2) * width, np.nan)
    at = (occupied // ny + 1) * width + occupied % ny + 1
    grid[at] = mean_z
    # All 8 neighbours at once, (8, cells): one gather instead of a Python loop of 8, and the
    # maximum over the 8 is then an elementwise fmax of rows (over rows of 8 it cost ~25 us
    # more; the maximum of the same values, in whatever order).
    neighbour = np.take(grid, (_NEIGHBOUR_DI * width + _NEIGHBOUR_DJ)[:, None] + at)
    predicted = mean_z + (_NEIGHBOUR_DX[:, None] * gradient_x
                          + _NEIGHBOUR_DY[:, None] * gradient_y) * cell_size
    difference = np.abs(neighbour - predicted)
    return np.fmax.reduce(difference, axis=0, initial=0.0)  # fmax skips empty (NaN) neighbours


# Cells whose two smallest covariance eigenvalues are closer than this fraction of the spread of
# all three have a poorly determined plane normal (their points lie on a line, or all in one
# spot): there np.linalg.eigh decides, so such cells keep exactly the results they had.
_CLOSE_EIGENVALUES = 1e-4
_SQRT_3 = float(np.sqrt(3.0))


def symmetric_eigen_3x3(a00, a11, a22, a01, a02, a12) -> tuple:
    """Eigen-decomposition of symmetric 3x3 matrices given by their 6 distinct entries (M,) each.

    Returns (eigenvalues (M, 3) ascending, unit eigenvectors (M, 3) of the smallest eigenvalue,
    sign arbitrary). Agrees with np.linalg.eigh to round-off: eigenvalues within a few eps of
    the largest one in absolute terms (eigh's own accuracy), eigenvectors within eps / (relative
    gap to the next eigenvalue). Non-finite or (nearly) degenerate matrices go to np.linalg.eigh.

    How (all vectorised, ~4x faster than np.linalg.eigh on 1000 matrices):
      1. the trigonometric solution of the characteristic cubic (Smith 1961) gives the one
         eigenvalue set apart from the other two accurately (the close pair only to
         ~sqrt(eps) of the spread: useless for a nearly flat plane's tiny residual), and its
         eigenvector is the longest cross product of two rows of A - lambda I;
      2. the other two come from the 2x2 problem in the plane orthogonal to that eigenvector;
      3. the smallest eigenvalue is the Rayleigh quotient of its eigenvector: for a nearly flat
         patch that is much more accurate than any difference of the large eigenvalues.
    """
    # Degenerate matrices divide by zero on the way (p = 0: all eigenvalues equal; a zero
    # cross product or 2x2 eigenvector) and give NaN: such rows are unsure and go to eigh. One
    # errstate for the lot: entering one costs ~3 us.
    if kernels.current is not None:
        entries = [np.ascontiguousarray(a, dtype=np.float64) for a in (a00, a11, a22, a01, a02,
                                                                        a12)]
        count = entries[0].shape[0]
        if any(a.shape != (count,) for a in entries):
            raise ValueError('the six entries must be 1-D arrays of one length')
        eigenvalues, normal = np.empty((count, 3)), np.empty((count, 3))
        unsure = np.empty(count, dtype=bool)
        kernels.current.closed_form_eigen_3x3(*entries, eigenvalues, normal, unsure)
    else:
        with np.errstate(divide='ignore', invalid='ignore'):
            eigenvalues, normal, unsure = _closed_form_eigen_3x3(a00, a11, a22, a01, a02, a12)
    if unsure.any():
        _eigh_rows(unsure, (a00, a11, a22, a01, a02, a12), eigenvalues, normal)
    return eigenvalues, normal


def _eigh_rows(rows, entries, eigenvalues, normal) -> None:
    """np.linalg.eigh for the `rows` (mask) of the matrices given by their 6 distinct entries
    (a00, a11, a22, a01, a02, a12), into eigenvalues and normal (the smallest's vector)."""
    matrices = np.empty((int(rows.sum()), 3, 3))
    for (row, column), entry in zip(((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)), entries):
        matrices[:, row, column] = matrices[:, column, row] = entry[rows]
    eigh_values, eigh_vectors = np.linalg.eigh(matrices)
    eigenvalues[rows] = eigh_values
    normal[rows] = eigh_vectors[:, :, 0]


def _closed_form_eigen_3x3(a00, a11, a22, a01, a02, a12) -> tuple:
    """Steps 1-3 of `symmetric_eigen_3x3`: (eigenvalues, normal, mask of the unsure rows)."""
    # 1. A = q I + p B with trace(B) = 0: eigenvalues q + 2 p cos(angle + 2 pi k / 3), k = 0, 1, 2.
    q = (a00 + a11 + a22) / 3.0
    b00, b11, b22 = a00 - q, a11 - q, a22 - q
    p_sq = (b00 * b00 + b11 * b11 + b22 * b22 + 2.0 * (a01 * a01 + a02 * a02 + a12 * a12)) / 6.0
    p = np.sqrt(p_sq)
    det_b = (b00 * (b11 * b22 - a12 * a12) - a01 * (a01 * b22 - a12 * a02)
             + a02 * (a01 * a12 - b11 * a02))
    half_det = det_b / (2.0 * p * p_sq)  # p = 0 (all equal): NaN, unsure
    cos_angle = np.cos(np.arccos(np.clip(half_det, -1.0, 1.0)) / 3.0)  # angle in [0, pi/3]
    # det(B) >= 0 <=> angle <= pi/6 <=> the largest eigenvalue is farther from the middle one
    # than the smallest is: then the largest is the one set apart, otherwise the smallest
    # (q + 2 p cos(angle + 2 pi/3), written with cos(angle) alone).
    largest_apart = det_b >= 0.0
    apart = q + p * np.where(largest_apart, 2.0 * cos_angle,
                             -cos_angle - _SQRT_3 * np.sqrt(1.0 - cos_angle * cos_angle))
    v0, v1, v2 = _null_vector(a00 - apart, a11 - apart, a22 - apart, a01, a02, a12)

    # 2. Orthonormal basis (u, w) of the plane orthogonal to v, and A restricted to it (2x2 S).
    use_x = np.abs(v0) > np.abs(v1)  # drop the smaller of v0, v1: |(v0 or v1, v2)| >= 1/sqrt(2)
    scale = 1.0 / np.sqrt(np.where(use_x, v0 * v0, v1 * v1) + v2 * v2)
    u0 = np.where(use_x, -v2 * scale, 0.0)
    u1 = np.where(use_x, 0.0, v2 * scale)
    u2 = np.where(use_x, v0, -v1) * scale
    w0, w1, w2 = v1 * u2 - v2 * u1, v2 * u0 - v0 * u2, v0 * u1 - v1 * u0
    au0 = a00 * u0 + a01 * u1 + a02 * u2
    au1 = a01 * u0 + a11 * u1 + a12 * u2
    au2 = a02 * u0 + a12 * u1 + a22 * u2
    s00 = u0 * au0 + u1 * au1 + u2 * au2
    s01 = w0 * au0 + w1 * au1 + w2 * au2
    s11 = _quadratic_form(a00, a11, a22, a01, a02, a12, w0, w1, w2)
    half_difference = 0.5 * (s00 - s11)
    radius = np.sqrt(half_difference * half_difference + s01 * s01)
    mean = 0.5 * (s00 + s11)  # S's eigenvalues: mean -+ radius
    # Eigenvector (c_u, c_w) of S's smaller eigenvalue, from the row of S - (mean - radius) I
    # whose diagonal entry is computed without cancellation.
    u_larger = half_difference >= 0.0
    c_u = np.where(u_larger, s01, -(radius - half_difference))
    c_w = np.where(u_larger, -(half_difference + radius), s01)
    c_scale = 1.0 / np.sqrt(c_u * c_u + c_w * c_w)  # S = 0: NaN, caught below
    c_u *= c_scale
    c_w *= c_scale

    # 3. The smallest eigenvalue's eigenvector: S's smaller one if the largest was set apart.
    normal = np.empty((a00.shape[0], 3))
    normal[:, 0] = np.where(largest_apart, c_u * u0 + c_w * w0, v0)
    normal[:, 1] = np.where(largest_apart, c_u * u1 + c_w * w1, v1)
    normal[:, 2] = np.where(largest_apart, c_u * u2 + c_w * w2, v2)
    eigenvalues = np.empty((a00.shape[0], 3))
    eigenvalues[:, 0] = _quadratic_form(a00, a11, a22, a01, a02, a12,
                                        normal[:, 0], normal[:, 1], normal[:, 2])
    eigenvalues[:, 1] = np.where(largest_apart, mean + radius, mean - radius)
    eigenvalues[:, 2] = np.where(largest_apart, apart, mean + radius)

    # NaN compares False: non-finite rows are unsure too.
    unsure = ~(eigenvalues[:, 1] - eigenvalues[:, 0]
               > _CLOSE_EIGENVALUES * (eigenvalues[:, 2] - eigenvalues[:, 0]))
    # The components are those of unit vectors (or not finite), so their sum is finite exactly
    # when all three are (~15 us cheaper than np.isfinite(normal).all(axis=1) over rows of 3).
    unsure |= ~np.isfinite(normal[:, 0] + normal[:, 1] + normal[:, 2])
    return eigenvalues, normal, unsure


def _quadratic_form(a00, a11, a22, a01, a02, a12, x0, x1, x2):
    """x . A x for symmetric A given by its 6 distinct entries."""
    return (a00 * x0 * x0 + a11 * x1 * x1 + a22 * x2 * x2
            + 2.0 * (a01 * x0 * x1 + a02 * x0 * x2 + a12 * x1 * x2))


def _null_vector(c00, c11, c22, c01, c02, c12):
    """Unit vector spanning the null space of the (rank-2) symmetric matrix C: the longest of
    the cross products of pairs of its rows (the most accurate one)."""
    # rows r0 = (c00, c01, c02), r1 = (c01, c11, c12), r2 = (c02, c12, c22)
    x01, y01, z01 = c01 * c12 - c02 * c11, c02 * c01 - c00 * c12, c00 * c11 - c01 * c01
    x02, y02, z02 = c01 * c22 - c02 * c12, c02 * c02 - c00 * c22, c00 * c12 - c01 * c02
    x12, y12, z12 = c11 * c22 - c12 * c12, c12 * c02 - c01 * c22, c01 * c12 - c11 * c02
    length_sq_01 = x01 * x01 + y01 * y01 + z01 * z01
    length_sq_02 = x02 * x02 + y02 * y02 + z02 * z02
    length_sq_12 = x12 * x12 + y12 * y12 + z12 * z12
    pick_02 = length_sq_02 > length_sq_01
    x, y, z = np.where(pick_02, x02, x01), np.where(pick_02, y02, y01), np.where(pick_02, z02, z01)
    length_sq = np.maximum(length_sq_01, length_sq_02)
    pick_12 = length_sq_12 > length_sq
    x, y, z = np.where(pick_12, x12, x), np.where(pick_12, y12, y), np.where(pick_12, z12, z)
    inverse_length = 1.0 / np.sqrt(np.maximum(length_sq, length_sq_12))  # 0: NaN, unsure
    return x * inverse_length, y * inverse_length, z * inverse_length
