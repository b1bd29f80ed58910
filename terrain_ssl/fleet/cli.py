"""`terrain-ssl evaluate` and `terrain-ssl tune`: many bags on Ray (an embedded local instance,
or a cluster by --ray-address). Ray and Optuna are imported only when one of them runs."""

from __future__ import annotations

import sys


def _add_common(parser) -> None:
    parser.add_argument('bags', nargs='+', metavar='BAG',
                        help='rosbag2 directories, .db3/.mcap files or ROS 1 .bag files (on a '
                             'cluster: paths every node sees)')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--workers', type=int, default=None,
                        help='tasks at once (default: every CPU; local Ray starts this many)')
    parser.add_argument('--ray-address', default=None,
                        help='an existing Ray cluster (e.g. 10.0.0.1:6379); default: a local '
                             'Ray instance')
    parser.add_argument('--max-retries', type=int, default=None,
                        help='times a task whose worker process died is run again (default 3)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    # The replay's own options, with the same meanings as for `terrain-ssl replay`.
    parser.add_argument('--imu-topic', help='sensor_msgs/Imu topic (default: the only one)')
    parser.add_argument('--points-topic', help='sensor_msgs/PointCloud2 topic (default: the '
                                               'only one)')
    parser.add_argument('--odom-topic', help='nav_msgs/Odometry topic (default: the only one)')
    parser.add_argument('--config', help='parameters file (default: the package config)')
    parser.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='parameter override for all nodes, e.g. -p label.min_speed:=1.0')
    parser.add_argument('--start', type=float, default=0.0, help='skip the first S seconds')
    parser.add_argument('--duration', type=float, default=None, help='replay only S seconds')


def register(subparsers) -> None:
    evaluate = subparsers.add_parser(
        'evaluate', help='replay many bags on Ray (one task per bag) and write one report',
        description='Replay each BAG as `terrain-ssl replay` does, each in its own Ray task; '
                    'write OUT/bags/<name>/ (the replay\'s outputs), OUT/summary.csv and '
                    'OUT/report.md with pooled figures.')
    _add_common(evaluate)
    evaluate.add_argument('--model-in', help='every bag starts from this model file')
    evaluate.set_defaults(func=run_evaluate_command)

    tune = subparsers.add_parser(
        'tune', help='search labeler / learner parameters with Optuna, replays on Ray',
        description='Optuna trials over the labeler\'s and learner\'s parameters (inside their '
                    'declared ranges); each trial replays every BAG on Ray. Writes '
                    'OUT/best_params.yaml, OUT/report.md, OUT/trials.csv, OUT/study.journal.')
    _add_common(tune)
    tune.add_argument('--trials', type=int, required=True, help='trials to run (defaults first)')
    tune.add_argument('--objective', choices=('consistency', 'prequential', 'truth'),
                      default='prequential',
                      help='consistency: label parameters, same label per cell at any speed; '
                           'prequential: learner parameters, predict-then-learn error; '
                           'truth: both, against the simulator\'s ground truth')
    tune.add_argument('--seed', type=int, default=0, help='sampler seed')
    tune.set_defaults(func=run_tune_command)


def _settings(args):
    from terrain_ssl.fleet.jobs import ReplaySettings

    return ReplaySettings(
        topics={'imu': args.imu_topic, 'points': args.points_topic, 'odom': args.odom_topic},
        config=args.config, parameters=tuple(args.param), start_s=args.start,
        duration_s=args.duration, model_in=getattr(args, 'model_in', None))


def _retries(args) -> int:
    from terrain_ssl.fleet.cluster import DEFAULT_MAX_RETRIES

    return DEFAULT_MAX_RETRIES if args.max_retries is None else max(0, args.max_retries)


def run_evaluate_command(args) -> int:
    from terrain_ssl.fleet.cluster import FleetError
    from terrain_ssl.fleet.evaluate import evaluate
    from terrain_ssl.replay.report import prepare_output_folder

    problem = prepare_output_folder(args.out)
    if problem:
        print(f'error: {problem}', file=sys.stderr)
        return 1
    try:
        outcomes = evaluate(args.bags, args.out, _settings(args), workers=args.workers,
                            address=args.ray_address, max_retries=_retries(args),
                            progress=not args.no_progress)
    except FleetError as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    failed = [o for o in outcomes if o.status != 'ok']
    for outcome in failed:
        print(f'failed: {outcome.name}: {outcome.error}', file=sys.stderr)
    print(f'{len(outcomes) - len(failed)} of {len(outcomes)} bags replayed; '
          f'report: {args.out}/report.md')
    return 0 if len(failed) < len(outcomes) else 1


def run_tune_command(args) -> int:
    from terrain_ssl.fleet.cluster import FleetError
    from terrain_ssl.fleet.tune import tune
    from terrain_ssl.replay.report import prepare_output_folder

    problem = prepare_output_folder(args.out)
    if problem:
        print(f'error: {problem}', file=sys.stderr)
        return 1
    try:
        summary = tune(args.bags, args.out, args.trials, args.objective, _settings(args),
                       workers=args.workers, address=args.ray_address, seed=args.seed,
                       max_retries=_retries(args), progress=not args.no_progress)
    except FleetError as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    best, default = summary['best'], summary['default']
    if not best:
        print(f'error: no trial could be scored; see {args.out}/trials.csv', file=sys.stderr)
        return 1
    print(f"{args.objective}: default {default['value']}, best {best['value']:.4g} "
          f"(trial {best['number']}); parameters: {args.out}/best_params.yaml")
    return 0
