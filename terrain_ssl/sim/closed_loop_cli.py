"""`terrain-ssl closed-loop`: drive laps under constant v_max, terrain_ssl and the oracle; print
the table (over-limit shock events, peak shock, mean speed, lap time) and the ratios."""

import argparse
import sys
import time

from terrain_ssl.sim.closed_loop import SPEED_SOURCES
from terrain_ssl.sim.policy_comparison import SCENARIO_ADVISOR, compare_policies
from terrain_ssl.sim.route import RoundedRectangleRoute
from terrain_ssl.sim.terrain import TerrainConfig
from terrain_ssl.sim.world import WorldConfig

# --quick: a 150 m loop with the default A..F segments scaled onto it.
QUICK_ROUTE = RoundedRectangleRoute(long_m=40.0, short_m=10.0, corner_radius_m=8.0)


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `closed-loop` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        'closed-loop', help='closed-loop laps: constant speed vs terrain_ssl vs oracle',
        description='Drive laps of the simulated route under three speed policies (constant '
                    'v_max; terrain_ssl: the three real nodes learning live from a cold start; '
                    'oracle: the same speed rule on the measured roughness of the terrain) and '
                    'print over-limit shock events, peak shock, mean speed and lap time. '
                    'The default route (386 m, 3 laps) takes several minutes.')
    parser.add_argument('--laps', type=int, default=3, help='laps per policy (>= 2)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (terrain, noise)')
    parser.add_argument('--quick', action='store_true',
                        help=f'short route ({QUICK_ROUTE.length_m:.0f} m) for a fast look')
    parser.add_argument('--uncertainty-weight', type=float,
                        default=SCENARIO_ADVISOR['uncertainty_weight'],
                        help='advisor: conservative roughness = roughness + W * uncertainty')
    parser.add_argument('--shock-limit', type=float, default=SCENARIO_ADVISOR['shock_limit_mps2'],
                        help='shock limit, m/s^2 (rms over 0.5 s IMU windows)')
    parser.add_argument('--map-memory', type=float, default=SCENARIO_ADVISOR['map_memory_s'],
                        help='advisor: keep lidar-predicted cells this long, s')
    parser.add_argument('--no-oracle-max', action='store_true',
                        help='skip the second oracle (worst 0.5 s window per cell)')
    parser.add_argument('--speed-source', choices=SPEED_SOURCES, default='advisor',
                        help="terrain_ssl drives at the advisor's speed_limit, or at the "
                             "speed_mask under base_link as Nav2's SpeedFilter reads it")
    parser.add_argument('--quiet', action='store_true', help='no per-lap progress on stderr')
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    start = time.perf_counter()
    comparison = compare(args)
    if comparison is None:
        return 2
    print(comparison['report'])
    print(f'wall time {time.perf_counter() - start:.0f} s')
    return 0


def compare(args):
    """compare_policies() with the command's arguments (bench/bench_closed_loop.py formats the
    same result as RESULT lines); None, with the reason on stderr, when they are invalid."""
    if args.laps < 2:
        print('closed-loop: --laps must be >= 2 (the targets are over laps 2+)', file=sys.stderr)
        return None
    if not args.shock_limit > 0 or not args.uncertainty_weight >= 0 or \
            not args.map_memory >= 0:
        print('closed-loop: --shock-limit must be > 0, --uncertainty-weight and --map-memory '
              '>= 0',
              file=sys.stderr)
        return None
    world = WorldConfig()
    if args.quick:
        world = WorldConfig(terrain=TerrainConfig(route=QUICK_ROUTE))
    advisor = dict(SCENARIO_ADVISOR, uncertainty_weight=args.uncertainty_weight,
                   shock_limit_mps2=args.shock_limit, map_memory_s=args.map_memory)

    def say(text):
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    return compare_policies(laps=args.laps, seed=args.seed, world=world, advisor=advisor,
                            with_safe_oracle=not args.no_oracle_max, progress=say,
                            speed_source=args.speed_source)
