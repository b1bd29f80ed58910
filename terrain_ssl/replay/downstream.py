"""The learner and the advisor of a replay, fed in order by the labeler's side: in process, or in
a second process so that a replay uses two cores.

Data flows one way: bag -> labeler -> learner -> advisor, and the bag's odometry also reaches the
advisor. Nothing flows back. So a replay splits into two stages. The first reads and deserialises
the bag, drives the labeler, and hands the second an ordered stream of events: "bag time is now
t" and "this message arrives on topic X" (a labeler output, or a bag message the advisor
subscribes). The second stage applies them in that order with its own BagTimeDriver, so the
learner and the advisor get the same messages, at the same bag times, interleaved with the same
timer firings as when one driver runs all three nodes: the results are identical.

`DownstreamStage` is that second stage. In one process the replay calls it directly (messages
are handed over as objects, as the in-process links do). `DownstreamProcess` runs it in a spawned
process: messages cross as rclpy-serialised CDR (what DDS carries live, deserialised there by
rclpy), batched, written by a sender thread so the labeler's side seldom waits on the pipe.

The second process costs CPU of its own (its copy of the odometry and the labeler's outputs is
deserialised once more, ~1 s per 120 s drive, plus the pipe): it pays when a second core is free,
and costs wall time on a machine whose cores are busy with other work.
"""

from __future__ import annotations

import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Optional

import numpy as np

LEARNER_MODULE = 'terrain_ssl.ros.learner_node'
ADVISOR_MODULE = 'terrain_ssl.ros.advisor_node'

# Event kinds on the pipe, as decoded tuples.
_ADVANCE = 0   # (_ADVANCE, stamp_ns)
_DELIVER = 1   # (_DELIVER, topic, CDR bytes)
_FINISH = 2    # (_FINISH, first_stamp_ns or None)
# Wire format of one event in a batch (little endian): kind (uint8), then
#   _ADVANCE: stamp_ns (int64);  _FINISH: has_stamp (uint8), stamp_ns (int64);
#   _DELIVER: topic length (uint16), CDR length (uint32), topic (UTF-8), CDR bytes.
# Plain bytes for the bulk stream (no pickle). The few control messages (options, topics,
# results) go through multiprocessing's Connection, which pickles, but only between the replay and
# the child it started, over a private socketpair: nothing is unpickled from disk or from others.
_KIND = struct.Struct('<B')
_STAMP = struct.Struct('<q')
_FINISH_STAMP = struct.Struct('<Bq')
_DELIVER_HEADER = struct.Struct('<HI')


def encode_events(events) -> bytes:
    """A batch of event tuples -> bytes (the wire format above)."""
    parts = []
    for event in events:
        kind = event[0]
        parts.append(_KIND.pack(kind))
        if kind == _ADVANCE:
            parts.append(_STAMP.pack(event[1]))
        elif kind == _DELIVER:
            topic = event[1].encode('utf-8')
            parts += [_DELIVER_HEADER.pack(len(topic), len(event[2])), topic, event[2]]
        elif kind == _FINISH:
            parts.append(_FINISH_STAMP.pack(event[1] is not None, event[1] or 0))
        else:
            raise ValueError(f'unknown event kind {kind}')
    return b''.join(parts)


def decode_events(payload: bytes) -> list:
    """bytes from `encode_events` -> the event tuples; ValueError on a malformed batch."""
    events, offset, view = [], 0, memoryview(payload)
    try:
        while offset < len(payload):
            kind = payload[offset]
            offset += 1
            if kind == _ADVANCE:
                events.append((_ADVANCE, _STAMP.unpack_from(payload, offset)[0]))
                offset += _STAMP.size
            elif kind == _DELIVER:
                topic_length, cdr_length = _DELIVER_HEADER.unpack_from(payload, offset)
                offset += _DELIVER_HEADER.size
                topic = bytes(view[offset:offset + topic_length]).decode('utf-8')
                offset += topic_length
                cdr = bytes(view[offset:offset + cdr_length])
                if len(cdr) != cdr_length:
                    raise ValueError('truncated message')
                offset += cdr_length
                events.append((_DELIVER, topic, cdr))
            elif kind == _FINISH:
                has_stamp, stamp = _FINISH_STAMP.unpack_from(payload, offset)
                offset += _FINISH_STAMP.size
                events.append((_FINISH, stamp if has_stamp else None))
            else:
                raise ValueError(f'unknown event kind {kind} at byte {offset - 1}')
    except struct.error as error:
        raise ValueError(f'truncated event batch: {error}') from error
    return events


class DownstreamError(RuntimeError):
    """The downstream stage failed; the message carries its traceback."""


class DownstreamStage:
    """roughness_learner and speed_advisor with their own bag-time driver, and the recorders the
    replay report needs (prequential samples, speed limits, the route's roughness map).

    `advance(stamp_ns)` moves bag time; `deliver(topic, msg)` calls the subscribers of `topic`;
    `finish(first_ns)` flushes training, saves the model if asked and returns the results.
    `upstream_topics` are the labeler's outputs: their subscriptions are replaced by direct
    calls, as link_in_process does in one process. `nodes`: the learner and the advisor when
    the caller has built them already (in its `context`).
    """

    def __init__(self, context, options, upstream_topics, node_clock=None, nodes=None):
        from terrain_ssl.replay.runner import (MAP_TOPIC, ROLE_TOPICS, SPEED_TOPIC,
                                               _RouteMapAccumulator, _SampleRecorder, _timed)
        from terrain_ssl.ros.pipeline import node_class
        from terrain_ssl.ros.wiring import BagTimeDriver, link_in_process, outlets_of

        if nodes is None:
            nodes = [node_class(LEARNER_MODULE)(context=context),
                     node_class(ADVISOR_MODULE)(context=context)]
        self.learner, self.advisor = nodes
        self.nodes = [self.learner, self.advisor]
        if options.model_in:
            from terrain_ssl.core.learner import OnlineRoughnessRegressor
            self.learner.model = OnlineRoughnessRegressor.load(options.model_in)
        self.model_out = options.model_out
        if node_clock is not None:
            node_clock.add_nodes(self.nodes)

        self.samples = _SampleRecorder()
        self.learner.add_prequential_listener(self.samples.add)
        link_in_process(self.nodes)
        self.driver = BagTimeDriver(self.nodes)
        self._advance_to = _timed(node_clock, 'bag_time_driver', self.driver.advance_to)
        self._pending_ns: Optional[int] = None  # bag time not yet applied (see advance)

        # Inputs: subscriptions left after linking. Those on the labeler's outputs are called
        # directly from now on; their DDS subscriptions go, so the labeler's publishers do not
        # also send every message over DDS to a subscriber that is never spun.
        self.callbacks: dict = {}
        self.message_types: dict = {}
        upstream_topics = set(upstream_topics)
        for node in self.nodes:
            for subscription in list(node.subscriptions):
                topic = subscription.topic_name
                self.callbacks.setdefault(topic, []).append(subscription.callback)
                self.message_types[topic] = subscription.msg_type
                if topic in upstream_topics:
                    node.destroy_subscription(subscription)

        self.speed_rows: list = []
        self.latest_odom: dict = {}
        self._odom_topic = ROLE_TOPICS['odom']
        for outlet in outlets_of(self.advisor):
            if outlet.topic_name == SPEED_TOPIC:
                outlet.connect(_timed(node_clock, 'replay_recording', self._record_speed))
        self.route_map = _RouteMapAccumulator()
        for outlet in outlets_of(self.learner):
            if outlet.topic_name == MAP_TOPIC:
                outlet.connect(_timed(node_clock, 'replay_recording', self.route_map.add))

    def input_topics(self) -> list:
        return sorted(self.callbacks)

    def _record_speed(self, msg) -> None:
        odom = self.latest_odom
        self.speed_rows.append((self.driver.now_ns, msg.data, odom.get('x', np.nan),
                                odom.get('y', np.nan), odom.get('v', np.nan)))

    def advance(self, stamp_ns: int) -> None:
        """Bag time moves to `stamp_ns`. Applied only before the next delivery (or at the end):
        between two deliveries nothing runs here but timers, and advance_to fires those at their
        own due times with the clocks at the due time, so one advance to the latest time is the
        same as one per bag message, and saves setting the clocks 250 times a bag second.
        The first advance is applied at once: it starts the timers' phase."""
        if self.driver.now_ns is None:
            self._advance_to(stamp_ns)
        elif self._pending_ns is None or stamp_ns > self._pending_ns:
            self._pending_ns = stamp_ns

    def _apply_pending_time(self) -> None:
        if self._pending_ns is not None:
            self._advance_to(self._pending_ns)
            self._pending_ns = None

    def deliver(self, topic: str, msg) -> None:
        self._apply_pending_time()
        if topic == self._odom_topic:
            pose = msg.pose.pose.position
            self.latest_odom.update(x=pose.x, y=pose.y, v=msg.twist.twist.linear.x)
        for callback in self.callbacks[topic]:
            callback(msg)

    def deliver_bag_message(self, topic: str, bag_message) -> None:
        """A message read from the bag (a `bag.BagMessage`), on node topic `topic`."""
        self.deliver(topic, bag_message.message)

    def finish(self, first_ns: Optional[int]) -> dict:
        """Flush, save the model when asked; what the report needs from this stage."""
        self._apply_pending_time()
        self.learner.flush_training()
        if self.model_out and self.learner.model.is_fitted:
            self.learner.model.save(self.model_out)
        result = {
            'samples': self.samples.arrays(first_ns or 0),
            'speed': {},
            'final_map': self.route_map.result(),
            'rejected': {node.get_name(): dict(node.rejects.counts) for node in self.nodes},
        }
        if self.speed_rows:
            rows = np.array(self.speed_rows, dtype=float)
            result['speed'] = {'t_s': (rows[:, 0] - (first_ns or 0)) / 1e9,
                               'speed_limit': rows[:, 1], 'x': rows[:, 2], 'y': rows[:, 3],
                               'speed': rows[:, 4]}
        return result

    def destroy(self) -> None:
        for node in self.nodes:
            node.destroy_node()


class DownstreamProcess:
    """DownstreamStage in a spawned process, with the same advance / deliver / finish calls.

    Start it early (`start`), it imports and builds its nodes while the caller builds its own;
    `connect(upstream_topics)` waits until it is ready. Events are batched (`batch_events` per
    pipe message) and written by a sender thread: writing to a pipe releases the GIL, so the
    labeler's side goes on while the downstream stage catches up (at most `max_batches_queued`
    batches ahead, which bounds memory).
    """

    def __init__(self, options, batch_events: int = 512, max_batches_queued: int = 64):
        self.options = options
        self.batch_events = batch_events
        self._batch: list = []
        self._advanced = False  # the first advance was sent
        self._pending_ns: Optional[int] = None  # bag time not sent yet (see advance)
        self._queue: queue.Queue = queue.Queue(maxsize=max_batches_queued)
        self._sender: Optional[threading.Thread] = None
        self._send_error: Optional[BaseException] = None
        self._process = None
        self._connection = None
        self._finished = False
        self.input_topics: list = []

    def start(self) -> None:
        """Start `python -m terrain_ssl.replay.downstream FD` on one end of a socket pair.

        A fresh interpreter rather than a fork (the caller may already run rclpy / DDS
        threads, whose locks a fork copies in whatever state they are in) and rather than
        multiprocessing's spawn (which re-imports the caller's __main__: a script without a
        __main__ guard would run again in the child). The caller's sys.path goes along, so
        the child imports the same terrain_ssl.
        """
        parent_end, child_end = socket.socketpair()
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        try:
            self._process = subprocess.Popen(
                [sys.executable, '-m', 'terrain_ssl.replay.downstream', str(child_end.fileno())],
                pass_fds=(child_end.fileno(),), env=environment, stdin=subprocess.DEVNULL)
        finally:
            child_end.close()
        self._connection = Connection(parent_end.detach())
        self._connection.send(self.options)

    def connect(self, upstream_topics) -> None:
        """Tell the stage which topics the labeler feeds; wait until its nodes are ready."""
        try:
            self._connection.send(list(upstream_topics))
        except OSError:
            pass  # it stopped already: _receive says why
        self.input_topics = self._receive('ready')
        self._sender = threading.Thread(target=self._send_batches, daemon=True,
                                        name='terrain_ssl-replay-sender')
        self._sender.start()

    def advance(self, stamp_ns: int) -> None:
        # The stage applies bag time only before its next delivery (DownstreamStage.advance),
        # so only the first time (it starts the timers' phase) and the latest one before each
        # delivery need to cross the pipe: ~7,300 time events per 120 s drive instead of ~31,000,
        # on the busier process.
        if not self._advanced:
            self._advanced = True
            self._add((_ADVANCE, stamp_ns))
        elif self._pending_ns is None or stamp_ns > self._pending_ns:
            self._pending_ns = stamp_ns

    def _send_pending_time(self) -> None:
        if self._pending_ns is not None:
            self._add((_ADVANCE, self._pending_ns))
            self._pending_ns = None

    def deliver(self, topic: str, msg) -> None:
        from rclpy.serialization import serialize_message
        self._send_pending_time()
        self._add((_DELIVER, topic, serialize_message(msg)))

    def deliver_bag_message(self, topic: str, bag_message) -> None:
        """A message read from the bag: its recorded CDR goes as it is (serialising the
        deserialised message again cost ~30 us per odometry message, ~0.2 s per 120 s drive,
        on the busier process); a ROS 1 message has none and is serialised."""
        if bag_message.cdr is None:
            self.deliver(topic, bag_message.message)
            return
        self._send_pending_time()
        self._add((_DELIVER, topic, bag_message.cdr))

    def finish(self, first_ns: Optional[int]) -> dict:
        self._send_pending_time()
        self._add((_FINISH, first_ns))
        self._flush()
        self._put(None)  # the sender's last item
        self._sender.join()
        self._raise_if_send_failed()
        result = self._receive('done')
        self._finished = True
        return result

    def close(self) -> None:
        """Wait for the process to exit (stop it after an error) and release the pipe."""
        if self._process is not None:
            try:
                self._process.wait(timeout=10.0 if self._finished else 0.5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._sender is not None and self._sender.is_alive():
            try:
                self._queue.put_nowait(None)  # a sender waiting for the next batch
            except queue.Full:
                pass  # it is writing to the stopped process: that write fails, it returns
        if self._connection is not None:
            self._connection.close()

    def _add(self, event: tuple) -> None:
        self._batch.append(event)
        if len(self._batch) >= self.batch_events:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        self._put(encode_events(self._batch))
        self._batch = []

    def _put(self, payload) -> None:
        """Queue `payload` for the sender; wait while the queue is full, unless the sender has
        given up (the process stopped)."""
        while True:
            self._raise_if_send_failed()
            try:
                self._queue.put(payload, timeout=0.5)
                return
            except queue.Full:
                continue

    def _send_batches(self) -> None:
        while True:
            payload = self._queue.get()
            if payload is None:
                return
            try:
                self._connection.send_bytes(payload)
            except OSError as error:  # the process stopped: reported at the next batch
                self._send_error = error
                return

    def _raise_if_send_failed(self) -> None:
        if self._send_error is None:
            return
        if self._connection.poll(1.0):  # it may have said why before it stopped
            self._receive('done')  # raises DownstreamError with its traceback
        raise DownstreamError(f'the downstream process stopped ({self._send_error!r}); '
                              f'{self._exit_detail()}')

    def _receive(self, expected: str):
        try:
            kind, payload = self._connection.recv()
        except (EOFError, OSError) as error:
            raise DownstreamError(f'the downstream process stopped ({error!r}); '
                                  f'{self._exit_detail()}') from error
        if kind == 'error':
            raise DownstreamError(f'the downstream process failed:\n{payload}')
        if kind != expected:
            raise DownstreamError(f'the downstream process said {kind!r}, expected {expected!r}')
        return payload

    def _exit_detail(self) -> str:
        try:
            return f'exit code {self._process.wait(timeout=2.0)}'
        except subprocess.TimeoutExpired:
            return 'still running'


def main(argv=None) -> int:
    """`python -m terrain_ssl.replay.downstream FD`: the downstream process, on socket FD."""
    argv = sys.argv[1:] if argv is None else argv
    connection = Connection(int(argv[0]))
    try:
        options = connection.recv()
    except EOFError:  # the replay stopped before it started
        return 1
    _run_downstream(connection, options)
    return 0


def _run_downstream(connection, options) -> None:
    """Build the stage, apply events until finish; any failure is sent back with its trace."""
    import rclpy
    from rclpy.context import Context
    from rclpy.serialization import deserialize_message

    from terrain_ssl.replay.runner import _NodeClock, _ros_arguments, rare_garbage_collection
    from terrain_ssl.ros.math_threads import single_threaded_math

    cpu_start = time.process_time()
    context = Context()
    stage = None
    try:
        with single_threaded_math(), rare_garbage_collection():
            rclpy.init(args=_ros_arguments(options), context=context)
            node_clock = _NodeClock() if options.node_timing else None
            upstream_topics = connection.recv()
            try:
                stage = DownstreamStage(context, options, upstream_topics, node_clock)
            except ValueError as error:  # an invalid parameter value: one line, no traceback
                connection.send(('error', str(error)))
                return
            types = stage.message_types
            startup_cpu_s = time.process_time() - cpu_start
            connection.send(('ready', stage.input_topics()))
            waiting_s = 0.0
            while True:
                wait_start = time.perf_counter()
                payload = connection.recv_bytes()
                waiting_s += time.perf_counter() - wait_start
                events = decode_events(payload)
                # The batch's messages are deserialised first, then applied in order: one
                # after the other, deserialising and the nodes' work each run with warm caches.
                messages = [deserialize_message(event[2], types[event[1]])
                            if event[0] == _DELIVER else None for event in events]
                for event, message in zip(events, messages):
                    kind = event[0]
                    if kind == _ADVANCE:
                        stage.advance(event[1])
                    elif kind == _DELIVER:
                        stage.deliver(event[1], message)
                    else:
                        result = stage.finish(event[1])
                        result['process'] = {
                            'startup_cpu_s': startup_cpu_s,  # imports, nodes
                            'cpu_s': time.process_time() - cpu_start - startup_cpu_s,
                            'waiting_for_input_s': waiting_s,
                            'node_s': dict(node_clock.seconds) if node_clock else {}}
                        connection.send(('done', result))
                        return
    except BaseException:  # noqa: B902 - report everything, the parent raises it
        try:
            connection.send(('error', traceback.format_exc()))
        except OSError:
            pass
    finally:
        if stage is not None:
            stage.destroy()
        context.try_shutdown()
        connection.close()


if __name__ == '__main__':
    raise SystemExit(main())
