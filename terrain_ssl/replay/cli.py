"""`terrain-ssl replay BAG` (fast, deterministic, with a report) and `terrain-ssl play BAG`
(real time)."""

from __future__ import annotations

import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        'replay', help='replay a bag through the nodes as fast as possible and write a report',
        description='Drive roughness_labeler, roughness_learner and speed_advisor with a '
                    'rosbag2 (sqlite3/mcap, directory or file) or ROS 1 bag, in bag time, '
                    'deterministically; write metrics.json, labels.csv, plots, report.md and '
                    'the learned model to OUT.')
    parser.add_argument('bag', help='rosbag2 directory, .db3/.mcap file, or ROS 1 .bag')
    parser.add_argument('--out', default=None, help='output folder (default: BAG_replay)')
    parser.add_argument('--imu-topic', help='sensor_msgs/Imu topic (default: the only one)')
    parser.add_argument('--points-topic',
                        help='sensor_msgs/PointCloud2 topic (default: the only one)')
    parser.add_argument('--odom-topic', help='nav_msgs/Odometry topic (default: the only one)')
    parser.add_argument('--config', help='parameters file (default: the package config)')
    parser.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE',
                        help='parameter override for all nodes, e.g. -p label.min_speed:=1.0')
    parser.add_argument('--lidar-extrinsic', nargs=6, type=float, metavar=('X', 'Y', 'Z', 'ROLL',
                        'PITCH', 'YAW'), help='base_link -> lidar pose (m, rad)')
    parser.add_argument('--start', type=float, default=0.0, help='skip the first S seconds')
    parser.add_argument('--duration', type=float, default=None, help='replay only S seconds')
    parser.add_argument('--model-in', help='start from this model file instead of a cold start')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--processes', type=int, choices=(1, 2), default=None,
                        help='2: run the learner and the advisor in a second process, fed by '
                             'the bag reader and the labeler; same results, faster when a '
                             'second core is free. 1: all nodes in one process. Default: 2 when '
                             'this process may use two or more CPUs')
    parser.add_argument('--no-mcap', action='store_true',
                        help='do not write outputs.mcap (the published topics, for Foxglove)')
    parser.add_argument('--with-inputs', action='store_true',
                        help='outputs.mcap also holds the input topics (lidar, IMU, odometry)')
    parser.set_defaults(func=run_replay_command)

    player = subparsers.add_parser(
        'play', help='publish a bag to DDS in real time with /clock (like ros2 bag play --clock)')
    player.add_argument('bag', help='rosbag2 directory, .db3/.mcap file, or ROS 1 .bag')
    player.add_argument('--rate', type=float, default=1.0, help='playback rate (default 1.0)')
    player.add_argument('--remap', action='append', default=[], metavar='FROM:=TO',
                        help='publish bag topic FROM as TO')
    player.set_defaults(func=run_play_command)


def _extrinsic_parameters(values) -> list:
    if not values:
        return []
    names = ('lidar.x', 'lidar.y', 'lidar.z', 'lidar.roll', 'lidar.pitch', 'lidar.yaw')
    return [f'{name}:={value!r}' for name, value in zip(names, values)]


def run_replay_command(args) -> int:
    from terrain_ssl.replay.bag import BagError
    from terrain_ssl.replay.report import prepare_output_folder, write_report
    from terrain_ssl.replay.options import ReplayError, ReplayOptions, default_processes
    from terrain_ssl.replay.runner import run_replay
    from terrain_ssl.ros.bringup import default_config_path

    bag = Path(args.bag)
    if args.model_in:  # a clear error now, not a traceback from the learner's process later
        from terrain_ssl.core.learner import OnlineRoughnessRegressor
        from terrain_ssl.core.model_store import ModelFileError
        try:
            OnlineRoughnessRegressor.load(args.model_in)
        except (ModelFileError, ValueError) as error:
            print(f'error: --model-in: {error}', file=sys.stderr)
            return 1
    out = Path(args.out) if args.out else bag.with_name(bag.stem + '_replay')
    created = not out.exists()
    problem = prepare_output_folder(out)
    if problem:
        print(f'error: {problem}', file=sys.stderr)
        return 1
    options = ReplayOptions(
        bag=str(bag), config=args.config or default_config_path(),
        topics={'imu': args.imu_topic, 'points': args.points_topic, 'odom': args.odom_topic},
        parameters=list(args.param) + _extrinsic_parameters(args.lidar_extrinsic),
        start_s=args.start, duration_s=args.duration, model_in=args.model_in,
        model_out=str(out / 'model.npz'), progress=not args.no_progress,
        processes=args.processes or default_processes(),
        outputs_mcap=None if args.no_mcap else str(out / 'outputs.mcap'),
        mcap_inputs=args.with_inputs)
    try:
        record = run_replay(options)
    except (BagError, ReplayError) as error:
        print(f'error: {error}', file=sys.stderr)
        if created:  # a failed replay leaves no empty folder behind
            try:
                out.rmdir()
            except OSError:
                pass  # not empty: something in it is worth keeping
        return 1
    metrics = write_report(record, out)
    _print_summary(metrics, record.timing, out)
    return 0


def _print_summary(metrics: dict, timing: dict, out: Path) -> None:
    from terrain_ssl.replay.report import summary_lines

    print('\n'.join(summary_lines(metrics, timing)))
    print(f'report: {out / "report.md"}')


def run_play_command(args) -> int:
    from terrain_ssl.replay.bag import BagError
    from terrain_ssl.replay.player import play

    remap = {}
    for item in args.remap:
        if ':=' not in item:
            print(f'error: --remap {item}: expected FROM:=TO', file=sys.stderr)
            return 2
        source, target = item.split(':=', 1)
        remap[source] = target
    if not 0.0 < args.rate < float('inf'):
        print(f'error: --rate must be a positive number, not {args.rate}', file=sys.stderr)
        return 2
    try:
        counts = play(args.bag, rate=args.rate, remap=remap)
    except BagError as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    from terrain_ssl.replay.report import undecodable_warning

    print(f'published {sum(counts.read.values()) - sum(counts.undecodable.values())} messages')
    skipped = undecodable_warning(counts.undecodable, counts.last_error)
    if skipped:
        print(f'warning: {skipped}', file=sys.stderr)
    lost = counts.mismatches()
    if lost:
        detail = ', '.join(f'{t}: bag has {e}, read {r}' for t, (e, r) in sorted(lost.items()))
        print(f'error: messages lost while reading {args.bag}: {detail}', file=sys.stderr)
        return 1
    return 0
