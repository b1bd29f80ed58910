"""The replay's second stage (`LearnerAdvisorStage`) in a second process, so a replay uses two
cores.

The first process reads the bag and drives the labeler; it sends this one the ordered stream of
events the stage applies ("bag time is now t", "this message arrives on topic X"). Messages cross
as rclpy-serialised CDR (what DDS carries live, deserialised here by rclpy), batched, written by
a sender thread so the labeler's side seldom waits on the pipe.

The second process costs CPU of its own (its copy of the odometry and the labeler's outputs is
deserialised once more, plus the pipe): it pays when a second core is free, and costs wall time
on a machine whose cores are busy with other work.
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

import rclpy
from rclpy.context import Context
from rclpy.serialization import deserialize_message, serialize_message

from terrain_ssl.replay.learner_advisor_stage import LearnerAdvisorStage
from terrain_ssl.replay.outputs_mcap import STAGE_PART_SUFFIX
from terrain_ssl.replay.options import ros_arguments
from terrain_ssl.replay.profiler import CallbackProfiler
from terrain_ssl.replay.runtime import rare_garbage_collection
from terrain_ssl.ros.math_threads import single_threaded_math

# Event kinds on the pipe, as decoded tuples.
ADVANCE = 0   # (ADVANCE, stamp_ns)
DELIVER = 1   # (DELIVER, topic, CDR bytes)
FINISH = 2    # (FINISH, first_stamp_ns or None)
# Wire format of one event in a batch (little endian): kind (uint8), then
#   ADVANCE: stamp_ns (int64);  FINISH: has_stamp (uint8), stamp_ns (int64);
#   DELIVER: topic length (uint16), CDR length (uint32), topic (UTF-8), CDR bytes.
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
        if kind == ADVANCE:
            parts.append(_STAMP.pack(event[1]))
        elif kind == DELIVER:
            topic = event[1].encode('utf-8')
            parts += [_DELIVER_HEADER.pack(len(topic), len(event[2])), topic, event[2]]
        elif kind == FINISH:
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
            if kind == ADVANCE:
                events.append((ADVANCE, _STAMP.unpack_from(payload, offset)[0]))
                offset += _STAMP.size
            elif kind == DELIVER:
                topic_length, cdr_length = _DELIVER_HEADER.unpack_from(payload, offset)
                offset += _DELIVER_HEADER.size
                topic = bytes(view[offset:offset + topic_length]).decode('utf-8')
                offset += topic_length
                cdr = bytes(view[offset:offset + cdr_length])
                if len(cdr) != cdr_length:
                    raise ValueError('truncated message')
                offset += cdr_length
                events.append((DELIVER, topic, cdr))
            elif kind == FINISH:
                has_stamp, stamp = _FINISH_STAMP.unpack_from(payload, offset)
                offset += _FINISH_STAMP.size
                events.append((FINISH, stamp if has_stamp else None))
            else:
                raise ValueError(f'unknown event kind {kind} at byte {offset - 1}')
    except struct.error as error:
        raise ValueError(f'truncated event batch: {error}') from error
    return events


class StageProcessError(RuntimeError):
    """The second process failed; the message carries its traceback."""


class LearnerAdvisorProcess:
    """LearnerAdvisorStage in a spawned process, with the same advance / deliver / finish calls.

    Start it early (`start`), it imports and builds its nodes while the caller builds its own;
    `connect(upstream_topics)` waits until it is ready. Events are batched (`batch_events` per
    pipe message) and written by a sender thread: writing to a pipe releases the GIL, so the
    labeler's side goes on while the stage catches up (at most `max_batches_queued`
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
        """Start `python -m terrain_ssl.replay.stage_process FD` on one end of a socket pair.

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
                [sys.executable, '-m', 'terrain_ssl.replay.stage_process',
                 str(child_end.fileno())],
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
        # The stage applies bag time only before its next delivery (LearnerAdvisorStage.advance),
        # so only the first time (it starts the timers' phase) and the latest one before each
        # delivery need to cross the pipe, not one per bag message.
        if not self._advanced:
            self._advanced = True
            self._add((ADVANCE, stamp_ns))
        elif self._pending_ns is None or stamp_ns > self._pending_ns:
            self._pending_ns = stamp_ns

    def _send_pending_time(self) -> None:
        if self._pending_ns is not None:
            self._add((ADVANCE, self._pending_ns))
            self._pending_ns = None

    def deliver(self, topic: str, msg) -> None:
        self._send_pending_time()
        self._add((DELIVER, topic, serialize_message(msg)))

    def deliver_bag_message(self, topic: str, bag_message) -> None:
        """A message read from the bag: its recorded CDR goes as it is (no second
        serialisation on the busier process); a ROS 1 message has none and is serialised."""
        if bag_message.cdr is None:
            self.deliver(topic, bag_message.message)
            return
        self._send_pending_time()
        self._add((DELIVER, topic, bag_message.cdr))

    def finish(self, first_ns: Optional[int]) -> dict:
        self._send_pending_time()
        self._add((FINISH, first_ns))
        self._flush()
        self._put(None)  # the sender's last item
        self._sender.join()
        self._raise_if_send_failed()
        result = self._receive('done')
        self._finished = True
        return result

    def outputs_part(self) -> str:
        """The MCAP part file the process wrote (options.outputs_mcap)."""
        return str(self.options.outputs_mcap) + STAGE_PART_SUFFIX

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
            self._receive('done')  # raises StageProcessError with its traceback
        raise StageProcessError(f'the learner-advisor process stopped ({self._send_error!r}); '
                              f'{self._exit_detail()}')

    def _receive(self, expected: str):
        try:
            kind, payload = self._connection.recv()
        except (EOFError, OSError) as error:
            raise StageProcessError(f'the learner-advisor process stopped ({error!r}); '
                                  f'{self._exit_detail()}') from error
        if kind == 'error':
            raise StageProcessError(f'the learner-advisor process failed:\n{payload}')
        if kind != expected:
            raise StageProcessError(f'the learner-advisor process said {kind!r}, '
                                    f'expected {expected!r}')
        return payload

    def _exit_detail(self) -> str:
        try:
            return f'exit code {self._process.wait(timeout=2.0)}'
        except subprocess.TimeoutExpired:
            return 'still running'


def main(argv=None) -> int:
    """`python -m terrain_ssl.replay.stage_process FD`: the second process, on socket FD."""
    argv = sys.argv[1:] if argv is None else argv
    connection = Connection(int(argv[0]))
    try:
        options = connection.recv()
    except EOFError:  # the replay stopped before it started
        return 1
    serve_stage(connection, options)
    return 0


def serve_stage(connection, options) -> None:
    """Build the stage, apply events until finish; any failure is sent back with its trace."""
    cpu_start = time.process_time()
    context = Context()
    stage = None
    try:
        with single_threaded_math(), rare_garbage_collection():
            rclpy.init(args=ros_arguments(options), context=context)
            profiler = CallbackProfiler() if options.node_timing else None
            upstream_topics = connection.recv()
            try:
                stage = LearnerAdvisorStage(context, options, upstream_topics, profiler)
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
                            if event[0] == DELIVER else None for event in events]
                for event, message in zip(events, messages):
                    kind = event[0]
                    if kind == ADVANCE:
                        stage.advance(event[1])
                    elif kind == DELIVER:
                        stage.deliver(event[1], message)
                    else:
                        result = stage.finish(event[1])
                        result['process'] = {
                            'startup_cpu_s': startup_cpu_s,  # imports, nodes
                            'cpu_s': time.process_time() - cpu_start - startup_cpu_s,
                            'waiting_for_input_s': waiting_s,
                            'node_s': dict(profiler.seconds) if profiler else {}}
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
