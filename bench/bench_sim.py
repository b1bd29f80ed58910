"""Benchmark: simulate a 120 s drive with the VLP-16 preset and write it as a rosbag2.

Target: <= 60 s wall on the 2-core development machine, i.e. simulated / wall >= 2.

    PYTHONPATH=. .venv/bin/python bench/bench_sim.py [--duration 120] [--storage sqlite3|mcap]
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from terrain_ssl.sim.bag import write_bag
from terrain_ssl.sim.world import World, WorldConfig


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--duration', type=float, default=120.0, help='simulated time, s')
    parser.add_argument('--storage', choices=('sqlite3', 'mcap'), default='sqlite3')
    parser.add_argument('--lidar', choices=('vlp16', 'os128'), default='vlp16')
    parser.add_argument('--speed', default='3:7')
    parser.add_argument('--keep', help='write the bag here instead of a deleted temp dir')
    parser.add_argument('--quick', action='store_true', help='a 30 s drive instead of 120 s')
    args = parser.parse_args()
    if args.quick:
        args.duration = 30.0

    tmp = None
    if args.keep:
        out = Path(args.keep)
    else:
        tmp = tempfile.mkdtemp(prefix='bench_sim_')
        out = Path(tmp) / 'bag'
    try:
        wall_start = time.perf_counter()
        world = World(WorldConfig(lidar=args.lidar), seed=0)
        build_s = time.perf_counter() - wall_start
        drive_start = time.perf_counter()
        write_bag(world, out, args.duration, args.speed, storage=args.storage)
        drive_s = time.perf_counter() - drive_start
        total_s = time.perf_counter() - wall_start
        size_mb = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f'simulated {args.duration:.1f} s, lidar {args.lidar}, storage {args.storage}, '
          f'speed {args.speed} m/s, bag {size_mb:.0f} MB')
    print(f'terrain + world build: {build_s:6.2f} s wall')
    verdict = 'PASS' if total_s <= 60.0 else 'FAIL'
    print(f'drive + bag writing:   {drive_s:6.2f} s wall  '
          f'(simulated/wall {args.duration / drive_s:.2f})')
    print(f'total:                 {total_s:6.2f} s wall  '
          f'(simulated/wall {args.duration / total_s:.2f})  target <= 60 s: {verdict}')
    print(f'RESULT sim_{args.duration:.0f}s_{args.lidar}_wall {total_s:.1f} s')
    print(f'RESULT sim_realtime_factor {args.duration / total_s:.2f} x')


if __name__ == '__main__':
    main()
