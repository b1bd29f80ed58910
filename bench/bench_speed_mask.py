"""Cost of one Nav2 update: the speed mask and the roughness costmap, computed and converted.

    PYTHONPATH=. .venv/bin/python bench/bench_speed_mask.py [--repeats 300] [--cells 25000]

One update = terrain_ssl.core.speed_mask.nav2_grids (window lookup, speed rule, footprint
erosion, braking along the heading and the plan after the reaction time, costmap) plus both
OccupancyGrid messages, at the default parameters (40 m window, 0.5 m cells: 80 x 80, reaction
0.1 s) on an advisor map of `--cells` remembered cells
(the soak bench's advisor map stays under ~23,000) with rough patches scattered over smooth
ground, the vehicle turning as it moves along a curved plan. Target: <= 2 ms per update.
"""

import argparse
import time
from pathlib import Path

import numpy as np
from builtin_interfaces.msg import Time

from terrain_ssl.core.advisor import AdvisorConfig, RoughnessMap, SpeedAdvisor, VehicleState
from terrain_ssl.core.speed_mask import MaskConfig, nav2_grids
from terrain_ssl.ros.nav2_outputs import grid_message

TARGET_MS = 2.0


def advisor_map(cells: int, seed: int = 0) -> RoughnessMap:
    rng = np.random.default_rng(seed)
    side = int(np.sqrt(cells))
    centres = (np.arange(side) - side / 2 + 0.5) * 0.5
    x, y = (v.ravel() for v in np.meshgrid(centres, centres))
    roughness = rng.lognormal(np.log(0.3), 0.5, x.size)
    rough = rng.random(x.size) < 0.05
    roughness[rough] *= 8.0
    return RoughnessMap(np.column_stack((x, y)), roughness,
                        0.3 * roughness * rng.random(x.size), 0.5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=300)
    parser.add_argument('--cells', type=int, default=25_000)
    parser.add_argument('--out', default=str(Path(__file__).parent / 'results'
                                             / 'bench_speed_mask.md'))
    args = parser.parse_args(argv)
    roughness_map = advisor_map(args.cells)
    advisor, mask = AdvisorConfig(), MaskConfig()
    stamp = Time()
    # A plan along a 30 m radius arc through the positions the vehicle takes.
    arc = np.linspace(-0.5, 1.5, 200)
    plan = np.column_stack((30.0 * np.sin(arc), 30.0 * (1.0 - np.cos(arc))))
    compute, total, speed_rule = [], [], []
    speed_advisor = SpeedAdvisor(advisor)
    speed_advisor.set_map(roughness_map, 0)
    for i in range(args.repeats):
        position = (0.05 * i, 0.02 * i)
        yaw = 0.01 * i
        start = time.perf_counter()
        grids = nav2_grids(roughness_map, position, yaw, advisor, mask, plan)
        middle = time.perf_counter()
        grid_message(grids.speed_percent, grids, 'odom', stamp)
        grid_message(grids.cost, grids, 'odom', stamp)
        end = time.perf_counter()
        speed_advisor.set_path(plan)
        speed_advisor.set_state(VehicleState(position[0], position[1], yaw, 4.0), 0)
        advice_start = time.perf_counter()
        speed_advisor.update(0)
        speed_rule.append(time.perf_counter() - advice_start)
        compute.append(middle - start)
        total.append(end - start)
    compute_ms = 1e3 * np.median(compute)
    total_ms = 1e3 * np.median(total)
    p95_ms = 1e3 * np.percentile(total, 95)
    advisor_ms = 1e3 * np.median(speed_rule)
    n = grids.window.size_cells
    lines = [
        f'Nav2 update ({n} x {n} cells of {grids.window.resolution_m} m, advisor map of '
        f'{len(roughness_map)} cells, {args.repeats} updates):',
        f'  grids computed: median {compute_ms:.2f} ms',
        f'  grids + both OccupancyGrid messages: median {total_ms:.2f} ms, p95 {p95_ms:.2f} ms '
        f'(target <= {TARGET_MS} ms): {"PASS" if total_ms <= TARGET_MS else "FAIL"}',
        f'  for scale, one speed_limit update of the advisor (corridor at 4 m/s) in the same '
        f'run: median {advisor_ms:.2f} ms ({total_ms / advisor_ms:.1f}x)',
    ]
    results = [f'RESULT nav2_update_median {total_ms:.3f} ms',
               f'RESULT nav2_update_p95 {p95_ms:.3f} ms']
    print('\n'.join(lines + results))
    Path(args.out).write_text('# bench_speed_mask\n\n`PYTHONPATH=. .venv/bin/python '
                              'bench/bench_speed_mask.py`\n\n```\n' + '\n'.join(lines)
                              + '\n```\n\n' + '\n'.join(results) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
