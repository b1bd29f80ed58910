"""Physics sanity of the simulator: terrain statistics, suspension, IMU, lidar geometry."""

from dataclasses import replace

import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from scipy.signal import welch

from sensor_msgs.msg import Imu
from terrain_ssl.sim.lidar import LidarCaster, lidar_preset
from terrain_ssl.sim.route import RoundedRectangleRoute
from terrain_ssl.sim.terrain import ISO_GD_N0_M3, Terrain, TerrainConfig
from terrain_ssl.sim.vehicle import FullCarSuspension, VehicleParams
from terrain_ssl.sim.world import GRAVITY_MPS2, World, WorldConfig, rotation_matrices

G = GRAVITY_MPS2


@pytest.fixture(scope='module')
def terrain():
    return Terrain(TerrainConfig(), seed=0)


def drive(terrain, start_s_m, speed_mps, duration_s, **config):
    """Drive at constant speed (already at speed at the start); return IMU messages (rclpy)."""
    world_config = replace(WorldConfig(lidar=None, start_s_m=start_s_m,
                                       initial_speed_mps=speed_mps), **config)
    world = World(world_config, seed=3, terrain=terrain)
    msgs = []
    while world.time_ns - world_config.start_time_ns < duration_s * 1e9 - 1:
        msgs.extend(m for m in world.step(0.05, speed_mps) if m.topic == '/imu/data')
    return world, [deserialize_message(m.cdr_bytes, Imu) for m in msgs]


def vertical_accel_rms(imu_msgs):
    """RMS of the specific force along world up, minus gravity (m/s^2), via the orientation."""
    q = np.array([[m.orientation.x, m.orientation.y, m.orientation.z, m.orientation.w]
                  for m in imu_msgs])
    f = np.array([[m.linear_acceleration.x, m.linear_acceleration.y, m.linear_acceleration.z]
                  for m in imu_msgs])
    x, y, z, w = q.T
    # Third row of the rotation matrix of q: world z expressed through the sensor axes.
    up = np.column_stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)])
    vertical = np.einsum('ni,ni->n', up, f) - G
    return float(np.sqrt(np.mean((vertical - vertical.mean()) ** 2)))


def test_class_e_shakes_at_least_3x_more_than_class_a_b(terrain):
    a_start, _ = terrain.segment_containing('A')
    e_start, e_end = terrain.segment_containing('E')
    world_ab, smooth = drive(terrain, a_start + 2.0, 5.0, 10.0)
    world_e, rough = drive(terrain, e_start + 2.0, 5.0, 10.0)
    truth = world_ab.ground_truth
    path_ab = np.column_stack([truth.trajectory['x_m'], truth.trajectory['y_m']])
    assert set(np.unique(truth.iso_class_at(path_ab))) <= {0, 1}      # only A and B ground
    assert world_e.state.route_s_m < e_end                              # stayed on class E
    rms_smooth, rms_rough = vertical_accel_rms(smooth), vertical_accel_rms(rough)
    assert rms_rough >= 3.0 * rms_smooth, (rms_smooth, rms_rough)
    assert 0.3 < rms_rough < 6.0          # plausible body vibration on rough ground, m/s^2


def test_shaking_grows_with_speed(terrain):
    e_start, _ = terrain.segment_containing('E')
    rms = [vertical_accel_rms(drive(terrain, e_start + 2.0, v, 45.0 / v)[1])
           for v in (2.0, 4.0, 7.0)]
    assert rms[0] < rms[1] < rms[2], rms


@pytest.mark.parametrize('mount, axis, sign', [('z_up', 2, 1.0), ('y_up', 1, 1.0),
                                               ('z_down', 2, -1.0)])
def test_at_rest_the_imu_reads_one_g(terrain, mount, axis, sign):
    config = WorldConfig().imu
    world, msgs = drive(terrain, 10.0, 0.0, 1.0, imu=replace(config, mount=mount))
    accel = np.array([[m.linear_acceleration.x, m.linear_acceleration.y, m.linear_acceleration.z]
                      for m in msgs])
    assert len(msgs) == 200
    assert np.linalg.norm(accel.mean(axis=0)) == pytest.approx(G, abs=0.1)
    assert sign * accel.mean(axis=0)[axis] > 0.99 * G - 0.1     # on the gentle slopes, ~1 g
    gyro = np.array([[m.angular_velocity.x, m.angular_velocity.y, m.angular_velocity.z]
                     for m in msgs])
    assert np.abs(gyro.mean(axis=0)).max() < 0.02
    assert world.state.speed_mps == 0.0 and world.state.distance_m == 0.0


def test_terrain_profiles_follow_the_iso_8608_psd():
    config = TerrainConfig(route=RoundedRectangleRoute(30.0, 10.0, 8.0), segments=(('D', 1.0),),
                           max_grade=0.0, speed_bumps_per_class_c_segment=0,
                           rocks_per_100m2=(0.0,) * 6, potholes_per_100m2=(0.0,) * 6)
    heights = Terrain(config, seed=5).heights.astype(float)
    for axis in (0, 1):   # profiles along x and along y: isotropic
        f, psd = welch(heights, fs=1.0 / config.resolution_m, nperseg=512, axis=axis)
        psd = psd.mean(axis=1 - axis)
        band = (f >= 0.3) & (f <= 3.0)
        gd_n0 = psd[band] * (f[band] / 0.1) ** 2       # G_d(n0) implied at each frequency
        assert np.median(gd_n0) == pytest.approx(ISO_GD_N0_M3['D'], rel=0.3)
        assert gd_n0.max() / gd_n0.min() < 2.5         # flat: the n^-2 law holds


def test_ground_truth_roughness_orders_the_classes(terrain):
    gt = terrain.ground_truth
    medians = [np.median(gt.roughness_rms_m[gt.iso_class == c]) for c in range(6)]
    assert all(b > 1.5 * a for a, b in zip(medians, medians[1:])), medians
    # Deterministic for a seed.
    again = Terrain(TerrainConfig(), seed=0)
    assert np.array_equal(again.heights, terrain.heights)


def test_suspension_frequencies_are_realistic():
    freqs = FullCarSuspension(VehicleParams()).natural_frequencies_hz()
    body, wheel = freqs[:3], freqs[3:]
    assert np.all((body > 0.8) & (body < 2.5)) and np.all((wheel > 7.0) & (wheel < 15.0))


@pytest.mark.parametrize('tilt_deg', [0.0, 3.0])
def test_lidar_points_lie_on_the_terrain(terrain, tilt_deg):
    caster = LidarCaster(lidar_preset('vlp16', range_noise_m=0.0), terrain, seed=0)
    columns = caster.preset.columns
    x, y = 30.0, 1.0
    origin = np.array([x, y, terrain.height_at(np.array([x]), np.array([y]))[0] + 1.9])
    rotation = rotation_matrices(0.3, np.deg2rad(tilt_deg), np.deg2rad(-tilt_deg))
    scan = caster.cast(np.tile(origin, (columns, 1)), np.tile(rotation, (columns, 1, 1)))
    points = scan.xyz_m.reshape(-1, 3)
    points = points[~np.isnan(points[:, 0])] @ rotation.T + origin
    error = points[:, 2] - terrain.height_at(points[:, 0], points[:, 1])
    assert len(points) > 10000
    assert np.sqrt(np.mean(error ** 2)) < 0.01 and np.percentile(np.abs(error), 99) < 0.03


def test_closed_loop_step_api(terrain):
    config = WorldConfig(lidar=None, start_s_m=terrain.route.length_m - 5.0)
    world = World(config, seed=1, terrain=terrain)
    world.step(1.0, 10.0)
    assert world.state.speed_mps == pytest.approx(1.5)      # acceleration limit, 1.5 m/s^2
    for _ in range(40):
        world.step(0.1, 4.0)
    state = world.state
    assert state.speed_mps == pytest.approx(4.0)
    assert state.lap == 1 and state.route_s_m < 20.0          # wrapped past the start line
    ramp_s = (4.0 - 1.5) / 1.5
    assert state.distance_m == pytest.approx(0.75 + 0.5 * (1.5 + 4.0) * ramp_s
                                             + 4.0 * (4.0 - ramp_s), rel=1e-3)
    world.step(0.5, 0.0)
    assert world.state.speed_mps == pytest.approx(2.5)       # braking limit, 3 m/s^2
    assert world.step(0.0, 1.0) == []                         # no time, no messages
    for bad in ((-0.1, 1.0), (float('nan'), 1.0), (0.1, -1.0), (0.1, float('inf'))):
        with pytest.raises(ValueError):
            world.step(*bad)
    with pytest.raises(ValueError):
        World(replace(config, lidar='hdl64'), terrain=terrain)
    with pytest.raises(ValueError):
        replace(config.imu, mount='sideways')
    with pytest.raises(ValueError):
        World(replace(config, imu=replace(config.imu, rate_hz=300)), terrain=terrain)
