"""`terrain-ssl demo`: the README's main command.

Simulates an off-road drive over terrain of known roughness (ISO 8608 classes A-F, bumps,
potholes, rocks) at varying speed, replays it through the three real nodes learning live from a
cold start, and writes the evaluation report (metrics.json, labels.csv, plots, report.md).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        'demo', help='simulate a drive, learn on it live, write a report',
        description='Simulate an off-road drive, replay it through roughness_labeler, '
                    'roughness_learner and speed_advisor (cold start, learning live), and write '
                    'a report to OUT.')
    parser.add_argument('--out', default='demo_out', help='output folder (default: demo_out)')
    parser.add_argument('--quick', action='store_true',
                        help='a short drive, for CI and a first look (< 1 minute)')
    parser.add_argument('--duration', type=float, default=None,
                        help='simulated drive length in s (default 240, quick 45)')
    parser.add_argument('--seed', type=int, default=7, help='terrain and noise seed')
    parser.add_argument('--speed', default='3:7',
                        help='speed in m/s, or LOW:HIGH for a smoothly varying speed')
    parser.add_argument('--storage', choices=('sqlite3', 'mcap'), default='mcap')
    parser.set_defaults(func=run)


def run(args) -> int:
    from terrain_ssl.replay.report import prepare_output_folder, summary_lines, write_report
    from terrain_ssl.replay.options import ReplayOptions, default_processes
    from terrain_ssl.replay.runner import run_replay
    from terrain_ssl.ros.bringup import default_config_path
    from terrain_ssl.sim.bag import simulate_bag

    out = Path(args.out)
    duration = args.duration or (45.0 if args.quick else 240.0)
    bag_dir = out / 'drive_bag'
    problem = prepare_output_folder(out)
    if problem:
        print(f'error: {problem}', file=sys.stderr)
        return 1
    if bag_dir.exists():
        shutil.rmtree(bag_dir)

    print(f'1/2 simulating a {duration:.0f} s off-road drive (seed {args.seed}, speed '
          f'{args.speed} m/s, 16-beam lidar) -> {bag_dir}', flush=True)
    start = time.perf_counter()
    simulate_bag(bag_dir, duration_s=duration, seed=args.seed, storage=args.storage,
                 lidar='vlp16', speed=args.speed, progress=_sim_progress(duration))
    print(f'    done in {time.perf_counter() - start:.1f} s', file=sys.stderr, flush=True)

    print('2/2 replaying it through roughness_labeler -> roughness_learner -> speed_advisor '
          '(cold start, predict then learn)', flush=True)
    record = run_replay(ReplayOptions(bag=str(bag_dir), config=default_config_path(),
                                      model_out=str(out / 'model.npz'),
                                      processes=default_processes()))
    metrics = write_report(record, out)
    print('\n'.join(summary_lines(metrics, record.timing)))
    print(f'\nreport: {(out / "report.md").resolve()}')
    return 0


def _sim_progress(duration_s: float):
    last = [0.0]

    def report(simulated_s, _duration_s, wall_s):
        if wall_s - last[0] < 0.5 and simulated_s < duration_s:
            return  # redraw twice a second, not once per simulated chunk
        last[0] = wall_s
        done = int(30 * min(simulated_s / duration_s, 1.0))
        print(f'\r    [{"#" * done}{"." * (30 - done)}] {simulated_s:6.1f}/{duration_s:.0f} s',
              end='', file=sys.stderr, flush=True)
        if simulated_s >= duration_s:
            print(file=sys.stderr)
    return report
