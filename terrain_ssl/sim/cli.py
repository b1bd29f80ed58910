"""`terrain-ssl simulate`: write a simulated off-road drive as a rosbag2 with ground truth."""

import argparse
import sys

from terrain_ssl.sim.bag import STORAGES, SpeedProfile, simulate_bag
from terrain_ssl.sim.lidar import PRESETS
from terrain_ssl.sim.world import IMU_MOUNTS


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `simulate` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        'simulate', help='simulate a drive over rough terrain and write a rosbag2',
        description='Simulate a vehicle driving a loop of ISO 8608 class A..F terrain; write '
                    'IMU, lidar, odometry and /tf_static to a rosbag2 directory, with '
                    'ground_truth.npz/.json beside the bag.')
    parser.add_argument('out_dir', help='new rosbag2 directory to create')
    parser.add_argument('--duration', type=float, default=30.0, help='simulated time, s')
    parser.add_argument('--seed', type=int, default=0, help='random seed (terrain, noise)')
    parser.add_argument('--storage', choices=sorted(STORAGES), default='sqlite3')
    parser.add_argument('--lidar', choices=sorted(PRESETS) + ['none'], default='vlp16')
    parser.add_argument('--speed', default='3:7',
                        help='m/s: constant V, or LOW:HIGH[:PERIOD_S] varying smoothly')
    parser.add_argument('--imu-mount', choices=sorted(IMU_MOUNTS), default='z_up',
                        help='which IMU axis points up')
    parser.add_argument('--start-s', type=float, default=0.0,
                        help='start position as arc length along the route, m')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace OUT_DIR if it already holds a bag')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.set_defaults(func=run)
    return parser


class _ProgressBar:
    """Redraws a one-line bar on stderr at most every `interval_s` of wall time."""

    def __init__(self, interval_s=0.25):
        self.interval_s = interval_s
        self.last_wall_s = -1e9

    def __call__(self, simulated_s, duration_s, wall_s):
        if wall_s - self.last_wall_s >= self.interval_s or simulated_s >= duration_s:
            self.last_wall_s = wall_s
            _draw_progress(simulated_s, duration_s, wall_s)


def _draw_progress(simulated_s, duration_s, wall_s, width=30):
    done = min(simulated_s / duration_s, 1.0)
    filled = int(round(width * done))
    ratio = simulated_s / wall_s if wall_s > 0 else float('inf')
    sys.stderr.write(f'\r[{"#" * filled}{"." * (width - filled)}] {simulated_s:6.1f}/'
                     f'{duration_s:.1f} s sim  {wall_s:5.1f} s wall  x{ratio:.1f}')
    sys.stderr.flush()


def run(args) -> int:
    try:
        speed = SpeedProfile.parse(args.speed)
        path = simulate_bag(args.out_dir, duration_s=args.duration, seed=args.seed,
                            storage=args.storage,
                            lidar=None if args.lidar == 'none' else args.lidar,
                            speed=speed, imu_mount=args.imu_mount, start_s_m=args.start_s,
                            overwrite=args.overwrite,
                            progress=None if args.quiet else _ProgressBar())
    except (ValueError, FileExistsError) as error:
        sys.stderr.write(f'\nterrain-ssl simulate: error: {error}\n')
        return 2
    if not args.quiet:
        sys.stderr.write('\n')
    print(path)
    return 0
