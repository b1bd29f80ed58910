"""Live over DDS vs fast replay: the same labeler gives the same labels.

The labeler runs as its own process on sim time while the bag is played in real time to DDS
with /clock (like `ros2 bag play --clock`); its labeled patches are compared with those of the
deterministic fast replay of the same bag.
"""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import spin_until
from sensor_msgs.msg import PointCloud2

from terrain_ssl.replay.player import play
from terrain_ssl.replay.runner import ReplayOptions, run_replay
from terrain_ssl.ros.bringup import default_config_path
from terrain_ssl.ros.conversions import pointcloud2_to_array


@pytest.fixture(scope='module')
def live_bag(tmp_path_factory):
    from terrain_ssl.sim.bag import simulate_bag
    return simulate_bag(tmp_path_factory.mktemp('live') / 'bag', duration_s=15.0, seed=11,
                        speed='4', start_s_m=80.0)


def _cells(x, y, roughness) -> dict:
    return {(round(float(a), 2), round(float(b), 2)): float(r) for a, b, r in zip(x, y, roughness)}


def test_live_labels_match_fast_replay(ros_context, live_bag):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    record = run_replay(ReplayOptions(bag=str(live_bag), config=default_config_path(),
                                      progress=False))
    replayed = _cells(record.samples['x'], record.samples['y'], record.samples['roughness'])
    assert len(replayed) > 100

    labeler = subprocess.Popen(
        [sys.executable, '-m', 'terrain_ssl.ros.labeler_node', '--ros-args', '--params-file',
         default_config_path(), '-p', 'use_sim_time:=true'],
        env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node = Node('live_label_listener', context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    received = []
    node.create_subscription(PointCloud2, 'terrain_ssl/labeled_patches', received.append, 100)
    try:
        assert spin_until(executor, lambda: node.count_publishers(
            'terrain_ssl/labeled_patches') > 0, timeout_s=30.0), 'labeler did not start'
        import threading
        # Half speed (with /clock in bag time): a busy 2-core CI machine must not drop IMU
        # samples in the subscriber's queue; what is compared is the processing, not throughput.
        player = threading.Thread(target=play, args=(live_bag,),
                                  kwargs={'context': ros_context, 'progress': False,
                                          'rate': 0.5})
        player.start()
        while player.is_alive():
            executor.spin_once(timeout_sec=0.05)
        player.join()

        def cells_received():
            return sum(pointcloud2_to_array(msg).shape[0] for msg in received)
        # The last labels: wait for them (the count the assertions below need), not for a time.
        spin_until(executor, lambda: cells_received() >= 0.98 * len(replayed), timeout_s=30.0)
    finally:
        labeler.send_signal(signal.SIGINT)
        output, _ = labeler.communicate(timeout=20)
        executor.shutdown()
        node.destroy_node()
    assert labeler.returncode == 0, output[-2000:]
    live = {}
    for msg in received:
        points = pointcloud2_to_array(msg)
        live.update(_cells(points['x'], points['y'], points['roughness']))
    assert abs(len(live) - len(replayed)) <= 0.02 * len(replayed), (len(live), len(replayed))
    common = sorted(set(live) & set(replayed))
    assert len(common) >= 0.97 * len(replayed)
    live_values = np.array([live[key] for key in common])
    replay_values = np.array([replayed[key] for key in common])
    np.testing.assert_allclose(live_values, replay_values, rtol=0.02, atol=1e-3)
