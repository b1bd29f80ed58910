"""Start roughness_labeler, roughness_learner and speed_advisor with config/terrain_ssl.yaml.

    ros2 launch terrain_ssl terrain_ssl.launch.py
    ros2 launch terrain_ssl terrain_ssl.launch.py use_sim_time:=true namespace:=robot1 \
        points_topic:=/ouster/points imu_topic:=/vectornav/imu odom_topic:=/odometry/filtered
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    default_config = os.path.join(get_package_share_directory('terrain_ssl'), 'config',
                                  'terrain_ssl.yaml')
    use_sim_time = LaunchConfiguration('use_sim_time')
    config = LaunchConfiguration('config')
    namespace = LaunchConfiguration('namespace')
    sim_time = {'use_sim_time': ParameterValue(use_sim_time, value_type=bool)}

    arguments = [
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Use /clock (bag replay, simulation) instead of '
                                          'wall time'),
        DeclareLaunchArgument('config', default_value=default_config,
                              description='Parameters file for the three nodes'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace for the nodes and their relative topics'),
        DeclareLaunchArgument('imu_topic', default_value='imu/data',
                              description='sensor_msgs/Imu input'),
        DeclareLaunchArgument('points_topic', default_value='points',
                              description='sensor_msgs/PointCloud2 lidar input'),
        DeclareLaunchArgument('odom_topic', default_value='odom',
                              description='nav_msgs/Odometry input'),
        DeclareLaunchArgument('cmd_vel_in_topic', default_value='cmd_vel_in',
                              description='geometry_msgs/Twist to cap (when cap_cmd_vel is true)'),
        DeclareLaunchArgument('cmd_vel_topic', default_value='cmd_vel',
                              description='geometry_msgs/Twist capped output'),
        DeclareLaunchArgument('plan_topic', default_value='plan',
                              description='nav_msgs/Path (odom frame) the corridor ahead follows, '
                                          'e.g. Nav2\'s plan'),
    ]

    labeler = Node(
        package='terrain_ssl', executable='roughness_labeler', name='roughness_labeler',
        namespace=namespace, output='screen', parameters=[config, sim_time],
        remappings=[('imu/data', LaunchConfiguration('imu_topic')),
                    ('points', LaunchConfiguration('points_topic')),
                    ('odom', LaunchConfiguration('odom_topic'))])
    learner = Node(
        package='terrain_ssl', executable='roughness_learner', name='roughness_learner',
        namespace=namespace, output='screen', parameters=[config, sim_time])
    advisor = Node(
        package='terrain_ssl', executable='speed_advisor', name='speed_advisor',
        namespace=namespace, output='screen', parameters=[config, sim_time],
        remappings=[('odom', LaunchConfiguration('odom_topic')),
                    ('cmd_vel_in', LaunchConfiguration('cmd_vel_in_topic')),
                    ('cmd_vel', LaunchConfiguration('cmd_vel_topic')),
                    ('plan', LaunchConfiguration('plan_topic'))])

    return LaunchDescription(arguments + [labeler, learner, advisor])
