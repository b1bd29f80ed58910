"""Node parameters: declared with descriptors (ranges, units), validated on every set, applied
live."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.exceptions import InvalidParameterTypeException, ParameterException

# Parameters every rclpy node has; they belong to the launch/bringup, not to our nodes' files.
GENERIC_PARAMETERS = {'use_sim_time', 'start_type_description_service'}


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
