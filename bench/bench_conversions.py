"""PointCloud2 <-> numpy conversion speed on an Ouster-like 128 x 1024 organised cloud.

Prints points/s (median of repeated runs) for cloud -> xyz, cloud -> structured array and
structured array -> cloud, and the ratio against the naive per-point baseline (struct.unpack on
every point, the way sensor_msgs_py.read_points iterates) measured in the same run.
Target: >= 20 million points/s both ways on one core.

    .venv/bin/python bench/bench_conversions.py
"""

import platform
import statistics
import struct
import time

import numpy as np

from terrain_ssl.ros.conversions import (array_to_pointcloud2, pointcloud2_to_array,
                                         pointcloud2_to_xyz)

# Ouster OS-1/OS-2 point layout: 48 bytes per point with padding between fields.
OUSTER_DTYPE = np.dtype({
    'names': ['x', 'y', 'z', 'intensity', 't', 'reflectivity', 'ring', 'ambient', 'range'],
    'formats': ['<f4', '<f4', '<f4', '<f4', '<u4', '<u2', '<u2', '<u2', '<u4'],
    'offsets': [0, 4, 8, 16, 20, 24, 26, 28, 32],
    'itemsize': 48,
})


def median_seconds(function, repeats=30):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    rng = np.random.default_rng(0)
    n = 128 * 1024
    points = np.zeros(n, dtype=OUSTER_DTYPE)
    for axis in 'xyz':
        points[axis] = rng.normal(scale=20.0, size=n)
    points['x'][rng.random(n) < 0.1] = np.nan  # no returns
    points['ring'] = np.repeat(np.arange(128), 1024)
    msg = array_to_pointcloud2(points, 'os_lidar', 0, height=128)

    to_xyz = median_seconds(lambda: pointcloud2_to_xyz(msg))
    to_array = median_seconds(lambda: pointcloud2_to_array(msg)['z'].sum())
    from_array = median_seconds(lambda: array_to_pointcloud2(points, 'os_lidar', 0, height=128))

    data = bytes(msg.data)
    unpack = struct.Struct('<fff').unpack_from
    sample = 8192  # the per-point baseline is slow: time a slice and scale

    def per_point():
        return [unpack(data, i * 48) for i in range(sample)]
    baseline = median_seconds(per_point, repeats=5) * n / sample

    print(f'machine: {platform.machine()} {platform.processor() or ""} '
          f'python {platform.python_version()} numpy {np.__version__}')
    print(f'cloud: {n} points, point_step 48, organised 128 x 1024')
    rows = [('PointCloud2 -> xyz (N,3) f64, NaN dropped', to_xyz),
            ('PointCloud2 -> structured view + field', to_array),
            ('structured -> PointCloud2', from_array),
            ('baseline: per-point struct.unpack -> xyz', baseline)]
    for label, seconds in rows:
        print(f'{label:45s} {seconds * 1e3:8.2f} ms  {n / seconds / 1e6:9.1f} M points/s'
              f'  x{baseline / seconds:7.1f} vs baseline')
    print(f'RESULT conversions_pointcloud2_to_xyz {n / to_xyz:.0f} points/s')
    print(f'RESULT conversions_array_to_pointcloud2 {n / from_array:.0f} points/s')


if __name__ == '__main__':
    main()
