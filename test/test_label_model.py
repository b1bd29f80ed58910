"""The label model: the vibration floor removed, the speed dependence fitted from data, and labels
that do not follow speed on the real BorealTC runs."""

from __future__ import annotations

import numpy as np
import pytest

from terrain_ssl.core.label_model import (LabelModel, fit_label_model, label_roughness,
                                          speed_ratio)
from terrain_ssl.core.labeler import LabelerConfig

from realdata import realdata


def synthetic_windows(floor=0.3, exponent=0.6, roughness=(0.5, 1.0, 2.0), seed=0):
    """Windows of three drives (one roughness each) at 0.15-1.0 m/s, log-normal scatter."""
    rng = np.random.default_rng(seed)
    speed, shock, group = [], [], []
    for index, k in enumerate(roughness):
        v = rng.uniform(0.15, 1.0, 300)
        s = np.sqrt(floor ** 2 + (k * v ** exponent) ** 2) * rng.lognormal(0.0, 0.15, v.shape)
        speed.append(v), shock.append(s), group.append(np.full(v.shape, index))
    return np.concatenate(speed), np.concatenate(shock), np.concatenate(group)


def test_defaults_are_plain_shock_over_speed():
    shock, speed = np.array([0.4, 1.2, 3.0]), np.array([0.5, 3.0, 6.0])
    assert np.array_equal(label_roughness(shock, speed), shock / speed)
    config = LabelerConfig()
    assert config.label_floor == 0.0 and config.label_speed_exponent == 1.0


def test_floor_is_removed_in_power():
    # 0.5 m/s^2 of which 0.3 is floor: the terrain's part is 0.4 (a 3-4-5 triangle).
    assert label_roughness([0.5], [2.0], floor=0.3) == pytest.approx([0.2])
    assert label_roughness([0.2], [1.0], floor=0.3) == pytest.approx([0.0])  # below the floor
    model = LabelModel(floor=0.3, speed_exponent=0.5)
    assert model.roughness(model.shock(1.3, 0.7), 0.7) == pytest.approx(1.3)


def test_roughness_times_reference_speed_is_the_terrain_shock():
    # Whatever the exponent, the advisor's shock = roughness x speed holds at the reference.
    model = LabelModel(floor=0.2, speed_exponent=0.4, reference_speed=0.25)
    terrain = 0.6  # m/s^2 above the floor at 0.25 m/s
    shock = np.hypot(0.2, terrain)
    assert model.roughness(shock, 0.25) * 0.25 == pytest.approx(terrain)
    # ... and the label is the same at four times the speed, where the shock is 4^0.4 larger.
    faster = np.hypot(0.2, terrain * 4 ** 0.4)
    assert model.roughness(faster, 1.0) == pytest.approx(model.roughness(shock, 0.25))


def test_fit_recovers_floor_and_exponent():
    speed, shock, group = synthetic_windows()
    model = fit_label_model(speed, shock, group)
    assert model.fitted
    assert model.speed_exponent == pytest.approx(0.6, abs=0.1)
    assert model.floor == pytest.approx(0.3, abs=0.08)
    # With the fitted model, labels no longer follow speed; plain shock / speed does.
    for index in range(3):
        mine = group == index
        labels = model.roughness(shock[mine], speed[mine])
        assert 0.9 < speed_ratio(labels, speed[mine]) < 1.1
        assert speed_ratio(shock[mine] / speed[mine], speed[mine]) < 0.75


def test_one_speed_keeps_the_default_exponent():
    rng = np.random.default_rng(1)
    speed = np.full(50, 1.0) + rng.normal(0, 0.01, 50)
    shock = rng.uniform(0.2, 0.4, 50)
    model = fit_label_model(np.r_[speed, np.zeros(5)], np.r_[shock, np.full(5, 0.01)],
                            default_exponent=0.7)
    assert not model.fitted and model.speed_exponent == 0.7
    assert model.floor == pytest.approx(0.01) and model.standstill_floor == pytest.approx(0.01)


def test_too_few_windows_is_a_clear_error():
    with pytest.raises(ValueError, match='moving windows'):
        fit_label_model([0.5, 0.0], [0.3, 0.1])


def borealtc_windows():
    """Windows (speed, shock, run) of the BorealTC runs through the labeler's vibration path,
    with a small UGV's footprint."""
    from terrain_ssl.core.calibration import drive_windows

    import borealtc_bags

    root = realdata('borealtc')
    config = LabelerConfig(footprint_length=0.85, footprint_width=0.67, footprint_offset_x=0.0,
                           patch_size=0.25)
    surfaces = {}
    for surface, run in borealtc_bags.runs(root):
        imu = borealtc_bags.read_csv(root / surface / f'imu_{run}.csv')
        t_s, *_, v, _ = borealtc_bags.odometry_from_wheels(
            borealtc_bags.read_csv(root / surface / f'pro_{run}.csv'))
        windows = drive_windows(
            f'{surface}_{run}', (imu['time'] * 1e9).astype(np.int64),
            np.column_stack([imu['ax'], imu['ay'], imu['az']]), (t_s * 1e9).astype(np.int64),
            v, config)
        if not windows.problem:
            surfaces.setdefault(surface, []).append(windows)
    return surfaces


def test_borealtc_labels_hold_across_speed():
    surfaces = borealtc_windows()
    assert sorted(surfaces) == ['ASPHALT', 'FLOORING', 'ICE', 'SANDY_LOAM', 'SNOW']
    drives = [drive for runs in surfaces.values() for drive in runs]
    speed = np.concatenate([drive.speed for drive in drives])
    shock = np.concatenate([drive.shock for drive in drives])
    group = np.concatenate([np.full(d.speed.shape, i) for i, d in enumerate(drives)])
    model = fit_label_model(speed, shock, group, min_speed=0.08)
    assert model.fitted and 0.2 <= model.speed_exponent < 0.8
    plain_ratios = []
    for surface, runs in surfaces.items():
        v = np.concatenate([drive.speed for drive in runs])
        s = np.concatenate([drive.shock for drive in runs])
        labeled = v >= 0.08
        assert labeled.sum() >= 30, surface  # labels at the robot's own speeds (0.1-0.8 m/s)
        ratio = speed_ratio(model.roughness(s[labeled], v[labeled]), v[labeled])
        assert 0.67 <= ratio <= 1.5, (surface, ratio)
        plain_ratios.append(speed_ratio(s[labeled] / v[labeled], v[labeled]))
    assert min(plain_ratios) < 0.67  # plain shock / speed: faster is "smoother" on asphalt
