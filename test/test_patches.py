"""Scan -> ground cells with geometric features, on synthetic point sets of known shape."""

import math

import numpy as np
import pytest

from terrain_ssl.core.patches import (FEATURE_INDEX, FEATURE_NAMES, cell_indices, cell_keys,
                                      compute_patches, compute_patches_xyz, symmetric_eigen_3x3)

SENSOR = np.array([0.0, 0.0, 1.6])


def ground_points(height_fn, x_range=(3.0, 13.0), y_range=(-3.0, 3.0), density=400, seed=0):
    """Uniform random ground points (odom frame) with z = height_fn(x, y)."""
    rng = np.random.default_rng(seed)
    area = (x_range[1] - x_range[0]) * (y_range[1] - y_range[0])
    n = int(area * density)
    x = rng.uniform(*x_range, n)
    y = rng.uniform(*y_range, n)
    return np.column_stack([x, y, height_fn(x, y)])


def feature(patches, name):
    return patches.features[:, FEATURE_INDEX[name]]


def test_feature_names_are_unique_and_match_columns():
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    patches = compute_patches(ground_points(lambda x, y: 0 * x), SENSOR, 7)
    assert patches.features.shape == (len(patches), len(FEATURE_NAMES))
    assert patches.t_ns == 7
    assert np.all(np.diff(patches.keys) > 0)  # sorted, unique


def test_keys_round_trip_including_negative_indices():
    ix = np.array([-5, 0, 7, -1_000_000])
    iy = np.array([3, -2, 0, 999_999])
    assert np.array_equal(np.stack(cell_indices(cell_keys(ix, iy))), np.stack([ix, iy]))


def test_flat_ground_is_flat_and_cells_are_where_the_points_are():
    points = ground_points(lambda x, y: 0.2 + 0 * x)
    patches = compute_patches(points, SENSOR, 0, cell_size=0.5, min_range=0.0, max_range=50.0)
    # 10 m x 6 m at 0.5 m: 20 x 12 cells.
    assert len(patches) == 240
    assert patches.centres[:, 0].min() == pytest.approx(3.25)
    assert patches.centres[:, 2] == pytest.approx(0.2)
    for name in ('height_std', 'height_range', 'plane_residual', 'slope', 'max_step'):
        assert feature(patches, name).max() < 1e-6, name
    expected_range = np.hypot(patches.centres[:, 0], patches.centres[:, 1])
    assert feature(patches, 'range') == pytest.approx(expected_range)
    assert feature(patches, 'grazing_angle') == pytest.approx(
        np.arctan2(1.4, expected_range))
    assert feature(patches, 'point_count').sum() == points.shape[0]


def test_slope_of_a_tilted_plane():
    angle = np.radians(12.0)
    patches = compute_patches(ground_points(lambda x, y: np.tan(angle) * y), SENSOR, 0,
                              ground_band=5.0, min_range=0.0)
    assert feature(patches, 'slope') == pytest.approx(angle, abs=1e-6)
    assert feature(patches, 'plane_residual').max() < 1e-6
    # A smooth slope is not a step: the neighbour's height is what the plane predicts.
    assert feature(patches, 'max_step').max() < 1e-6


def test_rough_cells_score_higher_than_smooth_cells():
    rng = np.random.default_rng(3)

    def height(x, y):
        return np.where(x > 8.0, rng.normal(0.0, 0.05, x.shape[0]), 0.0)

    patches = compute_patches(ground_points(height), SENSOR, 0)
    rough = patches.centres[:, 0] > 8.5
    smooth = patches.centres[:, 0] < 7.5
    for name in ('height_std', 'height_range', 'plane_residual', 'curvature'):
        assert feature(patches, name)[rough].min() > 5 * feature(patches, name)[smooth].max()


def test_step_edge_and_points_above_ground_band():
    points = ground_points(lambda x, y: np.where(x >= 8.0, 0.15, 0.0))
    pole = np.column_stack([np.full(50, 5.1), np.full(50, 0.1), np.linspace(0.5, 2.0, 50)])
    patches = compute_patches(np.vstack([points, pole]), SENSOR, 0, ground_band=0.3)
    step = feature(patches, 'max_step')
    at_edge = np.isclose(patches.centres[:, 0], 7.75) | np.isclose(patches.centres[:, 0], 8.25)
    assert step[at_edge] == pytest.approx(0.15, abs=1e-6)
    assert step[~at_edge].max() < 1e-6
    pole_cell = np.isclose(patches.centres[:, 0], 5.25) & np.isclose(patches.centres[:, 1], 0.25)
    assert feature(patches, 'height_range')[pole_cell] == pytest.approx(0.0, abs=1e-9)


def test_range_limits_and_sparse_cells():
    points = ground_points(lambda x, y: 0 * x, x_range=(0.0, 40.0), density=40)
    patches = compute_patches(points, SENSOR, 0, min_range=2.0, max_range=20.0, min_points=5)
    distances = np.hypot(patches.centres[:, 0], patches.centres[:, 1])
    assert distances.max() <= 20.0 + 0.5 and distances.min() >= 2.0 - 0.5
    assert feature(patches, 'point_count').min() >= 5
    empty = compute_patches(np.zeros((0, 3)), SENSOR, 0)
    assert len(empty) == 0 and empty.features.shape == (0, len(FEATURE_NAMES))


def test_neighbourhood_features_average_the_surrounding_window():
    # Smooth ground with one rough 1 m square: its smooth neighbours see it in their
    # neighbourhood features (within 2 cells), cells farther away do not.
    rng = np.random.default_rng(3)

    def height(x, y):
        rough = (np.abs(x - 8.0) < 0.5) & (np.abs(y) < 0.5)
        return np.where(rough, rng.normal(0.0, 0.05, x.shape), 0.0)

    patches = compute_patches(ground_points(height), SENSOR, 0, min_range=0.0, max_range=50.0)
    ix, iy = cell_indices(patches.keys)
    # Brute force: the mean over occupied cells within 2 cells in x and y, for every cell.
    for name in ('height_std', 'height_range', 'plane_residual', 'curvature'):
        per_cell = feature(patches, name)
        near = (np.abs(ix[:, None] - ix[None, :]) <= 2) & (np.abs(iy[:, None] - iy[None, :]) <= 2)
        expected = (near * per_cell[None, :]).sum(axis=1) / near.sum(axis=1)
        assert feature(patches, 'neighbourhood_' + name) == pytest.approx(expected, rel=1e-9,
                                                                          abs=1e-12)
    distance = np.hypot(patches.centres[:, 0] - 8.0, patches.centres[:, 1])
    smooth_next_door = (feature(patches, 'height_std') < 1e-6) & (distance < 1.3)
    far = distance > 3.0
    assert smooth_next_door.any() and far.any()
    assert feature(patches, 'neighbourhood_height_std')[smooth_next_door].min() > 0.002
    assert feature(patches, 'neighbourhood_height_std')[far].max() < 1e-6


# -- closed-form 3x3 eigen-decomposition ------------------------------------------------------

def _entries(matrices):
    """(M, 3, 3) symmetric -> the 6 distinct entries symmetric_eigen_3x3 takes."""
    return [np.ascontiguousarray(matrices[:, row, column])
            for row, column in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))]


def _assert_matches_eigh(matrices, vector_tolerance=1e-9):
    values, normal = symmetric_eigen_3x3(*_entries(matrices))
    expected_values, expected_vectors = np.linalg.eigh(matrices)
    scale = np.abs(expected_values).max(axis=1, keepdims=True) + 1e-300
    assert np.abs(values - expected_values).max(initial=0.0) <= 1e-13 * scale.max()
    assert (np.abs(values - expected_values) <= 1e-13 * scale).all()
    assert np.linalg.norm(normal, axis=1) == pytest.approx(1.0, abs=1e-12)
    # Same axis up to sign: |sin| of the angle between them, from the cross product.
    sine = np.linalg.norm(np.cross(normal, expected_vectors[:, :, 0]), axis=1)
    assert sine.max(initial=0.0) <= vector_tolerance
    # And it is an eigenvector: A n = lambda_min n.
    residual = np.einsum('mij,mj->mi', matrices, normal) - values[:, :1] * normal
    assert np.abs(residual).max(initial=0.0) <= 1e-12 * scale.max()


def _random_covariances(rng, count, spread):
    """Covariances of random point sets: eigenvalues spread over `spread` decades."""
    rotations = np.linalg.qr(rng.normal(size=(count, 3, 3)))[0]
    eigenvalues = 10.0 ** rng.uniform(-spread, 0.0, (count, 3))
    return np.einsum('mij,mj,mkj->mik', rotations, eigenvalues, rotations)


def test_closed_form_eigen_matches_eigh_on_random_covariances():
    rng = np.random.default_rng(11)
    _assert_matches_eigh(_random_covariances(rng, 5000, spread=3.0))
    # Plane-like cells: a tiny smallest eigenvalue (the residual) under two large ones, and
    # line-like cells: one large eigenvalue over two small ones.
    rotations = np.linalg.qr(rng.normal(size=(2000, 3, 3)))[0]
    for eigenvalues in ([1e-9, 0.02, 0.03], [1e-9, 1e-5, 0.02], [1e-6, 0.5, 2.0]):
        matrices = np.einsum('mij,j,mkj->mik', rotations, np.array(eigenvalues), rotations)
        _assert_matches_eigh(matrices)
    # General symmetric (indefinite) matrices too.
    general = rng.normal(size=(2000, 3, 3))
    _assert_matches_eigh(general + general.transpose(0, 2, 1), vector_tolerance=1e-8)


def test_closed_form_eigen_on_real_cells_agrees_with_eigh_to_round_off():
    # Covariances from compute_patches on rough ground: eigenvalues agree to a few eps of the
    # largest, the normal to ~1e-12 (the smallest eigenvalue of a very flat cell is only defined
    # to eps * largest, for eigh too).
    rng = np.random.default_rng(5)
    points = ground_points(lambda x, y: 0.05 * x + rng.normal(0.0, 0.01, x.shape))
    matrices = []
    for cell in compute_patches(points, SENSOR, 0).keys[:200]:
        ix, iy = cell_indices(np.array([cell]))
        inside = (np.floor(points[:, 0] / 0.5) == ix) & (np.floor(points[:, 1] / 0.5) == iy)
        matrices.append(np.cov(points[inside].T, bias=True))
    _assert_matches_eigh(np.array(matrices))


def test_closed_form_eigen_degenerate_matrices_fall_back_to_eigh():
    # All points in one spot (zero matrix), isotropic, collinear (rank 1), two equal
    # eigenvalues: the normal is not determined, so the result is eigh's, exactly.
    direction = np.array([0.6, 0.8, 0.0])
    cases = np.array([np.zeros((3, 3)), 2.5 * np.eye(3), np.outer(direction, direction),
                      np.diag([0.0, 0.0, 1.0]), np.diag([1.0, 1.0, 1.0 + 1e-12]),
                      np.diag([3.0, 1e-300, 1e-300])])
    values, normal = symmetric_eigen_3x3(*_entries(cases))
    expected_values, expected_vectors = np.linalg.eigh(cases)
    assert np.array_equal(values, expected_values)
    assert np.array_equal(normal, expected_vectors[:, :, 0])
    # A plane with a well-determined normal is solved in closed form (and is right).
    values, normal = symmetric_eigen_3x3(*_entries(np.diag([2.0, 1.0, 0.0])[None]))
    assert values[0] == pytest.approx([0.0, 1.0, 2.0], abs=1e-15)
    assert np.abs(normal[0]) == pytest.approx([0.0, 0.0, 1.0], abs=1e-15)


def test_closed_form_eigen_empty_and_non_finite_input():
    values, normal = symmetric_eigen_3x3(*[np.zeros(0)] * 6)
    assert values.shape == (0, 3) and normal.shape == (0, 3)
    # Non-finite entries go to eigh, which refuses them as before (compute_patches never makes
    # them: its inputs are finite, within range, and dz is within the ground band).
    with pytest.raises(np.linalg.LinAlgError):
        symmetric_eigen_3x3(*[np.array([np.nan])] * 6)


def test_degenerate_cells_give_features_not_errors():
    # Cells whose points are all identical, or on one line: finite features, no exception.
    spot = np.tile([[5.1, 0.1, 0.0]], (10, 1))
    line = np.column_stack([np.linspace(6.01, 6.49, 10), np.full(10, 0.1), np.zeros(10)])
    patches = compute_patches(np.vstack([spot, line]), SENSOR, 0, min_range=0.0)
    assert len(patches) == 2
    assert np.isfinite(patches.features).all()
    # (the line's residual is the round-off of its one-pass covariance: ~3e-9 m)
    assert feature(patches, 'plane_residual') == pytest.approx(0.0, abs=1e-8)


# -- the grouped computation against a plain per-cell formulation ----------------------------

def _reference_cells(points, sensor, cell_size, min_points, ground_band, min_range, max_range):
    """Per-cell statistics the slow, obvious way: a Python loop over the cells, each cell's
    points in scan order and sums accumulated from 0.0 in that order.
    Returns {(ix, iy): (count, centre x, centre y, sums of dx dy dz dx2 dy2 dz2 dxdy dxdz dydz,
    z_min, dz_max)} for the occupied cells."""
    cells = {}
    for x, y, z in points.tolist():
        distance_sq = (x - sensor[0]) ** 2 + (y - sensor[1]) ** 2
        if not min_range * min_range <= distance_sq <= max_range * max_range:
            continue
        cells.setdefault((math.floor(x / cell_size), math.floor(y / cell_size)), []).append(
            (x, y, z))
    result = {}
    for (ix, iy), cell_points in cells.items():
        z_min = min(z for _, _, z in cell_points)
        ground = [(x, y, z - z_min) for x, y, z in cell_points if z - z_min <= ground_band]
        if len(ground) < min_points:
            continue
        centre_x, centre_y = (ix + 0.5) * cell_size, (iy + 0.5) * cell_size
        sums = [0.0] * 9
        for x, y, dz in ground:
            dx, dy = x - centre_x, y - centre_y
            for k, value in enumerate((dx, dy, dz, dx * dx, dy * dy, dz * dz, dx * dy, dx * dz,
                                       dy * dz)):
                sums[k] += value
        dz_max = max((dz for _, _, dz in ground), default=-math.inf)
        result[(ix, iy)] = (len(ground), centre_x, centre_y, sums, z_min, dz_max)
    return result


@pytest.mark.parametrize('case', ['rough', 'negative_indices', 'big_grid', 'ground_band',
                                  'ties', 'min_points_0'])
def test_grouped_cells_match_a_per_cell_loop(case):
    """The same cells and counts exactly; values to round-off (rtol 1e-9, atol 1e-9 m: the
    compiler may fuse multiply-adds, and the covariances cancel, see test_kernels.py)."""
    rng = np.random.default_rng(11)
    kwargs = dict(cell_size=0.5, min_points=5, ground_band=0.3, min_range=2.0, max_range=30.0)
    points = rng.normal([8.0, 0.0, 0.0], [6.0, 6.0, 0.1], (4000, 3))
    if case == 'negative_indices':
        points -= [300.0, 200.0, 0.0]
    elif case == 'big_grid':  # more than 65,536 grid cells: the int64 sort key
        points = rng.uniform([-150.0, -150.0, -0.1], [150.0, 150.0, 0.1], (30000, 3))
        kwargs.update(max_range=300.0, min_points=2)
    elif case == 'ground_band':  # a vegetation layer above the ground
        points[::3, 2] += 1.0
    elif case == 'ties':  # points on cell edges, repeated heights
        points = np.round(points * 4.0) / 4.0
    elif case == 'min_points_0':
        kwargs.update(min_points=0)
    sensor = np.array([points[:, 0].mean(), points[:, 1].mean(), 1.6])
    patches = compute_patches(points, sensor, 0, **kwargs)

    def close(got, expected):
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)

    reference = _reference_cells(points, sensor, **kwargs)
    ix, iy = cell_indices(patches.keys)
    assert sorted(reference) == list(zip(ix.tolist(), iy.tolist()))
    rows = [reference[cell] for cell in zip(ix.tolist(), iy.tolist())]
    n = np.array([row[0] for row in rows], dtype=np.float64)
    sums = np.array([row[3] for row in rows])
    mean = sums[:, :3] / n[:, None]
    cov = [sums[:, 3 + k] / n - mean[:, a] * mean[:, b]
           for k, (a, b) in enumerate(((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)))]
    assert np.array_equal(feature(patches, 'point_count'), n)
    close(patches.centres[:, 0], [row[1] for row in rows])
    close(patches.centres[:, 1], [row[2] for row in rows])
    close(feature(patches, 'height_std'), np.sqrt(np.maximum(cov[2], 0.0)))
    close(feature(patches, 'height_range'), [row[5] for row in rows])
    eigenvalues, normal = symmetric_eigen_3x3(*cov)
    close(feature(patches, 'slope'), np.arccos(np.minimum(np.abs(normal[:, 2]), 1.0)))
    # The plane height at the centre and the steps to the 8 neighbours, brute force.
    safe_nz = np.where(normal[:, 2] < 0, -1.0, 1.0) * np.maximum(np.abs(normal[:, 2]), 0.1)
    gradient_x, gradient_y = -normal[:, 0] / safe_nz, -normal[:, 1] / safe_nz
    plane_z = (np.array([row[4] for row in rows]) + mean[:, 2] - gradient_x * mean[:, 0]
               - gradient_y * mean[:, 1])
    close(patches.centres[:, 2], plane_z)
    height_at = dict(zip(zip(ix.tolist(), iy.tolist()), plane_z.tolist()))
    cell_size = kwargs['cell_size']
    expected_step = []
    for k, cell in enumerate(zip(ix.tolist(), iy.tolist())):
        step = 0.0
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                neighbour = height_at.get((cell[0] + di, cell[1] + dj))
                if (di or dj) and neighbour is not None:
                    predicted = plane_z[k] + (gradient_x[k] * di + gradient_y[k] * dj) * cell_size
                    step = max(step, abs(neighbour - predicted))
        expected_step.append(step)
    close(feature(patches, 'max_step'), expected_step)


def test_columns_and_point_array_give_the_same_patches():
    points = ground_points(lambda x, y: 0.05 * np.sin(3 * x) * y)
    by_array = compute_patches(points, SENSOR, 3)
    by_columns = compute_patches_xyz(points[:, 0].copy(), points[:, 1].copy(),
                                     points[:, 2].copy(), SENSOR, 3)
    for name in ('keys', 'centres', 'features'):
        assert np.array_equal(getattr(by_array, name), getattr(by_columns, name))


@pytest.mark.parametrize('points', [np.zeros((0, 3)),                       # empty scan
                                    np.array([[50.0, 0.0, 0.0]] * 10),      # all out of range
                                    np.array([[5.0, 0.0, 0.0]] * 4)])       # too few points
def test_scans_without_cells(points):
    patches = compute_patches(points, SENSOR, 0)
    assert len(patches) == 0 and patches.features.shape == (0, len(FEATURE_NAMES))


def test_one_cell():
    rng = np.random.default_rng(5)
    points = np.column_stack([rng.uniform(-4.99, -4.51, 20), rng.uniform(-3.0, -2.51, 20),
                              rng.normal(0.0, 0.01, 20)])
    patches = compute_patches(points, SENSOR, 0)
    assert len(patches) == 1
    assert np.array_equal(np.stack(cell_indices(patches.keys)).ravel(), [-10, -6])
    assert feature(patches, 'max_step')[0] == 0.0  # no neighbours
    assert feature(patches, 'neighbourhood_height_std')[0] == feature(patches, 'height_std')[0]
