"""Closed loop: the simulated vehicle drives laps at a speed policy's command; shocks are counted.

Policies:
    constant     always v_max.
    terrain_ssl  the three real nodes (roughness_labeler -> roughness_learner -> speed_advisor),
                 cold start, learning live; the vehicle drives at the published speed limit.
    oracle       the same speed rule (terrain_ssl.core.advisor.SpeedAdvisor, same settings) on a
                 given map of the terrain's roughness (`oracle_map`; terrain_ssl.sim.oracle
                 measures one).

The nodes are driven deterministically in sim time: each SimMessage is deserialised with rclpy
and handed to the matching subscription callback; node outputs reach the next node through
in-process links (LinkedPublisher.connect); timers fire at sim-time intervals
(wiring.BagTimeDriver).

Shock: the labeler's own vibration filter (terrain_ssl.core.vibration) over fixed IMU windows of
`shock_window_s`; a window is an over-limit event when its shock exceeds shock_limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import numpy as np
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Path
from rclpy.context import Context
from rclpy.parameter import Parameter
from rclpy.serialization import deserialize_message
import rclpy

from terrain_ssl.core.advisor import AdvisorConfig, SpeedAdvisor, VehicleState
from terrain_ssl.core.roughness_map import RoughnessMap
from terrain_ssl.core.vibration import VibrationFilter
from terrain_ssl.replay.bag import message_class
from terrain_ssl.ros.conversions import imu_to_arrays, pointcloud2_to_array
from terrain_ssl.ros.pipeline import NODE_MODULES, node_class, node_parameter_names
from terrain_ssl.ros.wiring import (BagTimeDriver, link_in_process, linked_publishers_of,
                                    subscription_callbacks)
from terrain_ssl.sim.world import World, WorldConfig

POLICIES = ('constant', 'terrain_ssl', 'oracle')
SPEED_SOURCES = ('advisor', 'mask')
NODE_NAMES = ('roughness_labeler', 'roughness_learner', 'speed_advisor')  # NODE_MODULES order
NS_PER_S = 1_000_000_000


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
    oracle_map: Optional[RoughnessMap] = None          # oracle: the terrain's roughness
    imu_history_s: float = 10.0                        # filtered IMU kept for shock queries (s)
    max_sim_s: float = 3600.0                          # give up if the laps take longer
    follow_route: bool = True                          # advisors get the route as their plan
    #                                                    (as a planner would publish it), so the
    #                                                    corridor follows the curves
    speed_source: str = 'advisor'                      # terrain_ssl drives at: 'advisor' (its
    #                                                    speed_limit) or 'mask' (speed_mask read
    #                                                    at base_link, as Nav2's SpeedFilter)
    speed_filter_period_s: float = 0.05                # mask: the SpeedFilter reads the mask
    #                                                    once per local costmap update
    #                                                    (update_frequency 20 Hz, as shipped)

    def check(self) -> None:
        """ValueError for an unknown policy or a parameter no node declares (a misspelt name
        would otherwise be dropped and the run would use the default without a word)."""
        if self.policy not in POLICIES:
            raise ValueError(f'policy must be one of {POLICIES}, got {self.policy!r}')
        if self.speed_source not in SPEED_SOURCES:
            raise ValueError(f'speed_source must be one of {SPEED_SOURCES}, got '
                             f'{self.speed_source!r}')
        for module, name in zip(NODE_MODULES, NODE_NAMES):
            overrides = {'roughness_labeler': self.labeler, 'roughness_learner': self.learner,
                         'speed_advisor': self.advisor}[name]
            unknown = sorted(set(overrides) - node_parameter_names(module))
            if unknown:
                raise ValueError(f'{name} has no parameter {", ".join(unknown)}')
        if not self.speed_filter_period_s > 0.0:
            raise ValueError(f'speed_filter_period_s must be > 0, got '
                             f'{self.speed_filter_period_s}')
        if self.policy == 'oracle' and self.oracle_map is None:
            raise ValueError('the oracle needs an oracle_map (terrain_ssl.sim.oracle)')

    def advisor_config(self) -> AdvisorConfig:
        """The speed rule's settings, for the oracle: the advisor parameters that are also
        AdvisorConfig fields (the others, like rate_hz, belong to the node alone)."""
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
        self.window_ns = int(window_s * NS_PER_S)
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


class NodeStack:
    """The three real nodes in one rclpy context, linked in process, driven in sim time."""

    def __init__(self, config: ClosedLoopConfig):
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
        for publisher in linked_publishers_of(self.advisor):
            if publisher.topic_name.endswith('terrain_ssl/speed_limit'):
                publisher.connect(self._on_speed_limit)
            if config.speed_source == 'mask' and publisher.topic_name.endswith('speed_mask'):
                publisher.connect(self._on_speed_mask)
        for publisher in linked_publishers_of(self.labeler):
            if publisher.topic_name.endswith('terrain_ssl/labeled_patches'):
                publisher.connect(self._on_labels)
        self._types: dict = {}

    def set_plan(self, xy_m: np.ndarray, frame_id: str = 'odom') -> None:
        """Hand the advisor node a nav_msgs/Path, as a planner would publish it."""
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


def run_closed_loop(config: ClosedLoopConfig,
                    progress: Optional[Callable[[str], None]] = None) -> ClosedLoopResult:
    """Drive `config.laps` laps under `config.policy`; returns shocks, speeds and lap times."""
    return ClosedLoopRun(config, progress).run()


class ClosedLoopRun:
    """One closed-loop run, as a list of steps (`run`)."""

    def __init__(self, config: ClosedLoopConfig,
                 progress: Optional[Callable[[str], None]] = None):
        config.check()
        self.config = config
        self.progress = progress
        self.advisor_config = config.advisor_config()
        self.world_config = config.world
        if config.policy != 'terrain_ssl':
            self.world_config = replace(self.world_config, lidar=None)  # no one looks at it
        self.stack: Optional[NodeStack] = None
        self.oracle: Optional[SpeedAdvisor] = None
        self.rows: list = []   # per control step: t_s, speed, command, lap, distance
        self.reasons: dict = {}  # (lap, advisor reason) -> control steps: why terrain_ssl drove so
        self.lap_starts = [0.0]
        self.message_types: dict = {}
        self.filter_limit: Optional[float] = None  # mask: the SpeedFilter's latest limit, m/s
        self.filter_due_ns: Optional[int] = None   # mask: when it next reads the mask

    def run(self) -> ClosedLoopResult:
        self.world = World(self.world_config, seed=self.config.seed)
        self.meter = ShockMeter(self.config.shock_window_s, self.config.shock_measure,
                                self.config.imu_history_s)
        self.wall_start = time.perf_counter()
        self.t0 = self.world.time_ns
        try:
            self._start_policy()
            self._give_route_as_plan()
            self._drive_laps()
            info = self._run_info()
        finally:
            if self.stack is not None:
                self.stack.close()
        return self._result(info)

    def _start_policy(self) -> None:
        if self.config.policy == 'terrain_ssl':
            self.stack = NodeStack(self.config)
        elif self.config.policy == 'oracle':
            self.oracle = SpeedAdvisor(replace(self.advisor_config, map_memory_s=0.0,
                                               cell_size_m=self.config.oracle_map.cell_size_m))

    def _give_route_as_plan(self) -> None:
        if not self.config.follow_route:
            return
        # The loop's centreline, continued 60 m past its start so the corridor wraps around.
        route = self.world_config.terrain.route
        _, route_x, route_y, _ = route.pose_at(np.arange(0.0, route.length_m + 60.0, 0.5))
        route_xy = np.column_stack([route_x, route_y])
        if self.stack is not None:
            self.stack.set_plan(route_xy)
        if self.oracle is not None:
            self.oracle.set_path(route_xy)

    def _drive_laps(self) -> None:
        config, world = self.config, self.world
        command = self.advisor_config.cautious_speed_mps if config.policy != 'constant' \
            else self.advisor_config.v_max_mps
        last_lap = 0
        while True:
            for sim_message in world.step(config.control_period_s, command):
                self._deliver(sim_message)
            state = world.state
            command = self._command(state, world.time_ns, command)
            t_s = (world.time_ns - self.t0) / NS_PER_S
            self.rows.append((t_s, state.speed_mps, command, state.lap, state.distance_m))
            if state.lap != last_lap:
                self.lap_starts.append(t_s)
                last_lap = state.lap
                if self.progress:
                    self.progress(f'{config.policy}: lap {state.lap} done at {t_s:.1f} s sim, '
                                  f'{time.perf_counter() - self.wall_start:.1f} s wall')
            if state.lap >= config.laps or t_s > config.max_sim_s:
                break

    def _deliver(self, sim_message) -> None:
        """A sensor message to the shock meter (IMU) and to the nodes that take it."""
        stack = self.stack
        is_imu = sim_message.msgtype == 'sensor_msgs/msg/Imu'
        # Only what someone consumes is decoded (/tf_static: the nodes take extrinsics
        # from parameters, and tf2_msgs may not even be installed).
        if not is_imu and (stack is None or sim_message.topic not in stack.inputs):
            return
        cls = self.message_types.get(sim_message.msgtype)
        if cls is None:
            cls = self.message_types[sim_message.msgtype] = message_class(sim_message.msgtype)
        message = deserialize_message(sim_message.cdr_bytes, cls)
        if is_imu:
            t_ns, accel, _, quat = imu_to_arrays(message)
            self.meter.add(t_ns, accel, quat)
        if stack is not None:
            stack.deliver(sim_message, message)

    def _command(self, state, now_ns: int, command: float) -> float:
        """The policy's speed command for the next control period."""
        stack, oracle = self.stack, self.oracle
        if stack is not None:
            stack.advance_to(now_ns)
            if self.config.speed_source == 'mask':
                command = self.nav2_command(state, now_ns, command)
            elif stack.speed_limit is not None:
                command = stack.speed_limit
            advice = stack.advisor.advisor.last_advice
            key = (state.lap, advice.reason if advice is not None else 'none')
            self.reasons[key] = self.reasons.get(key, 0) + 1
        elif oracle is not None:
            oracle.set_map(self.config.oracle_map, now_ns)
            oracle.set_state(VehicleState(state.x_m, state.y_m, state.yaw_rad,
                                          state.speed_mps), now_ns)
            command = oracle.update(now_ns).speed_limit_mps
        return command

    def nav2_command(self, state, now_ns: int, command: float) -> float:
        """The speed Nav2 would command by the mask: its SpeedFilter reads the cell under
        base_link once per costmap update and the limit holds until the next; the velocity
        smoother after the controller raises the speed at most at its max_accel (here the
        advisor's accel_limit, as the advisor path); braking is the vehicle's own."""
        if self.filter_due_ns is None or now_ns >= self.filter_due_ns:
            v_max = self.stack.advisor.advisor.config.v_max_mps
            read = self.stack.mask_speed(state.x_m, state.y_m, v_max)
            self.filter_limit = read if read is not None else self.filter_limit
            period_ns = int(round(self.config.speed_filter_period_s * NS_PER_S))
            due = self.filter_due_ns if self.filter_due_ns is not None else now_ns
            self.filter_due_ns = due + period_ns
        if self.filter_limit is None:
            return command
        ramp = self.advisor_config.accel_limit_mps2 * self.config.control_period_s
        return min(self.filter_limit, command + ramp)

    def _run_info(self) -> dict:
        config, stack = self.config, self.stack
        info = {'wall_s': time.perf_counter() - self.wall_start, 'sim_s': self.rows[-1][0],
                'shock_window_s': config.shock_window_s,
                'control_period_s': config.control_period_s, 'seed': config.seed}
        if stack is not None:
            info['rejected'] = {node.get_name(): dict(node.rejects.counts)
                                for node in stack.nodes if hasattr(node, 'rejects')}
            info['late_hazards'] = stack.advisor.advisor.late_hazards
            info['advice_reasons'] = self.reasons
        return info

    def _result(self, info: dict) -> ClosedLoopResult:
        labels = {}
        if self.stack is not None and self.stack.labels:
            stacked = np.concatenate(self.stack.labels)
            labels = {'x': stacked[:, 0], 'y': stacked[:, 1], 'roughness': stacked[:, 2]}
        path = self.world.ground_truth.trajectory
        t0 = self.t0
        trajectory = {'t_s': (np.asarray(path['t_ns'], dtype=np.int64) - t0) / NS_PER_S,
                      'x_m': np.asarray(path['x_m']), 'y_m': np.asarray(path['y_m']),
                      'yaw_rad': np.asarray(path['yaw_rad']),
                      'speed_mps': np.asarray(path['speed_mps']),
                      't_ns': np.asarray(path['t_ns'], dtype=np.int64)}
        steps = np.array(self.rows, dtype=np.float64)
        windows = np.array(self.meter.windows, dtype=np.float64).reshape(-1, 2)
        window_t = (windows[:, 0] - t0) / NS_PER_S
        lap_of_window = np.searchsorted(np.array(self.lap_starts), window_t, side='right') - 1
        return ClosedLoopResult(
            policy=self.config.policy, shock_limit_mps2=self.advisor_config.shock_limit_mps2,
            windows={'t_s': window_t, 'shock_mps2': windows[:, 1], 'lap': lap_of_window},
            steps={'t_s': steps[:, 0], 'speed_mps': steps[:, 1], 'command_mps': steps[:, 2],
                   'lap': steps[:, 3].astype(int), 'distance_m': steps[:, 4]},
            lap_times_s=list(np.diff(self.lap_starts)), labels=labels, info=info,
            trajectory=trajectory, vibration=self.meter.filter)


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


__all__ = ['POLICIES', 'SPEED_SOURCES', 'ClosedLoopConfig', 'ClosedLoopResult', 'ShockMeter',
           'NodeStack', 'run_closed_loop', 'format_table']
