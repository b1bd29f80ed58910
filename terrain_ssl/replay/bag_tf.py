"""Extrinsics from a bag's TF: `base_link -> lidar` (and `-> imu`) read from `/tf_static` and
`/tf` with rosbags (tf2_msgs is not on PyPI; rosbags' typestore knows tf2_msgs/msg/TFMessage).

Real robots carry their sensor mounts in `/tf_static`, from their URDF. A replay uses them when
the bag has them, unless the extrinsic is given explicitly (`-p lidar.*:=...` or
`--lidar-extrinsic`), and says in one line which extrinsic it used and where it came from.
The lidar frame is the `frame_id` of the bag's first point cloud unless named.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from terrain_ssl.core.geometry import make_transform, xyz_rpy

TF_TOPICS = ('/tf_static', '/tf')
EXTRINSIC_PARAMETERS = ('lidar.x', 'lidar.y', 'lidar.z', 'lidar.roll', 'lidar.pitch',
                        'lidar.yaw')
_TF_TYPE = 'tf2_msgs/msg/TFMessage'
_CLOUD_TYPE = 'sensor_msgs/msg/PointCloud2'
_IMU_TYPE = 'sensor_msgs/msg/Imu'


@dataclasses.dataclass
class BagFrames:
    """What a bag says about its frames: TF edges (parent, child) -> 4x4 (parent <- child),
    first seen, and the frame_id of its first point cloud and first IMU message."""

    edges: dict
    edge_topics: dict   # (parent, child) -> the topic it came from
    cloud_frame: Optional[str]
    imu_frame: Optional[str]


def read_bag_frames(bag_path, points_topic: Optional[str] = None) -> BagFrames:
    """TF edges of `/tf_static` and `/tf` (first value of each), and the sensors' frame ids."""
    reader = AnyReader(_paths(Path(bag_path)),
                       default_typestore=get_typestore(Stores.ROS2_HUMBLE))
    edges, edge_topics, frames = {}, {}, {}
    with reader:
        for connection in reader.connections:
            wanted = ((connection.topic in TF_TOPICS and connection.msgtype == _TF_TYPE)
                      or connection.msgtype in (_CLOUD_TYPE, _IMU_TYPE))
            if not wanted or (connection.msgtype == _CLOUD_TYPE and points_topic
                              and connection.topic != points_topic):
                continue
            for _, _, raw in reader.messages(connections=[connection]):
                message = reader.deserialize(raw, connection.msgtype)
                if connection.msgtype != _TF_TYPE:
                    frames.setdefault(connection.msgtype, message.header.frame_id)
                    break
                for stamped in message.transforms:
                    key = (stamped.header.frame_id.lstrip('/'),
                           stamped.child_frame_id.lstrip('/'))
                    if key not in edges:
                        t, q = stamped.transform.translation, stamped.transform.rotation
                        edges[key] = make_transform([t.x, t.y, t.z], [q.x, q.y, q.z, q.w])
                        edge_topics[key] = connection.topic
                if connection.topic == '/tf' and len(edges) > 64:
                    break  # the moving frames repeat; their mounts were seen by now
    return BagFrames(edges, edge_topics, frames.get(_CLOUD_TYPE), frames.get(_IMU_TYPE))


def _paths(path: Path) -> list:
    if path.suffix in ('.db3', '.mcap') and (path.parent / 'metadata.yaml').exists():
        return [path.parent]
    return [path]


def lookup(edges: dict, parent: str, child: str) -> Optional[np.ndarray]:
    """4x4 transform parent <- child through the TF tree of `edges`, or None if unconnected."""
    parent_of = {c: (p, m) for (p, c), m in edges.items()}

    def chain(frame):  # frame -> root: [(frame, root <- frame)]
        out, transform, seen = [(frame, np.eye(4))], np.eye(4), {frame}
        while frame in parent_of:
            frame, matrix = parent_of[frame]
            if frame in seen:
                break
            seen.add(frame)
            transform = matrix @ transform
            out.append((frame, transform))
        return out

    up_parent, up_child = dict(chain(parent)), chain(child)
    for frame, root_from_child in up_child:
        if frame in up_parent:
            return np.linalg.inv(up_parent[frame]) @ root_from_child
    return None


def explicit_extrinsic(parameters) -> bool:
    """True when `-p [node:]lidar.*:=value` overrides set the extrinsic by hand."""
    return any(item.split(':=', 1)[0].split(':')[-1] in EXTRINSIC_PARAMETERS
               for item in parameters)


def bag_extrinsic_parameters(bag_path, parameters, base_frame: str = 'base_link',
                             points_topic: Optional[str] = None) -> tuple:
    """(-p overrides to add, one line saying which extrinsic is used and where from)."""
    if explicit_extrinsic(parameters):
        return [], 'lidar extrinsic: from the given parameters (-p lidar.* / --lidar-extrinsic)'
    try:
        frames = read_bag_frames(bag_path, points_topic)
    except Exception as error:  # noqa: BLE001 - an unreadable TF must not stop the replay
        return [], f'lidar extrinsic: from the parameters file (bag TF unreadable: {error})'
    lidar = frames.cloud_frame
    transform = lookup(frames.edges, base_frame, lidar) if lidar else None
    if transform is None:
        return [], (f'lidar extrinsic: from the parameters file (no TF {base_frame} -> '
                    f'{lidar or "?"} in {", ".join(TF_TOPICS)})')
    values = xyz_rpy(transform)
    sources = sorted({topic for key, topic in frames.edge_topics.items()})
    line = (f'lidar extrinsic: {base_frame} -> {lidar} = '
            + ' '.join(f'{value:.4g}' for value in values)
            + f' (x y z m, roll pitch yaw rad) from the bag\'s {"/".join(sources)}')
    imu = lookup(frames.edges, base_frame, frames.imu_frame) if frames.imu_frame else None
    if imu is not None:
        line += (f'; {base_frame} -> {frames.imu_frame} = '
                 + ' '.join(f'{value:.4g}' for value in xyz_rpy(imu)))
    overrides = [f'roughness_labeler:{name}:={value!r}'
                 for name, value in zip(EXTRINSIC_PARAMETERS, values)]
    return overrides, line


def with_bag_extrinsics(options, out=None):
    """`options` (ReplayOptions) with the bag's TF extrinsic added to its parameters, unless
    they set it already; prints the one line saying which one is used."""
    extra, line = bag_extrinsic_parameters(options.bag, options.parameters,
                                           points_topic=(options.topics or {}).get('points'))
    print(line, file=sys.stderr) if out is None else out(line)
    if not extra:
        return options
    return dataclasses.replace(options, parameters=list(options.parameters) + extra)


__all__ = ['BagFrames', 'EXTRINSIC_PARAMETERS', 'bag_extrinsic_parameters',
           'explicit_extrinsic', 'lookup', 'read_bag_frames', 'with_bag_extrinsics']
