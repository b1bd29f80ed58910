"""What a replay is asked to do (`ReplayOptions`), checked before it starts, and the ROS
arguments its nodes start with."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Optional

from terrain_ssl.replay.bag import READ_CHUNK_MESSAGES
from terrain_ssl.ros.pipeline import known_parameter_names

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
    node_timing: bool = False                         # profile each node's callbacks (bench)
    # 1: all nodes in this process. 2: the learner and the advisor in a second one, fed by
    # this one (same results, two cores: faster only when a core is free; see stage_process.py).
    processes: int = 1
    # Bag messages read and deserialised at a time before the nodes get them (Bag.messages):
    # a tuning knob for the bench (1: one at a time, interleaved with the nodes' work).
    read_chunk_messages: int = READ_CHUNK_MESSAGES
    # outputs.mcap (outputs_mcap.py): every message the nodes publish, in bag time; with
    # mcap_inputs, the bag messages the nodes read as well.
    outputs_mcap: Optional[str] = None
    mcap_inputs: bool = False


class ReplayError(RuntimeError):
    pass


def default_processes() -> int:
    """2 when this process may run on two or more CPUs (the second process then has a core of
    its own on an otherwise idle machine), else 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return 2 if cpus >= 2 else 1


def check_options(options: ReplayOptions) -> None:
    """ReplayError naming the first option that cannot work."""
    if options.processes not in (1, 2):
        raise ReplayError(f'processes must be 1 or 2, not {options.processes}')
    check_parameter_overrides(options.parameters)
    if not options.start_s >= 0.0:  # (NaN too)
        raise ReplayError(f'start must be >= 0 s, not {options.start_s}')
    if options.duration_s is not None and not options.duration_s > 0.0:
        raise ReplayError(f'duration must be > 0 s, not {options.duration_s}')


def check_parameter_overrides(overrides) -> None:
    """Each `-p [node:]name:=value` must name a parameter the nodes declare: rclpy would ignore
    a misspelt one, and the replay would run with the default without a word."""
    known = known_parameter_names() if overrides else set()
    for override in overrides:
        if ':=' not in override:
            raise ReplayError(f'-p {override}: expected NAME:=VALUE')
        name = override.split(':=', 1)[0].split(':')[-1]  # [node_name:]name
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            raise ReplayError(f'-p {override}: no node has a parameter {name!r}'
                              + (f'; did you mean {", ".join(close)}?' if close else ''))


def ros_arguments(options: ReplayOptions) -> list:
    """rclpy.init arguments for the replay's nodes, in either process."""
    args = ['terrain-ssl-replay', '--ros-args']
    if options.config:
        args += ['--params-file', str(options.config)]
    # Bag time; the learner neither loads nor saves its robot model file during a replay (a
    # replay starts cold or from --model-in, and writes its own model file at the end); and the
    # labeler does not ask TF for its mount (the replay read the bag's own /tf_static).
    args += ['-p', 'use_sim_time:=true', '-p', "model_path:=''", '-p', 'frames.use_tf:=false']
    for override in options.parameters:
        args += ['-p', override]
    return args
