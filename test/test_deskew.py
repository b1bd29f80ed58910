"""Deskew (terrain_ssl.core.deskew): time fields, stamp conventions, points at firing time."""

import numpy as np
import pytest

from terrain_ssl.core.deskew import deskew_to_frame, detected_convention, point_offsets_s
from terrain_ssl.core.geometry import make_transform, quat_from_rpy
from terrain_ssl.core.labeler import Labeler, LabelerConfig

STAMP_NS = 1_700_000_000_000_000_000


def test_time_fields_become_seconds_from_the_stamp_in_either_convention():
    ouster = point_offsets_s('t', np.array([0, 50_000_000, 99_900_000], np.uint32), STAMP_NS)
    np.testing.assert_allclose(ouster, [0.0, 0.05, 0.0999], atol=1e-12)
    assert detected_convention(ouster) == 'start'
    velodyne = point_offsets_s('time', np.array([-0.1, -0.05, 0.0], np.float32), STAMP_NS)
    np.testing.assert_allclose(velodyne, [-0.1, -0.05, 0.0], atol=1e-7)
    assert detected_convention(velodyne) == 'end'
    # Times from the sweep start on a cloud stamped at its end: only the override can tell.
    forced = point_offsets_s('time', np.array([0.0, 0.05, 0.1]), STAMP_NS, 'end')
    np.testing.assert_allclose(forced, [-0.1, -0.05, 0.0], atol=1e-12)
    hesai = point_offsets_s('timestamp', STAMP_NS * 1e-9 + np.array([0.0, 0.02]), STAMP_NS)
    np.testing.assert_allclose(hesai, [0.0, 0.02], atol=1e-6)
    livox = point_offsets_s('offset_time', np.array([0, 10_000_000], np.uint32), STAMP_NS)
    np.testing.assert_allclose(livox, [0.0, 0.01], atol=1e-12)
    with pytest.raises(ValueError):
        point_offsets_s('stamp', np.zeros(2), STAMP_NS)


def _vehicle(t_s):
    """Pose at t_s (s from the stamp): 6 m/s ahead while turning at 0.5 rad/s."""
    yaw = 0.1 + 0.5 * t_s
    return make_transform([100.0 + 6.0 * t_s, 50.0 + 1.0 * t_s, 0.2],
                          quat_from_rpy(0.01, 0.02, yaw))


def test_each_point_moves_with_the_pose_at_its_firing_time():
    rng = np.random.default_rng(3)
    n = 20_000
    offsets = np.sort(rng.uniform(0.0, 0.1, n))
    points = rng.uniform(-25.0, 25.0, (n, 3)).astype(np.float32)
    points[::97] = np.nan  # no-return markers are dropped, the rest keep their times
    x, y, z = deskew_to_frame(points, offsets, STAMP_NS,
                              lambda t_ns: _vehicle((t_ns - STAMP_NS) * 1e-9))
    finite = np.isfinite(points).all(axis=1)
    truth = np.array([_vehicle(t)[:3, :3] @ p + _vehicle(t)[:3, 3]
                      for t, p in zip(offsets[finite], points[finite].astype(np.float64))])
    error = np.hypot(np.hypot(x - truth[:, 0], y - truth[:, 1]), z - truth[:, 2])
    assert error.max() < 0.002  # m; without deskew the sweep's ends are 0.6 m and 1.2 m off
    whole = _vehicle(0.0)
    undistorted = points[finite].astype(np.float64) @ whole[:3, :3].T + whole[:3, 3]
    assert np.abs(undistorted - truth).max() > 0.5


def _labeler(**config):
    labeler = Labeler(LabelerConfig(**config))
    for k in range(30):  # 6 m/s along x, from 0.2 s before the scan
        t_ns = STAMP_NS - 200_000_000 + k * 20_000_000
        labeler.add_odometry(t_ns, (6.0 * (t_ns - STAMP_NS) * 1e-9, 0.0, 0.0), (0, 0, 0, 1),
                             (6.0, 0.0, 0.0))
    return labeler


def _flat_scan(n_columns=720, rings=16):
    """A sweep over flat ground 1.6 m below the lidar, per column in time."""
    azimuth = np.linspace(-np.pi, np.pi, n_columns, endpoint=False)
    elevation = np.radians(np.linspace(-25.0, -5.0, rings))
    distance = 1.6 / np.tan(-elevation)
    x = (distance[:, None] * np.cos(azimuth)).ravel()
    y = (distance[:, None] * np.sin(azimuth)).ravel()
    z = np.full(x.shape, -1.6)
    times = np.broadcast_to(np.arange(n_columns) * 0.1 / n_columns, (rings, n_columns)).ravel()
    return np.column_stack([x, y, z]).astype(np.float32), times.astype(np.float32)


def test_a_scan_without_time_field_gives_what_deskew_off_gives():
    points, times = _flat_scan()
    plain = _labeler().add_scan(STAMP_NS, points)
    off = _labeler(deskew_stamp='none').add_scan(STAMP_NS, points, ('time', times))
    on = _labeler().add_scan(STAMP_NS, points, ('time', times))
    np.testing.assert_array_equal(plain.keys, off.keys)
    np.testing.assert_allclose(plain.features, off.features, rtol=1e-9, atol=1e-12)
    # With the times, the late half of the sweep moves ahead with the vehicle.
    assert not np.array_equal(plain.keys, on.keys)
    # Times that do not match the points: counted, and the scan is used as without them.
    labeler = _labeler()
    short = labeler.add_scan(STAMP_NS, points, ('time', times[:-1]))
    assert labeler.rejects == {'time_field_length': 1}
    np.testing.assert_array_equal(short.keys, plain.keys)


@pytest.mark.parametrize('stamp', ['start', 'end'])
def test_the_simulator_publishes_scans_as_drivers_do(stamp):
    """Per-point `time` read from the PointCloud2, in the convention of its stamp; the option
    without motion distortion casts the whole sweep from one pose."""
    from dataclasses import replace

    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import PointCloud2

    from terrain_ssl.ros.conversions import pointcloud2_point_times, pointcloud2_xyz_view
    from terrain_ssl.sim.world import World, WorldConfig

    clouds = {}
    for distorted in (True, False):
        world = World(replace(WorldConfig(), lidar_stamp=stamp,
                              lidar_motion_distortion=distorted), seed=4)
        messages = []
        for _ in range(3):
            messages += [m for m in world.step(0.1, 6.0) if m.topic == '/points']
        message = messages[-1]
        cloud = deserialize_message(message.cdr_bytes, PointCloud2)
        name, values = pointcloud2_point_times(cloud)
        offsets = point_offsets_s(name, values, message.stamp_ns)
        assert name == 'time' and detected_convention(offsets) == stamp
        assert offsets.max() - offsets.min() == pytest.approx(0.1, abs=0.002)
        clouds[distorted] = np.asarray(pointcloud2_xyz_view(cloud), dtype=np.float64)
    # Same sweep, same terrain: the columns fired late see the ground from further on.
    both = np.isfinite(clouds[True]).all(axis=1) & np.isfinite(clouds[False]).all(axis=1)
    assert np.abs(clouds[True][both] - clouds[False][both]).max() > 0.1
