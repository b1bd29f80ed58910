"""Closed loop, several laps: over-limit shocks, peak shock, mean speed and lap time per policy.

    PYTHONPATH=. .venv/bin/python bench/bench_closed_loop.py [--laps 4] [--seed 0]

Policies: constant v_max; terrain_ssl (the three real nodes, cold start, learning live; the
vehicle drives at the published speed limit); oracle (the same speed rule on the true roughness,
calibrated to label units by least squares on the terrain_ssl run's labels vs the truth of their
cells; --calibration drive uses a constant-speed calibration drive instead).
Targets (laps 2+): terrain_ssl >= 80% fewer over-limit events than constant, lap time
<= 1.25 x the oracle's.
"""

import argparse
import sys
import time

from terrain_ssl.sim.closed_loop import (ClosedLoopConfig, calibration_drive,
                                         calibration_from_labels, format_table, run_closed_loop)
from terrain_ssl.sim.world import WorldConfig

# The simulated vehicle: base_link on the rear axle, front axle 2.6 m ahead, track 1.6 m.
# v_min = the labeler's label.min_speed (1 m/s): slower, no labels come, and learning would stall.
ADVISOR = {'shock_limit_mps2': 2.0, 'v_max_mps': 6.0, 'v_min_mps': 1.0,
           'cautious_speed_mps': 1.5, 'front_offset_m': 2.6, 'uncertainty_weight': 0.5}
LABELER = {'footprint.length': 3.0, 'footprint.offset_x': 1.3, 'footprint.width': 1.8}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--laps', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--calibration', choices=('labels', 'drive'), default='labels')
    parser.add_argument('--uncertainty-weight', type=float,
                        default=ADVISOR['uncertainty_weight'])
    parser.add_argument('--shock-limit', type=float, default=ADVISOR['shock_limit_mps2'])
    args = parser.parse_args()
    ADVISOR.update(uncertainty_weight=args.uncertainty_weight, shock_limit_mps2=args.shock_limit)

    world = WorldConfig()
    common = dict(laps=args.laps, seed=args.seed, world=world, advisor=ADVISOR,
                  labeler=LABELER)

    def say(text):
        print(text, file=sys.stderr, flush=True)

    start = time.perf_counter()
    learned = run_closed_loop(ClosedLoopConfig(policy='terrain_ssl', **common), progress=say)
    if args.calibration == 'labels':
        calibration = calibration_from_labels(learned, world, args.seed)
    else:
        calibration = calibration_drive(world, args.seed)
    oracle = run_closed_loop(ClosedLoopConfig(policy='oracle', calibration=calibration,
                                              **common), progress=say)
    constant = run_closed_loop(ClosedLoopConfig(policy='constant', **common), progress=say)
    results = [constant, learned, oracle]

    print(f'closed loop: {args.laps} laps of {world.terrain.route.length_m:.0f} m, seed '
          f'{args.seed}, shock limit {ADVISOR["shock_limit_mps2"]} m/s^2 (rms over 0.5 s IMU '
          f'windows), v_max {ADVISOR["v_max_mps"]} m/s, uncertainty weight '
          f'{ADVISOR["uncertainty_weight"]}')
    print(f'oracle calibration: roughness = {calibration.offset:.3f} + {calibration.gain:.1f} '
          f'x height_rms  (R^2 {calibration.r2:.2f}, {calibration.samples} samples; '
          f'{calibration.source})')
    print(format_table(results))
    later = range(1, args.laps)
    s_const, s_learn, s_oracle = (r.summary(later) for r in results)
    fewer = 1.0 - s_learn['over_limit'] / max(s_const['over_limit'], 1)
    ratio = s_learn['lap_time_s'] / s_oracle['lap_time_s']
    print(f'laps 2+: terrain_ssl has {100 * fewer:.0f}% fewer over-limit events than constant '
          f'(target >= 80%): {"PASS" if fewer >= 0.8 else "FAIL"}')
    print(f'laps 2+: terrain_ssl lap time = {ratio:.2f} x oracle (target <= 1.25): '
          f'{"PASS" if ratio <= 1.25 else "FAIL"}')
    print(f'terrain_ssl late hazards (limit dropped faster than planned): '
          f'{learned.info.get("late_hazards")}; rejects: {learned.info.get("rejected")}')
    print(f'wall time: terrain_ssl {learned.info["wall_s"]:.0f} s for '
          f'{learned.info["sim_s"]:.0f} s simulated; total {time.perf_counter() - start:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
