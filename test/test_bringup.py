"""`terrain-ssl bringup` for real: a subprocess fed a simulated bag in real time over DDS.

Observes speed limits, retunes a labeling threshold through the parameter service (the call
`ros2 param set` makes), and stops with SIGINT: exit code 0 and the model saved.
"""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from conftest import spin_until
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import GetParameters, SetParameters
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Float32

from terrain_ssl.replay.player import play
from terrain_ssl.ros.conversions import pointcloud2_to_array

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def short_bag(tmp_path_factory):
    from terrain_ssl.sim.bag import simulate_bag
    return simulate_bag(tmp_path_factory.mktemp('bringup') / 'bag', duration_s=14.0, seed=3,
                        speed='5', start_s_m=150.0)  # start on rougher ground: labels of all kinds


def _set_parameter(node, executor, service, name, value: float):
    client = node.create_client(SetParameters, service)
    assert client.wait_for_service(timeout_sec=10.0), f'{service} not available'
    request = SetParameters.Request(parameters=[Parameter(
        name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value))])
    future = client.call_async(request)
    assert spin_until(executor, future.done, timeout_s=10.0)
    return future.result().results[0]


def test_bringup_live_tuning_and_clean_exit(ros_context, short_bag, tmp_path):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    model_path = tmp_path / 'model.npz'
    process = subprocess.Popen(
        [sys.executable, '-m', 'terrain_ssl.cli', 'bringup', '--config',
         str(ROOT / 'config' / 'terrain_ssl.yaml'), '--ros-args', '-p', 'use_sim_time:=true',
         '-p', f'model_path:={model_path}', '-p', 'warmup_samples:=20',
         # This test is about bringup's wiring, parameters and shutdown, not throughput: on a
         # loaded 2-core CI machine, tolerate the IMU samples a busy process drops.
         '-p', 'imu.max_gap_s:=0.25'],
        env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node = Node('bringup_observer', context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    limits, labeled = [], []
    node.create_subscription(Float32, 'terrain_ssl/speed_limit', limits.append, 10)
    node.create_subscription(PointCloud2, 'terrain_ssl/labeled_patches', labeled.append, 50)
    try:
        # The process is up once its executor answers a call to the node it creates last. A
        # service that is merely discovered is not enough: the labeler's services and
        # subscriptions exist while the process still imports and builds the other nodes (seconds
        # on a cold machine), and a bag played into that gap arrives as a backlog.
        client = node.create_client(GetParameters, '/speed_advisor/get_parameters')
        # Generous: on a loaded 2-core machine the imports alone can take minutes.
        assert client.wait_for_service(timeout_sec=300.0), 'bringup did not start'
        answered = client.call_async(GetParameters.Request(names=['use_sim_time']))
        assert spin_until(executor, answered.done, timeout_s=300.0), 'bringup does not spin'
        player = threading.Thread(target=play, args=(short_bag,),
                                  kwargs={'context': ros_context, 'progress': False,
                                          'rate': 0.5})  # half speed: /clock keeps bag time
        player.start()
        assert spin_until(executor, lambda: len(labeled) >= 5, timeout_s=60.0), 'no labels'
        before = len(labeled)
        # Live tuning: every label above 1e-9 (m/s^2)/(m/s) is "rough" from the next label on.
        result = _set_parameter(node, executor, '/roughness_labeler/set_parameters',
                                'label.moderate_threshold', 0.0)
        assert result.successful, result.reason
        result = _set_parameter(node, executor, '/roughness_labeler/set_parameters',
                                'label.rough_threshold', 1e-9)
        assert result.successful, result.reason
        refused = _set_parameter(node, executor, '/roughness_labeler/set_parameters',
                                 'label.rough_threshold', -1.0)
        assert not refused.successful and refused.reason
        # The change is applied when the reply comes; labels published before it may still be
        # in flight, so what is checked is the labels at the end of the drive, not a count of
        # messages after the reply.
        applied = len(labeled)
        assert spin_until(executor, lambda: len(labeled) >= applied + 10, timeout_s=60.0)
        while player.is_alive():
            executor.spin_once(timeout_sec=0.05)
        player.join()
        classes_before = [c for m in labeled[:before]
                          for c in pointcloud2_to_array(m)['roughness_class']]
        classes_at_the_end = [c for m in labeled[-5:]
                              for c in pointcloud2_to_array(m)['roughness_class']]
        assert set(classes_before) != {2.0}
        assert classes_at_the_end and set(classes_at_the_end) == {2.0}
        assert len(limits) >= 5, 'no speed limits published'
        # Within the configured [v_min, v_max] (config/terrain_ssl.yaml: 1.0, 6.0 m/s).
        advisor = yaml.safe_load((ROOT / 'config' / 'terrain_ssl.yaml').read_text())[
            '/**/speed_advisor']['ros__parameters']
        assert all(advisor['v_min_mps'] - 1e-6 <= msg.data <= advisor['v_max_mps'] + 1e-6
                   for msg in limits), [msg.data for msg in limits]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        executor.shutdown()
        node.destroy_node()
        print(output[-5000:])  # shown by pytest when the test fails
    assert process.returncode == 0, output[-3000:]
    assert model_path.exists(), output[-3000:]
