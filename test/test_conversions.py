"""PointCloud2 / Imu / Odometry <-> numpy conversion, including a round trip over real DDS."""

import struct

import numpy as np
import pytest
from conftest import spin_until
from nav_msgs.msg import Odometry
from sensor_msgs.msg import Imu, PointCloud2, PointField

from terrain_ssl.ros.conversions import (MalformedCloudError, array_to_pointcloud2, imu_to_arrays,
                                         ns_to_stamp, odometry_to_arrays, pointcloud2_to_array,
                                         pointcloud2_to_xyz, pointcloud2_xyz_view,
                                         stamp_to_ns, xyz_fields_to_pointcloud2)

ALL_TYPES = [('i8', '<i1'), ('u8', '<u1'), ('i16', '<i2'), ('u16', '<u2'), ('i32', '<i4'),
             ('u32', '<u4'), ('f32', '<f4'), ('f64', '<f8')]


def _random_structured(dtype, n, seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=n * dtype.itemsize, dtype=np.uint8)
    array = raw.view(dtype).copy()
    for name in dtype.names:
        if dtype.fields[name][0].base.kind == 'f':  # keep floats finite and comparable
            array[name] = rng.normal(size=array[name].shape)
    return array


def test_stamp_round_trip():
    for ns in [0, 1, 999_999_999, 1_000_000_000, 1_732_000_000_123_456_789]:
        assert stamp_to_ns(ns_to_stamp(ns)) == ns
    assert ns_to_stamp(1_500_000_000).sec == 1
    assert ns_to_stamp(1_500_000_000).nanosec == 500_000_000


def test_all_eight_datatypes_round_trip():
    dtype = np.dtype(ALL_TYPES)
    points = _random_structured(dtype, 257)
    msg = array_to_pointcloud2(points, 'lidar', 42)
    assert [f.datatype for f in msg.fields] == list(range(1, 9))
    assert len(msg.data) == msg.width * msg.height * msg.point_step
    back = pointcloud2_to_array(msg)
    assert back.dtype.names == dtype.names
    for name in dtype.names:
        np.testing.assert_array_equal(back[name], points[name])
    assert msg.header.frame_id == 'lidar' and stamp_to_ns(msg.header.stamp) == 42


def test_count_greater_than_one():
    dtype = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('rgb', '<u1', (3,)),
                      ('normal', '<f8', (3,))])
    points = _random_structured(dtype, 50)
    msg = array_to_pointcloud2(points, 'f', 0)
    counts = {f.name: f.count for f in msg.fields}
    assert counts['rgb'] == 3 and counts['normal'] == 3
    back = pointcloud2_to_array(msg)
    np.testing.assert_array_equal(back['rgb'], points['rgb'])
    np.testing.assert_array_equal(back['normal'], points['normal'])


def _hand_built_cloud(big_endian: bool, height=4, width=5, row_pad=12):
    """Ouster-like padded layout built byte by byte with struct (not with our own encoder)."""
    order = '>' if big_endian else '<'
    point_step = 32  # x y z f32 @0,4,8 | pad | intensity f32 @16 | ring u16 @20 | t u32 @24 | pad
    row_step = width * point_step + row_pad
    data = bytearray(height * row_step)
    expected = []
    for row in range(height):
        for col in range(width):
            x, y, z = row + 0.5, col - 2.0, 0.25 * (row * width + col)
            if (row, col) == (1, 3):
                x = y = z = float('nan')  # no return
            offset = row * row_step + col * point_step
            struct.pack_into(order + 'fff', data, offset, x, y, z)
            struct.pack_into(order + 'f', data, offset + 16, 100.0 + col)
            struct.pack_into(order + 'H', data, offset + 20, row)
            struct.pack_into(order + 'I', data, offset + 24, 1000 * col)
            expected.append((x, y, z, 100.0 + col, row, 1000 * col))
    msg = PointCloud2()
    msg.height, msg.width = height, width
    msg.fields = [PointField(name='x', offset=0, datatype=PointField.FLOAT32, count=1),
                  PointField(name='y', offset=4, datatype=PointField.FLOAT32, count=1),
                  PointField(name='z', offset=8, datatype=PointField.FLOAT32, count=1),
                  PointField(name='intensity', offset=16, datatype=PointField.FLOAT32, count=1),
                  PointField(name='ring', offset=20, datatype=PointField.UINT16, count=1),
                  PointField(name='t', offset=24, datatype=PointField.UINT32, count=1)]
    msg.is_bigendian = big_endian
    msg.point_step = point_step
    msg.row_step = row_step
    msg.data = bytes(data)
    msg.is_dense = False
    return msg, np.array(expected)


@pytest.mark.parametrize('big_endian', [False, True])
def test_hand_built_padded_organised_cloud(big_endian):
    msg, expected = _hand_built_cloud(big_endian)
    points = pointcloud2_to_array(msg)
    assert points.shape == (20,)
    np.testing.assert_array_equal(points['ring'], expected[:, 4])
    np.testing.assert_array_equal(points['t'], expected[:, 5])
    np.testing.assert_allclose(points['intensity'], expected[:, 3])
    xyz_all = pointcloud2_to_xyz(msg, skip_nans=False)
    np.testing.assert_allclose(xyz_all, expected[:, :3])  # NaN positions compare equal
    xyz = pointcloud2_to_xyz(msg)
    assert xyz.shape == (19, 3) and np.isfinite(xyz).all()
    assert xyz.dtype == np.float64


def test_big_endian_encoding_round_trip():
    dtype = np.dtype([('x', '>f4'), ('y', '>f4'), ('z', '>f4'), ('ring', '>u2')])
    points = _random_structured(dtype, 30)
    msg = array_to_pointcloud2(points, 'f', 0)
    assert msg.is_bigendian
    np.testing.assert_array_equal(pointcloud2_to_array(msg)['ring'], points['ring'])
    np.testing.assert_allclose(pointcloud2_to_xyz(msg)[:, 0], points['x'])


def test_organised_output_and_dense_flag():
    points = np.zeros(12, dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4')])
    points['x'][5] = np.nan
    msg = array_to_pointcloud2(points, 'f', 0, height=3)
    assert (msg.height, msg.width, msg.row_step) == (3, 4, 48)
    assert msg.is_dense is False
    assert pointcloud2_to_xyz(msg).shape == (11, 3)


def test_zero_points():
    msg = xyz_fields_to_pointcloud2({'x': [], 'y': [], 'z': []}, 'f', 0)
    assert msg.width == 0 and len(msg.data) == 0
    assert pointcloud2_to_array(msg).shape == (0,)
    assert pointcloud2_to_xyz(msg).shape == (0, 3)


def test_dense_cloud_with_nan_still_filtered():
    msg = xyz_fields_to_pointcloud2({'x': [1.0, np.inf], 'y': [0, 0], 'z': [0, 0]}, 'f', 0)
    msg.is_dense = True  # a driver that lies
    assert pointcloud2_to_xyz(msg).shape == (1, 3)


def test_malformed_clouds_raise_clear_errors():
    msg, _ = _hand_built_cloud(False)
    short = PointCloud2(height=msg.height, width=msg.width, fields=msg.fields,
                        point_step=msg.point_step, row_step=msg.row_step, data=msg.data[:-1])
    with pytest.raises(MalformedCloudError, match='bytes, expected'):
        pointcloud2_to_array(short)
    bad_type = PointCloud2(height=1, width=1, point_step=4, row_step=4, data=b'\0' * 4,
                           fields=[PointField(name='x', offset=0, datatype=9, count=1)])
    with pytest.raises(MalformedCloudError, match='unknown datatype'):
        pointcloud2_to_array(bad_type)
    past_end = PointCloud2(height=1, width=1, point_step=4, row_step=4, data=b'\0' * 4,
                           fields=[PointField(name='x', offset=2, datatype=7, count=1)])
    with pytest.raises(MalformedCloudError, match='past point_step'):
        pointcloud2_to_array(past_end)
    small_row = PointCloud2(height=1, width=2, point_step=4, row_step=4, data=b'\0' * 4,
                            fields=[PointField(name='x', offset=0, datatype=7, count=1)])
    with pytest.raises(MalformedCloudError, match='row_step'):
        pointcloud2_to_array(small_row)
    no_xyz = xyz_fields_to_pointcloud2({'a': [1.0]}, 'f', 0)
    with pytest.raises(MalformedCloudError, match='no x/y/z'):
        pointcloud2_to_xyz(no_xyz)


def test_imu_and_odometry_to_arrays():
    imu = Imu()
    imu.header.stamp = ns_to_stamp(5_000_000_123)
    imu.linear_acceleration.x, imu.linear_acceleration.z = 0.5, 9.81
    imu.angular_velocity.y = 0.1
    imu.orientation.w = 1.0
    t, accel, gyro, quat = imu_to_arrays(imu)
    assert t == 5_000_000_123
    np.testing.assert_allclose(accel, [0.5, 0, 9.81])
    np.testing.assert_allclose(gyro, [0, 0.1, 0])
    np.testing.assert_allclose(quat, [0, 0, 0, 1])
    imu.orientation_covariance[0] = -1.0  # REP 145: orientation not provided
    assert imu_to_arrays(imu)[3] is None

    odom = Odometry()
    odom.header.stamp = ns_to_stamp(7)
    odom.pose.pose.position.x = 3.0
    odom.pose.pose.orientation.w = 1.0
    odom.twist.twist.linear.x = 2.5
    odom.twist.twist.angular.z = -0.2
    t, position, quat, linear, angular = odometry_to_arrays(odom)
    assert t == 7
    np.testing.assert_allclose(position, [3, 0, 0])
    np.testing.assert_allclose(linear, [2.5, 0, 0])
    np.testing.assert_allclose(angular, [0, 0, -0.2])


def test_pointcloud2_round_trip_over_dds(ros_context):
    """Publish a cloud from one node, receive it in another over real DDS, numpy array intact."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    dtype = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('intensity', '<f4'),
                      ('ring', '<u2'), ('time', '<f8')])
    sent = _random_structured(dtype, 4096, seed=3)
    sent['x'][::100] = np.nan
    talker = Node('cloud_talker', context=ros_context)
    listener = Node('cloud_listener', context=ros_context)
    received = []
    listener.create_subscription(PointCloud2, 'test_cloud', received.append, 10)
    publisher = talker.create_publisher(PointCloud2, 'test_cloud', 10)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(talker)
    executor.add_node(listener)
    message = array_to_pointcloud2(sent, 'lidar_link', 123_456_789, height=4)

    def published_and_received():
        if not received:
            publisher.publish(message)
        return bool(received)

    assert spin_until(executor, published_and_received, timeout_s=15.0)
    got = received[0]
    assert (got.height, got.width) == (4, 1024)
    assert stamp_to_ns(got.header.stamp) == 123_456_789
    back = pointcloud2_to_array(got)
    assert back.dtype == sent.dtype
    assert back.tobytes() == sent.tobytes()  # bit-exact, NaNs included
    executor.shutdown()
    talker.destroy_node()
    listener.destroy_node()


@pytest.mark.parametrize('big_endian', [False, True])
def test_xyz_view_of_the_usual_layout_is_a_read_only_view(big_endian):
    msg, expected = _hand_built_cloud(big_endian)  # x, y, z float32 at 0, 4, 8; rows padded
    xyz = pointcloud2_xyz_view(msg)
    assert xyz.shape == (20, 3) and xyz.dtype.itemsize == 4 and not xyz.flags.writeable
    np.testing.assert_array_equal(xyz.astype(np.float64), pointcloud2_to_xyz(msg, skip_nans=False))
    cloud = xyz_fields_to_pointcloud2({'x': [1.0, np.nan], 'y': [2.0, 0.0], 'z': [3.0, 0.0],
                                       'intensity': [7.0, 8.0]}, 'f', 0)
    view = pointcloud2_xyz_view(cloud)
    assert np.shares_memory(view, np.frombuffer(cloud.data, dtype=np.uint8))  # no copy
    np.testing.assert_array_equal(view, [[1.0, 2.0, 3.0], [np.nan, 0.0, 0.0]])


def test_xyz_view_of_other_layouts_is_a_float64_copy():
    for fields in ([('x', '<f8'), ('y', '<f8'), ('z', '<f8')],              # float64: a view
                   [('z', '<f4'), ('y', '<f4'), ('x', '<f4')],              # not x, y, z order
                   [('x', '<f4'), ('pad', '<f4'), ('y', '<f4'), ('z', '<f4')],
                   [('x', '<i2'), ('y', '<i2'), ('z', '<i2')]):
        points = _random_structured(np.dtype(fields), 9)
        msg = array_to_pointcloud2(points, 'f', 0)
        xyz = pointcloud2_xyz_view(msg)
        np.testing.assert_array_equal(xyz, pointcloud2_to_xyz(msg, skip_nans=False))
        assert xyz.dtype == np.float64
    empty = xyz_fields_to_pointcloud2({'x': [], 'y': [], 'z': []}, 'f', 0)
    assert pointcloud2_xyz_view(empty).shape == (0, 3)
    with pytest.raises(MalformedCloudError, match='field \\(fields'):
        pointcloud2_xyz_view(xyz_fields_to_pointcloud2({'x': [1.0], 'y': [2.0]}, 'f', 0))


def test_array_view_of_rclpy_data_is_read_only():
    cloud = xyz_fields_to_pointcloud2({'x': [1.0], 'y': [2.0], 'z': [3.0]}, 'f', 0)
    received = PointCloud2()
    received.fields, received.point_step, received.row_step = cloud.fields, 12, 12
    received.height, received.width, received.data = 1, 1, list(bytes(cloud.data))
    assert type(received.data).__name__ == 'array'  # rclpy keeps uint8[] as array.array('B')
    points = pointcloud2_to_array(received)
    assert not points.flags.writeable
    assert points['z'][0] == 3.0
