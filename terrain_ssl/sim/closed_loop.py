"""Closed loop: the simulated vehicle drives laps at a speed policy's command; shocks are counted.

Policies:
    constant     always v_max.
    terrain_ssl  the three real nodes (roughness_labeler -> roughness_learner -> speed_advisor),
                 cold start, learning live; the vehicle drives at the published speed limit.
    oracle       the same speed rule (terrain_ssl.core.advisor.SpeedAdvisor, same settings),
                 fed a map of the terrain's *measured* roughness: per cell the label the labeler
                 would give it (shock over the footprint crossing / speed), from constant-speed
                 calibration drives without lidar: the mean over the cell's crossings, and as
                 its uncertainty their spread (the same rule adds uncertainty_weight x spread, as
                 it adds the learner's uncertainty for terrain_ssl: the shock of one crossing
                 scatters about the mean even when the terrain is known exactly)
                 (`oracle_calibration_drive`, `measured_roughness_map`).
    oracle-mean  the same without the spread: the mean alone decides (faster, more events).
                 Older alternative: the
                 true height RMS per cell through a fitted line (`Calibration`, `truth_map`);
                 it misses what the wheels feel (R^2 ~0.3) and is a weak oracle.

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
SPEED_SOURCES = ('advisor', 'mask')
NODE_NAMES = ('roughness_labeler', 'roughness_learner', 'speed_advisor')  # NODE_MODULES order
_NS_PER_S = 1_000_000_000
_LOG_FLOOR = 1e-3  # (m/s^2)/(m/s), as the learner's roughness_floor: log of a zero label


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
    calibration: Optional[Calibration] = None          # oracle: height RMS -> label units
    oracle_map: Optional[RoughnessMap] = None          # oracle: measured roughness (preferred)
    imu_history_s: float = 10.0                        # filtered IMU kept for shock queries (s)
    max_sim_s: float = 3600.0                          # give up if the laps take longer
    follow_route: bool = True                          # advisors get the route as their plan
    #                                                    (as a planner would publish it), so the
    #                                                    corridor follows the curves
    speed_source: str = 'advisor'                      # terrain_ssl drives at: 'advisor' (its
    #                                                    speed_limit) or 'mask' (speed_mask read
    #                                                    at base_link, as Nav2's SpeedFilter)

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
    vibration: Optional[VibrationFilter] = None     # filtered IMU of the last imu_history_s

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

    def __init__(self, window_s: float, measure: str, history_s: float = 10.0):
        self.filter = VibrationFilter(history_s=history_s)
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
        self.speed_mask = None
        self.labels: list = []
        for outlet in outlets_of(self.advisor):
            if outlet.topic_name.endswith('terrain_ssl/speed_limit'):
                outlet.connect(self._on_speed_limit)
            if config.speed_source == 'mask' and outlet.topic_name.endswith('speed_mask'):
                outlet.connect(self._on_speed_mask)
        for outlet in outlets_of(self.labeler):
            if outlet.topic_name.endswith('terrain_ssl/labeled_patches'):
                outlet.connect(self._on_labels)
        self._types: dict = {}

    def set_plan(self, xy_m: np.ndarray, frame_id: str = 'odom') -> None:
        """Hand the advisor node a nav_msgs/Path, as a planner would publish it."""
        from geometry_msgs.msg import PoseStamped
        from nav_msgs.msg import Path

        plan = Path()
        plan.header.frame_id = frame_id
        for x, y in xy_m:
            pose = PoseStamped()
            pose.header.frame_id = frame_id
            pose.pose.position.x, pose.pose.position.y = float(x), float(y)
            pose.pose.orientation.w = 1.0
            plan.poses.append(pose)
        self.advisor.on_plan(plan)

    def _on_speed_limit(self, msg) -> None:
        self.speed_limit = float(msg.data)

    def _on_speed_mask(self, msg) -> None:
        self.speed_mask = msg

    def mask_speed(self, x_m: float, y_m: float, v_max_mps: float) -> Optional[float]:
        """The speed Nav2's SpeedFilter would allow at base_link (x, y) with the shipped filter
        info (type 1: percent of v_max, base 0, multiplier 1); None before the first mask."""
        mask = self.speed_mask
        if mask is None:
            return None
        info = mask.info
        column = int(np.floor((x_m - info.origin.position.x) / info.resolution))
        row = int(np.floor((y_m - info.origin.position.y) / info.resolution))
        if not (0 <= column < info.width and 0 <= row < info.height):
            return v_max_mps
        value = mask.data[row * info.width + column]
        return v_max_mps if value <= 0 else v_max_mps * value / 100.0  # 0, -1: no limit

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
    if config.speed_source not in SPEED_SOURCES:
        raise ValueError(f'speed_source must be one of {SPEED_SOURCES}, got '
                         f'{config.speed_source!r}')
    advisor_config = config.advisor_config()
    world_config = config.world
    if config.policy != 'terrain_ssl':
        world_config = replace(world_config, lidar=None)  # no one looks: 10x faster
    world = World(world_config, seed=config.seed)
    meter = ShockMeter(config.shock_window_s, config.shock_measure, config.imu_history_s)
    stack = _NodeStack(config) if config.policy == 'terrain_ssl' else None
    oracle = None
    if config.policy == 'oracle':
        if config.oracle_map is not None:
            oracle_map = config.oracle_map
        elif config.calibration is not None:
            oracle_map = truth_map(world, config.calibration)
        else:
            raise ValueError('the oracle needs an oracle_map (measured_roughness_map) or a '
                             'calibration (fit_calibration)')
        oracle = SpeedAdvisor(replace(advisor_config, map_memory_s=0.0,
                                      cell_size_m=oracle_map.cell_size_m))
    if config.follow_route:
        # The loop's centreline, continued 60 m past its start so the corridor wraps around.
        route = world_config.terrain.route
        _, route_x, route_y, _ = route.pose_at(np.arange(0.0, route.length_m + 60.0, 0.5))
        route_xy = np.column_stack([route_x, route_y])
        if stack is not None:
            stack.set_plan(route_xy)
        if oracle is not None:
            oracle.set_path(route_xy)
    types: dict = {}
    command = advisor_config.cautious_speed_mps if config.policy != 'constant' \
        else advisor_config.v_max_mps
    rows = []
    reasons: dict = {}   # (lap, advisor reason) -> control steps: why terrain_ssl drove so
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
                if config.speed_source == 'mask':
                    from_mask = stack.mask_speed(state.x_m, state.y_m, advisor_config.v_max_mps)
                    command = command if from_mask is None else from_mask
                elif stack.speed_limit is not None:
                    command = stack.speed_limit
                advice = stack.advisor.advisor.last_advice
                key = (state.lap, advice.reason if advice is not None else 'none')
                reasons[key] = reasons.get(key, 0) + 1
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
                      'yaw_rad': np.asarray(path['yaw_rad']),
                      'speed_mps': np.asarray(path['speed_mps']),
                      't_ns': np.asarray(path['t_ns'], dtype=np.int64)}
        info = {'wall_s': time.perf_counter() - wall_start, 'sim_s': rows[-1][0],
                'shock_window_s': config.shock_window_s,
                'control_period_s': config.control_period_s, 'seed': config.seed}
        if stack is not None:
            info['rejected'] = {node.get_name(): dict(node.rejects.counts)
                                for node in stack.nodes if hasattr(node, 'rejects')}
            info['late_hazards'] = stack.advisor.advisor.late_hazards
            info['advice_reasons'] = reasons
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
        trajectory=trajectory, vibration=meter.filter)


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


@dataclass(frozen=True)
class Footprint:
    """The rectangle under the vehicle that makes the IMU shake (the labeler's footprint.*)."""

    length_m: float = 2.8       # along base_link x
    width_m: float = 1.8        # along base_link y
    offset_x_m: float = 1.3     # its centre ahead of base_link


def covered_cells(xy_m, yaw_rad, footprint: Footprint, cell_size_m: float,
                  origin_xy_m=(0.0, 0.0)):
    """Grid cells under the footprint at each pose, as the labeler's association decides: a cell
    is covered while its centre lies inside the footprint rectangle.

    Returns (pose index (P,), cell index (P, 2) int: centre = origin + (index + 0.5) * cell).
    """
    xy = np.asarray(xy_m, dtype=np.float64).reshape(-1, 2)
    yaw = np.asarray(yaw_rad, dtype=np.float64)
    origin = np.asarray(origin_xy_m, dtype=np.float64)
    reach = float(np.hypot(abs(footprint.offset_x_m) + 0.5 * footprint.length_m,
                           0.5 * footprint.width_m))
    n_reach = int(np.ceil(reach / cell_size_m)) + 1
    span = np.arange(-n_reach, n_reach + 1)
    dx_cells, dy_cells = (a.ravel() for a in np.meshgrid(span, span))
    poses, cells = [np.zeros(0, dtype=np.int64)], [np.zeros((0, 2), dtype=np.int64)]
    for lo in range(0, xy.shape[0], 2000):  # chunks bound the (poses x candidates) arrays
        part = slice(lo, min(lo + 2000, xy.shape[0]))
        base = np.floor((xy[part] - origin) / cell_size_m).astype(np.int64)
        ix = base[:, 0, None] + dx_cells[None, :]
        iy = base[:, 1, None] + dy_cells[None, :]
        dx = origin[0] + (ix + 0.5) * cell_size_m - xy[part, 0, None]
        dy = origin[1] + (iy + 0.5) * cell_size_m - xy[part, 1, None]
        c, s = np.cos(yaw[part])[:, None], np.sin(yaw[part])[:, None]
        inside = (np.abs(c * dx + s * dy - footprint.offset_x_m) <= 0.5 * footprint.length_m) & \
            (np.abs(-s * dx + c * dy) <= 0.5 * footprint.width_m)
        rows, cols = np.nonzero(inside)
        poses.append(rows + lo)
        cells.append(np.column_stack([ix[rows, cols], iy[rows, cols]]))
    return np.concatenate(poses), np.concatenate(cells)


def footprint_crossings(t_ns, xy_m, yaw_rad, footprint: Footprint, cell_size_m: float,
                        origin_xy_m=(0.0, 0.0)):
    """Every passage of the footprint over a grid cell (`covered_cells`), from the first to the
    last covered pose (a pose not covering the cell in between starts a new crossing).

    Returns (cell index (K, 2), enter_ns (K,), exit_ns (K,)).
    """
    t_ns = np.asarray(t_ns, dtype=np.int64)
    pose, cell = covered_cells(xy_m, yaw_rad, footprint, cell_size_m, origin_xy_m)
    order = np.lexsort((pose, cell[:, 1], cell[:, 0]))
    pose, cell = pose[order], cell[order]
    new = np.ones(pose.size, dtype=bool)
    new[1:] = (cell[1:] != cell[:-1]).any(axis=1) | (pose[1:] != pose[:-1] + 1)
    first = np.flatnonzero(new)
    last = np.append(first[1:], pose.size) - 1
    return cell[first], t_ns[pose[first]], t_ns[pose[last]]


def _cell_map(cell_index, values, cell_size_m, origin_xy_m, reduce: str) -> RoughnessMap:
    """One value per cell as a RoughnessMap: reduce='mean' or 'max' of its values (uncertainty
    0), or 'mean_spread': the mean, and as uncertainty its one-sigma spread in log space like
    the learner's (mean * expm1(std of log values); 0 for a cell crossed once)."""
    ok = np.isfinite(values)
    keys, inverse = np.unique(cell_index[ok], axis=0, return_inverse=True)
    inverse = inverse.ravel()
    uncertainty = np.zeros(keys.shape[0])
    if reduce in ('mean', 'mean_spread'):
        count = np.bincount(inverse)
        value = np.bincount(inverse, weights=values[ok]) / count
        if reduce == 'mean_spread':
            log_value = np.log(values[ok] + _LOG_FLOOR)
            log_mean = np.bincount(inverse, weights=log_value) / count
            log_var = np.bincount(inverse, weights=(log_value - log_mean[inverse]) ** 2) / \
                np.maximum(count - 1, 1)
            uncertainty = value * np.expm1(np.sqrt(log_var))
    else:
        value = np.full(keys.shape[0], -np.inf)
        np.maximum.at(value, inverse, values[ok])
    xy = np.asarray(origin_xy_m) + (keys + 0.5) * cell_size_m
    return RoughnessMap(xy, value, uncertainty, cell_size_m)


def measured_roughness_map(result: ClosedLoopResult, footprint: Footprint, cell_size_m: float,
                           origin_xy_m=(0.0, 0.0), min_speed_mps: float = 1.0,
                           min_window_s: float = 0.1, measure: str = 'rms',
                           per: str = 'crossing') -> RoughnessMap:
    """Shock per speed ((m/s^2)/(m/s)) measured per cell on a drive: the terrain's true roughness.

    per='crossing': what the labeler would label: for every footprint crossing of a cell
        (`footprint_crossings` on the true trajectory), the shock (`measure` of the band-passed
        vertical IMU signal over the crossing, at least `min_window_s` long) over the mean true
        speed; per cell the mean over its crossings, and their spread as the uncertainty.
    per='window': what the over-limit count sees: for every fixed IMU window of the run
        (`shock_window_s`), its shock over its mean speed, given to every cell under the
        footprint during that window; per cell the max over its windows (the worst 0.5 s the
        cell took part in).
    Windows or crossings slower than `min_speed_mps` give no value. For per='crossing' the run
    must have kept its IMU signal (`imu_history_s` >= the run's length).
    """
    if per not in ('crossing', 'window'):
        raise ValueError(f"per must be 'crossing' or 'window', got {per!r}")
    path = result.trajectory
    t_ns, speed = path['t_ns'], path['speed_mps']
    xy = np.column_stack([path['x_m'], path['y_m']])
    cumulative = np.concatenate([[0.0], np.cumsum(speed)])
    if per == 'window':
        pose, cell = covered_cells(xy, path['yaw_rad'], footprint, cell_size_m, origin_xy_m)
        end_s = result.windows['t_s']
        window_s = result.info.get('shock_window_s', 0.5)
        lo = np.searchsorted(path['t_s'], end_s - window_s, side='right')
        hi = np.searchsorted(path['t_s'], end_s, side='right')
        mean_speed = (cumulative[hi] - cumulative[lo]) / np.maximum(hi - lo, 1)
        window_r = np.where((hi > lo) & (mean_speed >= min_speed_mps),
                            result.windows['shock_mps2'] / np.maximum(mean_speed, 1e-9), np.nan)
        # The window each pose belongs to: the first window ending at or after it.
        of_pose = np.searchsorted(end_s, path['t_s'][pose], side='left')
        inside = of_pose < end_s.size
        inside[inside] &= path['t_s'][pose[inside]] > end_s[of_pose[inside]] - window_s
        return _cell_map(cell[inside], window_r[of_pose[inside]], cell_size_m, origin_xy_m,
                         'max')
    cell, roughness = crossing_roughness(result, footprint, cell_size_m, origin_xy_m,
                                         min_speed_mps, min_window_s, measure)
    return _cell_map(cell, roughness, cell_size_m, origin_xy_m, 'mean_spread')


def crossing_roughness(result: ClosedLoopResult, footprint: Footprint, cell_size_m: float,
                       origin_xy_m=(0.0, 0.0), min_speed_mps: float = 1.0,
                       min_window_s: float = 0.1, measure: str = 'rms'):
    """(cell index (K, 2), roughness (K,)) of every footprint crossing of a drive: what the
    labeler would label there (NaN where too slow or no IMU signal)."""
    if result.vibration is None:
        raise ValueError('the run kept no IMU signal (result.vibration is None)')
    path = result.trajectory
    t_ns, speed = path['t_ns'], path['speed_mps']
    xy = np.column_stack([path['x_m'], path['y_m']])
    cumulative = np.concatenate([[0.0], np.cumsum(speed)])
    cell, enter, exit_ = footprint_crossings(t_ns, xy, path['yaw_rad'], footprint, cell_size_m,
                                             origin_xy_m)
    half = int(0.5 * min_window_s * _NS_PER_S)
    middle = (enter + exit_) // 2
    start, end = np.minimum(enter, middle - half), np.maximum(exit_, middle + half)
    lo = np.searchsorted(t_ns, start, side='left')
    hi = np.searchsorted(t_ns, end, side='right')
    mean_speed = (cumulative[hi] - cumulative[lo]) / np.maximum(hi - lo, 1)
    roughness = np.full(cell.shape[0], np.nan)
    for k in np.flatnonzero((hi > lo) & (mean_speed >= min_speed_mps)):
        shock, _ = result.vibration.shock(int(start[k]), int(end[k]), measure)
        if shock is not None:
            roughness[k] = shock / mean_speed[k]
    return cell, roughness


def oracle_calibration_drive(world_config: WorldConfig, seed: int, speeds_mps=(2.0, 4.0),
                             laps: int = 1,
                             footprint: Footprint = Footprint(), min_speed_mps: float = 1.0,
                             shock_measure: str = 'rms', cell_size_m: float = 0.5,
                             per: str = 'crossing', shock_window_s: float = 0.5,
                             progress: Optional[Callable[[str], None]] = None) -> RoughnessMap:
    """The oracle's knowledge of the terrain: drive `laps` laps at each constant speed (no
    lidar) and measure per cell what the labeler measures there (`measured_roughness_map`).
    per='crossing': the mean over all the cell's crossings at all speeds, with their spread as
    the uncertainty; per='window': the mean over the speeds of the worst window per cell.
    This is the terrain's true shock per speed, in the learner's own units."""
    maps, crossings = [], []
    for speed in speeds_mps:
        speed = float(speed)
        result = run_closed_loop(ClosedLoopConfig(
            policy='constant', laps=laps, seed=seed, world=world_config, imu_history_s=1e5,
            advisor={'v_max_mps': speed, 'v_min_mps': min(0.5, speed),
                     'cautious_speed_mps': speed}, shock_measure=shock_measure,
            shock_window_s=shock_window_s), progress=progress)
        truth = World(replace(world_config, lidar=None), seed=seed).terrain.ground_truth
        if per == 'crossing':
            crossings.append(crossing_roughness(result, footprint, cell_size_m,
                                                truth.origin_xy_m, min_speed_mps,
                                                measure=shock_measure))
        else:
            maps.append(measured_roughness_map(result, footprint, cell_size_m,
                                               truth.origin_xy_m, min_speed_mps,
                                               measure=shock_measure, per=per))
    if per == 'crossing':
        return _cell_map(np.concatenate([cell for cell, _ in crossings]),
                         np.concatenate([value for _, value in crossings]), cell_size_m,
                         truth.origin_xy_m, 'mean_spread')
    return average_maps(maps)


def average_maps(maps) -> RoughnessMap:
    """Cell-wise mean roughness of maps on the same grid (a cell in one map keeps its value)."""
    cell = maps[0].cell_size_m
    xy = np.concatenate([m.centres_xy_m for m in maps])
    values = np.concatenate([m.roughness for m in maps])
    index = np.rint(xy / cell * 2.0).astype(np.int64)  # half-cell keys: same centres, same key
    keys, first, inverse = np.unique(index, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    mean = np.bincount(inverse, weights=values) / np.bincount(inverse)
    return RoughnessMap(xy[first], mean, np.zeros(keys.shape[0]), cell)


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


# The bench / CLI settings. The simulated vehicle: base_link on the rear axle, front axle 2.6 m
# ahead, track 1.6 m. v_min = the labeler's label.min_speed (1 m/s): slower, no labels come.
BENCH_ADVISOR = {'shock_limit_mps2': 2.0, 'v_max_mps': 6.0, 'v_min_mps': 1.0,
                 'cautious_speed_mps': 1.5, 'front_offset_m': 2.6,
                 'uncertainty_weight': AdvisorConfig.uncertainty_weight,
                 'map_memory_s': 20.0}
BENCH_LABELER = {'footprint.length': 3.0, 'footprint.offset_x': 1.3, 'footprint.width': 1.8}
BENCH_LEARNER: dict = {}
ORACLE_SPEEDS_MPS = (2.0, 4.0)
TARGET_FEWER_EVENTS = 0.8      # laps 2+: terrain_ssl over-limit events <= 20% of constant's
TARGET_LAP_TIME_RATIO = 1.25   # laps 2+: terrain_ssl lap time <= 1.25 x the oracle's


def _labeler_footprint(labeler: dict) -> Footprint:
    default = Footprint()
    return Footprint(float(labeler.get('footprint.length', default.length_m)),
                     float(labeler.get('footprint.width', default.width_m)),
                     float(labeler.get('footprint.offset_x', default.offset_x_m)))


def compare_policies(laps: int = 3, seed: int = 0, world: Optional[WorldConfig] = None,
                     advisor: Optional[dict] = None, labeler: Optional[dict] = None,
                     learner: Optional[dict] = None, oracle_speeds_mps=ORACLE_SPEEDS_MPS,
                     with_safe_oracle: bool = True,
                     progress: Optional[Callable[[str], None]] = None,
                     speed_source: str = 'advisor') -> dict:
    """Run constant v_max, terrain_ssl and the oracle(s) for `laps` laps; returns
    {'results': [ClosedLoopResult...], 'report': str (table, oracle definition, targets),
    'fewer_events': float, 'lap_time_ratio': float, 'passed': bool}.

    The oracle drives by the same SpeedAdvisor (same settings) on a map of the terrain's
    measured shock per speed: one constant-speed calibration drive (no lidar) of `laps` laps per
    speed in `oracle_speeds_mps` (so it has crossed the lines the evaluation laps drive), each
    cell's value the labeler's own label there (shock over the footprint crossing / speed):
    the mean over its crossings, with their spread as the uncertainty ('oracle'), or without
    it ('oracle-mean'). 'oracle-max' (with `with_safe_oracle`) uses instead the worst 0.5 s IMU
    window each cell took part in.
    """
    world = world if world is not None else WorldConfig()
    advisor = dict(BENCH_ADVISOR if advisor is None else advisor)
    labeler = dict(BENCH_LABELER if labeler is None else labeler)
    learner = dict(BENCH_LEARNER if learner is None else learner)
    common = dict(laps=laps, seed=seed, world=world, advisor=advisor, labeler=labeler,
                  learner=learner)
    footprint = _labeler_footprint(labeler)
    min_speed = float(labeler.get('label.min_speed', 1.0))
    learned = run_closed_loop(ClosedLoopConfig(policy='terrain_ssl', speed_source=speed_source,
                                               **common), progress)
    constant = run_closed_loop(ClosedLoopConfig(policy='constant', **common), progress)
    results = [constant, learned]
    measured = oracle_calibration_drive(world, seed, oracle_speeds_mps, laps=laps,
                                        footprint=footprint, min_speed_mps=min_speed)
    oracle_maps = {'oracle': measured,
                   'oracle-mean': RoughnessMap(measured.centres_xy_m, measured.roughness,
                                               np.zeros(len(measured)), measured.cell_size_m)}
    if with_safe_oracle:
        oracle_maps['oracle-max'] = oracle_calibration_drive(
            world, seed, oracle_speeds_mps, laps=laps, footprint=footprint,
            min_speed_mps=min_speed, per='window')
    for name in oracle_maps:
        result = run_closed_loop(ClosedLoopConfig(policy='oracle', oracle_map=oracle_maps[name],
                                                  **common), progress)
        result.policy = name
        results.append(result)
    later = range(1, laps)
    s_const, s_learn, s_oracle = (r.summary(later) for r in results[:3])
    fewer = 1.0 - s_learn['over_limit'] / max(s_const['over_limit'], 1)
    ratio = s_learn['lap_time_s'] / s_oracle['lap_time_s']
    speeds = ', '.join(f'{v:g}' for v in oracle_speeds_mps)
    lines = [
        f'closed loop: {laps} laps of {world.terrain.route.length_m:.0f} m, seed {seed}, shock '
        f'limit {advisor["shock_limit_mps2"]} m/s^2 (rms over 0.5 s IMU windows), v_min '
        f'{advisor["v_min_mps"]}, v_max {advisor["v_max_mps"]} m/s, uncertainty weight '
        f'{advisor.get("uncertainty_weight", AdvisorConfig().uncertainty_weight)}',
        'constant: always v_max.  terrain_ssl: the three real nodes, cold start, learning live'
        + (', driving at the speed_mask under base_link (as Nav2\'s SpeedFilter).'
           if speed_source == 'mask' else ', driving at the advisor\'s speed_limit.'),
        f'oracle: the same speed rule (advisor, same settings) on the measured roughness of '
        f'the terrain: per cell the labeler\'s label (shock over the footprint crossing / '
        f'speed) from constant-speed calibration drives at {speeds} m/s ({laps} laps each, the '
        f'lines the laps drive): the mean over the crossings, and their spread as its '
        f'uncertainty (weighted like the learner\'s).',
        'oracle-mean: the same map without the spread (the mean alone decides).',
    ]
    if with_safe_oracle:
        lines.append('oracle-max: the same, but per cell the worst 0.5 s IMU window '
                     '(shock / speed) it took part in: the slowest a perfect map needs to be.')
    lines += [format_table(results),
              f'laps 2+: terrain_ssl has {100 * fewer:.0f}% fewer over-limit events than constant '
              f'(target >= {100 * TARGET_FEWER_EVENTS:.0f}%): '
              f'{"PASS" if fewer >= TARGET_FEWER_EVENTS else "FAIL"}',
              f'laps 2+: terrain_ssl lap time = {ratio:.2f} x oracle (target <= '
              f'{TARGET_LAP_TIME_RATIO}): {"PASS" if ratio <= TARGET_LAP_TIME_RATIO else "FAIL"}']
    for other in results[3:]:
        lines.append(f'laps 2+: terrain_ssl lap time = '
                     f'{s_learn["lap_time_s"] / other.summary(later)["lap_time_s"]:.2f} x '
                     f'{other.policy}')
    later_reasons: dict = {}
    for (lap, reason), count in learned.info.get('advice_reasons', {}).items():
        if lap >= 1:
            later_reasons[reason] = later_reasons.get(reason, 0) + count
    lines.append(f'terrain_ssl advisor reasons, laps 2+ (control steps): {later_reasons}')
    lines.append(f'terrain_ssl late hazards (limit dropped faster than planned): '
                 f'{learned.info.get("late_hazards")}; rejects: {learned.info.get("rejected")}')
    return {'results': results, 'report': '\n'.join(lines), 'fewer_events': fewer,
            'lap_time_ratio': ratio, 'oracle_maps': oracle_maps,
            'passed': fewer >= TARGET_FEWER_EVENTS and ratio <= TARGET_LAP_TIME_RATIO}


__all__ = ['POLICIES', 'Calibration', 'fit_calibration', 'ClosedLoopConfig', 'ClosedLoopResult',
           'ShockMeter', 'run_closed_loop', 'calibration_from_labels', 'calibration_drive',
           'truth_map', 'format_table', 'Footprint', 'footprint_crossings', 'covered_cells',
           'crossing_roughness', 'measured_roughness_map', 'oracle_calibration_drive',
           'average_maps', 'compare_policies', 'BENCH_ADVISOR', 'BENCH_LABELER',
           'BENCH_LEARNER']
