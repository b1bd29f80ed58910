"""The lidar's mount (base_link -> lidar) from TF, where tf2_ros is installed.

On a robot the URDF puts the mount on /tf_static (robot_state_publisher); typing it again as
`lidar.*` parameters invites a silent typo. The labeler node therefore asks TF for
`frames.base -> frames.lidar` (the clouds' frame_id when empty) until it gets an answer, and
then sets its `lidar.*` parameters to it, unless they were set by hand (differ from their
defaults): explicit parameters win.

tf2_ros is part of a ROS distro, not of PyPI: without it the node keeps its `lidar.*`
parameters, and says so once. `terrain-ssl replay` reads the bag's /tf_static itself
(replay/bag_tf.py).
"""

from __future__ import annotations

import importlib.util
from typing import Optional

from terrain_ssl.core.geometry import make_transform, xyz_rpy

LIDAR_PARAMETERS = ('lidar.x', 'lidar.y', 'lidar.z', 'lidar.roll', 'lidar.pitch', 'lidar.yaw')


def tf2_available() -> bool:
    return importlib.util.find_spec('tf2_ros') is not None


def set_by_hand(values: dict, defaults: dict) -> bool:
    """True when any `lidar.*` value differs from its declared default."""
    return any(values[name] != defaults[name] for name in LIDAR_PARAMETERS)


class TfExtrinsic:
    """A TF listener on `node` answering base -> lidar lookups as `lidar.*` parameter values."""

    def __init__(self, node, base_frame: str):
        import tf2_ros
        from rclpy.time import Time

        self.base_frame = base_frame
        self._errors = tf2_ros.TransformException
        self._latest = Time()
        self._buffer = tf2_ros.Buffer()
        self._listener = tf2_ros.TransformListener(self._buffer, node)

    def lookup(self, lidar_frame: str) -> Optional[dict]:
        """{lidar.x: m, ..., lidar.yaw: rad} of base <- lidar, or None while TF has no answer."""
        try:
            stamped = self._buffer.lookup_transform(self.base_frame, lidar_frame, self._latest)
        except self._errors:
            return None
        t, q = stamped.transform.translation, stamped.transform.rotation
        transform = make_transform((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
        return dict(zip(LIDAR_PARAMETERS, xyz_rpy(transform)))

    def close(self) -> None:
        self._listener.unregister()


__all__ = ['LIDAR_PARAMETERS', 'TfExtrinsic', 'set_by_hand', 'tf2_available']
