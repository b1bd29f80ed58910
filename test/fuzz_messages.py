"""Bad (and good) messages for the reliability tests: what real robots and real bags send.

Every generator returns real rclpy messages. `bad_clouds(rng)` yields (name, PointCloud2) pairs
that a node must reject or survive: random and truncated bytes, wrong field layouts, NaN/Inf,
empty and organised-empty clouds. `drive_messages()` is a plausible straight drive (IMU 200 Hz,
odometry 50 Hz, lidar 10 Hz over flat ground with a few bumps) used as the normal background,
the bag loop and the 10x burst.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
from nav_msgs.msg import Odometry
from sensor_msgs.msg import Imu, PointCloud2, PointField

from terrain_ssl.ros.conversions import ns_to_stamp, xyz_fields_to_pointcloud2

S = 1_000_000_000
T0_NS = 1_700_000_000 * S
G = 9.81

IMU_HZ, ODOM_HZ, SCAN_HZ = 200, 50, 10
LIDAR_HEIGHT_M = 1.6  # default base_link -> lidar_link z
LIDAR_X_M = 0.3


# -- well-formed messages ----------------------------------------------------------------------

def imu_msg(t_ns: int, accel=(0.0, 0.0, G), quat=(0.0, 0.0, 0.0, 1.0)) -> Imu:
    msg = Imu()
    msg.header.stamp = ns_to_stamp(t_ns)
    msg.header.frame_id = 'imu_link'
    a = msg.linear_acceleration
    a.x, a.y, a.z = (float(v) for v in accel)
    if quat is None:
        msg.orientation_covariance[0] = -1.0
    else:
        o = msg.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in quat)
    return msg


def odom_msg(t_ns: int, position=(0.0, 0.0, 0.0), quat=(0.0, 0.0, 0.0, 1.0),
             velocity=(0.0, 0.0, 0.0), frame_id='odom') -> Odometry:
    msg = Odometry()
    msg.header.stamp = ns_to_stamp(t_ns)
    msg.header.frame_id = frame_id
    msg.child_frame_id = 'base_link'
    p = msg.pose.pose.position
    p.x, p.y, p.z = (float(v) for v in position)
    o = msg.pose.pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in quat)
    v = msg.twist.twist.linear
    v.x, v.y, v.z = (float(value) for value in velocity)
    return msg


def xyz_cloud(points: np.ndarray, t_ns: int = T0_NS, frame_id='lidar_link') -> PointCloud2:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return xyz_fields_to_pointcloud2({'x': points[:, 0], 'y': points[:, 1], 'z': points[:, 2]},
                                     frame_id, t_ns)


def ground_points(rng, n: int, vehicle_x_m: float = 0.0) -> np.ndarray:
    """(n, 3) ground returns ahead of a vehicle at x = vehicle_x_m, in the lidar frame (m)."""
    ahead = rng.uniform(2.5, 20.0, n)
    across = rng.uniform(-4.0, 4.0, n)
    world_x = vehicle_x_m + LIDAR_X_M + ahead
    height = terrain_height(world_x) + rng.normal(0.0, 0.003, n)
    return np.column_stack([ahead, across, height - LIDAR_HEIGHT_M])


def terrain_height(x_m: np.ndarray) -> np.ndarray:
    """Flat ground with a rough stretch every 20 m (m)."""
    x_m = np.asarray(x_m, dtype=np.float64)
    rough = (np.mod(x_m, 20.0) > 12.0)
    return np.where(rough, 0.04 * np.sin(7.0 * x_m) + 0.03 * np.sin(13.0 * x_m), 0.0)


def drive_messages(duration_s: float = 8.0, speed_mps: float = 4.0, t0_ns: int = T0_NS,
                   points_per_scan: int = 4000, seed: int = 0, rate_scale: float = 1.0) -> list:
    """Time-ordered (topic, message) of a straight drive along +x: imu/data, odom, points.

    `rate_scale` multiplies every sensor rate (10 = a 10x burst of the same drive)."""
    rng = np.random.default_rng(seed)
    events = []
    quat = (0.0, 0.0, 0.0, 1.0)
    for t in np.arange(0.0, duration_s, 1.0 / (IMU_HZ * rate_scale)):
        x = speed_mps * t
        bump = speed_mps ** 2 * (terrain_height(x + 0.01) - 2 * terrain_height(x)
                                 + terrain_height(x - 0.01)) / 1e-4
        accel = (0.0, 0.0, G + 0.3 * np.clip(bump, -50, 50) + rng.normal(0, 0.05))
        events.append((t0_ns + int(t * S), 1, 'imu/data', imu_msg(t0_ns + int(t * S), accel,
                                                                  quat)))
    for t in np.arange(0.0, duration_s, 1.0 / (ODOM_HZ * rate_scale)):
        stamp = t0_ns + int(t * S)
        events.append((stamp, 0, 'odom', odom_msg(stamp, (speed_mps * t, 0.0, 0.0), quat,
                                                  (speed_mps, 0.0, 0.0))))
    for t in np.arange(0.05, duration_s, 1.0 / (SCAN_HZ * rate_scale)):
        stamp = t0_ns + int(t * S)
        events.append((stamp, 2, 'points',
                       xyz_cloud(ground_points(rng, points_per_scan, speed_mps * t), stamp)))
    events.sort(key=lambda event: (event[0], event[1]))
    return [(topic, msg) for _, _, topic, msg in events]


# -- bad point clouds --------------------------------------------------------------------------

def _field(name, offset, datatype=PointField.FLOAT32, count=1) -> PointField:
    return PointField(name=name, offset=offset, datatype=datatype, count=count)


def raw_cloud(fields, point_step, width, data: bytes, height=1, row_step=None,
              t_ns: int = T0_NS, is_bigendian=False) -> PointCloud2:
    msg = PointCloud2()
    msg.header.stamp = ns_to_stamp(t_ns)
    msg.header.frame_id = 'lidar_link'
    msg.height, msg.width = height, width
    msg.fields = list(fields)
    msg.point_step = point_step
    msg.row_step = point_step * width if row_step is None else row_step
    msg.is_bigendian = is_bigendian
    msg.is_dense = False
    msg.data = bytes(data)
    return msg


XYZ = [_field('x', 0), _field('y', 4), _field('z', 8)]


def bad_clouds(rng, t_ns: int = T0_NS, extra_fields=()) -> list:
    """(name, PointCloud2) with broken layouts or data. `extra_fields` (names) are added as
    float32 after x, y, z so patch-cloud consumers see their fields present where it matters."""
    names = ['x', 'y', 'z'] + list(extra_fields)
    fields = [_field(name, 4 * index) for index, name in enumerate(names)]
    step = 4 * len(names)
    n = 64
    good = rng.normal(size=(n, len(names))).astype('<f4').tobytes()
    out = [
        ('random_bytes', raw_cloud(fields, step, n, rng.bytes(step * n), t_ns=t_ns)),
        ('truncated', raw_cloud(fields, step, n, good[: step * n // 2 + 3], t_ns=t_ns)),
        ('too_long', raw_cloud(fields, step, n, good + b'\0' * 7, t_ns=t_ns)),
        ('no_data_claims_points', raw_cloud(fields, step, 1000, b'', t_ns=t_ns)),
        ('missing_z', raw_cloud(fields[:2], 8, n, good[: 8 * n], t_ns=t_ns)),
        ('no_fields', raw_cloud([], step, n, good, t_ns=t_ns)),
        ('unknown_datatype', raw_cloud([_field(f.name, f.offset, datatype=0) for f in fields],
                                       step, n, good, t_ns=t_ns)),
        ('datatype_9', raw_cloud([_field(f.name, f.offset, datatype=9) for f in fields],
                                 step, n, good, t_ns=t_ns)),
        ('x_count_3', raw_cloud([_field('x', 0, count=3)] + fields[1:], step, n, good,
                                t_ns=t_ns)),
        ('field_past_point_step', raw_cloud(fields[:-1] + [_field(names[-1], step)], step, n,
                                            good, t_ns=t_ns)),
        ('float64_past_point_step', raw_cloud(
            [_field(f.name, f.offset, PointField.FLOAT64) for f in fields], step, n, good,
            t_ns=t_ns)),
        ('point_step_zero', raw_cloud(fields, 0, n, good, t_ns=t_ns)),
        ('row_step_too_small', raw_cloud(fields, step, n, good, row_step=step, t_ns=t_ns)),
        ('duplicate_field', raw_cloud(fields + [_field('x', 0)], step, n, good, t_ns=t_ns)),
        # row_step is uint32: claim as much as it can carry, with a few bytes of data.
        ('huge_width_tiny_data', raw_cloud(fields, step, (2**32 - 1) // step, good,
                                           t_ns=t_ns)),
        ('huge_height_and_width', raw_cloud(fields, step, 2**20, good, height=2**31,
                                            t_ns=t_ns)),
    ]
    return out


def odd_but_valid_clouds(rng, t_ns: int = T0_NS) -> list:
    """(name, PointCloud2) that parse but carry nothing usable or strange values."""
    n = 500
    nan = np.full((n, 3), np.nan)
    inf = np.full((n, 3), np.inf)
    mixed = rng.normal(0, 5, (n, 3))
    mixed[::2] = np.nan
    mixed[1::4] = -np.inf
    return [
        ('empty', xyz_cloud(np.zeros((0, 3)), t_ns)),
        ('organised_empty', raw_cloud(XYZ, 12, 0, b'', height=16, t_ns=t_ns)),
        ('all_nan', xyz_cloud(nan, t_ns)),
        ('all_inf', xyz_cloud(inf, t_ns)),
        ('half_nan_inf', xyz_cloud(mixed, t_ns)),
        ('huge_values', xyz_cloud(rng.uniform(-3e38, 3e38, (n, 3)), t_ns)),
        ('x_as_uint8', raw_cloud([_field('x', 0, PointField.UINT8), _field('y', 4),
                                  _field('z', 8)], 12, n,
                                 rng.normal(size=(n, 3)).astype('<f4').tobytes(), t_ns=t_ns)),
        ('big_endian', raw_cloud(XYZ, 12, n, rng.normal(size=(n, 3)).astype('>f4').tobytes(),
                                 t_ns=t_ns, is_bigendian=True)),
    ]


def huge_cloud(n_points: int = 500_000, t_ns: int = T0_NS, seed: int = 0) -> PointCloud2:
    """A huge scan of ground points ahead (lidar frame)."""
    return xyz_cloud(ground_points(np.random.default_rng(seed), n_points), t_ns)


# -- patch clouds (labeler -> learner) and maps (learner -> advisor) ---------------------------

def patch_cloud(rng, n: int, feature_names, t_ns: int = T0_NS, labeled: bool = False,
                frame_id='odom') -> PointCloud2:
    columns = {'x': rng.uniform(0, 20, n), 'y': rng.uniform(-5, 5, n), 'z': np.zeros(n)}
    for name in feature_names:
        columns[name] = rng.lognormal(-3, 0.5, n)
    if labeled:
        columns['roughness'] = 5.0 * columns[feature_names[0]] + rng.lognormal(-3, 0.3, n)
        columns['roughness_class'] = np.zeros(n)
        columns['speed'] = np.full(n, 4.0)
    return xyz_fields_to_pointcloud2(columns, frame_id, t_ns)


def poison(cloud: PointCloud2, field: str, value: float, every: int = 2) -> PointCloud2:
    """A copy of an all-float32 cloud with `field` set to `value` on every `every`-th point."""
    from terrain_ssl.ros.conversions import array_to_pointcloud2, pointcloud2_to_array, stamp_to_ns

    points = pointcloud2_to_array(cloud).copy()
    points[field][::every] = value
    return array_to_pointcloud2(points, cloud.header.frame_id, stamp_to_ns(cloud.header.stamp))


def map_cloud(rng, n: int, t_ns: int = T0_NS, frame_id='odom', roughness=None) -> PointCloud2:
    columns = {'x': rng.uniform(0, 30, n), 'y': rng.uniform(-5, 5, n), 'z': np.zeros(n),
               'roughness': rng.uniform(0.05, 0.5, n) if roughness is None
               else np.full(n, roughness),
               'uncertainty': rng.uniform(0.0, 0.1, n)}
    return xyz_fields_to_pointcloud2(columns, frame_id, t_ns)


# -- driving node callbacks directly -----------------------------------------------------------

def callbacks_by_topic(node) -> dict:
    """Relative topic name ('points', 'terrain_ssl/roughness_map', ...) -> subscription
    callback."""
    return {sub.topic_name.lstrip('/'): sub.callback for sub in node.subscriptions}


def diagnostic_values(node) -> dict:
    """Publish the node's diagnostics now; return (level, message, {key: value str})."""
    node.diagnostics.publish_now()
    status = node.diagnostics.last
    return status.level[0], status.message, {kv.key: kv.value for kv in status.values}


@contextlib.contextmanager
def spinning(executor):
    """Spin `executor` in a background thread for the duration of the block; yields the list of
    exceptions its callbacks raised (a node callback that raises must fail the test)."""
    errors: list = []
    stop = threading.Event()

    def spin():
        try:
            while not stop.is_set():
                executor.spin_once(timeout_sec=0.01)
        except Exception as error:
            errors.append(error)
    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        yield errors
    finally:
        stop.set()
        spinner.join(10.0)
