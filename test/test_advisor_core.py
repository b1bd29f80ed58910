"""speed advisor core: braking profile ahead of rough cells, limits, fallbacks, twist capping."""

import math

import numpy as np
import pytest

from terrain_ssl.core.advisor import (AdvisorConfig, SpeedAdvisor, VehicleState,
                                      allowed_speed_now, cap_twist, corridor_samples)
from terrain_ssl.core.roughness_map import RoughnessMap

CELL = 0.5
SMOOTH = 0.5     # (m/s^2)/(m/s): allows 6 / 0.5 = 12 -> v_max
ROUGH = 4.0      # allows 6 / 4 = 1.5 m/s
CONFIG = AdvisorConfig(shock_limit_mps2=6.0, v_min_mps=0.5, v_max_mps=6.0,
                       cautious_speed_mps=1.0, accel_limit_mps2=1.0, decel_limit_mps2=1.5,
                       corridor_half_width_m=1.0, margin_m=2.0, front_offset_m=1.5,
                       uncertainty_weight=1.0, quantile=1.0, cell_size_m=CELL,
                       stale_timeout_s=1.0, map_memory_s=0.0)


def strip_map(rough_from_m=60.0, rough_to_m=61.0, length_m=250.0, hole=None):
    """A 4 m wide strip along +x, smooth except a rough band; cell centres at (i + 0.5) * CELL."""
    xs = (np.arange(int(length_m / CELL)) + 0.5) * CELL
    ys = (np.arange(-4, 4) + 0.5) * CELL
    gx, gy = np.meshgrid(xs, ys, indexing='ij')
    xy = np.stack([gx.ravel(), gy.ravel()], axis=1)
    roughness = np.where((xy[:, 0] >= rough_from_m) & (xy[:, 0] <= rough_to_m), ROUGH, SMOOTH)
    if hole is not None:
        keep = (xy[:, 0] < hole[0]) | (xy[:, 0] > hole[1])
        xy, roughness = xy[keep], roughness[keep]
    return RoughnessMap(xy, roughness, np.zeros(len(roughness)), CELL)


def drive(advisor, x0_m=0.0, duration_s=30.0, dt_s=0.05, start_speed_mps=6.0):
    """A vehicle that follows the speed limit with accel/brake limits a bit beyond the
    advisor's."""
    x, v = x0_m, start_speed_mps
    advisor._last_speed = start_speed_mps  # cruising at v_max before the test starts
    advisor._last_time_ns = 0
    log = []
    for k in range(1, int(duration_s / dt_s)):
        now = int(k * dt_s * 1e9)
        advisor.set_state(VehicleState(x, 0.0, 0.0, v), now)
        advisor.set_map(advisor.map, now)
        limit = advisor.update(now).speed_limit_mps
        v = min(limit, v + 2.0 * dt_s) if limit > v else max(limit, v - 3.0 * dt_s)
        log.append((now / 1e9, x, v, limit))
        x += v * dt_s
    return np.array(log)


def test_limit_falls_before_the_vehicle_reaches_the_rough_cell():
    advisor = SpeedAdvisor(CONFIG)
    advisor.set_map(strip_map(60.0, 61.0), 0)
    log = drive(advisor)
    t, x, v, limit = log.T
    front = x + CONFIG.front_offset_m
    target = CONFIG.shock_limit_mps2 / ROUGH
    # Before the front axle reaches the rough band, the limit has already come down ...
    arrival = int(np.argmax(front >= 60.0 - 0.05))
    assert limit[arrival] <= target + 0.05
    assert v[arrival] <= target + 0.2
    # ... and it started falling well ahead (braking distance from 6 to 1.5 m/s at 1.5 m/s^2).
    first_drop = int(np.argmax(limit < CONFIG.v_max_mps - 1e-6))
    braking_m = (6.0**2 - target**2) / (2 * CONFIG.decel_limit_mps2)
    assert 60.0 - front[first_drop] >= braking_m - 1.0
    # It stays down while any wheel is on the band, and rises again after it.
    on_band = (front >= 60.0) & (x <= 61.0)
    assert np.all(limit[on_band] <= target + 0.05)
    assert limit[-1] > 5.0


def test_the_plan_respects_the_deceleration_limit_and_the_rise_the_acceleration_limit():
    advisor = SpeedAdvisor(CONFIG)
    advisor.set_map(strip_map(60.0, 61.0), 0)
    log = drive(advisor)
    t, x, v, limit = log.T
    rate = np.diff(limit) / np.diff(t)
    assert rate.min() >= -CONFIG.decel_limit_mps2 * 1.1, rate.min()
    assert rate.max() <= CONFIG.accel_limit_mps2 + 1e-6, rate.max()
    assert advisor.late_hazards == 0


def test_braking_profile_formula():
    assert allowed_speed_now(1.5, 0.0, 1.5) == pytest.approx(1.5)
    # From 6 m/s at 1.5 m/s^2 the vehicle needs (36 - 2.25) / 3 = 11.25 m to reach 1.5 m/s.
    assert allowed_speed_now(1.5, 11.25, 1.5) == pytest.approx(6.0)
    assert allowed_speed_now(1.5, -3.0, 1.5) == pytest.approx(1.5)  # behind: already there


def test_a_hazard_inside_braking_range_drops_the_limit_at_once():
    advisor = SpeedAdvisor(CONFIG)
    advisor.update(0)
    advisor._last_speed = 6.0
    advisor.set_state(VehicleState(55.0, 0.0, 0.0, 6.0), int(0.05e9))
    advisor.set_map(strip_map(60.0, 61.0), int(0.05e9))
    advice = advisor.update(int(0.05e9))
    expected = math.sqrt(1.5**2 + 2 * 1.5 * (60.0 - 0.25 - 55.0 - 1.5))
    assert advice.speed_limit_mps == pytest.approx(expected, abs=0.3)
    assert advice.reason == 'terrain'
    assert advisor.late_hazards == 1


@pytest.mark.parametrize('missing', ['map', 'odometry'])
def test_stale_inputs_fall_back_to_the_cautious_speed(missing):
    advisor = SpeedAdvisor(CONFIG)
    advisor.set_map(strip_map(), 0)
    advisor.set_state(VehicleState(0.0, 0.0, 0.0, 3.0), 0)
    advisor._last_speed, advisor._last_time_ns = 6.0, 0
    assert advisor.update(int(0.5e9)).reason == 'clear'
    now = int(2.0e9)  # both inputs were last refreshed 2 s ago; refresh one of them
    if missing == 'map':
        advisor.set_state(VehicleState(0.0, 0.0, 0.0, 3.0), now)
    else:
        advisor.set_map(strip_map(), now)
    advice = advisor.update(now)
    assert advice.speed_limit_mps == pytest.approx(CONFIG.cautious_speed_mps)
    assert advice.reason == f'stale_{missing}'


def test_no_prediction_yet_gives_the_cautious_speed():
    advisor = SpeedAdvisor(CONFIG)
    advisor.set_state(VehicleState(0.0, 0.0, 0.0, 0.0), 0)
    advice = advisor.update(0)
    assert advice.reason == 'no_map'
    assert advice.speed_limit_mps == pytest.approx(CONFIG.cautious_speed_mps)
    assert SpeedAdvisor(CONFIG).update(0).reason == 'no_odometry'


def test_unknown_cells_ahead_are_approached_at_the_cautious_speed():
    advisor = SpeedAdvisor(CONFIG)
    advisor.set_map(strip_map(200.0, 201.0, hole=(40.0, 50.0)), 0)
    log = drive(advisor, duration_s=12.0)
    t, x, v, limit = log.T
    arrival = int(np.argmax(x + CONFIG.front_offset_m >= 40.0 - 0.05))
    assert limit[arrival] <= CONFIG.cautious_speed_mps + 0.05
    assert advisor.last_advice.unknown_fraction > 0.0


def test_uncertainty_makes_the_advice_more_careful():
    xy = np.array([[x, y] for x in np.arange(0.25, 30, 0.5) for y in (-0.25, 0.25)])
    roughness = np.full(len(xy), 1.5)
    confident = RoughnessMap(xy, roughness, np.zeros(len(xy)), CELL)
    unsure = RoughnessMap(xy, roughness, np.full(len(xy), 1.5), CELL)
    speeds = []
    for rmap in (confident, unsure):
        advisor = SpeedAdvisor(CONFIG)
        advisor.set_map(rmap, 0)
        advisor.set_state(VehicleState(0.0, 0.0, 0.0, 1.0), 0)
        speeds.append(advisor.allowed(0).allowed_mps)
    assert speeds[0] == pytest.approx(6.0 / 1.5)
    assert speeds[1] == pytest.approx(6.0 / 3.0)


def test_path_corridor_follows_a_turn():
    # Rough cells 8 m ahead and 6 m to the left: off the heading, but on a path turning left.
    xy = np.array([[x, y] for x in np.arange(-5, 25, 0.5) for y in np.arange(-10, 15, 0.5)])
    rough = (np.abs(xy[:, 0] - 8.0) < 1.0) & (np.abs(xy[:, 1] - 6.0) < 1.0)
    rmap = RoughnessMap(xy, np.where(rough, ROUGH, SMOOTH), np.zeros(len(xy)), CELL)
    angle = np.linspace(-np.pi / 2, 0.0, 50)
    path = np.stack([8.0 * np.cos(angle), 8.0 + 8.0 * np.sin(angle)], axis=1)  # radius 8 m left
    path = np.vstack([path, [[8.0, 12.0]]])
    advisor = SpeedAdvisor(CONFIG)
    advisor.set_map(rmap, 0)
    advisor.set_state(VehicleState(0.0, 0.0, 0.0, 6.0), 0)
    straight = advisor.allowed(0)
    advisor.set_path(path)
    turning = advisor.allowed(0)
    assert straight.reason == 'clear'
    assert turning.reason == 'terrain' and turning.worst_roughness == ROUGH
    # Braking to 6 / 4 = 1.5 m/s by the rough cells ~6 m along the arc past the front axle.
    assert 4.0 < turning.worst_distance_m < 9.0
    assert turning.allowed_mps == pytest.approx(allowed_speed_now(
        CONFIG.shock_limit_mps2 / ROUGH, turning.worst_distance_m, CONFIG.decel_limit_mps2))
    assert turning.allowed_mps < CONFIG.v_max_mps - 0.5
    # A plan the vehicle is not on (here 6 m to the side) is not followed: the heading decides.
    advisor.set_path(path + [0.0, 6.0])
    assert advisor.allowed(0).reason == 'clear'


def test_corridor_samples_cover_the_width_and_length():
    xy, stations, _ = corridor_samples(VehicleState(1.0, 2.0, np.pi / 2, 0.0), 10.0, 1.0, 0.25)
    assert xy.shape == (41, 9, 2) and stations.max() == pytest.approx(10.0)
    xy = xy.reshape(-1, 2)
    assert xy[:, 0].min() == pytest.approx(0.0) and xy[:, 0].max() == pytest.approx(2.0)
    assert xy[:, 1].max() == pytest.approx(12.0)


def test_roughness_map_lookup_grid_offsets_duplicates_and_bad_points():
    for offset in (0.0, 0.25):  # cell centres at i * cell and at (i + 0.5) * cell
        xy = np.array([[offset, offset], [offset + 0.5, offset], [offset + 0.5, offset],
                       [np.nan, 0.0]], dtype=np.float32)
        rmap = RoughnessMap(xy, [1.0, 2.0, 3.0, 9.0], [0.1, 0.2, -0.3, 0.0], CELL)
        assert rmap.rejected == 1 and len(rmap) == 2
        r, u, known = rmap.lookup([[offset + 0.1, offset - 0.1], [offset + 0.6, offset + 0.2],
                                   [offset + 5.0, offset]])
        assert known.tolist() == [True, True, False]
        assert r.tolist() == [1.0, 3.0, 0.0]  # the rougher of two points in one cell
        assert u[1] == 0.0  # negative uncertainty reads as 0
    empty = RoughnessMap.empty(CELL)
    assert len(empty) == 0 and not empty.lookup([[0.0, 0.0]])[2].any()
    with pytest.raises(ValueError):
        RoughnessMap(np.zeros((2, 2)), np.zeros(3), np.zeros(2), CELL)


def test_maps_merge_over_time_newest_wins_and_old_cells_age_out():
    config = AdvisorConfig(cell_size_m=CELL, map_memory_s=5.0, max_map_cells=100)
    advisor = SpeedAdvisor(config)
    first = RoughnessMap([[0.25, 0.25], [0.75, 0.25]], [1.0, 1.0], [0.0, 0.0], CELL, stamp_ns=0)
    advisor.set_map(first, 0)
    # The second map sees the second cell again (new value) and a new third cell; its grid
    # offset differs by float noise only.
    second = RoughnessMap(np.array([[0.75, 0.25], [1.25, 0.25]], dtype=np.float32) + 1e-6,
                          [2.0, 3.0], [0.0, 0.0], CELL, stamp_ns=int(3e9))
    advisor.set_map(second, int(3e9))
    r, _, known = advisor.map.lookup([[0.25, 0.25], [0.75, 0.25], [1.25, 0.25]])
    assert known.all() and r.tolist() == [1.0, 2.0, 3.0]
    third = RoughnessMap([[5.25, 0.25]], [4.0], [0.0], CELL, stamp_ns=int(6e9))
    advisor.set_map(third, int(6e9))  # the first map's cell is now 6 s old > 5 s memory
    r, _, known = advisor.map.lookup([[0.25, 0.25], [0.75, 0.25], [5.25, 0.25]])
    assert known.tolist() == [False, True, True]
    # The memory bound keeps the newest cells.
    small = SpeedAdvisor(AdvisorConfig(cell_size_m=CELL, map_memory_s=60.0, max_map_cells=2))
    for k, x in enumerate((0.25, 0.75, 1.25)):
        small.set_map(RoughnessMap([[x, 0.25]], [1.0], [0.0], CELL, stamp_ns=k), k)
    assert len(small.map) == 2 and small.map.lookup([[0.25, 0.25]])[2].tolist() == [False]


def test_cap_twist_keeps_curvature_and_passes_slower_commands():
    linear, angular, scale = cap_twist([4.0, 0.0, 0.0], [0.0, 0.0, 0.8], 2.0)
    assert linear[0] == pytest.approx(2.0) and scale == pytest.approx(0.5)
    assert angular[2] / linear[0] == pytest.approx(0.8 / 4.0)  # same curvature
    linear, angular, scale = cap_twist([1.0, 0.0, 0.0], [0.0, 0.0, 0.8], 2.0)
    assert linear.tolist() == [1.0, 0.0, 0.0] and angular[2] == 0.8 and scale == 1.0
    linear, angular, scale = cap_twist([0.0, 0.0, 0.0], [0.0, 0.0, 1.0], 0.5)  # turn in place
    assert angular[2] == 1.0 and scale == 1.0
    linear, _, _ = cap_twist([-4.0, 0.0, 0.0], [0.0, 0.0, 0.0], 2.0)  # reversing is capped too
    assert linear[0] == pytest.approx(-2.0)


def test_config_refuses_inconsistent_values():
    with pytest.raises(ValueError, match='v_max'):
        AdvisorConfig(v_min_mps=2.0, v_max_mps=1.0, cautious_speed_mps=1.5)
    with pytest.raises(ValueError, match='cautious'):
        AdvisorConfig(cautious_speed_mps=10.0)
    with pytest.raises(ValueError, match='finite'):
        AdvisorConfig(shock_limit_mps2=float('nan'))


def test_absorb_newer_gives_the_map_merged_with_would():
    """The in-place merge (binary search + insertion) must equal the plain merge, cell for cell,
    while cells are replaced, added and expire."""
    rng = np.random.default_rng(4)
    memory_ns = int(5e9)
    merged = fast = None
    for step in range(40):
        now = int(step * 0.5e9)
        centre = rng.integers(-10, 10, size=2)
        cells = np.unique(centre + rng.integers(-6, 7, size=(rng.integers(0, 60), 2)), axis=0)
        xy = (cells + 0.5) * CELL + rng.normal(0, 1e-7, cells.shape)  # float noise on the grid
        new = RoughnessMap(xy, rng.random(len(xy)), rng.random(len(xy)), CELL, stamp_ns=now)
        oldest = now - memory_ns
        merged = new.merged_with(merged, oldest, 10_000)
        if fast is None or not fast.absorb_newer(new, oldest, 10_000):
            fast = new.merged_with(fast, oldest, 10_000)
        for name in ('_keys_sorted', 'centres_xy_m', 'roughness', 'uncertainty', 'stamp_ns'):
            assert np.array_equal(getattr(fast, name), getattr(merged, name)), (step, name)


def test_lookup_with_centres_is_lookup_plus_cell_centres():
    rng = np.random.default_rng(6)
    xy = (rng.integers(-20, 20, size=(300, 2)) + 0.5) * CELL
    rmap = RoughnessMap(xy, rng.random(300), rng.random(300), CELL)
    query = rng.uniform(-12.0, 12.0, size=(500, 2))
    query[0] = [1e12, 0.0]  # too far to key: unknown, as before
    roughness, uncertainty, known, centres = rmap.lookup_with_centres(query)
    expected = rmap.lookup(query)
    assert np.array_equal(roughness, expected[0]) and np.array_equal(uncertainty, expected[1])
    assert np.array_equal(known, expected[2]) and not known[0]
    assert np.array_equal(centres, rmap.cell_centres(query))
    empty = RoughnessMap.empty(CELL).lookup_with_centres(query)
    assert not empty[2].any() and empty[3].shape == query.shape
