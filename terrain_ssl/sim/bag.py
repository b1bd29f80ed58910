"""Open-loop drives written to rosbag2 (sqlite3 or mcap) with `rosbags`, plus ground truth.

The bag is made by stepping the same `World` a closed loop uses, at a speed profile:
a constant ('5'), or a smooth variation between two speeds ('3:7', optionally with a period in
seconds, '3:7:30'), so labels come at many speeds.
"""

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability,
                                QosTime)
from rosbags.rosbag2 import StoragePlugin, Writer

from terrain_ssl.sim import messages
from terrain_ssl.sim.world import ImuConfig, World, WorldConfig

STORAGES = {'sqlite3': StoragePlugin.SQLITE3, 'mcap': StoragePlugin.MCAP}


@dataclass(frozen=True)
class SpeedProfile:
    """Commanded speed (m/s) over time: low + (high - low) (1 - cos(2 pi t / period)) / 2."""

    low_mps: float
    high_mps: float
    period_s: float = 20.0

    def __post_init__(self):
        if not (np.isfinite(self.low_mps) and np.isfinite(self.high_mps)):
            raise ValueError('speeds must be finite')
        if self.low_mps < 0 or self.high_mps < self.low_mps:
            raise ValueError(f'need 0 <= low <= high speed, got {self.low_mps}:{self.high_mps}')
        if not self.period_s > 0:
            raise ValueError('speed period must be > 0 s')

    @classmethod
    def parse(cls, spec) -> 'SpeedProfile':
        """'5' (constant m/s), '3:7' (varying, 20 s period) or '3:7:30' (period 30 s)."""
        if isinstance(spec, SpeedProfile):
            return spec
        if isinstance(spec, (int, float)):
            return cls(float(spec), float(spec))
        parts = str(spec).split(':')
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f'bad speed {spec!r}: use V, LOW:HIGH or LOW:HIGH:PERIOD_S') from None
        if len(values) == 1:
            return cls(values[0], values[0])
        if len(values) == 2:
            return cls(values[0], values[1])
        if len(values) == 3:
            return cls(*values)
        raise ValueError(f'bad speed {spec!r}: use V, LOW:HIGH or LOW:HIGH:PERIOD_S')

    def at(self, t_s: float) -> float:
        phase = 0.5 - 0.5 * np.cos(2.0 * np.pi * t_s / self.period_s)
        return float(self.low_mps + (self.high_mps - self.low_mps) * phase)

    def __str__(self):
        if self.low_mps == self.high_mps:
            return f'{self.low_mps:g}'
        return f'{self.low_mps:g}:{self.high_mps:g}:{self.period_s:g}'


def _qos(reliable: bool, transient_local: bool, depth: int = 10) -> Qos:
    zero = QosTime(sec=0, nsec=0)
    return Qos(history=QosHistory.KEEP_LAST, depth=depth,
               reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               durability=(QosDurability.TRANSIENT_LOCAL if transient_local
                           else QosDurability.VOLATILE),
               deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
               liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)


def write_bag(world: World, out_dir, duration_s: float, speed, storage: str = 'sqlite3',
              chunk_s: float | None = None, progress=None, extra_config: dict | None = None):
    """Drive `world` for `duration_s` at `speed` (SpeedProfile or spec), writing every message
    to a new rosbag2 at `out_dir` and the ground truth beside it. Returns the bag path.

    progress: optional callable(simulated_s, duration_s, wall_s) called after each chunk.
    """
    if storage not in STORAGES:
        raise ValueError(f'unknown storage {storage!r}; choose one of {sorted(STORAGES)}')
    if not np.isfinite(duration_s) or duration_s <= 0:
        raise ValueError(f'duration must be > 0 s, got {duration_s}')
    profile = SpeedProfile.parse(speed)
    out_dir = Path(out_dir)
    # One lidar revolution per chunk keeps messages in log-time order across chunks.
    if chunk_s is None:
        chunk_s = world.lidar_every / world.vehicle.physics_rate_hz if world.lidar else 0.1
    cfg = world.config
    topics = [(cfg.tf_static_topic, messages.TFMESSAGE_TYPE, _qos(True, True, 1)),
              (cfg.imu_topic, messages.IMU_TYPE, _qos(False, False)),
              (cfg.odom_topic, messages.ODOMETRY_TYPE, _qos(False, False))]
    if world.lidar is not None:
        topics.append((cfg.points_topic, messages.POINTCLOUD2_TYPE, _qos(False, False)))
    counts = {topic: 0 for topic, _, _ in topics}
    wall_start = time.monotonic()
    t0_ns = world.time_ns
    end_ns = t0_ns + int(round(duration_s * 1e9))
    with Writer(out_dir, version=9, storage_plugin=STORAGES[storage]) as writer:
        connections = {topic: writer.add_connection(topic, msgtype, typestore=messages.TYPESTORE,
                                                    offered_qos_profiles=[qos])
                       for topic, msgtype, qos in topics}
        while world.time_ns < end_ns:
            t_s = (world.time_ns - t0_ns) * 1e-9
            dt = min(chunk_s, (end_ns - world.time_ns) * 1e-9)
            for msg in world.step(dt, profile.at(t_s)):
                writer.write(connections[msg.topic], msg.receive_ns, msg.cdr_bytes)
                counts[msg.topic] += 1
            if progress is not None:
                progress((world.time_ns - t0_ns) * 1e-9, duration_s, time.monotonic() - wall_start)
    config = world.config_dict()
    config.update({'duration_s': float(duration_s), 'speed': str(profile),
                   'speed_profile': {'low_mps': profile.low_mps, 'high_mps': profile.high_mps,
                                     'period_s': profile.period_s},
                   'storage': storage, 'message_counts': counts})
    config.update(extra_config or {})
    world.ground_truth.save(out_dir, config=config)
    return out_dir


def simulate_bag(out_dir, duration_s: float = 20.0, seed: int = 0, storage: str = 'sqlite3',
                 lidar: str | None = 'vlp16', speed='5', imu_mount: str = 'z_up',
                 start_s_m: float = 0.0, world_config: WorldConfig | None = None,
                 terrain=None, overwrite: bool = False, progress=None) -> Path:
    """Simulate a drive and write it as a rosbag2 directory `out_dir`; returns its path.

    world_config, if given, is the base configuration; lidar, imu_mount and start_s_m replace
    its fields. `terrain` (a Terrain built from the same TerrainConfig) skips rebuilding it.
    An existing `out_dir` is an error unless `overwrite` and it holds a bag (metadata.yaml).
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not overwrite:
            raise FileExistsError(f'{out_dir} exists; choose a new directory or overwrite=True')
        if any(out_dir.iterdir()) and not (out_dir / 'metadata.yaml').is_file():
            raise FileExistsError(f'refusing to overwrite {out_dir}: '
                                  'it is not a rosbag2 directory')
        shutil.rmtree(out_dir)
    base = world_config or WorldConfig()
    config = replace(base, lidar=lidar, imu=replace(base.imu, mount=imu_mount)
                     if imu_mount != base.imu.mount else base.imu, start_s_m=float(start_s_m))
    if not isinstance(config.imu, ImuConfig):
        raise TypeError('world_config.imu must be an ImuConfig')
    world = World(config, seed=seed, terrain=terrain)
    return write_bag(world, out_dir, duration_s, speed, storage=storage, progress=progress)
