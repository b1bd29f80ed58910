"""The compiled kernels (terrain_ssl/core/_kernels.c), the package's only implementation of its
inner loops, against the readable numpy version in test/numpy_reference.py.

Tolerances. Both compute in float64, but sums run in other orders (numpy's pairwise summation,
np.bincount, matmul against one loop in C), the compiler may fuse multiply-adds (aarch64 does by
default), and numpy picks SIMD kernels per CPU. So nothing here is compared for exact
equality except integers, masks and reasons:
  - SUM_RTOL = 1e-12 for means and root-mean-squares of up to a few hundred terms: reordering a
    sum of n terms moves it by at most ~n eps of the sum of magnitudes (400 x 1.1e-16 < 1e-13);
  - FEATURE_RTOL = 1e-9, FEATURE_ATOL = 1e-9 (m, rad, -) for cell features: they go through
    covariances E[dd] - E[d]^2, which cancel (a flat cell's height variance is ~1e-4 of E[dz^2])
    and through the smallest eigenvalue's square root; 1e-9 relative is ~10^7 eps of room for
    that, and 1 nm is far below any lidar's resolution;
  - float32 weights (the SGD pass) agree to float32 round-off: rtol 1e-5.
"""

import subprocess
import sys

import numpy as np
import pytest

import numpy_reference as reference
from terrain_ssl.core import kernels, patches
from terrain_ssl.core.patches import compute_patches, compute_patches_xyz

SENSOR = np.array([0.3, -0.2, 1.6])
SUM_RTOL = 1e-12
FEATURE_RTOL, FEATURE_ATOL = 1e-9, 1e-9


def rough_scan(seed: int, n_rings: int = 16, columns: int = 720, max_range: float = 35.0):
    """A lidar-like cloud (m, odom): rings of returns on bumpy ground with steps, each ring a
    circle around the sensor (cells crossed by one ring hold points on a line), plus bushes
    (points well above the ground), exact duplicates (cells whose points are all in one spot)
    and a few returns beyond the range limits."""
    rng = np.random.default_rng(seed)
    radii = np.geomspace(2.5, max_range, n_rings)
    azimuth = np.linspace(-np.pi, np.pi, columns, endpoint=False)
    r = (radii[:, None] * (1.0 + 0.01 * rng.standard_normal((n_rings, columns)))).ravel()
    a = np.broadcast_to(azimuth, (n_rings, columns)).ravel()
    x = SENSOR[0] + r * np.cos(a)
    y = SENSOR[1] + r * np.sin(a)
    z = (0.05 * np.sin(0.7 * x) * np.cos(0.4 * y) + 0.15 * (x > 12.0)
         + 0.02 * rng.standard_normal(x.shape[0]))
    bushes = rng.random(x.shape[0]) < 0.05
    z[bushes] += rng.uniform(0.4, 1.5, int(bushes.sum()))
    points = np.column_stack([x, y, z])
    duplicated = np.repeat(points[rng.choice(points.shape[0], 20)], 6, axis=0)
    far = np.column_stack([rng.uniform(-80, 80, (30, 2)), rng.normal(0.0, 0.1, 30)])
    points = np.concatenate([points, duplicated, far])
    return points[rng.permutation(points.shape[0])]


PARAMETERS = [
    dict(),
    dict(cell_size=0.2, min_points=3),
    dict(cell_size=1.7, min_points=12, ground_band=0.05),
    dict(cell_size=0.5, min_points=1, ground_band=2.0, min_range=0.0, max_range=300.0),
    dict(ground_band=-0.01),  # no point is ground: nothing
]


def assert_same_patches(got, expected):
    np.testing.assert_array_equal(got.keys, expected.keys)
    np.testing.assert_allclose(got.centres, expected.centres, rtol=FEATURE_RTOL,
                               atol=FEATURE_ATOL)
    np.testing.assert_allclose(got.features, expected.features, rtol=FEATURE_RTOL,
                               atol=FEATURE_ATOL)


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('parameters', PARAMETERS)
def test_compute_patches_matches_the_reference(seed, parameters):
    points = rough_scan(seed)
    columns = [np.ascontiguousarray(points[:, axis]) for axis in range(3)]
    got = compute_patches_xyz(*columns, SENSOR, 5, **parameters)
    expected = reference.compute_patches(points, SENSOR, 5, **parameters)
    if parameters.get('ground_band', 0.0) < 0:
        assert len(expected) == 0
    else:
        assert len(expected) > 50
    assert_same_patches(got, expected)


def test_float32_scans_are_computed_in_float64():
    """A float32 cloud gives the patches of the same points in float64 (it once gave float32
    sums on one path, 7e-6 off on real scans)."""
    points = rough_scan(4).astype(np.float32)
    got = compute_patches(points, SENSOR, 0)
    assert got.features.dtype == np.float64 and len(got) > 50
    assert_same_patches(got, reference.compute_patches(points.astype(np.float64), SENSOR, 0))


def test_clouds_with_non_finite_and_huge_values():
    """compute_patches takes finite points (the labeler drops the rest), but a NaN, an infinity
    or 1e300 that slips through must not crash it or make it differ from the reference."""
    rng = np.random.default_rng(6)
    for trial in range(60):
        n = int(rng.integers(0, 3000))
        points = rng.uniform(-30, 30, (n, 3)) * [1, 1, 0.05]
        for _ in range(int(rng.integers(0, 5)) if n else 0):
            points[rng.integers(0, n), rng.integers(0, 3)] = rng.choice(
                [np.nan, np.inf, -np.inf, 1e300, -1e300])
        with np.errstate(all='ignore'):
            got = compute_patches(points, SENSOR, 0, min_points=3)
            expected = reference.compute_patches(points, SENSOR, 0, min_points=3)
        np.testing.assert_array_equal(got.keys, expected.keys, err_msg=f'trial {trial}')
        np.testing.assert_allclose(got.features, expected.features, rtol=FEATURE_RTOL,
                                   atol=FEATURE_ATOL, err_msg=f'trial {trial}')


@pytest.mark.parametrize('dtype', ['<f4', '<f8', '>f4', '<i4'])
def test_scan_points_to_the_odom_frame(dtype):
    """The labeler's first step: count the finite points of a lidar scan, then rotate and
    translate them into odom. Points as the PointCloud2 view gives them: strided rows of
    x, y, z inside a 32-byte record, some NaN or inf, some float64 sums that overflow."""
    rng = np.random.default_rng(7)
    record = np.zeros(4000, dtype=[('x', dtype), ('y', dtype), ('z', dtype),
                                   ('intensity', '<f4'), ('pad', 'V12')])
    for axis in 'xyz':
        record[axis] = rng.uniform(-40, 40, 4000)
    if dtype[1] == 'f':
        record['x'][rng.choice(4000, 50)] = np.nan
        record['z'][rng.choice(4000, 20)] = np.inf
    if dtype == '<f8':
        record['x'][:3], record['y'][:3] = 1.5e308, 1.5e308  # finite, but the sum is not
    size = np.dtype(dtype).itemsize
    points = np.lib.stride_tricks.as_strided(record['x'], shape=(4000, 3),
                                             strides=(record.itemsize, size))
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.01],
                         [np.sin(angle), np.cos(angle), -0.02], [0.0, 0.015, 1.0]])
    translation = np.array([12.5, -3.25, 1.6])
    count = patches.count_finite_points(points)
    columns = patches.finite_points_to_frame(points, rotation, translation)
    expected = reference.finite_points_to_frame(points, rotation, translation)
    assert count == reference.count_finite(points) == columns[0].shape[0]
    assert count < 4000 if dtype[1] == 'f' else count == 4000
    for got, want in zip(columns, expected):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=SUM_RTOL, atol=1e-12)


@pytest.mark.parametrize('dtype', ['<f4', '<f8'])
def test_deskew_kernel_matches_the_reference(dtype):
    """Each finite point moved with the constant twist to its own firing time, within
    round-off of the numpy reference (float32 input read as float64 by both)."""
    rng = np.random.default_rng(11)
    points = rng.uniform(-40, 40, (5000, 3)).astype(dtype)
    points[rng.choice(5000, 60), 0] = np.nan
    offsets = rng.uniform(-0.1, 0.0, 5000)
    angle = 0.4
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.02],
                         [np.sin(angle), np.cos(angle), -0.01], [-0.02, 0.01, 1.0]])
    translation, middle_s = np.array([250.0, -80.0, 3.0]), -0.05
    omega, velocity = np.array([0.05, -0.02, 0.8]), np.array([6.0, 0.5, -0.1])
    n = points.shape[0]
    x, y, z = np.empty(n), np.empty(n), np.empty(n)
    count = kernels.deskew_points_to_frame(points, offsets, rotation, translation, omega,
                                           velocity, middle_s, x, y, z)
    expected = reference.deskew_points_to_frame(points, offsets, rotation, translation, omega,
                                                velocity, middle_s)
    assert count == expected[0].shape[0] == n - np.isnan(points[:, 0]).sum()
    for got, want in zip((x[:count], y[:count], z[:count]), expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)  # m, at 300 m from the origin


def same_partition(a, b) -> bool:
    """Whether two labelings group the cells alike (label values aside)."""
    pairs = np.unique(np.stack([a, b]), axis=1).shape[1]
    return pairs == np.unique(a).shape[0] == np.unique(b).shape[0]


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_smooth_surfaces_kernel_groups_cells_as_the_reference(seed):
    from terrain_ssl.core.ground import smooth_surfaces
    rng = np.random.default_rng(seed)
    shape = (40, 30)
    flat = rng.choice(shape[0] * shape[1], 700, replace=False)
    cells = (flat // shape[1], flat % shape[1])
    # Terraces and steps: neighbours join or not, depending on max_step.
    heights = 0.2 * np.round(cells[0] / 7.0) + rng.normal(0, 0.08, 700)
    usable = rng.random(700) > 0.1
    got = smooth_surfaces(cells, heights, shape, usable, 0.25)
    want = reference.smooth_surfaces(cells, heights, shape, usable, 0.25)
    assert same_partition(got, want)
    assert 5 < np.unique(got).shape[0] < 700  # neither everything apart nor all one surface
    assert got.max() == np.unique(got).shape[0] - 1  # labels 0 .. surfaces-1


def test_points_of_the_wrong_shape_are_refused_with_one_line():
    with pytest.raises(ValueError, match=r'\(N, 3\)'):
        patches.count_finite_points(np.zeros((5, 4)))


def test_closed_form_eigen_matches_the_reference_and_eigh():
    rng = np.random.default_rng(5)
    factors = rng.normal(size=(2000, 3, 3)) * rng.lognormal(-4.0, 2.0, (2000, 1, 3))
    matrices = factors @ factors.transpose(0, 2, 1)
    matrices[:5] = np.eye(3)  # all eigenvalues equal: unsure, eigh decides
    matrices[5:10] = np.diag([1.0, 1.0, 0.0])
    entries = [matrices[:, 0, 0], matrices[:, 1, 1], matrices[:, 2, 2], matrices[:, 0, 1],
               matrices[:, 0, 2], matrices[:, 1, 2]]
    eigenvalues, normal = patches.symmetric_eigen_3x3(*entries)
    expected_values, expected_normal = reference.symmetric_eigen_3x3(*entries)
    # Eigenvalues to a few eps of the largest (eigh's own accuracy); eigenvectors up to sign,
    # as accurately as the gap to the next eigenvalue allows.
    scale = np.abs(expected_values).max()
    np.testing.assert_allclose(eigenvalues, expected_values, rtol=0, atol=1e-13 * scale)
    assert np.all(np.abs(np.einsum('ij,ij->i', normal, expected_normal)) > 1.0 - 1e-9)
    np.testing.assert_allclose(eigenvalues, np.linalg.eigh(matrices)[0], rtol=0,
                               atol=1e-12 * scale)


def cell_map_arrays(rng, capacity=3000, n_features=13):
    centres = np.column_stack([rng.uniform(-20, 20, (capacity, 2)), rng.normal(0, 0.1, capacity)])
    enter = np.where(rng.random(capacity) < 0.3, rng.integers(0, 10**9, capacity), -1)
    return (rng.lognormal(-3, 1, (capacity, n_features)), centres,
            rng.uniform(1, 50, capacity), rng.integers(0, 10**9, capacity), enter)


def test_cell_map_merge_matches_the_reference():
    rng = np.random.default_rng(10)
    features, centres, weight, last_seen, _ = cell_map_arrays(rng)
    rows = rng.choice(3000, 700, replace=False)
    source = rng.integers(0, 900, 700)
    new_features, new_centres = rng.lognormal(-3, 1, (900, 13)), rng.normal(0, 10, (900, 3))
    new_weight = rng.uniform(1, 50, 900)
    expected = [a.copy() for a in (features, centres, weight, last_seen)]
    kernels.merge_sightings(features, centres, weight, last_seen, rows, new_features,
                            new_centres, new_weight, source, 77)
    reference.merge_sightings(*expected, rows, new_features, new_centres, new_weight, source, 77)
    for got, want in zip((features, centres, weight, last_seen), expected):
        np.testing.assert_allclose(got, want, rtol=SUM_RTOL)
    assert (last_seen[rows] == 77).all()


def test_cell_map_footprint_and_ageing_match_the_reference():
    rng = np.random.default_rng(11)
    _, centres, _, last_seen, enter = cell_map_arrays(rng)
    exit_ns = np.where(enter >= 0, enter, -1)
    alive = rng.random(3000) < 0.9
    for step in range(40):
        slots = np.flatnonzero(rng.random(3000) < 0.5)
        x, y, yaw, t_ns = *rng.uniform(-15, 15, 2), rng.uniform(-3, 3), 10**9 + step
        expected_enter, expected_exit = enter.copy(), exit_ns.copy()
        left = np.empty(slots.shape[0], dtype=np.int64)
        count = kernels.footprint_update(centres, enter, exit_ns, slots, x, y, np.cos(yaw),
                                         np.sin(yaw), 1.0, 6.0, 4.0, t_ns, left)
        expected_left = reference.footprint_update(centres, expected_enter, expected_exit, slots,
                                                   x, y, yaw, 1.0, 6.0, 4.0, t_ns)
        np.testing.assert_array_equal(left[:count], expected_left)
        np.testing.assert_array_equal(enter, expected_enter)
        np.testing.assert_array_equal(exit_ns, expected_exit)
    stale = np.empty(3000, dtype=np.int64)
    count = kernels.stale_slots(alive, last_seen, enter, 5 * 10**8, stale)
    expected = reference.stale_slots(alive, last_seen, enter, 5 * 10**8)
    assert 100 < count == expected.shape[0]
    np.testing.assert_array_equal(stale[:count], expected)


@pytest.mark.parametrize('measure', ['rms', 'peak', 'wk_rms'])
def test_shocks_over_windows_match_the_reference(measure):
    """IMU at 200 Hz with two gaps, windows of 0 to 400 samples before, across, inside and
    after the history: the shock values and the reasons for none."""
    from terrain_ssl.core.vibration import VibrationFilter

    rng = np.random.default_rng(8)
    stamps = np.arange(6000) * 5_000_000 + 10**12
    stamps[2500:] += 400_000_000  # gaps of 0.4 s
    stamps[4000:] += 900_000_000
    accel = rng.normal(0.0, 2.0, (6000, 3)) + [0.0, 0.0, 9.81]
    starts = rng.integers(stamps[0] - 10**9, stamps[-1] + 10**9, 400)
    lengths = rng.choice([0, 1, 2, 7, 8, 9, 64, 127, 128, 129, 300, 400], 400)
    ends = starts + lengths * 5_000_000
    vibration = VibrationFilter(history_s=60.0)
    for t_ns, a in zip(stamps.tolist(), accel.tolist()):
        vibration.add(t_ns, a)
    values, reasons = vibration.shocks(starts, ends, measure)
    history = vibration._history  # after shocks(): every sample filtered and weighted
    signal_values = history.wk if measure == 'wk_rms' else history.band
    expected_values, expected_reasons = reference.window_shocks(
        history.t, signal_values, history.valid, starts, ends, vibration.max_gap_ns, measure)
    assert reasons == expected_reasons
    assert {'', 'pending', 'imu_missing', 'imu_gap', 'imu_warmup'} <= set(reasons)
    np.testing.assert_allclose(values, expected_values, rtol=SUM_RTOL)


def test_mean_speeds_match_the_reference():
    from terrain_ssl.core.geometry import PoseHistory

    rng = np.random.default_rng(9)
    stamps = np.cumsum(rng.integers(15_000_000, 25_000_000, 3000))
    poses = PoseHistory(horizon_s=100.0)
    velocity = rng.normal(4.0, 1.0, (3000, 3))
    for t_ns, v in zip(stamps.tolist(), velocity.tolist()):
        poses.append(t_ns, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0), v, (0.0, 0.0, 0.0))
    starts = stamps[0] + rng.integers(0, stamps[-1] - stamps[0], 300)
    ends = starts + rng.integers(10**8, 6 * 10**9, 300)
    speeds = poses.mean_speeds(starts, ends)
    lo = np.searchsorted(stamps, starts, side='left')
    hi = np.searchsorted(stamps, ends, side='right')
    expected = reference.window_means(np.hypot(velocity[:, 0], velocity[:, 1]), lo, hi)
    assert np.isfinite(expected).sum() > 200
    np.testing.assert_allclose(speeds, expected, rtol=SUM_RTOL)


def test_sgd_epoch_matches_the_reference():
    rng = np.random.default_rng(12)
    X = rng.normal(size=(64, 40)).astype(np.float32)
    y = (X @ rng.normal(size=40)).astype(np.float32)
    weights = rng.poisson(1.0, 64).astype(np.float32)
    coef = rng.normal(0, 0.1, 40).astype(np.float32)
    expected_coef, expected_intercept = reference.sgd_epoch(coef, 0.25, X, y, weights, 0.01,
                                                            1e-2)
    intercept = kernels.sgd_epoch(coef, 0.25, X, y, weights, 0.01, 1e-2)
    np.testing.assert_allclose(coef, expected_coef, rtol=1e-5, atol=1e-7)
    assert intercept == pytest.approx(expected_intercept, rel=1e-9)


def test_kernels_refuse_wrong_buffers_with_an_error():
    x = np.zeros(10)
    small = np.zeros(3)
    with pytest.raises(ValueError, match='present'):
        kernels.cell_moments(x, x, x, 0.0, 0.0, 0.5, 0.3, 0.0, 30.0, small.astype(np.int64),
                             small.astype(np.int64), small, np.zeros((9, 3)), small)
    with pytest.raises(ValueError, match='differ in length'):
        kernels.cell_moments(x, x[:5].copy(), x, 0.0, 0.0, 0.5, 0.3, 0.0, 30.0,
                             *(np.zeros(10, np.int64),) * 2, x.copy(), np.zeros((9, 10)),
                             x.copy())
    with pytest.raises(ValueError):  # float32: 4-byte items
        kernels.window_means(np.zeros(4, np.float32), np.zeros(1, np.int64),
                             np.ones(1, np.int64), np.zeros(1))
    with pytest.raises(ValueError, match='outside the values'):
        kernels.window_means(np.zeros(4), np.zeros(1, np.int64), np.array([5]), np.zeros(1))
    with pytest.raises(ValueError, match='outside the cell arrays'):
        kernels.footprint_update(np.zeros((4, 3)), np.full(4, -1, np.int64),
                                 np.full(4, -1, np.int64), np.array([4], np.int64), 0.0, 0.0,
                                 1.0, 0.0, 1.0, 1.0, 0.7, 5, np.zeros(1, np.int64))
    with pytest.raises(ValueError, match='read-only'):
        readonly = np.zeros(2)
        readonly.flags.writeable = False
        kernels.window_means(np.zeros(4), np.zeros(2, np.int64), np.ones(2, np.int64), readonly)
    with pytest.raises(ValueError, match='rows'):
        kernels.sgd_epoch(np.zeros(3, np.float32), 0.0, np.zeros((2, 4), np.float32),
                          np.zeros(2, np.float32), np.ones(2, np.float32), 0.1, 0.0)


def test_a_grid_too_large_is_a_memory_error_not_a_crash():
    # Two points 10,000 km apart at 5 cm cells: 2e8 x 2e8 cells.
    x = np.array([0.0, 1e7])
    with pytest.raises(MemoryError, match='too large'):
        compute_patches_xyz(x, x.copy(), np.zeros(2), np.zeros(3), 0, cell_size=0.05,
                            min_points=1, min_range=0.0, max_range=1e9)


def test_without_the_built_core_the_import_says_how_to_build_it():
    """A source tree that was not built (the import of the extension fails): importing the
    core fails with one line that says how to build it, not a bare ModuleNotFoundError."""
    script = (
        'import sys\n'
        'class Block:\n'
        '    def find_spec(self, name, path=None, target=None):\n'
        '        if name == "terrain_ssl.core._kernels":\n'
        '            raise ImportError("blocked for the test")\n'
        'sys.meta_path.insert(0, Block())\n'
        'from terrain_ssl.core import patches\n')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith('ImportError: terrain_ssl: the compiled core')
    assert 'pip install -e .' in last_line and 'blocked for the test' in last_line
