"""roughness_learner over real DDS: predict/learn, map + grid out, services, and the restart
test."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import rclpy
from conftest import spin_until
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import OccupancyGrid
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import PointCloud2
from std_srvs.srv import Trigger

from terrain_ssl.core.learner import OnlineRoughnessRegressor
from terrain_ssl.ros.qos import RELIABLE_QOS
from terrain_ssl.ros.conversions import pointcloud2_to_array, xyz_fields_to_pointcloud2

pytestmark = pytest.mark.ros

FEATURES = ['height_std', 'slope', 'max_step']
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def patches(n, seed, labeled):
    rng = np.random.default_rng(seed)
    columns = {'x': rng.uniform(0, 10, n), 'y': rng.uniform(-5, 5, n), 'z': np.zeros(n),
               'height_std': rng.lognormal(-3, 0.5, n), 'slope': rng.normal(0, 0.1, n),
               'max_step': rng.lognormal(-2.5, 0.5, n)}
    if labeled:
        columns['roughness'] = 20 * columns['height_std'] + rng.lognormal(-3, 0.3, n)
    return xyz_fields_to_pointcloud2(columns, 'odom', 1_000_000_000 + seed)


class Harness:
    """A test node: publishes patch clouds, collects the learner's outputs, calls its services."""

    def __init__(self, context, node_name='/roughness_learner'):
        self.node = rclpy.create_node('learner_test_harness', context=context)
        self.labeled = self.node.create_publisher(PointCloud2, 'terrain_ssl/labeled_patches',
                                                  RELIABLE_QOS)
        self.lookahead = self.node.create_publisher(PointCloud2, 'terrain_ssl/lookahead_patches',
                                                    RELIABLE_QOS)
        self.maps, self.grids, self.diagnostics = [], [], []
        self.node.create_subscription(PointCloud2, 'terrain_ssl/roughness_map', self.maps.append,
                                      RELIABLE_QOS)
        self.node.create_subscription(OccupancyGrid, 'terrain_ssl/roughness_grid',
                                      self.grids.append, RELIABLE_QOS)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self.diagnostics.append, 10)
        self.save_client = self.node.create_client(Trigger, node_name + '/save_model')
        self.reset_client = self.node.create_client(Trigger, node_name + '/reset_model')

    def call(self, executor, client):
        assert client.wait_for_service(timeout_sec=10.0)
        future = client.call_async(Trigger.Request())
        assert spin_until(executor, future.done, 10.0)
        return future.result()

    def last_diag_value(self, key):
        for array in reversed(self.diagnostics):
            for status in array.status:
                if status.name.startswith('roughness_learner'):
                    return {kv.key: kv.value for kv in status.values}.get(key)
        return None


def test_learns_publishes_map_and_grid_and_serves(ros_context, tmp_path):
    from terrain_ssl.ros.learner_node import RoughnessLearnerNode

    model_path = tmp_path / 'model.npz'
    learner = RoughnessLearnerNode(context=ros_context, parameter_overrides=[
        Parameter('feature_names', value=','.join(FEATURES)),
        Parameter('model_path', value=str(model_path)),
        Parameter('warmup_samples', value=100), Parameter('save_period_s', value=0.0),
        Parameter('diagnostics_period_s', value=0.2)])
    harness = Harness(ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(learner)
    executor.add_node(harness.node)
    try:
        assert spin_until(executor, lambda: harness.labeled.get_subscription_count() > 0)
        harness.lookahead.publish(patches(50, 0, labeled=False))  # before warm-up: no output
        for seed in range(1, 9):
            harness.labeled.publish(patches(64, seed, labeled=True))
        assert spin_until(executor, lambda: learner.model.n_samples_seen_ == 8 * 64)
        assert learner.lookahead_skipped_warmup == 1 and not harness.maps
        assert learner.score.count == 7 * 64  # every batch after the first was predicted first

        harness.lookahead.publish(patches(50, 100, labeled=False))
        assert spin_until(executor, lambda: harness.maps and harness.grids)
        cloud = pointcloud2_to_array(harness.maps[-1])
        assert list(cloud.dtype.names) == ['x', 'y', 'z', 'roughness', 'uncertainty']
        assert cloud.shape == (50,) and np.all(cloud['roughness'] > 0)
        assert np.all(cloud['uncertainty'] > 0)
        grid = harness.grids[-1]
        assert grid.header.frame_id == 'odom' and grid.info.resolution == pytest.approx(0.5)
        cells = np.array(grid.data, dtype=np.int16)
        assert cells.size == grid.info.width * grid.info.height
        assert ((cells >= 0) & (cells <= 100)).sum() > 0 and (cells == -1).sum() > 0

        # A cloud without the features is rejected and counted, not a crash.
        harness.labeled.publish(xyz_fields_to_pointcloud2(
            {'x': [0.0], 'y': [0.0], 'z': [0.0]}, 'odom', 5))
        assert spin_until(executor, lambda: learner.rejects.counts.get('missing_fields') == 1)

        assert spin_until(executor,
                          lambda: harness.last_diag_value('samples_learned') == str(8 * 64))
        assert float(harness.last_diag_value('window_spearman')) > 0.5

        result = harness.call(executor, harness.save_client)
        assert result.success and model_path.exists(), result.message
        saved = OnlineRoughnessRegressor.load(str(model_path))
        assert saved.n_samples_seen_ == 8 * 64

        result = harness.call(executor, harness.reset_client)
        assert result.success and learner.model.n_samples_seen_ == 0
        assert harness.call(executor, harness.save_client).success is False  # nothing to save
        assert OnlineRoughnessRegressor.load(str(model_path)).n_samples_seen_ == 8 * 64
    finally:
        executor.shutdown()
        learner.destroy_node()
        harness.node.destroy_node()


def start_learner(model_path):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return subprocess.Popen(
        [sys.executable, '-m', 'terrain_ssl.ros.learner_node', '--ros-args',
         '-p', f'model_path:={model_path}', '-p', f'feature_names:={",".join(FEATURES)}',
         '-p', 'warmup_samples:=10', '-p', 'save_period_s:=0.0',
         '-p', 'diagnostics_period_s:=0.2',
         # The restart must bring back the *model*; the label memory is odom-frame state that
         # deliberately does not survive a restart (odometry starts at a new origin).
         '-p', 'label_memory:=false'],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def predictions_from(harness, executor, lookahead):
    count = len(harness.maps)
    harness.lookahead.publish(lookahead)
    assert spin_until(executor, lambda: len(harness.maps) > count, 15.0)
    cloud = pointcloud2_to_array(harness.maps[-1])
    return cloud['roughness'].copy(), cloud['uncertainty'].copy()


def test_restart_after_sigkill_restores_model(ros_context, tmp_path):
    model_path = tmp_path / 'model.npz'
    harness = Harness(ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(harness.node)
    lookahead = patches(40, 500, labeled=False)
    process = start_learner(model_path)
    try:
        assert spin_until(executor, lambda: harness.labeled.get_subscription_count() > 0, 20.0)
        for seed in range(1, 6):
            harness.labeled.publish(patches(64, seed, labeled=True))
        assert spin_until(executor,
                          lambda: harness.last_diag_value('samples_learned') == '320', 15.0)
        assert harness.call(executor, harness.save_client).success
        before = predictions_from(harness, executor, lookahead)
        harness.labeled.publish(patches(64, 99, labeled=True))  # learned after the save: lost
        assert spin_until(executor,
                          lambda: harness.last_diag_value('samples_learned') == '384', 15.0)
        process.send_signal(signal.SIGKILL)  # no chance to save on the way out
        process.wait(timeout=10)
        assert OnlineRoughnessRegressor.load(str(model_path)).n_samples_seen_ == 320

        harness.diagnostics.clear()
        process = start_learner(model_path)
        assert spin_until(executor,
                          lambda: harness.last_diag_value('samples_learned') == '320', 20.0)
        after = predictions_from(harness, executor, lookahead)
        np.testing.assert_array_equal(before[0], after[0])
        np.testing.assert_array_equal(before[1], after[1])

        # A truncated file: refused clearly, kept aside, node starts fresh.
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=15)[0].decode()
        assert process.returncode == 0, output
        data = model_path.read_bytes()
        model_path.write_bytes(data[:len(data) // 2])
        harness.diagnostics.clear()
        process = start_learner(model_path)
        assert spin_until(executor,
                          lambda: harness.last_diag_value('samples_learned') == '0', 20.0)
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=15)[0].decode()
        assert 'truncated or corrupt' in output, output
        kept = [name for name in os.listdir(tmp_path) if name.startswith('model.npz.bad-')]
        assert len(kept) == 1 and (tmp_path / kept[0]).read_bytes() == data[:len(data) // 2]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        executor.shutdown()
        harness.node.destroy_node()


@pytest.mark.parametrize('memory', [True, False])
def test_labels_measured_on_a_cell_are_fused_into_its_published_prediction(ros_context, memory):
    """Two cells look alike to the lidar; the wheels measured one of them as rough. With the
    label memory the map says so for that cell (and only that cell); without it both read alike."""
    import fuzz_messages as fm
    from terrain_ssl.ros.learner_node import RoughnessLearnerNode
    from terrain_ssl.ros.wiring import linked_publishers_of

    learner = RoughnessLearnerNode(context=ros_context, parameter_overrides=[
        Parameter('model_path', value=''), Parameter('feature_names', value=','.join(FEATURES)),
        Parameter('warmup_samples', value=10), Parameter('label_memory', value=memory)])
    try:
        callbacks = fm.callbacks_by_topic(learner)
        rng = np.random.default_rng(21)
        for index in range(10):  # general experience: roughness ~ 5 x height_std, elsewhere
            callbacks['terrain_ssl/labeled_patches'](
                fm.patch_cloud(rng, 30, FEATURES, fm.T0_NS + index, labeled=True))
        same = {name: np.full(3, 0.05) for name in FEATURES}
        rough_cell = (40.25, 10.25)
        for crossing in range(3):
            callbacks['terrain_ssl/labeled_patches'](xyz_fields_to_pointcloud2(dict(
                same, x=np.full(3, rough_cell[0]), y=np.full(3, rough_cell[1]), z=np.zeros(3),
                roughness=np.full(3, 3.0), roughness_class=np.full(3, 2.0),
                speed=np.full(3, 4.0)), 'odom', fm.T0_NS + 100 + crossing))
        maps = []
        for outlet in linked_publishers_of(learner):
            if outlet.topic_name.endswith('roughness_map'):
                outlet.connect(maps.append)
        learner.flush_training()
        callbacks['terrain_ssl/lookahead_patches'](xyz_fields_to_pointcloud2(dict(
            {name: np.full(2, 0.05) for name in FEATURES}, x=np.array([rough_cell[0], 45.25]),
            y=np.array([rough_cell[1], 10.25]), z=np.zeros(2)), 'odom', fm.T0_NS + 200))
        cloud = pointcloud2_to_array(maps[-1])
        if memory:
            assert cloud['roughness'][0] > 3.0 * cloud['roughness'][1]
            assert cloud['roughness'][0] == pytest.approx(3.0, rel=0.5)
        else:
            assert cloud['roughness'][0] == pytest.approx(cloud['roughness'][1])
    finally:
        learner.destroy_node()
