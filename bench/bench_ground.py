"""Ground segmentation and deskew (issue 18): ms per scan, quality on real scans, and the
prediction quality of a simulated drive with motion distortion.

1. Speed: the real Ouster OS-1-128 sweep of ../shared/realdata (128 x 1024, per-point `t`)
   through the labeler's scan path (Labeler.add_scan: transform, segmentation, cell features,
   cell map), the vehicle at 6 m/s: today's path (no segmentation, no deskew) against
   segmentation, deskew, both, and Patchwork++ (when pypatchworkpp is installed). Median and
   fastest of interleaved repeats, so that the host's load hits every variant alike; ratios to
   today's.
2. Quality on the real scans (same measure as test/test_ground.py): share of terrain cells
   more than 0.5 m above the local ground, and share of today's road cells kept.
3. Deskew (--drive): one simulated drive at ~6 m/s, twice: scans without motion distortion
   (the whole sweep from one pose), and as drivers publish them (each column at its firing
   time, per-point `time`). Replayed through the three nodes: the distorted one with deskew
   off and on. Spearman of predictions vs the true roughness.

    PYTHONPATH=. .venv/bin/python bench/bench_ground.py [--quick] [--drive] [--write]
"""

import os

os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'test'))

from test_ground import (GroundConfig, ground_quality, ouster_first_sweep,  # noqa: E402
                         real_scans, realdata)

from terrain_ssl.core.ground import patchwork_available  # noqa: E402
from terrain_ssl.core.labeler import Labeler, LabelerConfig  # noqa: E402

S = 1_000_000_000
RESULTS = Path(__file__).resolve().parent / 'results' / 'bench_ground.md'


def ouster_sweep():
    """(points (N, 3) float32 with NaN no-returns, `t` (N,) uint32 ns) of the real sweep."""
    return ouster_first_sweep(realdata() / 'ouster_os1_128' / 'lb_n3_poses_mcap')


def time_variants(repeats: int) -> dict:
    points, times = ouster_sweep()
    variants = {'today (no segmentation, no deskew)': ('none', False),
                'segmentation': ('envelope', False),
                'deskew': ('none', True),
                'segmentation + deskew': ('envelope', True)}
    if patchwork_available():
        variants['patchwork + deskew'] = ('patchwork', True)
    labelers = {}
    for name, (method, _) in variants.items():
        labeler = Labeler(LabelerConfig(ground_method=method, lidar_z=1.8))
        labelers[name] = labeler
    samples = {name: [] for name in variants}
    for index in range(repeats + 3):
        t_ns = 1_000 * S + index * S // 10
        for name, (_, deskew) in variants.items():
            labeler = labelers[name]
            x = 0.6 * index  # 6 m/s, 10 Hz
            for dt in (-0.02, 0.0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.12):
                labeler.add_odometry(t_ns + int(dt * S), [x + 6.0 * dt, 0, 0], [0, 0, 0, 1],
                                     [6.0, 0, 0])
            start = time.perf_counter()
            labeler.add_scan(t_ns, points, ('t', times) if deskew else None)
            if index >= 3:
                samples[name].append(1e3 * (time.perf_counter() - start))
    return {name: (float(np.median(values)), float(np.min(values)))
            for name, values in samples.items()}


def quality() -> list:
    rows = []
    for name, xyz in real_scans().items():
        before = ground_quality(xyz, GroundConfig(method='none'))
        after = ground_quality(xyz, GroundConfig())
        row = [name, before[0], after[0], after[1], before[2], after[2]]
        if patchwork_available():
            height = 1.9 if name.endswith('.pcd') else 1.8
            patchwork = ground_quality(xyz, GroundConfig(method='patchwork',
                                                         sensor_height_m=height))
            row += [patchwork[0], patchwork[1]]
        rows.append(row)
    return rows


def drive(duration_s: float, seed: int) -> dict:
    from terrain_ssl.replay.report import write_report
    from terrain_ssl.replay.runner import ReplayOptions, run_replay
    from terrain_ssl.ros.bringup import default_config_path
    from terrain_ssl.sim.bag import simulate_bag
    from terrain_ssl.sim.world import WorldConfig

    results = {}
    with tempfile.TemporaryDirectory(prefix='bench_ground_') as tmp:
        bags = {}
        for name, distorted in (('undistorted', False), ('distorted', True)):
            config = replace(WorldConfig(), lidar_motion_distortion=distorted)
            bags[name] = simulate_bag(Path(tmp) / name, duration_s=duration_s, seed=seed,
                                      storage='mcap', speed='5.5:6.5', world_config=config)
        for label, bag, parameters in (
                ('undistorted scans', 'undistorted', []),
                ('distorted scans, deskew off', 'distorted', ['deskew.stamp:=none']),
                ('distorted scans, deskew on', 'distorted', [])):
            record = run_replay(ReplayOptions(bag=str(bags[bag]), config=default_config_path(),
                                              parameters=parameters, progress=False))
            report = write_report(record, Path(tmp) / f'report_{len(results)}')
            truth = report['ground_truth']
            results[label] = (truth['spearman_prediction_vs_truth'],
                              truth['spearman_prediction_vs_truth_second_half'],
                              report['labels'])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='fewer repeats, 60 s drive')
    parser.add_argument('--drive', action='store_true', help='also the simulated drive (3)')
    parser.add_argument('--seed', type=int, default=3, help='terrain seed of the drive')
    parser.add_argument('--write', action='store_true', help=f'write {RESULTS.name}')
    args = parser.parse_args()
    lines = ['# bench_ground', '', f'`{" ".join(sys.argv)}`', '']

    timings = time_variants(10 if args.quick else 40)
    base, base_min = timings['today (no segmentation, no deskew)']
    lines += ['## Labeler.add_scan, real OS-1-128 sweep (131,072 points, 107,647 returns)', '',
              '| variant | ms per scan, median | x today | fastest | x today |',
              '|---|---|---|---|---|']
    for name, (ms, fastest) in timings.items():
        lines.append(f'| {name} | {ms:.1f} | {ms / base:.2f} | {fastest:.1f} | '
                     f'{fastest / base_min:.2f} |')
    lines += ['', '## Real scans: terrain cells > 0.5 m above the local ground; road kept', '',
              '| scan | above, today | above, envelope | road kept | cells today | cells |'
              + (' above, Patchwork++ | road kept, Patchwork++ |' if patchwork_available()
                 else ''),
              '|---|---|---|---|---|---|' + ('---|---|' if patchwork_available() else '')]
    for row in quality():
        lines.append(f'| {row[0]} | {100 * row[1]:.2f}% | {100 * row[2]:.2f}% | '
                     f'{100 * row[3]:.1f}% | {row[4]} | {row[5]} |'
                     + (f' {100 * row[6]:.2f}% | {100 * row[7]:.1f}% |' if len(row) > 6
                        else ''))
    if args.drive:
        duration = 60.0 if args.quick else 120.0
        results = drive(duration, args.seed)
        lines += ['', f'## Simulated drive, {duration:.0f} s at 5.5-6.5 m/s (seed {args.seed}), '
                  'Spearman of predictions vs true roughness', '',
                  '| scans | all | second half | labels |', '|---|---|---|---|']
        for name, (rho, rho_half, labels) in results.items():
            lines.append(f'| {name} | {rho:.3f} | {rho_half:.3f} | {labels} |')
        gap = results['undistorted scans'][0] - results['distorted scans, deskew on'][0]
        lines += ['', f'RESULT ground_deskew_spearman_gap {gap:.3f} rho']
    lines += ['', f"RESULT ground_ms_per_scan_today {base:.1f} ms",
              f"RESULT ground_ms_per_scan_segmentation_deskew "
              f"{timings['segmentation + deskew'][0]:.1f} ms"]
    text = '\n'.join(lines) + '\n'
    print(text)
    if args.write:
        RESULTS.write_text(text)


if __name__ == '__main__':
    main()
