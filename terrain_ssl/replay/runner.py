"""Deterministic offline replay: a bag through the real nodes, in bag time, as fast as the CPU
allows.

The three nodes are the same classes that run on the robot. Bag messages are handed to their
subscription callbacks in recording order, node outputs reach the next node in the order they are
published, and timers fire at bag-time intervals, so two replays of the same bag give the same
result. With `processes=2` the learner and the advisor run in a second process
(terrain_ssl.replay.stage_process), fed by the labeler's: the same calls in the same order, on
two cores.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Optional

import rclpy
from rclpy.context import Context
from rclpy.impl.implementation_singleton import rclpy_implementation

from terrain_ssl.replay.bag import Bag, BagError, ReadCounts
from terrain_ssl.replay.learner_advisor_stage import LearnerAdvisorStage
from terrain_ssl.replay.outputs_mcap import McapOutputs, open_outputs, published_counts
from terrain_ssl.replay.options import (ROLE_TOPICS, ReplayError, ReplayOptions, check_options,
                                        ros_arguments)
from terrain_ssl.replay.profiler import CallbackProfiler, profiled
from terrain_ssl.replay.recorders import add_ground_truth
from terrain_ssl.replay.bag_tf import with_bag_extrinsics
from terrain_ssl.replay.report import ReplayRecord
from terrain_ssl.replay.runtime import rare_garbage_collection
from terrain_ssl.ros.math_threads import single_threaded_math
from terrain_ssl.replay.stage_process import LearnerAdvisorProcess, StageProcessError
from terrain_ssl.ros.pipeline import NODE_MODULES, create_nodes, node_class
from terrain_ssl.ros.wiring import BagTimeDriver, linked_publishers_of, subscription_callbacks


def run_replay(options: ReplayOptions) -> ReplayRecord:
    """Replay `options.bag`; returns everything the report needs. Raises BagError/ReplayError."""
    options = with_bag_extrinsics(options)  # base_link -> lidar from the bag's TF, unless given
    with single_threaded_math():
        return ReplayPipeline(options).run()


class ReplayPipeline:
    """One replay, as a list of steps (`run`)."""

    def __init__(self, options: ReplayOptions):
        self.options = options
        self.bag_path = Path(options.bag)
        self.profiler = CallbackProfiler() if options.node_timing else None
        self.context = Context()
        self.record = ReplayRecord()
        self.nodes: list = []
        self.stage_process: Optional[LearnerAdvisorProcess] = None
        self.stage = None  # the LearnerAdvisorStage, or the process running it
        self.stage_topics: list = []  # what the stage subscribes
        self.labeler = self.driver = None
        self.roles: dict = {}  # input role -> bag topic
        self.not_replayed: dict = {}  # bag topics no node takes -> message type
        self.topic_to_callbacks: dict = {}  # bag topic -> labeler callbacks
        self.topic_to_stage: dict = {}  # bag topic -> the stage's node topic
        self.counts = ReadCounts()
        self.outputs: Optional[McapOutputs] = None  # outputs.mcap, while it is being written
        self.first_ns: Optional[int] = None
        self.n_messages = 0

    def run(self) -> ReplayRecord:
        try:
            check_options(self.options)
            self._start_stage_process()
            self._init_ros()
            self._create_nodes()
            self._connect_labeler_to_stage()
            wall_start = time.perf_counter()
            with Bag(self.bag_path) as bag:
                self._route_bag_topics(bag)
                self._replay_messages(bag, wall_start)
                self._check_nothing_lost()
                stage_result = self._finish_nodes()
                self._end_progress(bag, wall_start)
            self._record_results(stage_result, time.perf_counter() - wall_start)
        except StageProcessError as error:
            raise ReplayError(str(error)) from error
        finally:
            self._close()
        return self.record

    def _start_stage_process(self) -> None:
        """Started first: it imports while this side builds its nodes."""
        if self.options.processes == 2:
            self.stage_process = LearnerAdvisorProcess(self.options)
            self.stage_process.start()

    def _init_ros(self) -> None:
        try:
            rclpy.init(args=ros_arguments(self.options), context=self.context)
        except rclpy_implementation.RCLError as error:  # e.g. a YAML file rcl cannot parse
            raise ReplayError(f'ROS arguments: {str(error).split(", at ")[0]}') from error

    def _create_nodes(self) -> None:
        try:
            if self.stage_process is not None:
                self.nodes = [node_class(NODE_MODULES[0])(context=self.context)]
            else:
                self.nodes = create_nodes(context=self.context)
        except ValueError as error:  # an invalid parameter value: which one, in one line
            raise ReplayError(str(error)) from error
        self.labeler = self.nodes[0]
        if self.profiler is not None:
            self.profiler.add_nodes([self.labeler])

    def _connect_labeler_to_stage(self) -> None:
        """The labeler's outputs go to the learner (in this process: as objects, like
        link_in_process; otherwise serialised, like DDS)."""
        labeler_outputs = [publisher.topic_name
                           for publisher in linked_publishers_of(self.labeler)]
        self.outputs = open_outputs(self.options)
        if self.stage_process is not None:
            self.stage_process.connect(labeler_outputs)
            self.stage = self.stage_process
            self.stage_topics = self.stage_process.input_topics
        else:
            self.stage = LearnerAdvisorStage(self.context, self.options, labeler_outputs,
                                             self.profiler, nodes=self.nodes[1:],
                                             outputs=self.outputs)
            self.stage_topics = self.stage.input_topics()
        for publisher in linked_publishers_of(self.labeler):
            if publisher.topic_name in self.stage_topics:
                publisher.connect(functools.partial(self.stage.deliver, publisher.topic_name))
        # The labeler takes all time from message stamps; its clock paces only its diagnostics
        # timer (test_labeler_callbacks_never_read_the_node_clock).
        self.driver = BagTimeDriver([self.labeler], callbacks_read_clock=False)
        if self.outputs is not None:
            self.outputs.attach([self.labeler], lambda: self.driver.now_ns)

    def _route_bag_topics(self, bag: Bag) -> None:
        """Which callbacks each bag topic reaches, here and in the stage."""
        for note in bag.notes:  # metadata.yaml and the storage disagree: the storage is read
            print(f'note: {note}', file=sys.stderr)
        self.roles = bag.resolve_inputs(self.options.topics)
        # Reported, so that a topic meant as an input but not taken (another name, another
        # type, a type not installed here) does not go unnoticed.
        self.not_replayed = {name: info.msgtype for name, info in sorted(bag.topics().items())
                             if name not in self.roles.values()}
        labeler_inputs = subscription_callbacks([self.labeler])
        self.topic_to_callbacks = {}
        # Bag topics the learner or the advisor also subscribe -> their node topic. They
        # are delivered after the labeler's callbacks, in node order (labeler, then learner
        # and advisor), as one driver would call the subscribers of one topic.
        self.topic_to_stage = {}
        for role, bag_topic in self.roles.items():
            node_topic = ROLE_TOPICS[role]
            self.topic_to_callbacks[bag_topic] = list(labeler_inputs.get(node_topic, []))
            if node_topic in self.stage_topics:
                self.topic_to_stage[bag_topic] = node_topic
            elif not self.topic_to_callbacks[bag_topic]:
                raise ReplayError(f'no node subscribes {node_topic} ({role})')

    def _time_window(self, bag: Bag) -> tuple:
        """(start_ns or None, end_ns or None) of the replayed part of the bag."""
        options = self.options
        start_ns = bag.start_ns + int(options.start_s * 1e9) if options.start_s else None
        end_ns = None
        if options.duration_s is not None:
            end_ns = (start_ns or bag.start_ns) + int(options.duration_s * 1e9)
        if start_ns is not None and start_ns > bag.end_ns:
            raise ReplayError(f'start {options.start_s:g} s is past the end of the bag '
                              f'({_bag_length_s(bag):.1f} s long)')
        return start_ns, end_ns

    def _replay_messages(self, bag: Bag, wall_start: float) -> None:
        """Every message in recording order to its callbacks, bag time advancing with it."""
        start_ns, end_ns = self._time_window(bag)
        total_s = _bag_length_s(bag)
        topic_to_callbacks, topic_to_stage = self.topic_to_callbacks, self.topic_to_stage
        advance_to = profiled(self.profiler, 'bag_time_driver', self.driver.advance_to)
        messages = bag.messages(topic_to_callbacks, self.counts, start_ns, end_ns,
                                chunk_messages=self.options.read_chunk_messages)
        if self.outputs is not None and self.options.mcap_inputs:
            messages = self.outputs.tap_inputs(messages)
        if self.profiler is not None:
            messages = self.profiler.timed_iteration('bag_read_deserialise', messages)
        advance_stage = self.stage.advance
        deliver_to_stage = self.stage.deliver_bag_message
        progress = self.options.progress
        first_ns = None
        n_messages = 0
        with rare_garbage_collection():
            for message in messages:
                stamp_ns = message.stamp_ns
                if first_ns is None:
                    first_ns = stamp_ns
                advance_to(stamp_ns)
                advance_stage(stamp_ns)
                for callback in topic_to_callbacks[message.topic]:
                    callback(message.message)
                stage_topic = topic_to_stage.get(message.topic)
                if stage_topic is not None:
                    deliver_to_stage(stage_topic, message)
                n_messages += 1
                if progress and n_messages % 2000 == 0:
                    _progress(n_messages, stamp_ns - first_ns, total_s,
                              time.perf_counter() - wall_start)
        self.first_ns, self.n_messages = first_ns, n_messages

    def _check_nothing_lost(self) -> None:
        mismatches = self.counts.mismatches()
        if mismatches:
            detail = ', '.join(f'{t}: bag has {e}, read {r}'
                               for t, (e, r) in mismatches.items())
            raise ReplayError(f'messages lost while reading {self.bag_path}: {detail}')

    def _finish_nodes(self) -> dict:
        self.driver.sync_clocks()  # the labeler's clock at the last stamp, as after a live run
        # The labels still waiting for their batch (label.batch_s): no later IMU sample
        # will complete it.
        self.labeler.flush_labels()
        # Flushes training and saves the model (in the second process: after its last event).
        return self.stage.finish(self.first_ns)

    def _end_progress(self, bag: Bag, wall_start: float) -> None:
        if self.options.progress and self.n_messages:
            _progress(self.n_messages, (self.driver.now_ns or 0) - (self.first_ns or 0),
                      _bag_length_s(bag), time.perf_counter() - wall_start)
            print(file=sys.stderr)

    def _record_results(self, stage_result: dict, wall_s: float) -> None:
        record, counts = self.record, self.counts
        bag_s = ((self.driver.now_ns or 0) - (self.first_ns or 0)) / 1e9
        rejected = {self.labeler.get_name(): dict(self.labeler.rejects.counts)}
        rejected.update(stage_result['rejected'])
        record.info = {
            'bag': str(self.bag_path), 'topics': self.roles,
            'topics_not_replayed': self.not_replayed,
            'messages_read': dict(counts.read),
            'messages_undecodable': dict(counts.undecodable),
            'last_undecodable_error': counts.last_error, 'bag_duration_s': bag_s,
            'rejected': rejected,
        }
        record.timing = {'wall_s': wall_s, 'bag_duration_s': bag_s,
                         'realtime_factor': bag_s / wall_s if wall_s > 0 else None,
                         'messages_per_s': self.n_messages / wall_s if wall_s > 0 else None,
                         'processes': 2 if self.stage_process is not None else 1}
        record.info['messages_published'] = _merged_counts(
            published_counts([self.labeler]), stage_result.get('published', {}))
        if self.outputs is not None:  # the second process's part copied in, then finished
            if self.stage_process is not None:
                self.outputs.copy_from(self.stage_process.outputs_part())
            record.info['messages_in_mcap'] = self.outputs.close()
            self.outputs = None
        if self.profiler is not None:
            record.timing['node_s'] = dict(self.profiler.seconds)
        if 'process' in stage_result:
            record.timing['stage_process'] = stage_result['process']
        record.samples = stage_result['samples']
        add_ground_truth(record, self.bag_path)
        record.speed = stage_result['speed']
        record.final_map = stage_result['final_map']

    def _close(self) -> None:
        if self.stage_process is not None:
            self.stage_process.close()
        if self.outputs is not None:  # failed before the end: no partial file (or part) left
            self.outputs.discard()
        for node in self.nodes:
            node.destroy_node()
        self.context.try_shutdown()


def _merged_counts(*counts: dict) -> dict:
    merged: dict = {}
    for part in counts:
        for key, value in part.items():
            merged[key] = merged.get(key, 0) + value
    return dict(sorted(merged.items()))


def _bag_length_s(bag: Bag) -> float:
    return (bag.end_ns - bag.start_ns) / 1e9


def _progress(n_messages: int, bag_ns: int, total_s: float, wall_s: float) -> None:
    bag_s = bag_ns / 1e9
    rate = n_messages / wall_s if wall_s > 0 else 0.0
    factor = bag_s / wall_s if wall_s > 0 else 0.0
    width = 30
    done = int(width * min(bag_s / total_s, 1.0)) if total_s > 0 else width
    print(f'\r[{"#" * done}{"." * (width - done)}] {bag_s:7.1f}/{total_s:.1f} s bag  '
          f'{rate:8.0f} msg/s  {factor:5.1f}x real time', end='', file=sys.stderr, flush=True)


__all__ = ['ReplayOptions', 'ReplayError', 'BagError', 'ReplayPipeline', 'run_replay']
