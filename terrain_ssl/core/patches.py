"""One lidar scan (already in the odom frame) -> ground cells with geometric features.

Cells are squares of `cell_size` m on a grid fixed in odom, so repeated observations of the same
ground fall into the same cell (its key). The points are binned into a dense local grid over
the scan's footprint; per cell, the ground points (within `ground_band` of the lowest) give
moments, a plane fit (a closed-form 3x3 eigen-decomposition, `symmetric_eigen_3x3`) and the
features below, then the 8-neighbour steps and the neighbourhood means. The loops run compiled
(`kernels`, from _kernels.c); test/numpy_reference.py spells the same steps out in numpy.
Everything is computed in float64 whatever the input's dtype.
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
    and FEATURE_NAMES[9:] == tuple('neighbourhood_' + name for name in FEATURE_NAMES[1:4]
                                   + ('curvature',)), 'update the F_ columns of _kernels.c'
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
    """Ground cells seen in one scan; centres (M, 3) in odom, m: cell centre, z of the plane
    fit."""

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
    are read faster than the strided columns of an (N, 3) array.
    """
    fits = cell_plane_fits(x, y, z, sensor_origin, cell_size, min_points, ground_band,
                           min_range, max_range)
    return patches_of_fits(fits, sensor_origin, t_ns, cell_size)


@dataclass
class CellPlaneFits:
    """Per cell with at least `min_points` ground returns: the moments of those returns and the
    plane through them, before the features (kernels.plane_fits' rows). A cell's fit depends on
    its own returns only, so dropping cells (ground segmentation) leaves the others' fits as
    they are; only the neighbourhood features must be computed again."""

    occupied: np.ndarray     # (M,) int64 flat index in the (nx, ny) grid at (ix0, iy0)
    n: np.ndarray            # (M,) ground returns
    z_min: np.ndarray        # (M,) m
    dz_max: np.ndarray       # (M,) m
    means: np.ndarray        # (M, 3) m, relative to the cell corner and z_min
    covariances: np.ndarray  # (M, 6) m^2: xx, yy, zz, xy, xz, yz
    eigenvalues: np.ndarray  # (M, 3) m^2, ascending
    normal: np.ndarray       # (M, 3) unit eigenvector of the smallest eigenvalue
    ix0: int
    iy0: int
    nx: int
    ny: int

    def __len__(self) -> int:
        return self.occupied.shape[0]

    def keys(self) -> np.ndarray:
        """Cell keys of the rows (cell_keys)."""
        return cell_keys(self.occupied // self.ny + self.ix0, self.occupied % self.ny + self.iy0)

    def subset(self, rows: np.ndarray) -> 'CellPlaneFits':
        """The fits of `rows` (mask or indices), in order."""
        arrays = (self.occupied, self.n, self.z_min, self.dz_max, self.means, self.covariances,
                  self.eigenvalues, self.normal)
        return CellPlaneFits(*(np.ascontiguousarray(a[rows]) for a in arrays),
                             self.ix0, self.iy0, self.nx, self.ny)


def cell_plane_fits(x, y, z, sensor_origin, cell_size: float = 0.5, min_points: int = 5,
                    ground_band: float = 0.3, min_range: float = 2.0,
                    max_range: float = 30.0) -> CellPlaneFits:
    """The points x, y, z ((N,) each, m, odom) binned into cells, and each cell's plane fit
    (arguments as compute_patches)."""
    origin = np.asarray(sensor_origin, dtype=np.float64)
    moments = _cell_moments(x, y, z, origin, cell_size, ground_band, min_range, max_range)
    if moments is None:
        return CellPlaneFits(np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0), np.zeros(0),
                             np.zeros((0, 3)), np.zeros((0, 6)), np.zeros((0, 3)),
                             np.zeros((0, 3)), 0, 0, 1, 1)
    present, count, z_min, sums, dz_max, ix0, iy0, nx, ny = moments
    cells = present.shape[0]
    occupied, n = np.empty(cells, dtype=np.int64), np.empty(cells)
    z_min_occupied, dz_max_occupied = np.empty(cells), np.empty(cells)
    means, covariances = np.empty((cells, 3)), np.empty((cells, 6))
    eigenvalues, normal = np.empty((cells, 3)), np.empty((cells, 3))
    unsure = np.empty(cells, dtype=bool)
    m = kernels.plane_fits(present, count, z_min, np.ascontiguousarray(sums), dz_max,
                           int(min_points), occupied, n, z_min_occupied, dz_max_occupied,
                           means, covariances, eigenvalues, normal, unsure)
    if m < cells:
        occupied, n, z_min_occupied, dz_max_occupied, means, covariances, eigenvalues, \
            normal, unsure = (a[:m] for a in (occupied, n, z_min_occupied, dz_max_occupied,
                                              means, covariances, eigenvalues, normal, unsure))
    if unsure.any():
        _eigh_rows(unsure, covariances.T, eigenvalues, normal)
    return CellPlaneFits(occupied, n, z_min_occupied, dz_max_occupied, means, covariances,
                         eigenvalues, normal, ix0, iy0, nx, ny)


def patches_of_fits(fits: CellPlaneFits, sensor_origin, t_ns: int,
                    cell_size: float = 0.5) -> PatchSet:
    """The cells of `fits` with their features (the neighbourhood features over these cells
    only), seen from `sensor_origin` (m, odom)."""
    m = len(fits)
    if m == 0:
        return PatchSet.empty(t_ns)
    origin = np.asarray(sensor_origin, dtype=np.float64)
    keys, centres = np.empty(m, dtype=np.int64), np.empty((m, 3))
    features = np.empty((m, len(FEATURE_NAMES)))
    ascending = kernels.cell_features(
        fits.occupied, fits.n, fits.z_min, fits.dz_max, fits.means, fits.covariances,
        fits.eigenvalues, fits.normal, fits.ix0, fits.iy0, fits.nx, fits.ny,
        float(origin[0]), float(origin[1]), float(origin[2]), float(cell_size),
        NEIGHBOURHOOD_CELLS, keys, centres, features)
    # Ascending keys let the cell map merge with searchsorted. The cells come in flat index
    # order, i.e. by (ix, iy), which is the keys' order unless an index is beyond the key range.
    if not ascending:
        order = np.argsort(keys)
        keys, centres, features = keys[order], centres[order], features[order]
    return PatchSet(t_ns, keys, centres, features)


def _cell_moments(x, y, z, origin, cell_size, ground_band, min_range, max_range):
    """The points binned into cells: None when no point is within range, else (present, count,
    z_min, sums, dz_max, ix0, iy0, nx, ny), see kernels.cell_moments."""
    x, y, z = (np.ascontiguousarray(column, dtype=np.float64) for column in (x, y, z))
    n = x.shape[0]
    if y.shape[0] != n or z.shape[0] != n:
        raise ValueError(f'x, y, z differ in length: {n}, {y.shape[0]}, {z.shape[0]}')
    present, count = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    z_min, sums, dz_max = np.empty(n), np.empty((9, n)), np.empty(n)
    cells, ix0, iy0, nx, ny = kernels.cell_moments(
        x, y, z, float(origin[0]), float(origin[1]), float(cell_size), float(ground_band),
        float(min_range), float(max_range), present, count, z_min, sums, dz_max)
    if cells == 0:
        return None
    return (present[:cells], count[:cells], z_min[:cells], sums[:, :cells], dz_max[:cells],
            ix0, iy0, nx, ny)


def count_finite_points(points: np.ndarray) -> int:
    """Rows of (N, 3) `points` whose coordinates are all finite (float64 rows: whose sum is
    finite, so an overflowing row counts as not finite too)."""
    return kernels.count_finite(readable_points(points))


def finite_points_to_frame(points: np.ndarray, rotation, translation) -> tuple:
    """The finite rows p of (N, 3) `points` (m), in order, as rotation @ p + translation: three
    float64 columns x, y, z (m), ready for compute_patches_xyz.

    float64 from here on (exact for float32 input), and in separate contiguous columns, which
    compute_patches_xyz reads faster than the strided columns of an (N, 3) array."""
    rotation = np.ascontiguousarray(rotation, dtype=np.float64)
    translation = np.ascontiguousarray(translation, dtype=np.float64)
    points = readable_points(points)
    n = points.shape[0]
    x, y, z = np.empty(n), np.empty(n), np.empty(n)
    count = kernels.finite_points_to_frame(points, rotation, translation, x, y, z)
    return x[:count], y[:count], z[:count]


def readable_points(points: np.ndarray) -> np.ndarray:
    """`points` as the kernels read them: (N, 3) float32 / float64 in native byte order, any
    strides (a PointCloud2 view as it is); other dtypes are converted to float64."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f'points must be an (N, 3) array, got shape {points.shape}')
    if points.dtype.isnative and points.dtype in (np.float32, np.float64):
        return points
    return points.astype(np.float64)


def symmetric_eigen_3x3(a00, a11, a22, a01, a02, a12) -> tuple:
    """Eigen-decomposition of symmetric 3x3 matrices given by their 6 distinct entries (M,) each.

    Returns (eigenvalues (M, 3) ascending, unit eigenvectors (M, 3) of the smallest eigenvalue,
    sign arbitrary). Agrees with np.linalg.eigh to round-off: eigenvalues within a few eps of
    the largest one in absolute terms (eigh's own accuracy), eigenvectors within eps / (relative
    gap to the next eigenvalue). Non-finite or (nearly) degenerate matrices go to np.linalg.eigh.

    How (compiled, `kernels.closed_form_eigen_3x3`, one matrix at a time):
      1. the trigonometric solution of the characteristic cubic (Smith 1961) gives the one
         eigenvalue set apart from the other two accurately (the close pair only to
         ~sqrt(eps) of the spread: useless for a nearly flat plane's tiny residual), and its
         eigenvector is the longest cross product of two rows of A - lambda I;
      2. the other two come from the 2x2 problem in the plane orthogonal to that eigenvector;
      3. the smallest eigenvalue is the Rayleigh quotient of its eigenvector: for a nearly flat
         patch that is much more accurate than any difference of the large eigenvalues.
    Rows whose two smallest eigenvalues are closer than 1e-4 of the spread of all three have a
    poorly determined normal (points on a line, or all in one spot): np.linalg.eigh decides.
    """
    entries = [np.ascontiguousarray(a, dtype=np.float64) for a in (a00, a11, a22, a01, a02, a12)]
    count = entries[0].shape[0]
    if any(a.shape != (count,) for a in entries):
        raise ValueError('the six entries must be 1-D arrays of one length')
    eigenvalues, normal = np.empty((count, 3)), np.empty((count, 3))
    unsure = np.empty(count, dtype=bool)
    kernels.closed_form_eigen_3x3(*entries, eigenvalues, normal, unsure)
    if unsure.any():
        _eigh_rows(unsure, entries, eigenvalues, normal)
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
