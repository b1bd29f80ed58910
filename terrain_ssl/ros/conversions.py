"""ROS message <-> numpy conversion: PointCloud2, Imu, Odometry and stamps.

PointCloud2 is read by viewing its bytes through a numpy structured dtype whose itemsize is the
cloud's point_step, so padding, extra fields (ring, time, reflectivity...), big-endian data,
``count`` > 1 and organised clouds all come for free and nothing is copied until a field is used.
Building a cloud assigns ``bytes`` to ``data``: assigning a numpy array is ~100x slower.
"""

from __future__ import annotations

import array

import numpy as np
from builtin_interfaces.msg import Time
from nav_msgs.msg import OccupancyGrid
from sensor_msgs.msg import PointCloud2, PointField

from terrain_ssl.core.deskew import TIME_FIELDS

__all__ = [
    'MalformedCloudError',
    'stamp_to_ns',
    'ns_to_stamp',
    'pointcloud2_dtype',
    'pointcloud2_to_array',
    'pointcloud2_to_xyz',
    'pointcloud2_xyz_view',
    'pointcloud2_point_times',
    'structured_columns',
    'array_to_pointcloud2',
    'xyz_fields_to_pointcloud2',
    'float_matrix_to_pointcloud2',
    'imu_to_arrays',
    'odometry_to_arrays',
]

# PointField.datatype -> numpy type code (byte order added per cloud).
_DATATYPE_TO_CODE = {
    PointField.INT8: 'i1',
    PointField.UINT8: 'u1',
    PointField.INT16: 'i2',
    PointField.UINT16: 'u2',
    PointField.INT32: 'i4',
    PointField.UINT32: 'u4',
    PointField.FLOAT32: 'f4',
    PointField.FLOAT64: 'f8',
}
_CODE_TO_DATATYPE = {code: datatype for datatype, code in _DATATYPE_TO_CODE.items()}

_NS_PER_S = 1_000_000_000

# Layouts seen so far (a node sees a handful: its inputs' and its outputs'). Building a structured
# dtype from PointFields, or PointFields from a dtype, costs 25-35 us, more than converting a
# patch cloud's data; replay converts ~10,000 clouds. Bounded: cleared when full.
_MAX_CACHED_LAYOUTS = 64
_dtype_by_fields: dict = {}  # (fields as tuples, point_step, is_bigendian) -> np.dtype
_fields_by_dtype: dict = {}  # np.dtype -> (PointFields, big endian, all-float view dtype or None)
_float32_dtypes: dict = {}  # column names -> packed float32 dtype


def _remember(cache: dict, key, value):
    if len(cache) >= _MAX_CACHED_LAYOUTS:
        cache.clear()
    cache[key] = value
    return value


class MalformedCloudError(ValueError):
    """A PointCloud2 whose layout or data cannot be interpreted."""


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (or anything with sec, nanosec) -> integer nanoseconds."""
    return int(stamp.sec) * _NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """Integer nanoseconds -> builtin_interfaces/Time (floor division keeps nanosec in
    [0, 1e9))."""
    sec, nanosec = divmod(int(ns), _NS_PER_S)
    return Time(sec=sec, nanosec=nanosec)


def pointcloud2_dtype(fields, point_step: int, is_bigendian: bool) -> np.dtype:
    """The structured dtype of one point, itemsize = point_step; raises MalformedCloudError."""
    key = (tuple((field.name, field.offset, field.datatype, field.count) for field in fields),
           point_step, bool(is_bigendian))
    dtype = _dtype_by_fields.get(key)
    if dtype is None:  # (a layout that raises is not remembered)
        dtype = _remember(_dtype_by_fields, key,
                          _build_dtype(fields, point_step, is_bigendian))
    return dtype


def _build_dtype(fields, point_step: int, is_bigendian: bool) -> np.dtype:
    if point_step <= 0 and fields:
        raise MalformedCloudError(f'point_step is {point_step}, must be > 0')
    order = '>' if is_bigendian else '<'
    names, formats, offsets = [], [], []
    for field in fields:
        code = _DATATYPE_TO_CODE.get(field.datatype)
        if code is None:
            raise MalformedCloudError(
                f"field '{field.name}' has unknown datatype {field.datatype} (valid: 1..8)")
        count = max(int(field.count), 1)
        size = np.dtype(code).itemsize * count
        if field.offset < 0 or field.offset + size > point_step:
            raise MalformedCloudError(
                f"field '{field.name}' (offset {field.offset}, {size} bytes) runs past "
                f'point_step {point_step}')
        if field.name in names:
            raise MalformedCloudError(f"field '{field.name}' appears twice")
        names.append(field.name)
        formats.append((order + code, (count,)) if count > 1 else order + code)
        offsets.append(field.offset)
    return np.dtype({'names': names, 'formats': formats, 'offsets': offsets,
                     'itemsize': max(point_step, 1)})


def pointcloud2_to_array(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 -> structured array of shape (height * width,), one named field per PointField.

    A read-only view on the message bytes where the rows are not padded; a copy otherwise.
    Organised clouds are flattened row-major (index = row * width + column).
    """
    dtype = pointcloud2_dtype(msg.fields, msg.point_step, msg.is_bigendian)
    height, width = int(msg.height), int(msg.width)
    n_points = height * width
    if n_points == 0:
        return np.zeros(0, dtype=dtype)
    row_bytes = width * msg.point_step
    if msg.row_step < row_bytes:
        raise MalformedCloudError(
            f'row_step {msg.row_step} is smaller than width*point_step = {row_bytes}')
    expected = height * msg.row_step
    data = msg.data
    if len(data) != expected:
        raise MalformedCloudError(
            f'data has {len(data)} bytes, expected height*row_step = {height}*{msg.row_step} '
            f'= {expected}')
    if isinstance(data, (bytes, bytearray, memoryview)):
        buffer = data
    else:
        # rclpy's array.array('B'): viewed, not copied (bytes() of a 28,800-point cloud cost
        # ~20 us); read-only, as a view of bytes would be.
        try:
            buffer = memoryview(data).toreadonly()
        except TypeError:  # a plain sequence of ints
            buffer = bytes(data)
    if msg.row_step == row_bytes:
        return np.frombuffer(buffer, dtype=dtype, count=n_points)
    rows = np.frombuffer(buffer, dtype=np.uint8).reshape(height, msg.row_step)[:, :row_bytes]
    return np.ascontiguousarray(rows).view(dtype).reshape(n_points)


def structured_columns(points: np.ndarray, names) -> np.ndarray:
    """Named scalar fields of a structured array -> (N, len(names)) float64, one column each.

    When the fields share one float type at aligned offsets (patch clouds: all float32), the
    points are viewed as a float matrix and the columns taken in one step (per-field copies
    cost ~2 us each, and patch clouds are small).
    """
    names = list(names)
    dtype = points.dtype
    fields = [dtype.fields[name] for name in names]
    base = fields[0][0] if fields else None
    if (base is not None and base.kind == 'f' and not base.shape and points.ndim == 1
            and points.flags.c_contiguous and dtype.itemsize % base.itemsize == 0
            and all(field[0] == base and field[1] % base.itemsize == 0 for field in fields)):
        width = dtype.itemsize // base.itemsize
        matrix = points.view(base).reshape(points.shape[0], width)
        columns = [field[1] // base.itemsize for field in fields]
        # (A signalling NaN in the data raises the invalid flag in the cast: the caller rejects
        # non-finite values and counts them, a RuntimeWarning would be noise.)
        with np.errstate(invalid='ignore'):
            return np.take(matrix, columns, axis=1).astype(np.float64)
    out = np.empty((points.shape[0], len(names)))
    for index, name in enumerate(names):
        out[:, index] = points[name]
    return out


def _xyz_columns(msg: PointCloud2) -> tuple:
    """(structured points, [x, y, z] field views); raises MalformedCloudError."""
    names = [field.name for field in msg.fields]
    missing = [axis for axis in ('x', 'y', 'z') if axis not in names]
    if missing:
        raise MalformedCloudError(f'cloud has no {"/".join(missing)} field (fields: {names})')
    points = pointcloud2_to_array(msg)
    columns = [points[axis] for axis in ('x', 'y', 'z')]
    if any(column.ndim > 1 for column in columns):
        raise MalformedCloudError("an x/y/z field has count > 1")
    return points, columns


def pointcloud2_xyz_view(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 -> (N, 3) x, y, z in the cloud's frame (m), non-finite points included.

    When x, y, z are consecutive fields of one float type (the usual layout), a read-only view
    on the message's bytes in that type (e.g. float32): no copy and no float64 conversion, which
    cost ~60 us for a 28,800-point scan that the labeler then filters and transforms anyway.
    Otherwise a float64 copy, as `pointcloud2_to_xyz(msg, skip_nans=False)`.
    """
    points, columns = _xyz_columns(msg)
    field_type, x_offset = points.dtype.fields['x'][:2]
    size = field_type.itemsize
    if field_type.kind == 'f' and all(
            points.dtype.fields[axis][:2] == (field_type, x_offset + index * size)
            for index, axis in enumerate(('x', 'y', 'z'))):
        return np.lib.stride_tricks.as_strided(columns[0], shape=(points.shape[0], 3),
                                               strides=(points.strides[0], size),
                                               writeable=False)
    return _stack_xyz(columns)


def pointcloud2_point_times(msg: PointCloud2):
    """(field name, (N,) values) of the driver's per-point time field (`time`, `t`,
    `offset_time` or `timestamp`, the first present; see terrain_ssl.core.deskew), in the
    points' order, or None when the cloud has none (or it is not a scalar field)."""
    names = [field.name for field in msg.fields]
    name = next((name for name in TIME_FIELDS if name in names), None)
    if name is None:
        return None
    values = pointcloud2_to_array(msg)[name]
    return None if values.ndim != 1 else (name, values)


def pointcloud2_to_xyz(msg: PointCloud2, skip_nans: bool = True) -> np.ndarray:
    """PointCloud2 -> (N, 3) float64 x, y, z in the cloud's frame (m).

    With skip_nans, points with any non-finite coordinate (no-return markers of organised,
    non-dense clouds, or corrupted values) are dropped.
    """
    points, columns = _xyz_columns(msg)
    if skip_nans:
        # One pass over a sum finds every non-finite point (NaN and Inf propagate); a row-wise
        # boolean index of an (N, 3) array is ~5x slower than compressing each column.
        finite = np.isfinite(columns[0].astype(np.float64) + columns[1] + columns[2])
        if not finite.all():  # no-return markers, or a driver that claims is_dense but lies
            columns = [column[finite] for column in columns]
    return _stack_xyz(columns)


def _stack_xyz(columns) -> np.ndarray:
    xyz = np.empty((columns[0].shape[0], 3), dtype=np.float64)
    for index, column in enumerate(columns):
        xyz[:, index] = column
    return xyz


def _fields_from_dtype(dtype: np.dtype) -> tuple[list[PointField], bool]:
    """The PointFields of a layout, as a new list of the PointField objects made for its first
    cloud: constructing 16-21 of them per patch cloud cost more than the cloud's data. Clouds
    of one layout share them, so they are read-only (as every reader treats them)."""
    layout = _fields_by_dtype.get(dtype)
    if layout is None:
        layout = _remember(_fields_by_dtype, dtype, _layout_of(dtype))
    fields, big_endian, _ = layout
    return list(fields), big_endian


def _layout_of(dtype: np.dtype) -> tuple:
    """(PointFields, big endian, float_view): float_view is the one float type every byte of a
    point belongs to (e.g. all float32, packed), so NaN checks can run on one flat view."""
    fields, big_endian = _point_fields(dtype)
    fields = tuple(fields)
    if not dtype.names:
        return fields, big_endian, None
    bases = {dtype.fields[name][0].base for name in dtype.names}
    covered = sorted((dtype.fields[name][1], dtype.fields[name][0].itemsize)
                     for name in dtype.names)
    packed = all(offset == end for (offset, _), end in
                 zip(covered, [0] + [offset + size for offset, size in covered[:-1]])) \
        and covered[-1][0] + covered[-1][1] == dtype.itemsize
    base = next(iter(bases))
    float_view = base if len(bases) == 1 and base.kind == 'f' and packed else None
    return fields, big_endian, float_view


def _point_fields(dtype: np.dtype) -> tuple[list[PointField], bool]:
    fields = []
    big_endian = None
    for name in dtype.names:
        field_dtype, offset = dtype.fields[name][:2]
        base, shape = field_dtype.base, field_dtype.shape
        code = base.kind + str(base.itemsize)
        datatype = _CODE_TO_DATATYPE.get(code)
        if datatype is None:
            raise ValueError(f"field '{name}' has dtype {base}, which PointCloud2 cannot carry")
        if base.itemsize > 1 and base.byteorder in '<>':
            field_big = base.byteorder == '>'
            if big_endian is not None and field_big != big_endian:
                raise ValueError('fields mix big- and little-endian byte orders')
            big_endian = field_big
        count = int(np.prod(shape)) if shape else 1
        fields.append(PointField(name=name, offset=offset, datatype=datatype, count=count))
    return fields, bool(big_endian)


def array_to_pointcloud2(points: np.ndarray, frame_id: str, stamp_ns: int,
                         height: int = 1) -> PointCloud2:
    """Structured array (one point per element) -> PointCloud2, unorganised or with `height`
    rows."""
    if points.dtype.names is None:
        raise ValueError('array_to_pointcloud2 needs a structured array (named fields)')
    points = np.ascontiguousarray(points).reshape(-1)
    if height < 1 or points.shape[0] % height:
        raise ValueError(f'{points.shape[0]} points cannot form {height} rows')
    fields, big_endian = _fields_from_dtype(points.dtype)
    float_view = _fields_by_dtype[points.dtype][2]
    msg = PointCloud2()
    msg.header.frame_id = frame_id
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.height = height
    msg.width = points.shape[0] // height
    msg.fields = fields
    msg.is_bigendian = big_endian
    msg.point_step = points.dtype.itemsize
    msg.row_step = msg.point_step * msg.width
    msg.data = points.tobytes()
    if float_view is not None:  # every value at once (a per-field loop costs ~40 us)
        dense = bool(np.isfinite(points.view(float_view)).all())
    else:
        dense = True
        for name in points.dtype.names:
            if points.dtype.fields[name][0].base.kind == 'f' \
                    and not np.isfinite(points[name]).all():
                dense = False
                break
    msg.is_dense = dense
    return msg


def xyz_fields_to_pointcloud2(columns: dict, frame_id: str, stamp_ns: int) -> PointCloud2:
    """Named 1-D columns of equal length -> unorganised PointCloud2 with all-float32 fields."""
    if not columns:
        raise ValueError('no columns given')
    lengths = {name: np.shape(values)[0] for name, values in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f'columns differ in length: {lengths}')
    n_points = next(iter(lengths.values()))
    matrix = np.empty((n_points, len(columns)), dtype=np.float32)
    for index, values in enumerate(columns.values()):
        matrix[:, index] = values
    return float_matrix_to_pointcloud2(tuple(columns), matrix, frame_id, stamp_ns)


def float_matrix_to_pointcloud2(names, values: np.ndarray, frame_id: str,
                                stamp_ns: int) -> PointCloud2:
    """(N, len(names)) numbers -> unorganised PointCloud2 with one float32 field per column.

    The float32 matrix is the cloud's data as it is (packed float32 fields, in column order):
    no per-field copies, which cost more than the data for the small patch clouds."""
    names = tuple(names)
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[1] != len(names):
        raise ValueError(f'values have shape {values.shape}, expected (N, {len(names)})')
    dtype = _float32_dtypes.get(names)
    if dtype is None:
        dtype = _remember(_float32_dtypes, names, np.dtype([(name, '<f4') for name in names]))
    matrix = np.ascontiguousarray(values, dtype=np.float32)
    return array_to_pointcloud2(matrix.view(dtype).reshape(-1), frame_id, stamp_ns)


def occupancy_grid(cells: np.ndarray, origin_x_m: float, origin_y_m: float,
                   resolution_m: float, header) -> OccupancyGrid:
    """(height, width) int8 cells (row along +y, 0..100, -1 unknown) -> nav_msgs/OccupancyGrid
    with its lower-left corner at the origin, in `header`'s frame and stamp."""
    out = OccupancyGrid()
    out.header = header
    out.info.map_load_time = header.stamp
    out.info.resolution = float(resolution_m)
    out.info.height, out.info.width = (int(n) for n in cells.shape)
    out.info.origin.position.x = float(origin_x_m)
    out.info.origin.position.y = float(origin_y_m)
    out.info.origin.orientation.w = 1.0
    out.data = array.array('b', cells.astype(np.int8).tobytes())  # typed array: no item checks
    return out


def imu_to_arrays(msg):
    """sensor_msgs/Imu -> (t_ns, accel (3,) m/s^2, gyro (3,) rad/s, quat xyzw (4,) or None).

    The orientation is None when the driver marks it unavailable (orientation_covariance[0] == -1,
    REP 145) or sends a zero quaternion.
    """
    accel = np.array([msg.linear_acceleration.x, msg.linear_acceleration.y,
                      msg.linear_acceleration.z])
    gyro = np.array([msg.angular_velocity.x, msg.angular_velocity.y, msg.angular_velocity.z])
    q = msg.orientation
    quat = np.array([q.x, q.y, q.z, q.w])
    if msg.orientation_covariance[0] == -1.0 or not np.isfinite(quat).all() \
            or np.dot(quat, quat) < 1e-6:
        quat = None
    return stamp_to_ns(msg.header.stamp), accel, gyro, quat


def odometry_to_arrays(msg):
    """nav_msgs/Odometry -> (t_ns, position (3,) m, quat xyzw (4,), v (3,) m/s, w (3,) rad/s).

    Position and orientation are in header.frame_id; velocities in child_frame_id (REP 105).
    """
    pose = msg.pose.pose
    twist = msg.twist.twist
    position = np.array([pose.position.x, pose.position.y, pose.position.z])
    quat = np.array([pose.orientation.x, pose.orientation.y, pose.orientation.z,
                     pose.orientation.w])
    linear = np.array([twist.linear.x, twist.linear.y, twist.linear.z])
    angular = np.array([twist.angular.x, twist.angular.y, twist.angular.z])
    return stamp_to_ns(msg.header.stamp), position, quat, linear, angular
