"""Building blocks shared by the three nodes: live parameters, outlets, rejects, diagnostics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.exceptions import InvalidParameterTypeException, ParameterException
from rclpy.qos import QoSProfile, qos_profile_sensor_data, ReliabilityPolicy, HistoryPolicy

# Sensor inputs: best effort, keep last 5 (drivers publish best effort; a reliable subscriber would
# not match them). Our own topics: reliable, so a labeled patch is not lost between nodes.
SENSOR_QOS = qos_profile_sensor_data
# High-rate streams (IMU at 200-1000 Hz, odometry at 50-100 Hz): still best effort, but a queue of
# up to ~1 s, so a scan that takes 25 ms to process does not make the subscriber drop samples
# (a 5-deep queue overflows in 5 ms at 1 kHz, and every gap costs labels).
HIGH_RATE_SENSOR_QOS = QoSProfile(depth=200, reliability=ReliabilityPolicy.BEST_EFFORT,
                                  history=HistoryPolicy.KEEP_LAST)
RELIABLE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                          history=HistoryPolicy.KEEP_LAST)
# Labeled patches are training data, each label measured once: losing one is silent data loss.
# Reliable alone does not prevent that: with keep-last 10, a subscriber that falls 10 messages
# behind (a 25 ms scan, a model save, a loaded CPU) has its oldest unread samples overwritten in
# the writer's and the reader's history. Keep 1000 (~20 s at the usual ~50 messages/s; each is a
# few patches, ~100 bytes each): a burst or a stall is absorbed, then caught up. Not keep-all:
# a full keep-all history blocks the labeler's publish, and with it the IMU and scan callbacks.
# Publisher and subscriber both use it (the writer's history bounds what can be resent).
LABELS_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                        history=HistoryPolicy.KEEP_LAST)

DIAG_OK = 0
DIAG_WARN = 1
DIAG_ERROR = 2


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: its default fixes its type; description should carry the units."""

    name: str
    default: object
    description: str
    min: Optional[float] = None
    max: Optional[float] = None
    choices: Optional[tuple] = None
    read_only: bool = False

    def descriptor(self) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(name=self.name, description=self.description,
                                         read_only=self.read_only)
        ranged = self.min is not None or self.max is not None
        if ranged and not isinstance(self.default, bool):  # a bool has no range
            low = self.min if self.min is not None else -1e300
            high = self.max if self.max is not None else 1e300
            if isinstance(self.default, int):
                low = int(max(low, -2**62))
                high = int(min(high, 2**62))
                descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=0)]
            elif isinstance(self.default, float):
                descriptor.floating_point_range = [
                    FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)]
        if self.choices:
            descriptor.additional_constraints = 'one of: ' + ', '.join(map(str, self.choices))
        return descriptor

    def check(self, value) -> Optional[str]:
        """Why `value` is invalid for this parameter, or None when it is fine."""
        expected = type(self.default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            return f'{self.name}: expected {expected.__name__}, got {type(value).__name__}'
        if isinstance(value, float) and value != value:
            return f'{self.name}: NaN is not a valid value'
        if self.min is not None and value < self.min:
            return f'{self.name}: {value} is below the minimum {self.min}'
        if self.max is not None and value > self.max:
            return f'{self.name}: {value} is above the maximum {self.max}'
        if self.choices and value not in self.choices:
            return f'{self.name}: {value!r} is not one of {list(self.choices)}'
        return None


class LiveParameters:
    """Declares parameters with descriptors, validates every set, and applies accepted values live.

    An invalid set (type, range, choices, or the node's cross-parameter `validate`) is refused with
    a reason, the old value stays, and nothing is applied. On success `on_change(values)` runs with
    the full, new set of values, so the node reconfigures in one place.
    """

    def __init__(self, node, specs: Sequence[ParamSpec],
                 validate: Optional[Callable[[dict], Optional[str]]] = None,
                 on_change: Optional[Callable[[dict], None]] = None):
        self._node = node
        self._specs = {spec.name: spec for spec in specs}
        self._validate = validate
        self._on_change = on_change
        values = {}
        for spec in specs:
            try:
                parameter = node.declare_parameter(spec.name, spec.default, spec.descriptor())
            except ParameterException as error:  # an override (-p, YAML) of the wrong type or
                # out of range: rclpy refuses it; the callers report a ValueError in one line.
                hint = ''
                if isinstance(error, InvalidParameterTypeException) \
                        and isinstance(spec.default, float):
                    hint = ' (a decimal parameter needs a decimal value: 1.0, not 1)'
                raise ValueError(f'invalid parameter at start-up: {spec.name}: '
                                 f'{str(error).rsplit(": ", 1)[0]}{hint}') from error
            value = parameter.value
            if isinstance(spec.default, float) and isinstance(value, int):
                value = float(value)
            problem = spec.check(value)
            if problem:
                raise ValueError(f'invalid parameter at start-up: {problem}')
            values[spec.name] = value
        problem = validate(values) if validate else None
        if problem:
            raise ValueError(f'invalid parameters at start-up: {problem}')
        self.values = values
        node.add_on_set_parameters_callback(self._on_set)

    @property
    def specs(self) -> dict:
        return dict(self._specs)

    def _on_set(self, parameters) -> SetParametersResult:
        candidate = dict(self.values)
        for parameter in parameters:
            spec = self._specs.get(parameter.name)
            if spec is None:  # use_sim_time and other parameters the node does not own
                continue
            value = parameter.value
            if isinstance(spec.default, float) and isinstance(value, int) \
                    and not isinstance(value, bool):
                value = float(value)
            problem = spec.check(value)
            if problem:
                return SetParametersResult(successful=False, reason=problem)
            candidate[parameter.name] = value
        if self._validate:
            problem = self._validate(candidate)
            if problem:
                return SetParametersResult(successful=False, reason=problem)
        if candidate != self.values and self._on_change:
            try:
                self._on_change(dict(candidate))
            except ValueError as error:  # the core refused it: the old values stay in force
                return SetParametersResult(successful=False, reason=str(error))
        self.values = candidate
        return SetParametersResult(successful=True)


class Outlet:
    """A publisher that also hands each message to in-process listeners.

    Offline replay and single-process bringup chain nodes through `connect`, so messages between
    nodes are neither serialised nor dropped by DDS queues.
    """

    def __init__(self, node, msg_type, topic: str, qos):
        self.publisher = node.create_publisher(msg_type, topic, qos)
        self._listeners: list = []
        self.published = 0

    @property
    def topic_name(self) -> str:
        return self.publisher.topic_name

    def connect(self, callback: Callable) -> None:
        self._listeners.append(callback)

    def has_listeners(self) -> bool:
        """Whether a message published now would reach anyone (in process or over DDS): a node
        can skip building an output nobody takes."""
        return bool(self._listeners) or self.publisher.get_subscription_count() > 0

    def publish(self, msg) -> None:
        self.published += 1
        if self.publisher.get_subscription_count():  # nobody listening: skip the DDS copy
            self.publisher.publish(msg)
        for callback in self._listeners:
            callback(msg)


class RejectCounter:
    """Counts rejected inputs by reason and logs them, throttled so a flood cannot drown the log."""

    def __init__(self, logger, throttle_s: float = 5.0):
        self._logger = logger
        self._throttle_s = throttle_s
        self.counts: dict = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def reject(self, reason: str, detail: str = '') -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        text = f'rejected input ({reason}): {detail}' if detail else f'rejected input ({reason})'
        # One throttle per call site in rclpy: keep the call here so every reason shares it.
        self._logger.warning(text, throttle_duration_sec=self._throttle_s)

    def add(self, counts: dict) -> None:
        """Merge counts kept elsewhere (e.g. by a core object) without logging them again."""
        for reason, count in counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + count


def diagnostic_status(name: str, hardware_id: str, level: int, message: str,
                      values: dict) -> DiagnosticStatus:
    return DiagnosticStatus(
        level=bytes([int(level)]), name=name, message=message, hardware_id=hardware_id,
        values=[KeyValue(key=str(key), value=_format_value(value))
                for key, value in values.items()])


def _format_value(value) -> str:
    if isinstance(value, float):
        return f'{value:.6g}'
    return str(value)


class DiagnosticsPublisher:
    """Publishes the node's health on /diagnostics every `period_s` (node clock)."""

    def __init__(self, node, period_s: float, collect: Callable[[], tuple]):
        self._node = node
        self._collect = collect
        self._publisher = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.timer = node.create_timer(period_s, self._on_timer)
        self.last: Optional[DiagnosticStatus] = None

    def _on_timer(self) -> None:
        # Collecting costs up to a few ms (the learner's windowed Spearman): not when nobody
        # listens (replay, tests). Rates in the next status then average over the silent time.
        if self._publisher.get_subscription_count() > 0:
            self.publish_now()

    def publish_now(self) -> None:
        level, message, values = self._collect()
        status = diagnostic_status(f'{self._node.get_name()}: status',
                                   self._node.get_fully_qualified_name(), level, message, values)
        array = DiagnosticArray()
        array.header.stamp = self._node.get_clock().now().to_msg()
        array.status = [status]
        self.last = status
        self._publisher.publish(array)


def init_ros(args=None) -> bool:
    """rclpy.init; on arguments rcl cannot parse, say so in one line (no traceback) and return
    False. The usual slip: an empty value, `-p model_path:=`, which rcl refuses; an empty string
    is written `-p model_path:="''"`."""
    import sys

    import rclpy
    from rclpy._rclpy_pybind11 import RCLError

    try:
        rclpy.init(args=args)
    except RCLError as error:
        reason = str(error).split(', at ')[0]
        print(f'error: {reason}\n(an empty parameter value is written -p name:="\'\'")',
              file=sys.stderr)
        return False
    return True


def run_node(node_factory: Callable, args=None) -> int:
    """init, build the node, spin until Ctrl-C / SIGTERM / shutdown, then close it cleanly.

    A node may define `close()` (e.g. save its model); it runs after spinning stops, even when the
    context was shut down by a signal. Returns the process exit code.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from terrain_ssl.ros.executor import new_executor, spin_until_shutdown
    from terrain_ssl.ros.math_threads import pin_math_threads

    pin_math_threads()
    if not init_ros(args):
        return 2
    try:
        node = node_factory()
    except ValueError as error:  # invalid parameters at start-up: say why, do not trace back
        import sys
        print(f'error: {error}', file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = new_executor()
    executor.add_node(node)
    try:
        spin_until_shutdown(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        close = getattr(node, 'close', None)
        if close is not None:
            close()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
