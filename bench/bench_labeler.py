"""roughness_labeler speed per scan, and (optionally) label quality on a long simulated drive.

Speed: an Ouster-like 128 x 1024 organised cloud (131,072 points, point_step 48) of a lidar 1.6 m
above rough ground (downward beams hit the ground, upward beams hit obstacles 5-80 m away) goes
through what the node does per scan: PointCloud2 -> xyz, pose at the scan stamp, transform to odom,
ground cells, per-cell features, merge into the cell map, and the lookahead PointCloud2 out. The
vehicle moves 0.5 m between scans so the map merges and ages as on the road. Prints the median
and 90th percentile per stage, and points/s. Target: <= 25 ms per scan on one core.

Quality (--evaluate): simulates a drive at varying speed (default 120 s, 3-7 m/s), labels it with
the core labeler, and prints the Spearman rank correlation of labels against the true roughness
of each labeled cell (target >= 0.8), and of the shock alone (not speed-normalised).

    .venv/bin/python bench/bench_labeler.py [--repeats 60 | --quick] [--evaluate [--duration 120]]
"""

import os

os.environ.setdefault('OMP_NUM_THREADS', '1')  # one core, as the target says
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from terrain_ssl.core.labeler import Labeler  # noqa: E402
from terrain_ssl.ros.conversions import (array_to_pointcloud2,  # noqa: E402
                                         float_matrix_to_pointcloud2, pointcloud2_to_xyz)
from terrain_ssl.ros.labeler_node import LOOKAHEAD_FIELDS  # noqa: E402

S = 1_000_000_000
OUSTER_DTYPE = np.dtype({
    'names': ['x', 'y', 'z', 'intensity', 't', 'reflectivity', 'ring', 'ambient', 'range'],
    'formats': ['<f4', '<f4', '<f4', '<f4', '<u4', '<u2', '<u2', '<u2', '<u4'],
    'offsets': [0, 4, 8, 16, 20, 24, 26, 28, 32],
    'itemsize': 48,
})


def ouster_scan(seed=0, beams=128, columns=1024, height_m=1.6):
    """Organised cloud in the lidar frame: rough ground below the horizon, obstacles above."""
    rng = np.random.default_rng(seed)
    elevation = np.radians(np.linspace(-22.5, 22.5, beams))[:, None]
    azimuth = np.linspace(-np.pi, np.pi, columns, endpoint=False)[None, :]
    ground_range = np.where(elevation < -0.01, height_m / np.tan(-np.minimum(elevation, -0.01)),
                            np.inf)
    obstacle_range = rng.uniform(5.0, 80.0, (beams, columns))
    horizontal = np.minimum(ground_range, obstacle_range)
    horizontal = np.broadcast_to(horizontal, (beams, columns))
    x = horizontal * np.cos(azimuth)
    y = horizontal * np.sin(azimuth)
    z = np.where(ground_range <= obstacle_range,
                 -height_m + rng.normal(0.0, 0.03, (beams, columns)),
                 horizontal * np.tan(elevation))
    points = np.zeros(beams * columns, dtype=OUSTER_DTYPE)
    points['x'], points['y'], points['z'] = x.ravel(), y.ravel(), z.ravel()
    points['ring'] = np.repeat(np.arange(beams), columns)
    dropout = rng.random(points.shape[0]) < 0.02  # no-return markers
    for axis in 'xyz':
        points[axis][dropout] = np.nan
    return points, beams


def time_per_scan(repeats, beams=128, n_columns=1024, label=''):
    points, beams = ouster_scan(beams=beams, columns=n_columns)
    labeler = Labeler()
    stage_ms = {'convert': [], 'labeler.add_scan': [], 'lookahead cloud': [], 'total': []}
    n_points, n_patches = points.shape[0], []
    for index in range(repeats + 5):
        t_ns = 1_000 * S + index * S // 10
        x = 0.5 * index  # 5 m/s, 10 Hz
        labeler.add_odometry(t_ns - S // 50, [x - 0.1, 0, 0], [0, 0, 0, 1], [5.0, 0, 0])
        labeler.add_odometry(t_ns + S // 50, [x + 0.1, 0, 0], [0, 0, 0, 1], [5.0, 0, 0])
        msg = array_to_pointcloud2(points, 'lidar_link', t_ns, height=beams)
        start = time.perf_counter()
        xyz = pointcloud2_to_xyz(msg, skip_nans=False)
        converted = time.perf_counter()
        patches = labeler.add_scan(t_ns, xyz)
        labeled = time.perf_counter()
        float_matrix_to_pointcloud2(LOOKAHEAD_FIELDS, np.hstack([patches.centres,
                                                                 patches.features]), 'odom', t_ns)
        done = time.perf_counter()
        if index < 5:
            continue  # warm-up: the map fills during the first scans
        n_patches.append(len(patches))
        for name, seconds in (('convert', converted - start), ('labeler.add_scan',
                                                               labeled - converted),
                              ('lookahead cloud', done - labeled), ('total', done - start)):
            stage_ms[name].append(1e3 * seconds)
    print(f'per-scan processing{label}, {n_points} points ({beams} x {n_columns}, point_step '
          f'48), {statistics.median(n_patches):.0f} patches/scan, {len(labeler.cells)} cells in '
          f'map, median of {repeats}:')
    for name, values in stage_ms.items():
        print(f'  {name:18s} median {statistics.median(values):7.2f} ms   '
              f'p90 {np.percentile(values, 90):7.2f} ms')
    total = statistics.median(stage_ms['total'])
    print(f'  => {n_points / (total / 1e3) / 1e6:.1f} million points/s'
          + (f'; target <= 25 ms per scan: {"met" if total <= 25.0 else "NOT met"}'
             if beams == 128 and not label else ''))
    return xyz, total


def time_scans(repeats, beams=128, n_columns=1024):
    """time_per_scan, and its RESULT lines."""
    xyz, total_ms = time_per_scan(repeats, beams, n_columns)
    print(f'RESULT labeler_ms_per_scan_{beams}beams {total_ms:.2f} ms')
    print(f'RESULT labeler_points_per_s_{beams}beams {xyz.shape[0] / (total_ms / 1e3):.0f} '
          'points/s')


def evaluate(duration_s, speed, seed):
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader
    from scipy.stats import spearmanr
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import Imu, PointCloud2

    from terrain_ssl.ros.conversions import imu_to_arrays, odometry_to_arrays, stamp_to_ns
    from terrain_ssl.sim.bag import simulate_bag
    from terrain_ssl.sim.ground_truth import GroundTruth

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        bag = simulate_bag(os.path.join(tmp, 'drive'), duration_s=duration_s, seed=seed,
                           speed=speed)
        print(f'simulated {duration_s:.0f} s at {speed} m/s in '
              f'{time.perf_counter() - start:.0f} s')
        labeler = Labeler()
        batches = []
        types = {'/imu/data': Imu, '/odom': Odometry, '/points': PointCloud2}
        with Reader(bag) as reader:
            connections = [c for c in reader.connections if c.topic in types]
            for connection, _, raw in reader.messages(connections=connections):
                msg = deserialize_message(raw, types[connection.topic])
                if connection.topic == '/imu/data':
                    t_ns, accel, _, quat = imu_to_arrays(msg)
                    labeler.add_imu(t_ns, accel, quat)
                elif connection.topic == '/odom':
                    labeler.add_odometry(*odometry_to_arrays(msg))
                else:
                    labeler.add_scan(stamp_to_ns(msg.header.stamp),
                                     pointcloud2_to_xyz(msg, skip_nans=False))
                batch = labeler.pop_labels()
                if batch is not None:
                    batches.append(batch)
        truth = GroundTruth.load(bag)
    centres = np.concatenate([b.centres for b in batches])
    roughness = np.concatenate([b.roughness for b in batches])
    shock = np.concatenate([b.shock for b in batches])
    speed_mps = np.concatenate([b.speed for b in batches])
    true_roughness = truth.roughness_at(centres[:, :2])
    known = np.isfinite(true_roughness)
    rho = spearmanr(roughness[known], true_roughness[known]).statistic
    rho_shock = spearmanr(shock[known], true_roughness[known]).statistic
    print(f'{known.sum()} labels at {speed_mps.min():.1f}-{speed_mps.max():.1f} m/s; '
          f'rejects {labeler.rejects}')
    print(f'Spearman(label, true cell roughness) = {rho:.3f} (target >= 0.8); '
          f'shock alone: {rho_shock:.3f}')
    classes = truth.iso_class_at(centres[:, :2])
    for index, name in enumerate('ABCDEF'):
        mask = classes == index
        if mask.any():
            print(f'  ISO class {name}: {mask.sum():5d} labels, median roughness '
                  f'{np.median(roughness[mask]):.3f} (m/s^2)/(m/s)')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=60)
    parser.add_argument('--quick', action='store_true', help='fewer repeats')
    parser.add_argument('--evaluate', action='store_true', help='label quality on a sim drive')
    parser.add_argument('--duration', type=float, default=120.0, help='evaluation drive (s)')
    parser.add_argument('--speed', default='3:7', help='evaluation speed profile (m/s)')
    parser.add_argument('--seed', type=int, default=1)
    args = parser.parse_args()
    repeats = 15 if args.quick else args.repeats
    # 16 beams (VLP-16: 16 x 1800), 64 and 128 beams (Ouster: x 1024 columns).
    time_scans(repeats, beams=16, n_columns=1800)
    time_scans(repeats, beams=64)
    time_scans(repeats, beams=128)
    if args.evaluate:
        evaluate(args.duration, args.speed, args.seed)


if __name__ == '__main__':
    main()
