"""Deterministic offline replay: a bag through the real nodes, in bag time, as fast as the CPU allows.

The three nodes are the same classes that run on the robot. Bag messages are handed to their
subscription callbacks in recording order, node outputs reach the next node through in-process
links, and timers fire at bag-time intervals, so two replays of the same bag give the same result.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from terrain_ssl.replay.bag import Bag, BagError, ReadCounts
from terrain_ssl.replay.report import ReplayRecord

# Where the nodes listen for each input role (default names; replay calls the callbacks directly,
# so a bag's own topic names need no remapping).
ROLE_TOPICS = {'imu': '/imu/data', 'points': '/points', 'odom': '/odom'}
LABELED_TOPIC = '/terrain_ssl/labeled_patches'
MAP_TOPIC = '/terrain_ssl/roughness_map'
SPEED_TOPIC = '/terrain_ssl/speed_limit'


@dataclass
class ReplayOptions:
    bag: str
    topics: dict = field(default_factory=dict)        # role -> bag topic (auto-detect when absent)
    config: Optional[str] = None                      # parameters file (YAML)
    parameters: list = field(default_factory=list)    # ['node:name:=value', ...]
    start_s: float = 0.0                              # offset into the bag
    duration_s: Optional[float] = None
    model_in: Optional[str] = None                    # start from this model file
    model_out: Optional[str] = None                   # save the learned model here
    progress: bool = True
    node_timing: bool = False                         # time each node's callbacks (bench)


class ReplayError(RuntimeError):
    pass


def _ros_arguments(options: ReplayOptions) -> list:
    args = ['terrain-ssl-replay', '--ros-args']
    if options.config:
        args += ['--params-file', str(options.config)]
    # Bag time; and the learner neither loads nor saves its robot model file during a replay
    # (a replay starts cold or from --model-in, and writes its own model file at the end).
    args += ['-p', 'use_sim_time:=true', '-p', "model_path:=''"]
    for override in options.parameters:
        args += ['-p', override]
    return args


def _node_by_name(nodes, name):
    return next(node for node in nodes if node.get_name() == name)


@contextmanager
def single_threaded_math():
    """BLAS / OpenMP pools limited to one thread while the replay runs.

    The nodes' linear algebra works on small matrices (a 3x3 eigh per cell, 128 random
    features): a second BLAS thread cannot speed that up, but its hand-offs and spin-waits cost
    2-3x the replay's whole run time on a shared 2-core machine. One thread also gives the
    same sums in the same order whatever the machine.
    """
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1):
        yield


def run_replay(options: ReplayOptions) -> ReplayRecord:
    """Replay `options.bag`; returns everything the report needs. Raises BagError/ReplayError."""
    with single_threaded_math():
        return _run_replay(options)


def _run_replay(options: ReplayOptions) -> ReplayRecord:
    import rclpy
    from rclpy.context import Context

    from terrain_ssl.ros.pipeline import create_nodes
    from terrain_ssl.ros.wiring import (BagTimeDriver, link_in_process, outlets_of,
                                        subscription_callbacks)

    bag_path = Path(options.bag)
    context = Context()
    rclpy.init(args=_ros_arguments(options), context=context)
    record = ReplayRecord()
    try:
        nodes = create_nodes(context=context)
        labeler, learner, advisor = nodes
        node_clock = _NodeClock(nodes) if options.node_timing else None
        if options.model_in:
            from terrain_ssl.core.learner import OnlineRoughnessRegressor
            learner.model = OnlineRoughnessRegressor.load(options.model_in)

        samples = _SampleRecorder()
        learner.add_prequential_listener(samples.add)
        link_in_process(nodes)
        driver = BagTimeDriver(nodes)
        inputs = subscription_callbacks(nodes)

        speed_rows: list = []
        latest_odom = {}
        for outlet in [o for node in nodes for o in outlets_of(node)]:
            if outlet.topic_name == SPEED_TOPIC:
                record_speed = lambda msg: speed_rows.append(  # noqa: E731
                    (driver.now_ns, msg.data, latest_odom.get('x', np.nan),
                     latest_odom.get('y', np.nan), latest_odom.get('v', np.nan)))
                outlet.connect(_timed(node_clock, 'replay_recording', record_speed))
        route_map = _RouteMapAccumulator()
        for outlet in outlets_of(learner):
            if outlet.topic_name == MAP_TOPIC:
                outlet.connect(_timed(node_clock, 'replay_recording', route_map.add))
        advance_to = _timed(node_clock, 'bag_time_driver', driver.advance_to)

        counts = ReadCounts()
        wall_start = time.perf_counter()
        with Bag(bag_path) as bag:
            roles = bag.resolve_inputs(options.topics)
            topic_to_callbacks = {}
            for role, bag_topic in roles.items():
                callbacks = inputs.get(ROLE_TOPICS[role], [])
                if not callbacks:
                    raise ReplayError(f'no node subscribes {ROLE_TOPICS[role]} ({role})')
                topic_to_callbacks[bag_topic] = callbacks
            start_ns = bag.start_ns + int(options.start_s * 1e9) if options.start_s else None
            end_ns = None
            if options.duration_s is not None:
                end_ns = (start_ns or bag.start_ns) + int(options.duration_s * 1e9)
            odom_topic = roles['odom']
            total_s = (bag.end_ns - bag.start_ns) / 1e9
            first_ns = None
            n_messages = 0
            messages = bag.messages(topic_to_callbacks, counts, start_ns, end_ns)
            if node_clock is not None:
                messages = node_clock.timed_iteration('bag_read_deserialise', messages)
            for message in messages:
                first_ns = message.stamp_ns if first_ns is None else first_ns
                advance_to(message.stamp_ns)
                if message.topic == odom_topic:
                    pose = message.message.pose.pose.position
                    latest_odom.update(x=pose.x, y=pose.y,
                                       v=message.message.twist.twist.linear.x)
                for callback in topic_to_callbacks[message.topic]:
                    callback(message.message)
                n_messages += 1
                if options.progress and n_messages % 2000 == 0:
                    _progress(n_messages, message.stamp_ns - first_ns, total_s,
                              time.perf_counter() - wall_start)
            if options.progress and n_messages:
                _progress(n_messages, (driver.now_ns or 0) - (first_ns or 0), total_s,
                          time.perf_counter() - wall_start)
                print(file=sys.stderr)
        wall_s = time.perf_counter() - wall_start
        mismatches = counts.mismatches()
        if mismatches:
            detail = ', '.join(f'{t}: bag has {e}, read {r}' for t, (e, r) in mismatches.items())
            raise ReplayError(f'messages lost while reading {bag_path}: {detail}')

        learner.flush_training()
        if options.model_out and learner.model.is_fitted:
            learner.model.save(options.model_out)

        bag_s = ((driver.now_ns or 0) - (first_ns or 0)) / 1e9
        record.info = {
            'bag': str(bag_path), 'topics': roles, 'messages_read': dict(counts.read),
            'messages_undecodable': dict(counts.undecodable), 'bag_duration_s': bag_s,
            'rejected': {node.get_name(): dict(getattr(node, 'rejects').counts)
                         for node in nodes if hasattr(node, 'rejects')},
        }
        record.timing = {'wall_s': wall_s, 'bag_duration_s': bag_s,
                         'realtime_factor': bag_s / wall_s if wall_s > 0 else None,
                         'messages_per_s': n_messages / wall_s if wall_s > 0 else None}
        if node_clock is not None:
            record.timing['node_s'] = dict(node_clock.seconds)
        record.samples = samples.arrays(first_ns or 0)
        _add_ground_truth(record, bag_path)
        if speed_rows:
            rows = np.array(speed_rows, dtype=float)
            record.speed = {'t_s': (rows[:, 0] - (first_ns or 0)) / 1e9,
                            'speed_limit': rows[:, 1], 'x': rows[:, 2], 'y': rows[:, 3],
                            'speed': rows[:, 4]}
        record.final_map = route_map.result()
        for node in nodes:
            node.destroy_node()
    finally:
        context.try_shutdown()
    return record


def _timed(node_clock, name, callback):
    """`callback`, timed under `name` when timing is on."""
    return callback if node_clock is None else node_clock.timed(name, callback)


class _NodeClock:
    """Wall time spent in each node's own callbacks (subscriptions and timers), and in the
    replay's own parts, each exclusive of what it calls into (an in-process publish runs the
    downstream nodes), so the split adds up."""

    def __init__(self, nodes):
        self.seconds = {node.get_name(): 0.0 for node in nodes}
        self._stack: list = []  # [start, time spent in nested callbacks] per active callback
        # Wrapped before linking, so in-process links and the bag-time driver call the wrappers.
        for node in nodes:
            for entity in list(node.subscriptions) + list(node.timers):
                entity.callback = self.timed(node.get_name(), entity.callback)

    def timed(self, name, callback):
        self.seconds.setdefault(name, 0.0)

        def call(*args):
            frame = [time.perf_counter(), 0.0]
            self._stack.append(frame)
            try:
                return callback(*args)
            finally:
                self._stack.pop()
                elapsed = time.perf_counter() - frame[0]
                self.seconds[name] += elapsed - frame[1]
                if self._stack:
                    self._stack[-1][1] += elapsed
        return call

    def timed_iteration(self, name, iterator):
        """Yield from `iterator`, timing only the steps (not the consumer's loop body)."""
        step = self.timed(name, next)
        while True:
            try:
                item = step(iterator)
            except StopIteration:
                return
            yield item


class _RouteMapAccumulator:
    """The newest prediction per 0.5 m cell over the whole drive, from the roughness maps.

    Every `keep_every`-th map message is kept (the maps overlap heavily from scan to scan), so
    memory stays small on long bags."""

    def __init__(self, cell_m: float = 0.5, keep_every: int = 5):
        self.cell_m = cell_m
        self.keep_every = keep_every
        self._seen = 0
        self._chunks: list = []

    def add(self, msg) -> None:
        from terrain_ssl.ros.conversions import pointcloud2_to_array

        self._seen += 1
        if (self._seen - 1) % self.keep_every:
            return
        cloud = pointcloud2_to_array(msg)
        if cloud.shape[0]:
            self._chunks.append(np.column_stack([cloud[name].astype(float) for name in
                                                 ('x', 'y', 'roughness', 'uncertainty')]))
            if len(self._chunks) >= 200:
                self._chunks = [self._dedupe(np.concatenate(self._chunks))]

    def _dedupe(self, rows: np.ndarray) -> np.ndarray:
        cells = np.floor(rows[:, :2] / self.cell_m).astype(np.int64)
        keys = cells[:, 0] * 2_000_003 + cells[:, 1]
        # np.unique keeps the first occurrence: search the reversed rows to keep the newest.
        _, first = np.unique(keys[::-1], return_index=True)
        return rows[::-1][first]

    def result(self) -> dict:
        if not self._chunks:
            return {}
        rows = self._dedupe(np.concatenate(self._chunks))
        return {name: rows[:, i] for i, name in enumerate(('x', 'y', 'roughness',
                                                           'uncertainty'))}


class _SampleRecorder:
    """Prequential events from the learner -> aligned float arrays, one entry per labeled patch.

    Events (a dict of small arrays each, ~40 per second) are packed into one float64 block every
    500 events: a long soak would otherwise hold tens of thousands of tiny arrays (~50 MB/30 min).
    """

    KEYS = ('stamp_ns', 'x', 'y', 'roughness', 'roughness_class', 'predicted', 'uncertainty',
            'baseline', 'speed')

    def __init__(self, pack_every: int = 500):
        self.pack_every = pack_every
        self._events: list = []
        self._blocks: list = []

    def add(self, event: dict) -> None:
        self._events.append(event)
        if len(self._events) >= self.pack_every:
            self._pack()

    def _pack(self) -> None:
        if self._events:
            self._blocks.append(np.column_stack([
                np.concatenate([np.atleast_1d(np.asarray(e[key], float)) for e in self._events])
                for key in self.KEYS]))
            self._events = []

    def arrays(self, t0_ns: int) -> dict:
        self._pack()
        if not self._blocks:
            return {}
        rows = np.concatenate(self._blocks)
        columns = {key: rows[:, i] for i, key in enumerate(self.KEYS)}
        columns['t_s'] = (columns.pop('stamp_ns') - t0_ns) / 1e9
        return columns


def _add_ground_truth(record: ReplayRecord, bag_path: Path) -> None:
    """Add the true roughness of each labeled cell when the bag has the simulator's truth."""
    directory = bag_path if bag_path.is_dir() else bag_path.parent
    if not (directory / 'ground_truth.json').exists() or not record.samples:
        return
    from terrain_ssl.sim.ground_truth import GroundTruth

    truth = GroundTruth.load(directory)
    xy = np.column_stack([record.samples['x'], record.samples['y']])
    record.samples['truth'] = np.asarray(truth.roughness_at(xy), float)


def _progress(n_messages: int, bag_ns: int, total_s: float, wall_s: float) -> None:
    bag_s = bag_ns / 1e9
    rate = n_messages / wall_s if wall_s > 0 else 0.0
    factor = bag_s / wall_s if wall_s > 0 else 0.0
    width = 30
    done = int(width * min(bag_s / total_s, 1.0)) if total_s > 0 else width
    print(f'\r[{"#" * done}{"." * (width - done)}] {bag_s:7.1f}/{total_s:.1f} s bag  '
          f'{rate:8.0f} msg/s  {factor:5.1f}x real time', end='', file=sys.stderr, flush=True)


__all__ = ['ReplayOptions', 'ReplayError', 'BagError', 'run_replay']
