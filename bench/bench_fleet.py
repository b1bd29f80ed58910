"""Fleet evaluation on Ray: 4 simulated 60 s bags with 1 and 2 workers on this machine.

Prints and writes to bench/results/bench_fleet.md:
- the speed-up of 2 workers over 1 (the bags' replay, from the first task submitted to the last
  result; Ray's own start-up is timed apart), target >= 1.7x on an otherwise idle 2-core host;
- the per-bag fixed cost: `terrain-ssl replay` as a command (imports, start-up, report) against
  its message loop, and in a Ray worker, where the first bag pays the imports and the next ones
  only the report (the worker keeps the package loaded);
- the peak resident memory of a worker;
- a projection of bag-hours replayed per hour on 10 and 100 such nodes, with its assumptions.

    PYTHONPATH=. .venv/bin/python bench/bench_fleet.py [--quick] [--bags-dir DIR]

--quick: 4 bags of 20 s instead of 60 s. --bags-dir keeps the simulated bags between runs.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

N_BAGS = 4
# Share of the linear speed-up a cluster keeps: the last bags' tail (nodes idle while the
# longest bags finish) and the driver's per-bag result handling.
CLUSTER_EFFICIENCY = 0.9


def simulate_bags(folder: Path, duration_s: float) -> list:
    bags = []
    for seed in range(N_BAGS):
        bag = folder / f'drive{seed}_{duration_s:g}s'
        if not (bag / 'metadata.yaml').exists():
            subprocess.run([sys.executable, '-m', 'terrain_ssl.cli', 'simulate', str(bag),
                            '--duration', str(duration_s), '--speed', '3:7', '--seed', str(seed),
                            '--lidar', 'vlp16', '--quiet', '--overwrite'], check=True, cwd=REPO,
                           stdout=subprocess.DEVNULL)
        bags.append(str(bag))
    return bags


def replay_command_cost(bag: str, scratch: Path) -> dict:
    """`terrain-ssl replay` as a command (one process): whole wall time vs its message loop."""
    out = scratch / 'command_replay'
    start = time.perf_counter()
    subprocess.run([sys.executable, '-m', 'terrain_ssl.cli', 'replay', bag, '--out', str(out),
                    '--processes', '1', '--no-progress'], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    command_s = time.perf_counter() - start
    loop_s = json.loads((out / 'timing.json').read_text())['wall_s']
    return {'command_s': command_s, 'loop_s': loop_s, 'fixed_s': command_s - loop_s}


def fleet_run(bags: list, workers: int) -> dict:
    """The bags on a local Ray of `workers` CPUs, one task per bag."""
    from terrain_ssl.fleet.cluster import ray_session, remote, run_bounded
    from terrain_ssl.fleet.jobs import ReplaySettings, replay_bag_files

    results = []
    start = time.perf_counter()
    with ray_session(None, workers) as limit:
        started_s = time.perf_counter() - start
        task = remote(replay_bag_files)
        run_start = time.perf_counter()
        run_bounded(lambda bag: task.remote(bag, ReplaySettings()), bags, limit,
                    lambda bag, result, error: results.append(result or {'error': error}))
        run_s = time.perf_counter() - run_start
    failed = [r.get('error') for r in results if r.get('status') != 'ok']
    if failed:
        raise SystemExit(f'bench_fleet: bags failed: {failed}')
    cpu_per_worker: dict = {}
    for r in results:
        pid = r['worker']['pid']
        cpu_per_worker[pid] = cpu_per_worker.get(pid, 0.0) + r['worker']['task_cpu_s']
    fixed = [(r['worker']['task_s'] - r['timing']['wall_s'],
              r['worker']['task_index_in_worker']) for r in results]
    return {'workers': workers, 'ray_start_s': started_s, 'run_s': run_s,
            'bag_s': sum(r['timing']['bag_duration_s'] for r in results),
            'fixed_first_s': [f for f, index in fixed if index == 1],
            'fixed_later_s': [f for f, index in fixed if index > 1],
            'rss_mb': max(r['worker']['worker_max_rss_mb'] for r in results),
            'loop_s': sum(r['timing']['wall_s'] for r in results),
            'cpu_s': sum(cpu_per_worker.values()),
            'busiest_worker_cpu_s': max(cpu_per_worker.values())}


def _mean(values) -> float:
    return sum(values) / len(values) if values else float('nan')


def bag_size_mb(bags) -> float:
    return sum(f.stat().st_size for bag in bags for f in Path(bag).rglob('*') if f.is_file()) \
        / len(bags) / 1e6


def report(runs: dict, command: dict, bag_mb: float, duration_s: float) -> list:
    one, two = runs[1], runs[2]
    speedup = one['run_s'] / two['run_s']
    # With a core per worker, the 2-worker run lasts as long as its busiest worker's CPU time.
    speedup_cpu = one['cpu_s'] / two['busiest_worker_cpu_s']
    cores = 2
    # bag-s per wall-s of one 2-core node whose cores are its own (CPU time, imports included).
    node_rate = cores * two['bag_s'] / two['cpu_s']
    wall_rate = two['bag_s'] / two['run_s']  # as measured here, on the shared host
    lines = [f'# bench_fleet: {N_BAGS} simulated bags of {duration_s:g} s (vlp16, 3-7 m/s)', '',
             f'Load average at the start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.',
             '', '| workers | Ray start s | bags replayed in s (wall) | bag-s / wall-s | '
             'CPU s (all tasks) | busiest worker CPU s | worker peak RSS MB |',
             '|---|---|---|---|---|---|---|']
    for run in (one, two):
        lines.append(f"| {run['workers']} | {run['ray_start_s']:.1f} | {run['run_s']:.1f} | "
                     f"{run['bag_s'] / run['run_s']:.1f} | {run['cpu_s']:.1f} | "
                     f"{run['busiest_worker_cpu_s']:.1f} | {run['rss_mb']:.0f} |")
    first = _mean(one['fixed_first_s'] + two['fixed_first_s'])
    later = _mean(one['fixed_later_s'] + two['fixed_later_s'])
    lines += ['', f'Speed-up of 2 workers over 1, wall time as measured: **{speedup:.2f}x**; '
              f'on CPU time (1-worker CPU / busiest 2-worker CPU, i.e. with a core per worker): '
              f'**{speedup_cpu:.2f}x** (target >= 1.7x on an otherwise idle 2-core host; the '
              'wall figure holds only when the load average is below the core count).', '',
              'Per-bag fixed cost (time outside the message loop):', '',
              f"- `terrain-ssl replay` as a command: {command['fixed_s']:.1f} s "
              f"({command['command_s']:.1f} s in all, loop {command['loop_s']:.1f} s);",
              f'- Ray task, first bag of a worker (imports): {first:.1f} s;',
              f'- Ray task, later bags of the same worker (report only): {later:.1f} s.', '',
              'Projection (bag-hours replayed per hour of wall time), from CPU time per '
              'bag-second (2 cores per node, each busy with one task):', '',
              '| nodes | bag-hours per hour |', '|---|---|',
              f'| 1 (2 cores) | {node_rate:.1f} (measured here on the shared host: '
              f'{wall_rate:.1f}) |']
    for nodes in (10, 100):
        lines.append(f'| {nodes} | {node_rate * nodes * CLUSTER_EFFICIENCY:.0f} |')
    read_mb_s = bag_mb / duration_s * node_rate * 100 * CLUSTER_EFFICIENCY
    lines += ['', 'Assumptions: nodes like this one with their cores to themselves (2 cores, one '
              'task per core, '
              f'{two["rss_mb"]:.0f} MB per worker); bags long enough that the per-bag fixed '
              f'cost stays small ({later:.1f} s per bag on a warm worker); '
              f'{CLUSTER_EFFICIENCY:.0%} of linear scaling kept (the last bags\' tail, the '
              'driver); bags read from storage every node sees: a bag here is '
              f'{bag_mb / duration_s:.2f} MB per bag-second, so '
              f'100 nodes read {read_mb_s:.0f} MB/s in all.', '']
    print('\n'.join(lines))
    print(f'RESULT fleet_speedup_2_workers_wall {speedup:.2f} x')
    print(f'RESULT fleet_speedup_2_workers_cpu {speedup_cpu:.2f} x')
    print(f'RESULT fleet_bag_s_per_wall_s_2_workers {wall_rate:.1f} x')
    print(f'RESULT fleet_bag_s_per_node_s_2_cores {node_rate:.1f} x')
    print(f'RESULT fleet_fixed_cost_command {command["fixed_s"]:.2f} s')
    print(f'RESULT fleet_fixed_cost_first_task {first:.2f} s')
    print(f'RESULT fleet_fixed_cost_warm_task {later:.2f} s')
    print(f'RESULT fleet_worker_peak_rss {two["rss_mb"]:.0f} MB')
    print(f'RESULT fleet_bag_hours_per_hour_10_nodes {node_rate * 10 * CLUSTER_EFFICIENCY:.0f} '
          'bag-h/h')
    print(f'RESULT fleet_bag_hours_per_hour_100_nodes {node_rate * 100 * CLUSTER_EFFICIENCY:.0f} '
          'bag-h/h')
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='4 bags of 20 s instead of 60 s')
    parser.add_argument('--bags-dir', default=None, help='keep the simulated bags here')
    args = parser.parse_args()
    duration_s = 20.0 if args.quick else 60.0
    with tempfile.TemporaryDirectory(prefix='bench_fleet_') as scratch:
        folder = Path(args.bags_dir) if args.bags_dir else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        bags = simulate_bags(folder, duration_s)
        command = replay_command_cost(bags[0], Path(scratch))
        runs = {workers: fleet_run(bags, workers) for workers in (1, 2)}
        lines = report(runs, command, bag_size_mb(bags), duration_s)
    results = REPO / 'bench' / 'results'
    results.mkdir(parents=True, exist_ok=True)
    (results / 'bench_fleet.md').write_text(
        '\n'.join(lines) + f'\nReproduce: `PYTHONPATH=. .venv/bin/python bench/bench_fleet.py'
        f'{" --quick" if args.quick else ""}`\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
