"""Closed loop, several laps: over-limit shocks, peak shock, mean speed and lap time per policy.

    PYTHONPATH=. .venv/bin/python bench/bench_closed_loop.py [--laps 3] [--seed 0] [--quick]

Policies: constant v_max; terrain_ssl (the three real nodes, cold start, learning live; the
vehicle drives at the published speed limit); oracle (the same speed rule, same settings, on the
terrain's measured roughness: per cell the labeler's own label from constant-speed calibration
drives at 2 and 4 m/s, the mean over the crossings, their spread as the uncertainty);
oracle-mean (the mean alone); oracle-max (per cell the worst 0.5 s IMU window instead).
Targets (laps 2+): terrain_ssl >= 80% fewer over-limit events than constant, lap time
<= 1.25 x the oracle's. Same options and table as `terrain-ssl closed-loop`, plus RESULT lines
(laps 2+) for bench/run_all.py.
"""

import argparse
import sys
import time

from terrain_ssl.sim.closed_loop_cli import compare, register

# Laps 2+ (lap 1 is the cold start): terrain_ssl keeps at most 20% of the constant policy's
# over-limit events, and laps in at most 1.25 x the oracle's time.
TARGET_FEWER_EVENTS = 0.8
TARGET_LAP_TIME_RATIO = 1.25


def target_lines(comparison: dict) -> list:
    """The two targets, each with PASS or FAIL."""
    fewer, ratio = comparison['fewer_events'], comparison['lap_time_ratio']
    return [f'target: >= {100 * TARGET_FEWER_EVENTS:.0f}% fewer over-limit events than '
            f'constant: {100 * fewer:.0f}% {"PASS" if fewer >= TARGET_FEWER_EVENTS else "FAIL"}',
            f'target: lap time <= {TARGET_LAP_TIME_RATIO} x oracle: {ratio:.2f} '
            f'{"PASS" if ratio <= TARGET_LAP_TIME_RATIO else "FAIL"}']


def result_lines(comparison: dict, laps: int) -> list:
    """RESULT lines over laps 2+ (lap 1 is the cold start), the laps compare_policies judges."""
    later = range(1, laps)
    lines = []
    for result in comparison['results']:
        name = 'closed_loop_' + result.policy.replace('-', '_')
        summary = result.summary(later)
        lines += [f'RESULT {name}_over_limit_events {summary["over_limit"]} '
                  f'events (0.5 s windows, laps 2+)',
                  f'RESULT {name}_peak_shock {summary["peak_shock_mps2"]:.3f} m/s^2',
                  f'RESULT {name}_mean_speed {summary["mean_speed_mps"]:.3f} m/s',
                  f'RESULT {name}_lap_time {summary["lap_time_s"]:.1f} s']
    lines += [f'RESULT closed_loop_terrain_ssl_event_reduction_vs_constant '
              f'{100 * comparison["fewer_events"]:.1f} % '
              f'(target >= {100 * TARGET_FEWER_EVENTS:.0f})',
              f'RESULT closed_loop_terrain_ssl_lap_time_vs_oracle '
              f'{comparison["lap_time_ratio"]:.3f} x (target <= {TARGET_LAP_TIME_RATIO})']
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='bench_closed_loop.py')
    register(parser.add_subparsers()).prog = 'bench_closed_loop.py'
    args = parser.parse_args(['closed-loop'] + list(sys.argv[1:] if argv is None else argv))
    start = time.perf_counter()
    comparison = compare(args)
    if comparison is None:
        return 2
    wall_s = time.perf_counter() - start
    print(comparison['report'])
    print('\n'.join(target_lines(comparison)))
    print(f'wall time {wall_s:.0f} s')
    for line in result_lines(comparison, args.laps):
        print(line)
    print(f'RESULT closed_loop_wall {wall_s:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
