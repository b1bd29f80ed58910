"""`terrain-ssl calibrate BAG [BAG...] --out DIR`: label parameters from a robot's own drives.

Reads the IMU and odometry of each bag (rosbag2 or ROS 1; no lidar needed), cuts each drive
into the windows a label measures, fits the vibration floor and the speed exponent, and picks
min_speed and the moderate / rough thresholds (terrain_ssl.core.calibration). Writes

    DIR/params.yaml            roughness_labeler parameters (`terrain-ssl replay --config`,
                               `ros2 launch terrain_ssl terrain_ssl.launch.py config:=`)
    DIR/windows.csv            one row per window: bag, t, speed, shock, roughness
    DIR/roughness_vs_speed.png one colour per bag

and prints a table. A bag that cannot be calibrated gets a one-line reason.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from terrain_ssl.core.comfort import ISO2631_COMFORT_LIMITS

if TYPE_CHECKING:  # the CLI imports this module to list its options: rclpy and scipy load later
    from terrain_ssl.core.calibration import Calibration, DriveWindows
    from terrain_ssl.core.labeler import LabelerConfig

IMU_TYPE, ODOM_TYPE = 'sensor_msgs/msg/Imu', 'nav_msgs/msg/Odometry'
LABELER_KEYS = ('/**/roughness_labeler', 'roughness_labeler', '/roughness_labeler', '/**')


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        'calibrate', help="fit the labeler's floor, speed model and thresholds to your drives",
        description='Read IMU and odometry from drives of your robot (rosbag2 or ROS 1, no '
                    'lidar needed), fit the vibration floor and how shock grows with speed, and '
                    'write DIR/params.yaml for the roughness_labeler, DIR/windows.csv and a '
                    'plot of roughness against speed.')
    parser.add_argument('bags', nargs='+', metavar='BAG', help='rosbag2 directory or file, '
                        'or ROS 1 .bag')
    parser.add_argument('--out', required=True, metavar='DIR', help='output folder')
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument('--shock-limit', type=float, metavar='M/S2',
                       help='thresholds from this shock limit (m/s^2) at the typical speed, '
                            'instead of from the label distribution')
    limit.add_argument('--comfort', choices=sorted(ISO2631_COMFORT_LIMITS), metavar='CLASS',
                       help='ISO 2631-1 comfort class whose upper limit (Wk-weighted RMS, '
                            'm/s^2) is the shock limit; selects the wk_rms shock measure: ' +
                            ', '.join(f'{name} ({limit})' for name, limit
                                      in ISO2631_COMFORT_LIMITS.items()))
    parser.add_argument('--config', help='parameters file of your robot (footprint, patch '
                        'size, vibration band...); its labeler values are the starting point '
                        'and are copied to params.yaml')
    parser.add_argument('--imu-topic', help='sensor_msgs/Imu topic (default: the only one)')
    parser.add_argument('--odom-topic', help='nav_msgs/Odometry topic (default: the only one)')
    parser.set_defaults(func=run_calibrate_command)


def labeler_parameters(path) -> dict:
    """The roughness_labeler's `ros__parameters` of a parameters file (may be empty)."""
    with open(path, encoding='utf-8') as stream:
        document = yaml.safe_load(stream) or {}
    if not isinstance(document, dict):
        raise ValueError(f'{path}: not a ROS parameters file')
    for key in LABELER_KEYS:
        section = document.get(key)
        if isinstance(section, dict) and isinstance(section.get('ros__parameters'), dict):
            return dict(section['ros__parameters'])
    return {}


def labeler_config(values: dict) -> LabelerConfig:
    """LabelerConfig from parameter values (ROS names), defaults for the rest."""
    from terrain_ssl.ros.labeler_node import CONFIG_PARAMS, config_from_values

    merged = {spec.name: spec.default for spec in CONFIG_PARAMS}
    merged.update({name: value for name, value in values.items() if name in merged})
    return config_from_values(merged)


def _pick_topic(topics: dict, msgtype: str, wanted) -> str:
    if wanted:
        if wanted not in topics or topics[wanted].msgtype != msgtype:
            raise ValueError(f'no {msgtype} topic {wanted}')
        return wanted
    candidates = sorted(name for name, info in topics.items() if info.msgtype == msgtype)
    if len(candidates) > 1:
        raise ValueError(f'several {msgtype} topics {candidates}: choose one with --'
                         f'{"imu" if msgtype == IMU_TYPE else "odom"}-topic')
    return candidates[0] if candidates else ''


def read_drive(path, imu_topic=None, odom_topic=None) -> dict:
    """IMU and odometry of a bag as arrays: imu_t_ns, imu_accel, imu_quat (or None),
    odom_t_ns, odom_speed (m/s). Messages with non-finite values are left out."""
    from terrain_ssl.replay.bag import Bag, ReadCounts
    from terrain_ssl.ros.conversions import stamp_to_ns

    imu_t, accel, quats, odom_t, speed = [], [], [], [], []
    with Bag(path) as bag:
        topics = bag.topics()
        imu_name = _pick_topic(topics, IMU_TYPE, imu_topic)
        odom_name = _pick_topic(topics, ODOM_TYPE, odom_topic)
        for item in bag.messages([name for name in (imu_name, odom_name) if name],
                                 ReadCounts()):
            msg = item.message
            if item.topic == imu_name:
                a, q = msg.linear_acceleration, msg.orientation
                imu_t.append(stamp_to_ns(msg.header.stamp))
                accel.append((a.x, a.y, a.z))
                valid = msg.orientation_covariance[0] != -1.0 and (q.x or q.y or q.z or q.w)
                quats.append((q.x, q.y, q.z, q.w) if valid else (np.nan,) * 4)
            else:
                v = msg.twist.twist.linear
                odom_t.append(stamp_to_ns(msg.header.stamp))
                speed.append(float(np.hypot(v.x, v.y)))
    drive = {'imu_t_ns': np.array(imu_t, dtype=np.int64),
             'imu_accel': np.array(accel, float).reshape(-1, 3),
             'imu_quat': np.array(quats, float).reshape(-1, 4),
             'odom_t_ns': np.array(odom_t, dtype=np.int64),
             'odom_speed': np.array(speed, float)}
    return _clean(drive)


def _clean(drive: dict) -> dict:
    """Finite values in increasing stamp order per stream (a calibration is offline: sorting
    by stamp is safe here, unlike in the live labeler)."""
    for stream, columns in (('imu', ('imu_t_ns', 'imu_accel', 'imu_quat')),
                            ('odom', ('odom_t_ns', 'odom_speed'))):
        values = [drive[name] for name in columns]
        ok = np.isfinite(values[1]).all(axis=tuple(range(1, values[1].ndim)))
        order = np.argsort(values[0][ok], kind='stable')
        values = [value[ok][order] for value in values]
        unique = np.ones(values[0].shape[0], dtype=bool)
        unique[1:] = np.diff(values[0]) > 0
        for name, value in zip(columns, values):
            drive[name] = value[unique]
    quat = drive['imu_quat']
    drive['imu_quat'] = quat if quat.shape[0] and np.isfinite(quat).all() else None
    return drive


def windows_of(path, config: LabelerConfig, imu_topic=None, odom_topic=None) -> DriveWindows:
    from terrain_ssl.core.calibration import DriveWindows, drive_windows
    from terrain_ssl.replay.bag import BagError

    name = Path(path).name
    try:
        drive = read_drive(path, imu_topic, odom_topic)
    except (BagError, OSError, ValueError) as error:
        return DriveWindows(name, problem=f'cannot read: {str(error).splitlines()[0]}')
    return drive_windows(name, drive['imu_t_ns'], drive['imu_accel'], drive['odom_t_ns'],
                         drive['odom_speed'], config, imu_quat=drive['imu_quat'])


def write_windows_csv(drives, calibration: Calibration, path: Path) -> None:
    with open(path, 'w', newline='', encoding='utf-8') as stream:
        writer = csv.writer(stream)
        writer.writerow(['bag', 't', 'speed', 'shock', 'roughness', 'labeled'])
        for drive in drives:
            roughness = calibration.model.roughness(drive.shock, np.maximum(drive.speed, 1e-9))
            for t, v, s, r in zip(drive.t_s, drive.speed, drive.shock, roughness):
                writer.writerow([drive.name, f'{t:.3f}', f'{v:.4f}', f'{s:.5f}', f'{r:.5f}',
                                 int(v >= calibration.min_speed)])


def write_params(calibration: Calibration, base: dict, path: Path) -> dict:
    """params.yaml: the base file's labeler values with the calibrated ones on top."""
    values = dict(base)
    values.update(calibration.parameters())
    document = {'/**/roughness_labeler': {'ros__parameters': dict(sorted(values.items()))}}
    header = ('# roughness_labeler parameters from `terrain-ssl calibrate` '
              f'(thresholds from {calibration.threshold_source}).\n'
              '# Use: terrain-ssl replay BAG --config params.yaml, or\n'
              '#      ros2 launch terrain_ssl terrain_ssl.launch.py config:=params.yaml\n')
    path.write_text(header + yaml.safe_dump(document, sort_keys=False), encoding='utf-8')
    return values


def plot_roughness_vs_speed(drives, calibration: Calibration, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for drive in drives:
        labeled = drive.speed >= calibration.min_speed
        ax.scatter(drive.speed[labeled], calibration.model.roughness(
            drive.shock[labeled], drive.speed[labeled]), s=8, alpha=0.6, label=drive.name)
    for value, name in ((calibration.moderate_threshold, 'moderate'),
                        (calibration.rough_threshold, 'rough')):
        ax.axhline(value, color='grey', linestyle='--', linewidth=0.8)
        ax.annotate(name, (ax.get_xlim()[1], value), ha='right', va='bottom', fontsize=8)
    model = calibration.model
    ax.set_xlabel('ground speed (m/s)')
    ax.set_ylabel(f'roughness ((m/s²)/(m/s) at {model.reference_speed:.2f} m/s)')
    ax.set_title(f'floor {model.floor:.3f} m/s², speed exponent {model.speed_exponent:.2f}')
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(drives, calibration) -> list:
    lines = [f'{"bag":<28} {"windows":>7} {"speed m/s":>12} {"shock m/s2":>11} '
             f'{"roughness":>10}  note']
    for drive in drives:
        if drive.problem:
            lines.append(f'{drive.name:<28} {"-":>7} {"-":>12} {"-":>11} {"-":>10}  '
                         f'not calibrated: {drive.problem}')
            continue
        labeled = drive.speed >= calibration.min_speed if calibration else drive.moving
        speed = drive.speed[labeled]
        roughness = (calibration.model.roughness(drive.shock[labeled], speed)
                     if calibration else np.full(speed.shape, np.nan))
        lines.append(f'{drive.name:<28} {int(labeled.sum()):>7} '
                     f'{np.min(speed):>5.2f}-{np.max(speed):<6.2f} '
                     f'{np.median(drive.shock[labeled]):>11.3f} {np.median(roughness):>10.3f}')
    return lines


def run_calibrate_command(args) -> int:
    from terrain_ssl.core.calibration import calibrate
    from terrain_ssl.core.labeler import LabelerConfig

    base = {}
    if args.config:
        try:
            base = labeler_parameters(args.config)
            config = labeler_config(base)
        except (OSError, ValueError, yaml.YAMLError, TypeError) as error:
            print(f'error: --config: {str(error).splitlines()[0]}', file=sys.stderr)
            return 1
    else:
        config = LabelerConfig()
    limit, limit_name = args.shock_limit, ''
    if args.comfort:
        limit = ISO2631_COMFORT_LIMITS[args.comfort]
        limit_name = f'ISO 2631-1 {args.comfort} ({limit} m/s^2)'
        config = labeler_config({**base, 'vibration.shock_measure': 'wk_rms'})
    if limit is not None and not 0.0 < limit < float('inf'):
        print(f'error: --shock-limit must be a positive number, not {limit}', file=sys.stderr)
        return 2
    out = Path(args.out)
    drives = [windows_of(bag, config, args.imu_topic, args.odom_topic) for bag in args.bags]
    try:
        calibration = calibrate(drives, config, shock_limit=limit, limit_name=limit_name)
    except ValueError as error:
        print('\n'.join(summary_table(drives, None)))
        print(f'error: {error}', file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    usable = [drive for drive in drives if not drive.problem]
    write_params(calibration, base, out / 'params.yaml')
    write_windows_csv(usable, calibration, out / 'windows.csv')
    plot_roughness_vs_speed(usable, calibration, out / 'roughness_vs_speed.png')
    print('\n'.join(summary_table(drives, calibration)))
    model = calibration.model
    print(f'floor {model.floor:.3f} m/s^2 (standstill {model.standstill_floor:.3f}), speed '
          f'exponent {model.speed_exponent:.2f}'
          f'{"" if model.fitted else " (kept: the drives span too few speeds to fit it)"}, '
          f'min_speed {calibration.min_speed:.2f} m/s, '
          f'thresholds moderate {calibration.moderate_threshold:.3f} / rough '
          f'{calibration.rough_threshold:.3f} (from {calibration.threshold_source})')
    print(f'wrote {out / "params.yaml"}, {out / "windows.csv"}, '
          f'{out / "roughness_vs_speed.png"}')
    return 0
