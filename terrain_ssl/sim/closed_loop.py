"""Closed loop: the simulated vehicle drives laps at a speed policy's command; shocks are counted.

Policies:
    constant     always v_max.
    terrain_ssl  the three real nodes (roughness_labeler -> roughness_learner -> speed_advisor),
                 cold start, learning live; the vehicle drives at the published speed limit.
    oracle       the same speed rule (terrain_ssl.core.advisor.SpeedAdvisor, same settings), fed
                 the *true* roughness of the terrain converted to the labeler's units by a
                 calibration `roughness = offset + gain * height_rms` (fitted by least squares on
                 labels vs truth, see `fit_calibration`).

The nodes are driven deterministically in sim time: each SimMessage is deserialised with rclpy
and handed to the matching subscription callback; node outputs reach the next node through
in-process links (Outlet.connect); timers fire at sim-time intervals (wiring.BagTimeDriver).

Shock: the labeler's own vibration filter (terrain_ssl.core.vibration) over fixed IMU windows of
`shock_window_s`; a window is an over-limit event when its shock exceeds shock_limit.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np

from terrain_ssl.core.advisor import AdvisorConfig, RoughnessMap, SpeedAdvisor, VehicleState
from terrain_ssl.core.vibration import VibrationFilter
from terrain_ssl.sim.world import World, WorldConfig

POLICIES = ('constant', 'terrain_ssl', 'oracle')
NODE_NAMES = ('roughness_labeler', 'roughness_learner', 'speed_advisor')  # NODE_MODULES order
_NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class Calibration:
    """Label roughness ((m/s^2)/(m/s)) ~= offset + gain * true height RMS (m)."""

    offset: float
    gain: float
    samples: int = 0
    r2: float = float('nan')
    source: str = ''

    def apply(self, height_rms_m):
        return self.offset + self.gain * np.asarray(height_rms_m, dtype=np.float64)


def fit_calibration(label_roughness, truth_rms_m, source: str = '') -> Calibration:
    """Least-squares line through (truth height RMS, label roughness); NaNs dropped."""
    label = np.asarray(label_roughness, dtype=np.float64)
    truth = np.asarray(truth_rms_m, dtype=np.float64)
    ok = np.isfinite(label) & np.isfinite(truth)
    label, truth = label[ok], truth[ok]
    if label.size < 10:
        raise ValueError(f'calibration needs at least 10 labels with truth, got {label.size}')
    design = np.column_stack([np.ones_like(truth), truth])
    (offset, gain), *_ = np.linalg.lstsq(design, label, rcond=None)
    residual = label - (offset + gain * truth)
    r2 = 1.0 - residual.var() / label.var() if label.var() > 0 else float('nan')
    return Calibration(float(offset), float(gain), int(label.size), float(r2), source)


@dataclass
class ClosedLoopConfig:
    policy: str = 'terrain_ssl'
    laps: int = 3
    seed: int = 0
    world: WorldConfig = field(default_factory=WorldConfig)
    advisor: dict = field(default_factory=dict)        # speed_advisor parameters (node names)
    labeler: dict = field(default_factory=dict)        # roughness_labeler parameters
    learner: dict = field(default_factory=dict)        # roughness_learner parameters
    control_period_s: float = 0.05                     # world steps this long between commands
    shock_window_s: float = 0.5                        # IMU window per shock event (s)
    shock_measure: str = 'rms'                         # as the labeler's (peak, rms, wk_rms)
    calibration: Optional[Calibration] = None          # oracle only
    max_sim_s: float = 3600.0                          # give up if the laps take longer

    def advisor_config(self) -> AdvisorConfig:
        names = set(AdvisorConfig.__dataclass_fields__)
        return AdvisorConfig(**{k: v for k, v in self.advisor.items() if k in names})


@dataclass
class ClosedLoopResult:
    policy: str
    shock_limit_mps2: float
    windows: dict          # t_s, shock_mps2, lap (per IMU window)
    steps: dict            # t_s, speed_mps, command_mps, lap, distance_m (per control step)
    lap_times_s: list      # duration of each completed lap
    labels: dict = field(default_factory=dict)   # x, y, roughness of labeled patches (terrain_ssl)
    trajectory: dict = field(default_factory=dict)  # true base_link path: t_s, x_m, y_m, yaw_rad
    info: dict = field(default_factory=dict)

    def summary(self, laps) -> dict:
        """Over-limit events, peak shock, mean speed and mean lap time over the given laps."""
        laps = set(laps)
        in_w = np.isin(self.windows['lap'], list(laps))
        in_s = np.isin(self.steps['lap'], list(laps))
        shocks = self.windows['shock_mps2'][in_w]
        done = [self.lap_times_s[i] for i in sorted(laps) if i < len(self.lap_times_s)]
        time_s = float(np.count_nonzero(in_s)) * self.info.get('control_period_s', 0.05)
        distance = self.steps['distance_m'][in_s]
        return {
            'windows': int(shocks.size),
            'over_limit': int(np.count_nonzero(shocks > self.shock_limit_mps2)),
            'peak_shock_mps2': float(shocks.max()) if shocks.size else float('nan'),
            'mean_speed_mps': float((distance[-1] - distance[0]) / time_s)
            if distance.size > 1 and time_s > 0 else float('nan'),
            'lap_time_s': float(np.mean(done)) if done else float('nan'),
            'laps': len(done),
        }


class ShockMeter:
    """Shock (m/s^2) of consecutive fixed IMU windows, with the labeler's vibration filter."""

    def __init__(self, window_s: float, measure: str):
        self.filter = VibrationFilter()
        self.window_ns = int(window_s * _NS_PER_S)
        self.measure = measure
        self.next_start_ns: Optional[int] = None
        self.windows: list = []  # (end_ns, shock)

    def add(self, t_ns: int, accel, quat) -> None:
        self.filter.add(t_ns, accel, quat)
        if self.next_start_ns is None:
            self.next_start_ns = t_ns
        while t_ns >= self.next_start_ns + self.window_ns:
            end = self.next_start_ns + self.window_ns
            shock, reason = self.filter.shock(self.next_start_ns, end, self.measure)
            if reason == 'pending':
                return
            if shock is not None:
                self.windows.append((end, shock))
            self.next_start_ns = end


def _message_class(msgtype: str):
    package, kind, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{package}.{kind}'), name)


class _NodeStack:
    """The three real nodes in one rclpy context, linked in process, driven in sim time."""

    def __init__(self, config: ClosedLoopConfig):
        import rclpy
        from rclpy.context import Context
        from rclpy.parameter import Parameter

        from terrain_ssl.ros.pipeline import NODE_MODULES, node_class
        from terrain_ssl.ros.wiring import (BagTimeDriver, link_in_process, outlets_of,
                                            subscription_callbacks)

        self.context = Context()
        rclpy.init(args=['terrain-ssl-closed-loop', '--ros-args', '-p', 'use_sim_time:=true'],
                   context=self.context)
        overrides = {'roughness_labeler': config.labeler,
                     'roughness_learner': {'model_path': '', **config.learner},
                     'speed_advisor': config.advisor}
        self.nodes = []
        for module, name in zip(NODE_MODULES, NODE_NAMES):
            params = [Parameter(key, value=value) for key, value in overrides[name].items()]
            self.nodes.append(node_class(module)(context=self.context, parameter_overrides=params))
        self.labeler, self.learner, self.advisor = self.nodes
        link_in_process(self.nodes)
        self.driver = BagTimeDriver(self.nodes)
        self.inputs = subscription_callbacks(self.nodes)
        self.speed_limit: Optional[float] = None
        self.labels: list = []
        for outlet in outlets_of(self.advisor):
            if outlet.topic_name.endswith('terrain_ssl/speed_limit'):
                outlet.connect(self._on_speed_limit)
        for outlet in outlets_of(self.labeler):
            if outlet.topic_name.endswith('terrain_ssl/labeled_patches'):
                outlet.connect(self._on_labels)
        self._types: dict = {}

    def _on_speed_limit(self, msg) -> None:
        self.speed_limit = float(msg.data)

    def _on_labels(self, msg) -> None:
        from terrain_ssl.ros.conversions import pointcloud2_to_array

        cloud = pointcloud2_to_array(msg)
        self.labels.append(np.column_stack([cloud['x'], cloud['y'], cloud['roughness']]))

    def deliver(self, sim_message, message) -> None:
        self.driver.advance_to(sim_message.receive_ns)
        for callback in self.inputs.get(sim_message.topic, ()):
            callback(message)

    def advance_to(self, now_ns: int) -> None:
        self.driver.advance_to(now_ns)

    def close(self) -> None:
        for node in self.nodes:
            node.destroy_node()
        self.context.try_shutdown()


def truth_map(world: World, calibration: Calibration) -> RoughnessMap:
    """The whole terrain's true roughness, in label units, as a map for the advisor."""
    truth = world.terrain.ground_truth
    ny, nx = truth.roughness_rms_m.shape
    cell = truth.cell_size
    ix, iy = np.meshgrid(np.arange(nx), np.arange(ny))
    x = truth.origin_xy_m[0] + (ix.ravel() + 0.5) * cell
    y = truth.origin_xy_m[1] + (iy.ravel() + 0.5) * cell
    rms = truth.roughness_rms_m.ravel()
    return RoughnessMap(np.column_stack([x, y]), calibration.apply(rms), np.zeros(rms.size),
                        cell)


def run_closed_loop(config: ClosedLoopConfig,
                    progress: Optional[Callable[[str], None]] = None) -> ClosedLoopResult:
    """Drive `config.laps` laps under `config.policy`; returns shocks, speeds and lap times."""
    from rclpy.serialization import deserialize_message

    from terrain_ssl.ros.conversions import imu_to_arrays

    if config.policy not in POLICIES:
        raise ValueError(f'policy must be one of {POLICIES}, got {config.policy!r}')
    advisor_config = config.advisor_config()
    world_config = config.world
    if config.policy != 'terrain_ssl':
        world_config = replace(world_config, lidar=None)  # no one looks: 10x faster
    world = World(world_config, seed=config.seed)
    meter = ShockMeter(config.shock_window_s, config.shock_measure)
    stack = _NodeStack(config) if config.policy == 'terrain_ssl' else None
    oracle = None
    if config.policy == 'oracle':
        if config.calibration is None:
            raise ValueError('the oracle needs a calibration (fit_calibration)')
        oracle = SpeedAdvisor(replace(advisor_config, map_memory_s=0.0,
                                      cell_size_m=world.terrain.ground_truth.cell_size))
        oracle_map = truth_map(world, config.calibration)
    types: dict = {}
    step_ns = int(round(config.control_period_s * _NS_PER_S))
    command = advisor_config.cautious_speed_mps if config.policy != 'constant' \
        else advisor_config.v_max_mps
    rows = []
    lap_starts = [0.0]
    last_lap = 0
    wall_start = time.perf_counter()
    t0 = world.time_ns
    try:
        while True:
            for sim_message in world.step(config.control_period_s, command):
                is_imu = sim_message.msgtype == 'sensor_msgs/msg/Imu'
                # Only what someone consumes is decoded (/tf_static: the nodes take extrinsics
                # from parameters, and tf2_msgs may not even be installed).
                if not is_imu and (stack is None or sim_message.topic not in stack.inputs):
                    continue
                cls = types.get(sim_message.msgtype)
                if cls is None:
                    cls = types[sim_message.msgtype] = _message_class(sim_message.msgtype)
                message = deserialize_message(sim_message.cdr_bytes, cls)
                if is_imu:
                    t_ns, accel, _, quat = imu_to_arrays(message)
                    meter.add(t_ns, accel, quat)
                if stack is not None:
                    stack.deliver(sim_message, message)
            state = world.state
            now = world.time_ns
            if stack is not None:
                stack.advance_to(now)
                if stack.speed_limit is not None:
                    command = stack.speed_limit
            elif oracle is not None:
                oracle.set_map(oracle_map, now)
                oracle.set_state(VehicleState(state.x_m, state.y_m, state.yaw_rad,
                                              state.speed_mps), now)
                command = oracle.update(now).speed_limit_mps
            t_s = (now - t0) / _NS_PER_S
            rows.append((t_s, state.speed_mps, command, state.lap, state.distance_m))
            if state.lap != last_lap:
                lap_starts.append(t_s)
                last_lap = state.lap
                if progress:
                    progress(f'{config.policy}: lap {state.lap} done at {t_s:.1f} s sim, '
                             f'{time.perf_counter() - wall_start:.1f} s wall')
            if state.lap >= config.laps or t_s > config.max_sim_s:
                break
        labels = {}
        if stack is not None and stack.labels:
            stacked = np.concatenate(stack.labels)
            labels = {'x': stacked[:, 0], 'y': stacked[:, 1], 'roughness': stacked[:, 2]}
        path = world.ground_truth.trajectory
        trajectory = {'t_s': (np.asarray(path['t_ns'], dtype=np.int64) - t0) / _NS_PER_S,
                      'x_m': np.asarray(path['x_m']), 'y_m': np.asarray(path['y_m']),
                      'yaw_rad': np.asarray(path['yaw_rad'])}
        info = {'wall_s': time.perf_counter() - wall_start, 'sim_s': rows[-1][0],
                'control_period_s': config.control_period_s, 'seed': config.seed}
        if stack is not None:
            info['rejected'] = {node.get_name(): dict(node.rejects.counts)
                                for node in stack.nodes if hasattr(node, 'rejects')}
            info['late_hazards'] = stack.advisor.advisor.late_hazards
    finally:
        if stack is not None:
            stack.close()
    steps = np.array(rows, dtype=np.float64)
    windows = np.array(meter.windows, dtype=np.float64).reshape(-1, 2)
    window_t = (windows[:, 0] - t0) / _NS_PER_S
    lap_of_window = np.searchsorted(np.array(lap_starts), window_t, side='right') - 1
    return ClosedLoopResult(
        policy=config.policy, shock_limit_mps2=advisor_config.shock_limit_mps2,
        windows={'t_s': window_t, 'shock_mps2': windows[:, 1], 'lap': lap_of_window},
        steps={'t_s': steps[:, 0], 'speed_mps': steps[:, 1], 'command_mps': steps[:, 2],
               'lap': steps[:, 3].astype(int), 'distance_m': steps[:, 4]},
        lap_times_s=list(np.diff(lap_starts)), labels=labels, info=info,
        trajectory=trajectory)


def calibration_from_labels(result: ClosedLoopResult, world_config: WorldConfig,
                            seed: int) -> Calibration:
    """Fit label roughness against the true height RMS of the labeled cells of a run."""
    if not result.labels:
        raise ValueError('the run produced no labels to calibrate with')
    truth = World(replace(world_config, lidar=None), seed=seed).terrain.ground_truth
    xy = np.column_stack([result.labels['x'], result.labels['y']])
    return fit_calibration(result.labels['roughness'], truth.roughness_at(xy),
                           source=f'least squares on {result.policy} labels vs truth')


def calibration_drive(world_config: WorldConfig, seed: int, speed_mps: float = 4.0,
                      laps: int = 1, shock_window_s: float = 0.5,
                      shock_measure: str = 'rms') -> Calibration:
    """Calibrate without the labeler: drive at constant speed, and fit shock / speed of each IMU
    window against the mean true height RMS under the four wheels during that window."""
    result = run_closed_loop(ClosedLoopConfig(
        policy='constant', laps=laps, seed=seed, world=world_config,
        advisor={'v_max_mps': float(speed_mps), 'v_min_mps': min(0.5, float(speed_mps)),
                 'cautious_speed_mps': float(speed_mps)},
        shock_window_s=shock_window_s, shock_measure=shock_measure))
    world = World(replace(world_config, lidar=None), seed=seed)
    truth = world.terrain.ground_truth
    vehicle = world.vehicle
    steps, path = result.steps, result.trajectory
    roughness, rms = [], []
    for t_end, shock in zip(result.windows['t_s'], result.windows['shock_mps2']):
        inside = (steps['t_s'] > t_end - shock_window_s) & (steps['t_s'] <= t_end)
        speed = steps['speed_mps'][inside]
        if speed.size == 0 or speed.mean() < 0.5 * speed_mps:
            continue  # starting from rest
        # Wheel contact points during the window: rear axle (base_link) and front, both tracks.
        on_path = (path['t_s'] > t_end - shock_window_s) & (path['t_s'] <= t_end)
        x, y, yaw = path['x_m'][on_path], path['y_m'][on_path], path['yaw_rad'][on_path]
        wheels = []
        for along in (0.0, vehicle.wheelbase_m):
            for side in (-0.5 * vehicle.track_m, 0.5 * vehicle.track_m):
                wheels.append(np.column_stack([x + along * np.cos(yaw) - side * np.sin(yaw),
                                               y + along * np.sin(yaw) + side * np.cos(yaw)]))
        rms.append(float(np.nanmean(truth.roughness_at(np.concatenate(wheels)))))
        roughness.append(shock / float(speed.mean()))
    return fit_calibration(roughness, rms, source=f'calibration drive at {speed_mps} m/s, '
                           f'{shock_measure} over {shock_window_s} s IMU windows')


def format_table(results: list) -> str:
    """One row per policy for lap 1 and for laps 2+."""
    header = (f'{"policy":<12} {"laps":<5} {"windows":>7} {"over-limit":>10} '
              f'{"peak shock":>11} {"mean speed":>11} {"lap time":>9}')
    lines = [header, '-' * len(header)]
    for laps_name, laps in (('1', [0]), ('2+', None)):
        for result in results:
            chosen = laps if laps is not None else range(1, max(len(result.lap_times_s), 2))
            s = result.summary(chosen)
            lines.append(f'{result.policy:<12} {laps_name:<5} {s["windows"]:>7d} '
                         f'{s["over_limit"]:>10d} {s["peak_shock_mps2"]:>7.2f} m/s2 '
                         f'{s["mean_speed_mps"]:>7.2f} m/s {s["lap_time_s"]:>7.1f} s')
    return '\n'.join(lines)


__all__ = ['POLICIES', 'Calibration', 'fit_calibration', 'ClosedLoopConfig', 'ClosedLoopResult',
           'ShockMeter', 'run_closed_loop', 'calibration_from_labels', 'calibration_drive',
           'truth_map', 'format_table']
