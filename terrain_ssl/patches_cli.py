"""`terrain-ssl patches SCAN [SCAN...] --out DIR`: what the labeler would take as terrain.

For users calibrating on their own data: each scan (PCD, PLY, KITTI .bin, .npy) goes through
the labeler's own scan path (terrain_ssl.core.labeler.Labeler.add_scan: extrinsic, ground
segmentation, cell features) with base_link at the odom origin, and DIR/<scan name>/ receives

- cells.csv     one row per terrain cell: x, y, z (base_link, m), then the features
                (terrain_ssl.core.patches.FEATURE_NAMES)
- rejected.csv  one row per cell judged not ground: x, y, z, reason, height above the local
                ground (m), slope (rad), returns
- topdown.png   the returns, the terrain cells by height and the rejected cells by reason
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        'patches', help='show which cells of lidar scans the labeler takes as terrain',
        description='Run scans (PCD, PLY, KITTI .bin, .npy) through the labeler\'s scan path '
                    '(extrinsic, ground segmentation, cell features) and write per scan '
                    'cells.csv, rejected.csv and a top-down PNG to OUT/<scan name>/.')
    parser.add_argument('scans', nargs='+', metavar='SCAN', help='scan files')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--lidar-extrinsic', nargs=6, type=float,
                        metavar=('X', 'Y', 'Z', 'ROLL', 'PITCH', 'YAW'),
                        help='base_link -> lidar pose (m, rad); default: the labeler\'s')
    parser.add_argument('--ground-method', choices=('envelope', 'patchwork', 'none'),
                        default=None,
                        help='envelope, patchwork or none (default: the labeler\'s)')
    parser.set_defaults(func=run_patches_command)


def run_patches_command(args) -> int:
    from dataclasses import replace

    from terrain_ssl.core.labeler import LabelerConfig
    from terrain_ssl.core.scan_files import ScanFileError, read_scan

    config = LabelerConfig()
    if args.lidar_extrinsic:
        names = ('lidar_x', 'lidar_y', 'lidar_z', 'lidar_roll', 'lidar_pitch', 'lidar_yaw')
        config = replace(config, **dict(zip(names, args.lidar_extrinsic)))
    if args.ground_method:
        config = replace(config, ground_method=args.ground_method)
    problem = config.validate()
    if problem:
        print(f'error: {problem}', file=sys.stderr)
        return 2
    out = Path(args.out)
    failed = 0
    for scan in args.scans:
        try:
            points = read_scan(scan)
        except ScanFileError as error:
            print(f'error: {error}', file=sys.stderr)
            failed += 1
            continue
        folder = out / Path(scan).stem
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            print(f'error: cannot create {folder}: {error.strerror or error}', file=sys.stderr)
            return 1
        print(scan_summary(scan, points, config, folder))
    return 1 if failed else 0


def scan_patches(points: np.ndarray, config):
    """(terrain PatchSet in base_link, GroundRejects, labeler rejects) of one scan (N, 3) in
    the lidar frame, by the labeler's own add_scan, base_link at the odom origin."""
    from terrain_ssl.core.labeler import Labeler

    labeler = Labeler(config)
    labeler.add_odometry(0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0), (0.0, 0.0, 0.0))
    patches = labeler.add_scan(0, points)
    return patches, labeler.ground.last_rejects, dict(labeler.rejects)


def scan_summary(scan, points: np.ndarray, config, folder: Path) -> str:
    """Write cells.csv, rejected.csv and topdown.png for one scan; the line to print."""
    from terrain_ssl.core.ground import REJECT_REASONS
    from terrain_ssl.core.patches import FEATURE_NAMES

    patches, rejects, problems = scan_patches(points, config)
    if patches is None:
        return f'{scan}: no cells ({", ".join(problems) or "no usable points"})'
    np.savetxt(folder / 'cells.csv', np.column_stack([patches.centres, patches.features]),
               delimiter=',', header=','.join(('x', 'y', 'z') + FEATURE_NAMES), comments='',
               fmt='%.6g')
    with open(folder / 'rejected.csv', 'w') as stream:
        stream.write('x,y,z,reason,height_above_ground,slope,point_count\n')
        for centre, reason, height, slope, count in zip(
                rejects.centres, rejects.reasons, rejects.height_above_ground, rejects.slope,
                rejects.point_count):
            stream.write(f'{centre[0]:.6g},{centre[1]:.6g},{centre[2]:.6g},'
                         f'{REJECT_REASONS[reason]},{height:.4g},{slope:.4g},{count:.0f}\n')
    _plot_top_down(points, config, patches, rejects, folder / 'topdown.png', Path(scan).name)
    reasons = ', '.join(f'{name} {count}' for name, count in rejects.counts().items())
    return (f'{scan}: {points.shape[0]} points, {len(patches)} terrain cells, {len(rejects)} '
            f'rejected ({reasons or "none"}) -> {folder}/')


def _plot_top_down(points, config, patches, rejects, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from terrain_ssl.core.geometry import make_transform, quat_from_rpy
    from terrain_ssl.core.ground import REJECT_REASONS

    base_from_lidar = make_transform(
        [config.lidar_x, config.lidar_y, config.lidar_z],
        quat_from_rpy(config.lidar_roll, config.lidar_pitch, config.lidar_yaw))
    finite = points[np.isfinite(points).all(axis=1)]
    xyz = finite @ base_from_lidar[:3, :3].T + base_from_lidar[:3, 3]
    near = np.hypot(xyz[:, 0], xyz[:, 1]) <= config.patch_max_range * 1.2
    shown = xyz[near][::max(1, int(near.sum()) // 60000)]
    figure, axes = plt.subplots(figsize=(9, 8))
    axes.scatter(shown[:, 0], shown[:, 1], s=0.2, c='0.7', label='returns', rasterized=True)
    cells = axes.scatter(patches.centres[:, 0], patches.centres[:, 1], c=patches.centres[:, 2],
                         s=9, marker='s', cmap='viridis', label='terrain cells')
    figure.colorbar(cells, ax=axes, label='terrain cell height in base_link (m)')
    for index, (name, colour) in enumerate(zip(REJECT_REASONS, ('red', 'black', 'orange'))):
        mask = rejects.reasons == index
        if mask.any():
            axes.scatter(rejects.centres[mask, 0], rejects.centres[mask, 1], s=10, marker='x',
                         c=colour, label=f'not ground: {name}')
    limit = config.patch_max_range * 1.1
    axes.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect='equal', xlabel='x (m)',
             ylabel='y (m)', title=f'{title}: {len(patches)} terrain cells, {len(rejects)} '
                                   'rejected')
    axes.legend(loc='upper right', fontsize=8, markerscale=2)
    figure.savefig(path, dpi=100)
    plt.close(figure)
