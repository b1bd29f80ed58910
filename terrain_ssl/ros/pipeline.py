"""The three terrain_ssl nodes built together in one process (bringup, replay, closed loop)."""

from __future__ import annotations

import importlib
import inspect

from rclpy.node import Node

from terrain_ssl.ros.parameters import GENERIC_PARAMETERS, ParamSpec

# Data flows one way: sensors -> labeler -> learner -> advisor.
NODE_MODULES = (
    'terrain_ssl.ros.labeler_node',
    'terrain_ssl.ros.learner_node',
    'terrain_ssl.ros.advisor_node',
)


def node_class(module_name: str) -> type:
    """The rclpy Node subclass a node module defines (each module defines exactly one)."""
    module = importlib.import_module(module_name)
    classes = [value for value in vars(module).values()
               if inspect.isclass(value) and issubclass(value, Node) and value is not Node
               and value.__module__ == module_name]
    if len(classes) != 1:
        raise RuntimeError(f'{module_name} defines {len(classes)} Node classes, expected 1')
    return classes[0]


def node_parameter_names(module_name: str) -> set:
    """Every parameter name the node of `module_name` declares (its ParamSpec lists), plus the
    ones every rclpy node has."""
    names = set(GENERIC_PARAMETERS)
    for value in vars(importlib.import_module(module_name)).values():
        if isinstance(value, (list, tuple)) and value \
                and all(isinstance(item, ParamSpec) for item in value):
            names.update(spec.name for spec in value)
    return names


def known_parameter_names() -> set:
    """Every parameter name any of the three nodes declares."""
    return set().union(*(node_parameter_names(module_name) for module_name in NODE_MODULES))


def create_nodes(context=None) -> list:
    """Labeler, learner and advisor, in data-flow order, in `context` (global args apply)."""
    return [node_class(name)(context=context) for name in NODE_MODULES]
