"""A readable numpy version of each compiled kernel of terrain_ssl (terrain_ssl/core/_kernels.c),
for test/test_kernels.py to compare with. Not used by the package.

Every function computes in float64 whatever its input's dtype, as the kernels do. Sums here run
in another order than in C (numpy's pairwise summation, np.bincount, matmul), and the compiler
may fuse multiply-adds, so results agree to round-off, not to the last bit.
"""

import math

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from terrain_ssl.core.patches import (
    FEATURE_INDEX,
    FEATURE_NAMES,
    NEIGHBOURHOOD_CELLS,
    PatchSet,
    cell_keys,
)

# Cells whose two smallest covariance eigenvalues are closer than this fraction of the spread of
# all three have a poorly determined plane normal: np.linalg.eigh decides for them.
CLOSE_EIGENVALUES = 1e-4
SQRT_3 = math.sqrt(3.0)
NEIGHBOURHOOD_OF = {'neighbourhood_height_std': 'height_std',
                    'neighbourhood_height_range': 'height_range',
                    'neighbourhood_plane_residual': 'plane_residual',
                    'neighbourhood_curvature': 'curvature'}


# -- a lidar scan -> ground cells (patches.py) ------------------------------------------------

def count_finite(points) -> int:
    """Rows of (N, 3) points whose float64 sum is finite (an overflowing row is not)."""
    points = np.asarray(points, dtype=np.float64)
    with np.errstate(over='ignore', invalid='ignore'):
        return int(np.isfinite(points.sum(axis=1)).sum())


def finite_points_to_frame(points, rotation, translation) -> tuple:
    """The finite rows p of (N, 3) points as rotation @ p + translation: columns x, y, z."""
    points = np.asarray(points, dtype=np.float64)
    with np.errstate(over='ignore', invalid='ignore'):
        finite = np.isfinite(points.sum(axis=1))
    moved = points[finite] @ np.asarray(rotation, dtype=np.float64).T + translation
    return moved[:, 0], moved[:, 1], moved[:, 2]


def cell_moments(x, y, z, origin, cell_size, ground_band, min_range, max_range):
    """The points within [min_range, max_range] of the origin (horizontally), binned into a
    dense nx x ny grid of cells starting at cell (ix0, iy0). None without such points, else
    (present, count, z_min, sums, dz_max, ix0, iy0, nx, ny): per cell with points, ascending by
    flat index (ix - ix0) * ny + (iy - iy0), that index, its ground points' count (within
    ground_band of the lowest point z_min), the (9, cells) sums over them of dx, dy, dz, dx dx,
    dy dy, dz dz, dx dy, dx dz, dy dz (dx, dy from the cell centre, dz from z_min) and their
    largest dz (-inf without ground points)."""
    x, y, z = (np.asarray(column, dtype=np.float64) for column in (x, y, z))
    distance_sq = (x - origin[0]) ** 2 + (y - origin[1]) ** 2
    keep = (distance_sq >= min_range * min_range) & (distance_sq <= max_range * max_range)
    x, y, z = x[keep], y[keep], z[keep]
    if x.shape[0] == 0:
        return None
    ix, iy = np.floor(x / cell_size), np.floor(y / cell_size)
    ix0, iy0 = int(ix.min()), int(iy.min())
    nx, ny = int(ix.max()) - ix0 + 1, int(iy.max()) - iy0 + 1
    flat = (ix.astype(np.int64) - ix0) * ny + (iy.astype(np.int64) - iy0)
    present, cell = np.unique(flat, return_inverse=True)
    cells = present.shape[0]
    z_min = np.full(cells, np.inf)
    np.minimum.at(z_min, cell, z)
    dz = z - z_min[cell]
    ground = dz <= ground_band
    x, y, dz, cell = x[ground], y[ground], dz[ground], cell[ground]
    count = np.bincount(cell, minlength=cells)
    dx = x - ((present // ny + ix0) + 0.5)[cell] * cell_size
    dy = y - ((present % ny + iy0) + 0.5)[cell] * cell_size
    sums = np.stack([np.bincount(cell, weights=terms, minlength=cells) for terms in
                     (dx, dy, dz, dx * dx, dy * dy, dz * dz, dx * dy, dx * dz, dy * dz)])
    dz_max = np.full(cells, -np.inf)
    np.maximum.at(dz_max, cell, dz)
    return present, count, z_min, sums, dz_max, ix0, iy0, nx, ny


def compute_patches(points, sensor_origin, t_ns, cell_size=0.5, min_points=5, ground_band=0.3,
                    min_range=2.0, max_range=30.0) -> PatchSet:
    """patches.compute_patches, step by step over whole arrays."""
    points = np.asarray(points, dtype=np.float64)
    origin = np.asarray(sensor_origin, dtype=np.float64)
    moments = cell_moments(points[:, 0], points[:, 1], points[:, 2], origin, cell_size,
                           ground_band, min_range, max_range)
    if moments is None:
        return PatchSet.empty(t_ns)
    present, count, z_min, sums, dz_max, ix0, iy0, nx, ny = moments
    chosen = count >= min_points
    if not chosen.any():
        return PatchSet.empty(t_ns)
    occupied = present[chosen]
    cell_ix, cell_iy = occupied // ny + ix0, occupied % ny + iy0
    n = count[chosen].astype(np.float64)
    mean_x, mean_y, mean_z = sums[:3, chosen] / n
    cov_xx, cov_yy, cov_zz, cov_xy, cov_xz, cov_yz = (
        sums[3 + k, chosen] / n - a * b for k, (a, b) in enumerate(
            ((mean_x, mean_x), (mean_y, mean_y), (mean_z, mean_z), (mean_x, mean_y),
             (mean_x, mean_z), (mean_y, mean_z))))
    eigenvalues, normal = symmetric_eigen_3x3(cov_xx, cov_yy, cov_zz, cov_xy, cov_xz, cov_yz)
    eigenvalues = np.maximum(eigenvalues, 0.0)  # ascending
    normal_z = np.abs(normal[:, 2])

    centres = np.empty((occupied.shape[0], 3))
    centres[:, 0] = (cell_ix + 0.5) * cell_size
    centres[:, 1] = (cell_iy + 0.5) * cell_size
    # Plane gradient dz/dx, dz/dy from the normal (near-vertical planes clipped), and the
    # plane's height at the cell centre.
    safe_nz = np.where(normal[:, 2] < 0, -1.0, 1.0) * np.maximum(normal_z, 0.1)
    gradient_x, gradient_y = -normal[:, 0] / safe_nz, -normal[:, 1] / safe_nz
    centres[:, 2] = z_min[chosen] + mean_z - gradient_x * mean_x - gradient_y * mean_y

    horizontal = np.hypot(centres[:, 0] - origin[0], centres[:, 1] - origin[1])
    features = np.empty((occupied.shape[0], len(FEATURE_NAMES)))
    column = FEATURE_INDEX
    features[:, column['point_count']] = n
    features[:, column['height_std']] = np.sqrt(np.maximum(cov_zz, 0.0))
    features[:, column['height_range']] = dz_max[chosen]
    # Points on one lidar ring (a line): the residual is the spread about the line.
    minor_xy = 0.5 * (cov_xx + cov_yy) - np.sqrt(0.25 * (cov_xx - cov_yy) ** 2 + cov_xy ** 2)
    line_like = minor_xy < (0.1 * cell_size) ** 2
    residual_var = np.where(line_like, eigenvalues[:, 0] + eigenvalues[:, 1], eigenvalues[:, 0])
    features[:, column['plane_residual']] = np.sqrt(residual_var)
    features[:, column['slope']] = np.arccos(np.minimum(normal_z, 1.0))
    features[:, column['curvature']] = residual_var / np.maximum(eigenvalues.sum(axis=1), 1e-12)
    features[:, column['max_step']] = max_neighbour_step(occupied, centres[:, 2], gradient_x,
                                                         gradient_y, nx, ny, cell_size)
    features[:, column['range']] = horizontal
    features[:, column['grazing_angle']] = np.arctan2(origin[2] - centres[:, 2], horizontal)
    sources = [column[name] for name in NEIGHBOURHOOD_OF.values()]
    targets = [column[name] for name in NEIGHBOURHOOD_OF]
    features[:, targets] = neighbourhood_mean(occupied, features[:, sources], nx, ny,
                                              NEIGHBOURHOOD_CELLS)
    keys = cell_keys(cell_ix, cell_iy)
    order = np.argsort(keys)
    return PatchSet(t_ns, keys[order], centres[order], features[order])


def neighbourhood_mean(occupied, values, nx, ny, half_width):
    """Per occupied cell (flat indices into the nx x ny grid): the mean of `values` (M, C) over
    the occupied cells of the (2 half_width + 1)^2 window centred on it."""
    pad = half_width
    grid = np.zeros((nx + 2 * pad, ny + 2 * pad, values.shape[1] + 1))
    i, j = occupied // ny + pad, occupied % ny + pad
    grid[i, j, :-1] = values
    grid[i, j, -1] = 1.0  # counts the occupied cells
    window = sum(grid[i + di, j + dj] for di in range(-pad, pad + 1)
                 for dj in range(-pad, pad + 1))
    return window[:, :-1] / window[:, -1:]


def max_neighbour_step(occupied, plane_z, gradient_x, gradient_y, nx, ny, cell_size):
    """Per occupied cell: the largest |neighbour's plane height - this plane there| over its
    8 neighbours (m), 0 without any."""
    grid = np.full((nx + 2, ny + 2), np.nan)
    i, j = occupied // ny + 1, occupied % ny + 1
    grid[i, j] = plane_z
    step = np.zeros(occupied.shape[0])
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                predicted = plane_z + (di * gradient_x + dj * gradient_y) * cell_size
                step = np.fmax(step, np.abs(grid[i + di, j + dj] - predicted))  # skips NaN
    return step


def symmetric_eigen_3x3(a00, a11, a22, a01, a02, a12) -> tuple:
    """patches.symmetric_eigen_3x3: the closed form, and np.linalg.eigh for the unsure rows."""
    entries = [np.asarray(a, dtype=np.float64) for a in (a00, a11, a22, a01, a02, a12)]
    with np.errstate(divide='ignore', invalid='ignore'):
        eigenvalues, normal, unsure = closed_form_eigen_3x3(*entries)
    if unsure.any():
        matrices = np.empty((int(unsure.sum()), 3, 3))
        for (row, column), entry in zip(((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)),
                                        entries):
            matrices[:, row, column] = matrices[:, column, row] = entry[unsure]
        eigenvalues[unsure], vectors = np.linalg.eigh(matrices)
        normal[unsure] = vectors[:, :, 0]
    return eigenvalues, normal


def closed_form_eigen_3x3(a00, a11, a22, a01, a02, a12) -> tuple:
    """Steps 1-3 of patches.symmetric_eigen_3x3 (the compiled closed_form_eigen_3x3), per
    row of (M,) entries: (eigenvalues (M, 3) ascending, normal (M, 3), mask of the unsure rows).
    Degenerate rows divide by zero on the way and give NaN: unsure."""
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
                             -cos_angle - SQRT_3 * np.sqrt(1.0 - cos_angle * cos_angle))
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
               > CLOSE_EIGENVALUES * (eigenvalues[:, 2] - eigenvalues[:, 0]))
    unsure |= ~np.isfinite(normal).all(axis=1)
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


# -- the cell map (association.py) ------------------------------------------------------------

def merge_sightings(features, centres, weight, last_seen, rows, new_features, new_centres,
                    new_weight, source, t_ns) -> None:
    """Rows `rows` of the map's arrays become their weighted means with rows `source` of a
    scan's (weights: the sightings' point counts); in place."""
    w_old, w_new = weight[rows][:, None], new_weight[source][:, None]
    total = w_old + w_new
    features[rows] = (features[rows] * w_old + new_features[source] * w_new) / total
    centres[rows] = (centres[rows] * w_old + new_centres[source] * w_new) / total
    weight[rows] = total[:, 0]
    last_seen[rows] = t_ns


def footprint_update(centres, enter, exit_ns, slots, x, y, yaw, offset_x, half_length,
                     half_width, t_ns) -> np.ndarray:
    """The slots whose centre is inside the footprint get exit = t_ns (and enter = t_ns if not
    entered yet, -1); returns the entered slots that are no longer inside, in slot order."""
    dx, dy = centres[slots, 0] - x, centres[slots, 1] - y
    forward = math.cos(yaw) * dx + math.sin(yaw) * dy - offset_x
    lateral = -math.sin(yaw) * dx + math.cos(yaw) * dy
    inside = (np.abs(forward) <= half_length) & (np.abs(lateral) <= half_width)
    crossing = enter[slots] != -1
    enter[slots[inside & ~crossing]] = t_ns
    exit_ns[slots[inside]] = t_ns
    return slots[~inside & crossing]


def stale_slots(alive, last_seen, enter, before_ns) -> np.ndarray:
    """Live cells last seen before before_ns and not being crossed."""
    return np.flatnonzero(alive & (last_seen < before_ns) & (enter == -1))


# -- a batch of labels (vibration.py, geometry.py) --------------------------------------------

def window_shocks(t, values, valid, t0, t1, max_gap_ns, measure) -> tuple:
    """VibrationFilter.shocks over the history (t, values, valid): (shocks, reasons) for the
    windows [t0[k], t1[k]], one at a time."""
    shocks, reasons = np.full(len(t0), np.nan), []
    for k, (start, end) in enumerate(zip(t0, t1)):
        lo = int(np.searchsorted(t, start, side='left'))
        hi = int(np.searchsorted(t, end, side='right'))
        steps = np.diff(t[max(lo - 1, 0):min(hi, len(t) - 1) + 1])
        if t[-1] < end:
            reasons.append('pending')
        elif hi - lo < 2 or (lo == 0 and t[0] > start):
            reasons.append('imu_missing')
        elif (steps > max_gap_ns).any():
            reasons.append('imu_gap')
        elif not valid[lo:hi].all():
            reasons.append('imu_warmup')
        else:
            reasons.append('')
            window = values[lo:hi]
            shocks[k] = (np.max(np.abs(window)) if measure == 'peak'
                         else np.sqrt(np.mean(window * window)))
    return shocks, reasons


def window_means(values, lo, hi) -> np.ndarray:
    """The mean of values[lo[k]:hi[k]] per window, NaN for an empty one."""
    return np.array([np.mean(values[a:b]) if b > a else np.nan for a, b in zip(lo, hi)])


def sgd_epoch(coef, intercept, X, y, sample_weight, eta, alpha) -> tuple:
    """One SGD pass (squared loss, L2 penalty, constant step eta) over the rows of X, in order:
    (coef, intercept) afterwards."""
    w = np.asarray(coef, dtype=np.float64).copy()
    for x, target, weight in zip(np.asarray(X, dtype=np.float64), y, sample_weight):
        update = -eta * float(np.clip(x @ w + intercept - target, -1e12, 1e12)) * weight
        w = w * max(0.0, 1.0 - eta * alpha) + update * x
        intercept += update
    return w, intercept


def deskew_points_to_frame(points, offsets_s, rotation, translation, omega, velocity,
                           middle_s) -> tuple:
    """The finite rows p of (N, 3) points, each moved with the constant twist (omega rad/s,
    velocity m/s) to its firing time: r + s (omega x r + v) + s^2 / 2 omega x (omega x r) + t,
    r = rotation @ p, s = offsets_s - middle_s: columns x, y, z."""
    points = np.asarray(points, dtype=np.float64)
    with np.errstate(over='ignore', invalid='ignore'):
        finite = np.isfinite(points.sum(axis=1))
    relative = points[finite] @ np.asarray(rotation, dtype=np.float64).T
    s = (np.asarray(offsets_s, dtype=np.float64)[finite] - middle_s)[:, None]
    first = np.cross(omega, relative)
    second = np.cross(omega, first)
    moved = relative + s * (first + velocity) + 0.5 * s * s * second + translation
    return moved[:, 0], moved[:, 1], moved[:, 2]


def smooth_surfaces(cells, heights, shape, usable, max_step: float) -> np.ndarray:
    """Label per cell: cells joined through 8-neighbours whose heights (m) differ by at most
    `max_step` (m) share a label; cells not `usable` are alone."""
    n = heights.shape[0]
    index = np.full(shape, -1, dtype=np.int64)
    index[cells[0][usable], cells[1][usable]] = np.flatnonzero(usable)
    padded = np.pad(index, 1, constant_values=-1)
    heads, tails = [], []
    for dx, dy in ((1, 0), (0, 1), (1, 1), (1, -1)):
        here = padded[1:-1, 1:-1]
        there = padded[1 + dx:padded.shape[0] - 1 + dx, 1 + dy:padded.shape[1] - 1 + dy]
        both = (here >= 0) & (there >= 0)
        a, b = here[both], there[both]
        close = np.abs(heights[a] - heights[b]) <= max_step
        heads.append(a[close])
        tails.append(b[close])
    heads, tails = np.concatenate(heads), np.concatenate(tails)
    graph = sparse.coo_matrix((np.ones(heads.shape[0]), (heads, tails)), shape=(n, n))
    return csgraph.connected_components(graph, directed=False)[1]
