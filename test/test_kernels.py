"""The compiled kernels (terrain_ssl/core/_kernels.c) against their numpy reference: the patches
of a scan, and the cell map's footprint test.

Both do the same floating-point operations in the same order, so the per-cell sums, extremes,
neighbour steps and neighbourhood means must agree bit for bit; the eigen-decomposition calls cos
and arccos, whose implementations numpy may replace by its own, so there the test allows the
last bits.
"""

import subprocess
import sys

import numpy as np
import pytest

from terrain_ssl.core import kernels, patches
from terrain_ssl.core.kernels import compiled_kernels, numpy_kernels
from terrain_ssl.core.patches import compute_patches_xyz

SENSOR = np.array([0.3, -0.2, 1.6])


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


@pytest.mark.skipif(not compiled_kernels(), reason='compiled kernels not built: '
                    'see test_the_compiled_kernels_are_built')
class TestCompiledMatchesNumpy:

    @pytest.mark.parametrize('seed', [0, 1, 2])
    @pytest.mark.parametrize('parameters', PARAMETERS)
    def test_compute_patches(self, seed, parameters):
        points = rough_scan(seed)
        columns = [np.ascontiguousarray(points[:, axis]) for axis in range(3)]
        compiled = compute_patches_xyz(*columns, SENSOR, 5, **parameters)
        with numpy_kernels():
            reference = compute_patches_xyz(*columns, SENSOR, 5, **parameters)
        if parameters.get('ground_band', 0.0) < 0:
            assert len(reference) == 0
        else:
            assert len(reference) > 50
        np.testing.assert_array_equal(compiled.keys, reference.keys)
        np.testing.assert_allclose(compiled.centres, reference.centres, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(compiled.features, reference.features, rtol=1e-9,
                                   atol=1e-12)

    def test_clouds_with_non_finite_and_huge_values_give_the_same_result(self):
        """compute_patches takes finite points (the labeler drops the rest), but a NaN, an
        infinity or 1e300 that slips through must not crash the compiled path or make it
        differ from the reference."""
        rng = np.random.default_rng(6)
        for trial in range(100):
            n = int(rng.integers(0, 3000))
            points = rng.uniform(-30, 30, (n, 3)) * [1, 1, 0.05]
            for _ in range(int(rng.integers(0, 5)) if n else 0):
                points[rng.integers(0, n), rng.integers(0, 3)] = rng.choice(
                    [np.nan, np.inf, -np.inf, 1e300, -1e300])
            with np.errstate(all='ignore'):
                compiled = patches.compute_patches(points, SENSOR, 0, min_points=3)
                with numpy_kernels():
                    reference = patches.compute_patches(points, SENSOR, 0, min_points=3)
            np.testing.assert_array_equal(compiled.keys, reference.keys)
            np.testing.assert_allclose(compiled.features, reference.features, rtol=1e-9,
                                       atol=1e-12, err_msg=f'trial {trial}')

    @pytest.mark.parametrize('dtype', ['<f4', '<f8', '>f4', '<i4'])
    def test_scan_points_to_the_odom_frame_bit_for_bit(self, dtype):
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
        with numpy_kernels():
            reference_count = patches.count_finite_points(points)
            reference = patches.finite_points_to_frame(points, rotation, translation)
        assert count == reference_count == columns[0].shape[0]
        assert count < 4000 if dtype[1] == 'f' else count == 4000
        for got, expected in zip(columns, reference):
            assert got.dtype == np.float64
            np.testing.assert_array_equal(got, expected)

    def test_the_cell_map_evolves_the_same(self):
        """A winding drive over a map of scanned cells, odometry at 50 Hz: the crossings that
        come out, and every cell's merged features, centre, weight, enter and exit stamps, agree
        with the numpy steps (merges of repeated sightings, footprint tests, ageing out)."""
        from terrain_ssl.core.association import CellMap

        def drive():
            cells = CellMap(max_cells=5000, max_age_s=4.0)
            crossings = []
            for step in range(1500):
                t_ns = step * 20_000_000
                yaw = 0.4 * np.sin(step / 150.0)
                position = (0.1 * step, 6.0 * np.sin(step / 300.0), 0.0)
                if step % 5 == 0:  # a scan at 10 Hz, 3-15 m ahead
                    points = rough_scan(step, n_rings=6, columns=240, max_range=15.0)
                    points[:, :2] += position[:2]
                    cells.observe(patches.compute_patches(points, np.add(SENSOR, position),
                                                          t_ns, min_points=2))
                done = cells.update_footprint(t_ns, position, yaw)
                if len(done):
                    crossings.append((done.keys, done.enter_ns, done.exit_ns, done.features))
            assert cells.aged_out > 0
            return (crossings, cells.keys, cells.enter_ns, cells.exit_ns, cells.features,
                    cells.centres, cells.weight)

        compiled = drive()
        with numpy_kernels():
            reference = drive()
        assert len(compiled[0]) == len(reference[0]) > 20
        for got, expected in zip(compiled[0], reference[0]):
            for a, b in zip(got, expected):
                np.testing.assert_array_equal(a, b)
        for a, b in zip(compiled[1:], reference[1:]):
            np.testing.assert_array_equal(a, b)

    @pytest.mark.parametrize('measure', ['rms', 'peak', 'wk_rms'])
    def test_shocks_over_windows_are_the_same(self, measure):
        """IMU at 200 Hz with two gaps, windows of 1 to 400 samples (numpy's pairwise sums
        change pattern at 8 and 128) before, across, inside and after the history: the shock
        values and the reasons for none agree."""
        from terrain_ssl.core.vibration import VibrationFilter

        rng = np.random.default_rng(8)
        stamps = np.arange(6000) * 5_000_000 + 10**12
        stamps[2500:] += 400_000_000  # gaps of 0.4 s
        stamps[4000:] += 900_000_000
        accel = rng.normal(0.0, 2.0, (6000, 3)) + [0.0, 0.0, 9.81]
        starts = rng.integers(stamps[0] - 10**9, stamps[-1] + 10**9, 400)
        lengths = rng.choice([0, 1, 2, 7, 8, 9, 64, 127, 128, 129, 300, 400], 400)
        ends = starts + lengths * 5_000_000

        def shocks():
            vibration = VibrationFilter(history_s=60.0)
            for t_ns, a in zip(stamps.tolist(), accel.tolist()):
                vibration.add(t_ns, a)
            return vibration.shocks(starts, ends, measure)

        values, reasons = shocks()
        with numpy_kernels():
            reference_values, reference_reasons = shocks()
        assert reasons == reference_reasons
        assert {'', 'pending', 'imu_missing', 'imu_gap', 'imu_warmup'} <= set(reasons)
        np.testing.assert_array_equal(values, reference_values)

    def test_mean_speeds_are_the_same(self):
        from terrain_ssl.core.geometry import PoseHistory

        rng = np.random.default_rng(9)
        stamps = np.cumsum(rng.integers(15_000_000, 25_000_000, 3000))

        def speeds():
            poses = PoseHistory(horizon_s=100.0)
            for t_ns, v in zip(stamps.tolist(), rng.normal(4.0, 1.0, (3000, 3)).tolist()):
                poses.append(t_ns, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0), v, (0.0, 0.0, 0.0))
            starts = stamps[0] + rng.integers(-10**9, stamps[-1] - stamps[0], 300)
            return poses.mean_speeds(starts, starts + rng.integers(0, 6 * 10**9, 300))

        state = rng.bit_generator.state
        compiled = speeds()
        rng.bit_generator.state = state
        with numpy_kernels():
            reference = speeds()
        assert np.isnan(reference).any() and np.isfinite(reference).sum() > 200
        np.testing.assert_array_equal(compiled, reference)

    @pytest.mark.parametrize('parameters', PARAMETERS)
    def test_cell_moments_bit_for_bit(self, parameters):
        points = rough_scan(3)
        settings = dict(dict(cell_size=0.5, ground_band=0.3, min_range=2.0, max_range=30.0),
                        **{k: v for k, v in parameters.items() if k != 'min_points'})
        arguments = (points[:, 0].copy(), points[:, 1].copy(), points[:, 2].copy(), SENSOR,
                     settings['cell_size'], settings['ground_band'], settings['min_range'],
                     settings['max_range'])
        compiled = patches._cell_moments_compiled(*arguments)
        reference = patches._cell_moments(*arguments)
        for got, expected in zip(compiled, reference):
            np.testing.assert_array_equal(got, expected)

    def test_neighbour_kernels_bit_for_bit(self):
        rng = np.random.default_rng(4)
        nx, ny = 61, 47
        occupied = np.sort(rng.choice(nx * ny, 900, replace=False)).astype(np.int64)
        values = rng.lognormal(-3.0, 1.0, (900, 4))
        means = np.empty((900, 4))
        kernels.current.neighbourhood_mean(occupied, values, 4, nx, ny, 2, means)
        np.testing.assert_array_equal(
            means, patches._neighbourhood_mean(occupied, values, nx, ny, 2))
        mean_z, gradient_x, gradient_y = rng.normal(0.0, 0.2, (3, 900))
        steps = np.empty(900)
        kernels.current.max_neighbour_step(occupied, mean_z, gradient_x, gradient_y, nx, ny,
                                            0.5, steps)
        np.testing.assert_array_equal(steps, patches._max_neighbour_step(
            occupied, mean_z, gradient_x, gradient_y, nx, ny, 0.5))
        assert steps.max() > 0.0

    def test_eigen_3x3_matches_the_closed_form_and_eigh(self):
        rng = np.random.default_rng(5)
        factors = rng.normal(size=(2000, 3, 3)) * rng.lognormal(-4.0, 2.0, (2000, 1, 3))
        matrices = factors @ factors.transpose(0, 2, 1)
        matrices[:5] = np.eye(3)  # all eigenvalues equal: unsure, eigh decides
        matrices[5:10] = np.diag([1.0, 1.0, 0.0])
        entries = [matrices[:, 0, 0], matrices[:, 1, 1], matrices[:, 2, 2], matrices[:, 0, 1],
                   matrices[:, 0, 2], matrices[:, 1, 2]]
        eigenvalues, normal = patches.symmetric_eigen_3x3(*entries)
        with numpy_kernels():
            reference_values, reference_normal = patches.symmetric_eigen_3x3(*entries)
        scale = np.abs(reference_values).max(axis=1, keepdims=True)
        np.testing.assert_allclose(eigenvalues, reference_values, rtol=0,
                                   atol=1e-13 * scale.max())
        # Eigenvectors up to sign; as accurate as the gap to the next eigenvalue allows.
        agreement = np.abs(np.einsum('ij,ij->i', normal, reference_normal))
        assert np.all(agreement > 1.0 - 1e-9)
        np.testing.assert_allclose(eigenvalues, np.linalg.eigh(matrices)[0], rtol=0,
                                   atol=1e-12 * scale.max())


def test_the_compiled_kernels_are_built():
    """`pip install -e .` (make setup) builds them; without a C compiler it goes on without,
    and everything runs on the slower numpy reference. This environment must have them."""
    assert compiled_kernels(), ('terrain_ssl.core._kernels is not built: install a C '
                                'compiler (apt-get install build-essential), then pip install -e .')


def test_numpy_kernels_is_restored_after_an_error():
    before = compiled_kernels()
    with pytest.raises(RuntimeError):
        with numpy_kernels():
            assert not compiled_kernels()
            raise RuntimeError('inside')
    assert compiled_kernels() == before


@pytest.mark.skipif(not compiled_kernels(), reason='compiled kernels not built')
def test_kernels_refuse_wrong_buffers_with_an_error():
    k = kernels.current
    x = np.zeros(10)
    small = np.zeros(3)
    with pytest.raises(ValueError, match='present'):
        k.cell_moments(x, x, x, 0.0, 0.0, 0.5, 0.3, 0.0, 30.0, small.astype(np.int64),
                       small.astype(np.int64), small, np.zeros((9, 3)), small)
    with pytest.raises(ValueError, match='differ in length'):
        k.cell_moments(x, x[:5].copy(), x, 0.0, 0.0, 0.5, 0.3, 0.0, 30.0,
                       *(np.zeros(10, np.int64),) * 2, x.copy(), np.zeros((9, 10)), x.copy())
    with pytest.raises(ValueError):  # float32: 4-byte items
        k.max_neighbour_step(np.zeros(2, np.int64), np.zeros(2, np.float32), np.zeros(2),
                             np.zeros(2), 3, 3, 0.5, np.zeros(2))
    with pytest.raises(ValueError, match='outside the grid'):
        k.neighbourhood_mean(np.array([99], np.int64), np.zeros((1, 4)), 4, 3, 3, 2,
                             np.zeros((1, 4)))
    with pytest.raises(ValueError, match='outside the cell arrays'):
        k.footprint_update(np.zeros((4, 3)), np.full(4, -1, np.int64), np.full(4, -1, np.int64),
                           np.array([4], np.int64), 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.7, 5,
                           np.zeros(1, np.int64))
    with pytest.raises(ValueError, match='read-only'):
        readonly = np.zeros(2)
        readonly.flags.writeable = False
        k.max_neighbour_step(np.zeros(2, np.int64), np.zeros(2), np.zeros(2), np.zeros(2),
                             3, 3, 0.5, readonly)


@pytest.mark.skipif(not compiled_kernels(), reason='compiled kernels not built')
def test_a_grid_too_large_is_a_memory_error_not_a_crash():
    # Two points 10,000 km apart at 5 cm cells: 2e8 x 2e8 cells.
    x = np.array([0.0, 1e7])
    with pytest.raises(MemoryError, match='too large'):
        compute_patches_xyz(x, x.copy(), np.zeros(2), np.zeros(3), 0, cell_size=0.05,
                            min_points=1, min_range=0.0, max_range=1e9)


def test_without_the_compiled_kernels_it_warns_and_computes_the_same():
    """A source tree that was not built (the import of the extension fails): one warning that
    says how to build it, and the numpy reference gives the same patches."""
    script = (
        'import sys, warnings, numpy as np\n'
        'class Block:\n'
        '    def find_spec(self, name, path=None, target=None):\n'
        '        if name == "terrain_ssl.core._kernels":\n'
        '            raise ImportError("blocked for the test")\n'
        'sys.meta_path.insert(0, Block())\n'
        'with warnings.catch_warnings(record=True) as caught:\n'
        '    warnings.simplefilter("always")\n'
        '    from terrain_ssl.core import kernels, patches\n'
        'print(kernels.compiled_kernels(), [str(w.message) for w in caught])\n'
        'points = np.random.default_rng(0).uniform(-10, 10, (20000, 3)) * [1, 1, 0.01]\n'
        'p = patches.compute_patches(points, [0.0, 0.0, 1.6], 0)\n'
        'print(len(p), repr(float(p.features.sum())))\n')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    built, warnings_text = result.stdout.splitlines()[0].split(' ', 1)
    assert built == 'False'
    assert 'not built' in warnings_text and 'pip install -e .' in warnings_text
    points = np.random.default_rng(0).uniform(-10, 10, (20000, 3)) * [1, 1, 0.01]
    expected = patches.compute_patches(points, [0.0, 0.0, 1.6], 0)
    count, total = result.stdout.splitlines()[1].split()
    assert int(count) == len(expected) > 100
    assert float(total) == pytest.approx(float(expected.features.sum()), rel=1e-12)
