"""Scan -> ground cells with geometric features, on synthetic point sets of known shape."""

import numpy as np
import pytest

from terrain_ssl.core.patches import (FEATURE_INDEX, FEATURE_NAMES, cell_indices, cell_keys,
                                      compute_patches)

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
