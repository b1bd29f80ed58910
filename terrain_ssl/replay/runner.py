"""Deterministic offline replay: a bag through the real nodes, in bag time, as fast as the CPU allows.

The three nodes are the same classes that run on the robot. Bag messages are handed to their
subscription callbacks in recording order, node outputs reach the next node in the order they are
published, and timers fire at bag-time intervals, so two replays of the same bag give the same
result. With `processes=2` the learner and the advisor run in a second process, fed by the
labeler's (terrain_ssl.replay.downstream): the same calls in the same order, on two cores.
"""

from __future__ import annotations

import functools
import gc
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from terrain_ssl.replay.bag import READ_CHUNK_MESSAGES, Bag, BagError, ReadCounts
from terrain_ssl.replay.report import ReplayRecord
from terrain_ssl.ros.math_threads import single_threaded_math

# Where the nodes listen for each input role (default names; replay calls the callbacks directly,
# so a bag's own topic names need no remapping).
ROLE_TOPICS = {'imu': '/imu/data', 'points': '/points', 'odom': '/odom'}
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
    # 1: all nodes in this process. 2: the learner and the advisor in a second one, fed by
    # this one (same results, two cores: faster only when a core is free; see downstream.py).
    processes: int = 1
    # Bag messages read and deserialised at a time before the nodes get them (Bag.messages):
    # a tuning knob for the bench (1: one at a time, interleaved with the nodes' work).
    read_chunk_messages: int = READ_CHUNK_MESSAGES


class ReplayError(RuntimeError):
    pass


def default_processes() -> int:
    """2 when this process may run on two or more CPUs (the second process then has a core of
    its own on an otherwise idle machine: 120 s drive 16-20x vs 11-12x real time here), else 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return 2 if cpus >= 2 else 1


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


@contextmanager
def rare_garbage_collection(young_threshold: int = 50_000):
    """Python's cycle collector runs ~70x less often while the replay's loop runs.

    A replay allocates ~15 short-lived objects per bag message (the deserialised message and
    its parts), all freed by reference counting: they hold no cycles. At the default threshold
    (700 allocations) the collector still scanned the young objects ~700 times per 120 s
    drive, and the older ones (modules, nodes, models) whenever those scans promoted enough:
    5-6% of the busier process's time. The objects alive when the loop starts are frozen out
    of the scans; everything new is still collected, only in larger batches.
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(young_threshold, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def run_replay(options: ReplayOptions) -> ReplayRecord:
    """Replay `options.bag`; returns everything the report needs. Raises BagError/ReplayError."""
    with single_threaded_math():
        return _run_replay(options)


def _run_replay(options: ReplayOptions) -> ReplayRecord:
    import rclpy
    from rclpy._rclpy_pybind11 import RCLError
    from rclpy.context import Context

    from terrain_ssl.replay.downstream import (DownstreamError, DownstreamProcess,
                                               DownstreamStage)
    from terrain_ssl.ros.pipeline import NODE_MODULES, create_nodes, node_class
    from terrain_ssl.ros.wiring import BagTimeDriver, outlets_of, subscription_callbacks

    bag_path = Path(options.bag)
    node_clock = _NodeClock() if options.node_timing else None
    if options.processes not in (1, 2):
        raise ReplayError(f'processes must be 1 or 2, not {options.processes}')
    downstream_process = None
    context = Context()
    record = ReplayRecord()
    nodes: list = []
    try:
        _check_parameter_overrides(options.parameters)
        if not options.start_s >= 0.0:  # (NaN too)
            raise ReplayError(f'start must be >= 0 s, not {options.start_s}')
        if options.duration_s is not None and not options.duration_s > 0.0:
            raise ReplayError(f'duration must be > 0 s, not {options.duration_s}')
        if options.processes == 2:  # started first: it imports while this side builds nodes
            downstream_process = DownstreamProcess(options)
            downstream_process.start()
        try:
            rclpy.init(args=_ros_arguments(options), context=context)
        except RCLError as error:  # e.g. a YAML file rcl cannot parse
            raise ReplayError(f'ROS arguments: {str(error).split(", at ")[0]}') from error
        try:
            if downstream_process is not None:
                nodes = [node_class(NODE_MODULES[0])(context=context)]
            else:
                nodes = create_nodes(context=context)
        except ValueError as error:  # an invalid parameter value: which one, in one line
            raise ReplayError(str(error)) from error
        labeler = nodes[0]
        if node_clock is not None:
            node_clock.add_nodes([labeler])
        labeler_outputs = [outlet.topic_name for outlet in outlets_of(labeler)]
        if downstream_process is not None:
            downstream_process.connect(labeler_outputs)
            downstream = downstream_process
            downstream_topics = downstream_process.input_topics
        else:
            downstream = DownstreamStage(context, options, labeler_outputs, node_clock,
                                         nodes=nodes[1:])
            downstream_topics = downstream.input_topics()
        # The labeler's outputs go to the learner (in this process: as objects, like
        # link_in_process; otherwise serialised, like DDS).
        for outlet in outlets_of(labeler):
            if outlet.topic_name in downstream_topics:
                outlet.connect(functools.partial(downstream.deliver, outlet.topic_name))
        # The labeler takes all time from message stamps; its clock paces only its diagnostics
        # timer (test_labeler_callbacks_never_read_the_node_clock).
        driver = BagTimeDriver([labeler], callbacks_read_clock=False)
        labeler_inputs = subscription_callbacks([labeler])
        advance_to = _timed(node_clock, 'bag_time_driver', driver.advance_to)

        counts = ReadCounts()
        wall_start = time.perf_counter()
        with Bag(bag_path) as bag:
            roles = bag.resolve_inputs(options.topics)
            # Reported, so that a topic meant as an input but not taken (another name, another
            # type, a type not installed here) does not go unnoticed.
            not_replayed = {name: info.msgtype for name, info in sorted(bag.topics().items())
                            if name not in roles.values()}
            topic_to_callbacks = {}
            # Bag topics the learner or the advisor also subscribe -> their node topic. They
            # are delivered after the labeler's callbacks, in node order (labeler, then learner
            # and advisor), as one driver would call the subscribers of one topic.
            topic_to_downstream = {}
            for role, bag_topic in roles.items():
                node_topic = ROLE_TOPICS[role]
                topic_to_callbacks[bag_topic] = list(labeler_inputs.get(node_topic, []))
                if node_topic in downstream_topics:
                    topic_to_downstream[bag_topic] = node_topic
                elif not topic_to_callbacks[bag_topic]:
                    raise ReplayError(f'no node subscribes {node_topic} ({role})')
            start_ns = bag.start_ns + int(options.start_s * 1e9) if options.start_s else None
            end_ns = None
            if options.duration_s is not None:
                end_ns = (start_ns or bag.start_ns) + int(options.duration_s * 1e9)
            total_s = (bag.end_ns - bag.start_ns) / 1e9
            if start_ns is not None and start_ns > bag.end_ns:
                raise ReplayError(f'start {options.start_s:g} s is past the end of the bag '
                                  f'({total_s:.1f} s long)')
            first_ns = None
            n_messages = 0
            messages = bag.messages(topic_to_callbacks, counts, start_ns, end_ns,
                                    chunk_messages=options.read_chunk_messages)
            if node_clock is not None:
                messages = node_clock.timed_iteration('bag_read_deserialise', messages)
            advance_downstream = downstream.advance
            deliver_downstream = downstream.deliver_bag_message
            with rare_garbage_collection():
                for message in messages:
                    stamp_ns = message.stamp_ns
                    if first_ns is None:
                        first_ns = stamp_ns
                    advance_to(stamp_ns)
                    advance_downstream(stamp_ns)
                    for callback in topic_to_callbacks[message.topic]:
                        callback(message.message)
                    downstream_topic = topic_to_downstream.get(message.topic)
                    if downstream_topic is not None:
                        deliver_downstream(downstream_topic, message)
                    n_messages += 1
                    if options.progress and n_messages % 2000 == 0:
                        _progress(n_messages, stamp_ns - first_ns, total_s,
                                  time.perf_counter() - wall_start)
            mismatches = counts.mismatches()
            if mismatches:
                detail = ', '.join(f'{t}: bag has {e}, read {r}'
                                   for t, (e, r) in mismatches.items())
                raise ReplayError(f'messages lost while reading {bag_path}: {detail}')
            driver.sync_clocks()  # the labeler's clock at the last stamp, as after a live run
            # The labels still waiting for their batch (label.batch_s): no later IMU sample
            # will complete it.
            labeler.flush_labels()
            # Flushes training and saves the model (downstream: after its last event).
            downstream_result = downstream.finish(first_ns)
            if options.progress and n_messages:
                _progress(n_messages, (driver.now_ns or 0) - (first_ns or 0), total_s,
                          time.perf_counter() - wall_start)
                print(file=sys.stderr)
        wall_s = time.perf_counter() - wall_start

        bag_s = ((driver.now_ns or 0) - (first_ns or 0)) / 1e9
        rejected = {labeler.get_name(): dict(labeler.rejects.counts)}
        rejected.update(downstream_result['rejected'])
        record.info = {
            'bag': str(bag_path), 'topics': roles, 'topics_not_replayed': not_replayed,
            'messages_read': dict(counts.read),
            'messages_undecodable': dict(counts.undecodable),
            'last_undecodable_error': counts.last_error, 'bag_duration_s': bag_s,
            'rejected': rejected,
        }
        record.timing = {'wall_s': wall_s, 'bag_duration_s': bag_s,
                         'realtime_factor': bag_s / wall_s if wall_s > 0 else None,
                         'messages_per_s': n_messages / wall_s if wall_s > 0 else None,
                         'processes': 2 if downstream_process is not None else 1}
        if node_clock is not None:
            record.timing['node_s'] = dict(node_clock.seconds)
        if 'process' in downstream_result:
            record.timing['downstream_process'] = downstream_result['process']
        record.samples = downstream_result['samples']
        _add_ground_truth(record, bag_path)
        record.speed = downstream_result['speed']
        record.final_map = downstream_result['final_map']
    except DownstreamError as error:
        raise ReplayError(str(error)) from error
    finally:
        if downstream_process is not None:
            downstream_process.close()
        for node in nodes:
            node.destroy_node()
        context.try_shutdown()
    return record


def _check_parameter_overrides(overrides) -> None:
    """Each `-p [node:]name:=value` must name a parameter the nodes declare: rclpy would ignore
    a misspelt one, and the replay would run with the default without a word."""
    import difflib

    from terrain_ssl.ros.pipeline import known_parameter_names

    known = known_parameter_names() if overrides else set()
    for override in overrides:
        if ':=' not in override:
            raise ReplayError(f'-p {override}: expected NAME:=VALUE')
        name = override.split(':=', 1)[0].split(':')[-1]  # [node_name:]name
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            raise ReplayError(f'-p {override}: no node has a parameter {name!r}'
                              + (f'; did you mean {", ".join(close)}?' if close else ''))


def _timed(node_clock, name, callback):
    """`callback`, timed under `name` when timing is on."""
    return callback if node_clock is None else node_clock.timed(name, callback)


class _NodeClock:
    """Wall time spent in each node's own callbacks (subscriptions and timers), and in the
    replay's own parts, each exclusive of what it calls into (an in-process publish runs the
    downstream nodes), so the split adds up."""

    def __init__(self):
        self.seconds: dict = {}
        self._stack: list = []  # [start, time spent in nested callbacks] per active callback

    def add_nodes(self, nodes) -> None:
        """Time these nodes' callbacks. Call before linking, so in-process links and the
        bag-time driver call the wrappers."""
        for node in nodes:
            self.seconds.setdefault(node.get_name(), 0.0)
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
