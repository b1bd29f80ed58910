"""Render the README's benchmark table from the figures in bench/results/*.md.

    PYTHONPATH=. .venv/bin/python bench/readme_table.py [--write]

Figures are read from the `| bench | figure | value | unit |` rows that bench/run_all.py writes to
bench/results/latest.md, and from `RESULT name value unit` lines in the other bench/results/*.md
files (one per bench, written by the benches themselves; a figure there replaces the one in
latest.md). Prints the table; --write puts it between the README's
`<!-- benchmarks:begin -->` and `<!-- benchmarks:end -->` markers.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
README = BENCH_DIR.parent / 'README.md'
BEGIN, END = '<!-- benchmarks:begin', '<!-- benchmarks:end -->'
TABLE_ROW = re.compile(r'^\|\s*\w+\s*\|\s*(\w+)\s*\|\s*([^|]+?)\s*\|\s*([^|]*?)\s*\|$')
RESULT_LINE = re.compile(r'^\s*RESULT\s+(\S+)\s+(\S+)\s*(.*)$')

# README rows: (what, figure names joined with ' / ', target, script).
ROWS = [
    ('PointCloud2 -> xyz, 131,072-point Ouster layout (M points/s)',
     ['conversions_pointcloud2_to_xyz'], '>= 20', 'bench_conversions.py'),
    ('labeler per scan, 16 / 64 / 128 beams (ms)',
     ['labeler_ms_per_scan_16beams', 'labeler_ms_per_scan_64beams',
      'labeler_ms_per_scan_128beams'], '128 beams <= 25', 'bench_labeler.py'),
    ('learner: learn (samples/s) / predict 10,000 patches (ms)',
     ['learner_learn_rff_sgd', 'learner_predict10k_rff_sgd'], '>= 20,000 / <= 5',
     'bench_learner.py'),
    ('learning, 120 s drive: prequential Spearman / MAE / baseline MAE / held-out Spearman '
     'vs truth',
     ['learner_prequential_spearman_second_half', 'learner_prequential_mae_second_half',
      'baseline_prequential_mae_second_half', 'learner_held_out_spearman_vs_truth'],
     '0.7 / below baseline / 0.7', 'bench_learning.py'),
    ('replay of a 120 s bag through the three nodes (x real time)',
     ['replay_realtime_factor'], '>= 20', 'bench_replay.py'),
    ('latency scan -> speed_limit over DDS, separate processes, p50 / p99 (ms)',
     ['latency_separate_scan_to_speed_limit_p50', 'latency_separate_scan_to_speed_limit_p99'],
     'p99 <= 100', 'bench_latency.py'),
    ('soak, 30-minute drive played at 1x to `terrain-ssl bringup`: RSS at the end (MB) / '
     'growth after warm-up (%)', ['soak_live_rss_final', 'soak_live_rss_growth_after_warmup'],
     '<= 300 / <= 10', 'bench_soak.py --live'),
    ('closed loop, 150 m route, laps 2+: fewer over-limit events than constant (%) / lap '
     'time vs oracle (x)',
     ['closed_loop_terrain_ssl_event_reduction_vs_constant',
      'closed_loop_terrain_ssl_lap_time_vs_oracle'], '>= 80 / <= 1.25', 'bench_closed_loop.py'),
    ('closed loop through the Nav2 speed mask, seed 0 / seed 1: fewer events (%) / lap time vs '
     'oracle (x)',
     ['closed_loop_mask_seed0_event_reduction_vs_constant',
      'closed_loop_mask_seed0_lap_time_vs_oracle',
      'closed_loop_mask_seed1_event_reduction_vs_constant',
      'closed_loop_mask_seed1_lap_time_vs_oracle'], '>= 80 / <= 1.25',
     'bench_closed_loop.py --speed-source mask'),
    ('Nav2 speed mask + costmap update, 80 x 80 cells, median / p95 (ms)',
     ['nav2_update_median', 'nav2_update_p95'], 'median <= 2', 'bench_speed_mask.py'),
    ('replay with outputs.mcap vs --no-mcap: wall / CPU (x)',
     ['replay_mcap_wall_ratio', 'replay_mcap_cpu_ratio'], '<= 1.1', 'bench_replay.py'),
    ('real OS-1-128 sweep: ms per scan without / with ground segmentation + deskew',
     ['ground_ms_per_scan_today', 'ground_ms_per_scan_segmentation_deskew'], '<= 25',
     'bench_ground.py'),
    ('robot CPU, 64 x 1024 lidar at 10 Hz: bringup / separate processes (% of one core) / '
     'the host\'s speed in that run (ms, lower is faster)',
     ['robot_cpu_os64_10hz_bringup_total', 'robot_cpu_os64_10hz_separate_total',
      'robot_cpu_host_speed'],
     'bringup <= 20', 'bench_robot_cpu.py'),
    ('robot CPU, 128 x 1024 lidar at 20 Hz: bringup / separate processes (% of one core)',
     ['robot_cpu_os128_20hz_bringup_total', 'robot_cpu_os128_20hz_separate_total'],
     'bringup <= 40', 'bench_robot_cpu.py'),
    ('fleet: speed-up 2 vs 1 workers, CPU / wall (x); bag-hours per hour on 10 / 100 nodes',
     ['fleet_speedup_2_workers_cpu', 'fleet_speedup_2_workers_wall',
      'fleet_bag_hours_per_hour_10_nodes', 'fleet_bag_hours_per_hour_100_nodes'],
     '>= 1.7', 'bench_fleet.py'),
]


def read_figures(results_dir: Path = BENCH_DIR / 'results') -> dict:
    """figure name -> value text; the per-bench files override latest.md."""
    figures = {}
    latest = results_dir / 'latest.md'
    if latest.exists():
        for line in latest.read_text().splitlines():
            match = TABLE_ROW.match(line.strip())
            if match and match.group(1) != 'figure':
                figures[match.group(1)] = match.group(2)
    for path in sorted(results_dir.glob('*.md')):
        if path.name == 'latest.md':
            continue
        for line in path.read_text().splitlines():
            match = RESULT_LINE.match(line)
            if match:
                figures[match.group(1)] = match.group(2)
    return figures


def _number(text: str) -> str:
    """Large counts in millions (points/s), others as written."""
    try:
        value = float(text.replace(',', ''))
    except ValueError:
        return text
    return f'{value / 1e6:.0f}' if value >= 1e7 else text


def render(figures: dict) -> str:
    lines = ['| what | figure | target | script |', '|---|---|---|---|']
    for what, names, target, script in ROWS:
        value = ' / '.join(_number(figures[name]) if name in figures else 'n/a'
                           for name in names)
        lines.append(f'| {what} | {value} | {target} | `{script}` |')
    return '\n'.join(lines)


def write_readme(table: str, readme: Path = README) -> None:
    text = readme.read_text()
    begin = text.index('\n', text.index(BEGIN)) + 1
    end = text.index(END)
    readme.write_text(text[:begin] + table + '\n' + text[end:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--write', action='store_true', help='update README.md in place')
    args = parser.parse_args(argv)
    table = render(read_figures())
    if args.write:
        write_readme(table)
        print(f'wrote the benchmark table in {README}')
    else:
        print(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
