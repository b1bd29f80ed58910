"""Build ROS 2 messages for the simulator and serialise them to CDR with `rosbags` (no rclpy).

The CDR bytes are what a rosbag2 file stores and what `rclpy.serialization.deserialize_message`
reads, so the same bytes serve bag writing and in-process closed loops.
"""

from dataclasses import dataclass

import numpy as np
from rosbags.typesys import Stores, get_typestore

# Humble definitions of these messages are identical to Jazzy and Kilted.
TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
_T = TYPESTORE.types
_Header = _T['std_msgs/msg/Header']
_Time = _T['builtin_interfaces/msg/Time']
_Vector3 = _T['geometry_msgs/msg/Vector3']
_Quaternion = _T['geometry_msgs/msg/Quaternion']
_Point = _T['geometry_msgs/msg/Point']
_Pose = _T['geometry_msgs/msg/Pose']
_PoseWithCovariance = _T['geometry_msgs/msg/PoseWithCovariance']
_Twist = _T['geometry_msgs/msg/Twist']
_TwistWithCovariance = _T['geometry_msgs/msg/TwistWithCovariance']
_Transform = _T['geometry_msgs/msg/Transform']
_TransformStamped = _T['geometry_msgs/msg/TransformStamped']
_PointField = _T['sensor_msgs/msg/PointField']
Imu = _T['sensor_msgs/msg/Imu']
Odometry = _T['nav_msgs/msg/Odometry']
PointCloud2 = _T['sensor_msgs/msg/PointCloud2']
TFMessage = _T['tf2_msgs/msg/TFMessage']

IMU_TYPE = 'sensor_msgs/msg/Imu'
ODOMETRY_TYPE = 'nav_msgs/msg/Odometry'
POINTCLOUD2_TYPE = 'sensor_msgs/msg/PointCloud2'
TFMESSAGE_TYPE = 'tf2_msgs/msg/TFMessage'

# PointField datatypes (sensor_msgs/PointField constants).
_FLOAT32, _UINT16 = 7, 4
# x, y, z, intensity float32; ring uint16 (+2 pad); time float32 (s since header stamp).
CLOUD_DTYPE = np.dtype({'names': ['x', 'y', 'z', 'intensity', 'ring', 'time'],
                        'formats': ['<f4', '<f4', '<f4', '<f4', '<u2', '<f4'],
                        'offsets': [0, 4, 8, 12, 16, 20], 'itemsize': 24})
_CLOUD_FIELDS = [_PointField(name=name, offset=CLOUD_DTYPE.fields[name][1],
                             datatype=_UINT16 if name == 'ring' else _FLOAT32, count=1)
                 for name in CLOUD_DTYPE.names]


@dataclass(frozen=True)
class SimMessage:
    """One serialised message. `stamp_ns` is the header stamp; `log_time_ns` when it would be
    received (a lidar scan is complete one revolution after its stamp)."""

    topic: str
    stamp_ns: int
    msgtype: str
    cdr_bytes: bytes
    log_time_ns: int = -1

    @property
    def receive_ns(self) -> int:
        return self.log_time_ns if self.log_time_ns >= 0 else self.stamp_ns


def _header(stamp_ns: int, frame_id: str):
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return _Header(stamp=_Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def _vec(v):
    return _Vector3(x=float(v[0]), y=float(v[1]), z=float(v[2]))


def _quat(q_xyzw):
    return _Quaternion(x=float(q_xyzw[0]), y=float(q_xyzw[1]), z=float(q_xyzw[2]),
                       w=float(q_xyzw[3]))


def _diag3(sigma):
    return np.diag(np.full(3, float(sigma) ** 2)).ravel()


def imu_cdr(stamp_ns, frame_id, quat_xyzw, gyro_radps, accel_mps2, orientation_sigma_rad,
            gyro_sigma_radps, accel_sigma_mps2) -> bytes:
    msg = Imu(header=_header(stamp_ns, frame_id), orientation=_quat(quat_xyzw),
              orientation_covariance=_diag3(orientation_sigma_rad),
              angular_velocity=_vec(gyro_radps),
              angular_velocity_covariance=_diag3(gyro_sigma_radps),
              linear_acceleration=_vec(accel_mps2),
              linear_acceleration_covariance=_diag3(accel_sigma_mps2))
    return bytes(TYPESTORE.serialize_cdr(msg, IMU_TYPE))


def odometry_cdr(stamp_ns, frame_id, child_frame_id, position_m, quat_xyzw, linear_mps,
                 angular_radps, position_sigma_m, linear_sigma_mps, angular_sigma_radps) -> bytes:
    pose_cov = np.diag([position_sigma_m ** 2] * 3 + [1e-4] * 3).ravel()
    twist_cov = np.diag([linear_sigma_mps ** 2] * 3 + [angular_sigma_radps ** 2] * 3).ravel()
    msg = Odometry(
        header=_header(stamp_ns, frame_id), child_frame_id=child_frame_id,
        pose=_PoseWithCovariance(
            pose=_Pose(position=_Point(x=float(position_m[0]), y=float(position_m[1]),
                                       z=float(position_m[2])),
                       orientation=_quat(quat_xyzw)),
            covariance=pose_cov.astype(np.float64)),
        twist=_TwistWithCovariance(twist=_Twist(linear=_vec(linear_mps),
                                                angular=_vec(angular_radps)),
                                   covariance=twist_cov.astype(np.float64)))
    return bytes(TYPESTORE.serialize_cdr(msg, ODOMETRY_TYPE))


def pointcloud2_cdr(stamp_ns, frame_id, points) -> bytes:
    """Organised cloud from a structured array of CLOUD_DTYPE shaped (rows, columns)."""
    if points.dtype != CLOUD_DTYPE or points.ndim != 2:
        raise ValueError('points must be a 2-D array of CLOUD_DTYPE')
    height, width = points.shape
    msg = PointCloud2(header=_header(stamp_ns, frame_id), height=height, width=width,
                      fields=_CLOUD_FIELDS, is_bigendian=False, point_step=CLOUD_DTYPE.itemsize,
                      row_step=CLOUD_DTYPE.itemsize * width,
                      data=np.frombuffer(points.tobytes(), dtype=np.uint8), is_dense=False)
    return bytes(TYPESTORE.serialize_cdr(msg, POINTCLOUD2_TYPE))


def tf_static_cdr(stamp_ns, transforms) -> bytes:
    """transforms: iterable of (parent, child, translation (3,), quat_xyzw (4,))."""
    msgs = [_TransformStamped(header=_header(stamp_ns, parent), child_frame_id=child,
                              transform=_Transform(translation=_vec(t), rotation=_quat(q)))
            for parent, child, t, q in transforms]
    return bytes(TYPESTORE.serialize_cdr(TFMessage(transforms=msgs), TFMESSAGE_TYPE))
