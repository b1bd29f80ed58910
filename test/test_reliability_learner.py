"""roughness_learner under abuse: fuzzed patch clouds, bursts, kill -9 mid-save, unwritable disk.

The node must keep running (no callback raises), count every rejected input by reason in its
`rejects` and on /diagnostics, and never lose the model file it already had.
"""

import os
import random
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
from conftest import spin_until
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import PointCloud2
from std_srvs.srv import Trigger

import fuzz_messages as fm
from terrain_ssl.core.learner import OnlineRoughnessRegressor
from terrain_ssl.core.model_store import ModelFileError
from terrain_ssl.core.patches import FEATURE_NAMES
from terrain_ssl.ros.diagnostics import DIAG_WARN
from terrain_ssl.ros.qos import LABELS_QOS, RELIABLE_QOS
from terrain_ssl.ros.conversions import pointcloud2_to_array

pytestmark = pytest.mark.ros

FEATURES = list(FEATURE_NAMES)
LABELED = 'terrain_ssl/labeled_patches'
LOOKAHEAD = 'terrain_ssl/lookahead_patches'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_learner(context, model_path='', **overrides):
    from terrain_ssl.ros.learner_node import RoughnessLearnerNode

    params = {'model_path': str(model_path), 'warmup_samples': 50, 'save_period_s': 0.0,
              'train_batch_size': 1, 'diagnostics_period_s': 0.2}
    params.update(overrides)
    return RoughnessLearnerNode(context=context, parameter_overrides=[
        Parameter(name, value=value) for name, value in params.items()])


def train(learner, rng, n_messages=10, per_message=20):
    callback = fm.callbacks_by_topic(learner)[LABELED]
    for index in range(n_messages):
        callback(fm.patch_cloud(rng, per_message, FEATURES, fm.T0_NS + index, labeled=True))


def test_fuzzed_patch_clouds_never_raise_and_are_counted(ros_context):
    rng = np.random.default_rng(1)
    learner = make_learner(ros_context)
    callbacks = fm.callbacks_by_topic(learner)
    train(learner, rng)
    assert learner.model.n_samples_seen_ == 200
    maps = []
    learner.map_outlet.connect(maps.append)

    bad = fm.bad_clouds(rng, extra_fields=FEATURES + ['roughness'])
    odd = fm.odd_but_valid_clouds(rng)  # x, y, z only: no feature fields
    for _, cloud in bad + odd:
        for topic in (LABELED, LOOKAHEAD):
            callbacks[topic](cloud)
    counts = learner.rejects.counts
    # Every broken layout is refused (as malformed or as lacking fields), on both topics;
    # random_bytes has a sound layout and garbage values: its patches are dropped and counted.
    assert counts.get('malformed_cloud', 0) + counts.get('missing_fields', 0) \
        == 2 * (len(bad) - 1) + 2 * len(odd)
    assert counts.get('missing_fields', 0) == 2 * (len(odd) + 2)  # + missing_z, no_fields
    assert counts.get('nonfinite_patch', 0) >= 1 and counts.get('implausible_patch', 0) >= 1

    # NaN / Inf in features, position and label; negative labels: those patches are dropped.
    before = learner.model.n_samples_seen_
    nonfinite_before = counts.get('nonfinite_patch', 0)
    negative_before = counts.get('negative_roughness', 0)
    good = fm.patch_cloud(rng, 40, FEATURES, labeled=True)
    for field, value in (('height_std', np.nan), ('slope', np.inf), ('x', -np.inf),
                         ('roughness', np.nan)):
        callbacks[LABELED](fm.poison(good, field, value))
    callbacks[LABELED](fm.poison(good, 'roughness', -1.0))
    assert counts['nonfinite_patch'] == nonfinite_before + 4
    assert counts['negative_roughness'] == negative_before + 1
    assert learner.model.n_samples_seen_ == before + 4 * 20 + 20  # only the clean halves

    # Finite but absurd values (random bytes read as float32) are dropped, not learned: one
    # 3e38 feature would overflow the standardiser and ruin the model for good.
    implausible_before = counts.get('implausible_patch', 0)
    callbacks[LABELED](fm.poison(good, 'plane_residual', 3e38))
    callbacks[LABELED](fm.poison(good, 'roughness', 1e30))
    assert counts['implausible_patch'] == implausible_before + 2
    assert learner.model.n_samples_seen_ == before + 6 * 20 + 20
    probe = pointcloud2_to_array(fm.patch_cloud(rng, 50, FEATURES))
    X = np.column_stack([probe[name].astype(float) for name in learner.model.feature_names])
    predicted, uncertainty = learner.model.predict(X, return_std=True)
    assert np.isfinite(predicted).all() and np.isfinite(uncertainty).all()
    assert predicted.max() < 10.0  # labels are ~5 x 0.05: still a sane model
    lookahead = fm.patch_cloud(rng, 30, FEATURES)
    maps.clear()
    callbacks[LOOKAHEAD](fm.poison(lookahead, 'curvature', np.nan, every=3))
    assert counts['nonfinite_patch'] == nonfinite_before + 5
    assert len(maps) == 1 and pointcloud2_to_array(maps[0]).shape[0] == 20

    # Empty and huge patch clouds are handled, not refused.
    empty = fm.patch_cloud(rng, 0, FEATURES, labeled=True)
    callbacks[LABELED](empty)
    callbacks[LOOKAHEAD](fm.patch_cloud(rng, 0, FEATURES))
    huge = fm.patch_cloud(rng, 100_000, FEATURES)
    callbacks[LOOKAHEAD](huge)
    assert pointcloud2_to_array(maps[-1]).shape[0] == 100_000
    assert np.isfinite(pointcloud2_to_array(maps[-1])['roughness']).all()

    # The diagnostics carry the same counts; the node still learns after all that.
    level, message, values = fm.diagnostic_values(learner)
    assert int(values['rejected']) == learner.rejects.total
    for reason, count in counts.items():
        assert int(values[f'rejected_{reason}']) == count
    before = learner.model.n_samples_seen_
    train(learner, rng, n_messages=2)
    assert learner.model.n_samples_seen_ == before + 40


def test_stamps_backwards_and_bag_loops_keep_the_map_flowing(ros_context):
    """The learner is stateless in time: a looping bag or stamps going back change nothing."""
    rng = np.random.default_rng(2)
    learner = make_learner(ros_context)
    callbacks = fm.callbacks_by_topic(learner)
    maps = []
    learner.map_outlet.connect(maps.append)
    stamps = [fm.T0_NS + k * 100_000_000 for k in range(20)]
    for loop in range(3):  # the same 2 s of stamps three times, then backwards
        for stamp in stamps + stamps[::-1]:
            callbacks[LABELED](fm.patch_cloud(rng, 5, FEATURES, stamp, labeled=True))
            callbacks[LOOKAHEAD](fm.patch_cloud(rng, 10, FEATURES, stamp))
    assert learner.model.n_samples_seen_ == 3 * 40 * 5
    # Each map carries its lookahead's stamp, whatever order they came in.
    assert maps and maps[-1].header.stamp.sec == stamps[0] // fm.S
    assert learner.rejects.total == 0


def test_over_dds_rejects_on_diagnostics_and_a_10x_burst(ros_context):
    """Real publishers: malformed clouds are counted on /diagnostics; a 10x-rate burst of
    labeled and lookahead patches neither crashes the node nor leaves it stuck afterwards, and
    loses no label: labeled patches are training data, sent with the labeler's own QoS."""
    rng = np.random.default_rng(3)
    learner = make_learner(ros_context, warmup_samples=20)
    peer = rclpy.create_node('learner_reliability_peer', context=ros_context)
    labeled = peer.create_publisher(PointCloud2, LABELED, LABELS_QOS)  # as the labeler does
    lookahead = peer.create_publisher(PointCloud2, LOOKAHEAD, RELIABLE_QOS)
    maps, diagnostics = [], []
    peer.create_subscription(PointCloud2, 'terrain_ssl/roughness_map', maps.append, RELIABLE_QOS)
    peer.create_subscription(DiagnosticArray, '/diagnostics', diagnostics.append, 10)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(learner)
    executor.add_node(peer)
    assert spin_until(executor, lambda: labeled.get_subscription_count() > 0
                      and lookahead.get_subscription_count() > 0, 10.0)
    # Count what reaches the node's labeled-patches callback over DDS (the executor looks the
    # callback up per message), so every message sent can be accounted for.
    received = []
    subscription = next(sub for sub in learner.subscriptions if sub.topic_name == '/' + LABELED)
    on_labeled = subscription.callback

    def counting(msg):
        received.append((msg.header.stamp.sec, msg.header.stamp.nanosec))
        on_labeled(msg)
    subscription.callback = counting

    bad = fm.bad_clouds(rng, extra_fields=FEATURES + ['roughness'])
    for _, cloud in bad:
        labeled.publish(cloud)
        executor.spin_once(timeout_sec=0.01)
    assert spin_until(executor, lambda: len(received) >= len(bad), 30.0), (len(received), len(bad))

    def rejected_on_diagnostics():
        for array in reversed(diagnostics):
            for status in array.status:
                if status.name.startswith('roughness_learner'):
                    return {kv.key: kv.value for kv in status.values}
        return {}
    # Every one is refused: the broken layouts as malformed or lacking fields, random_bytes
    # (a sound layout of garbage values) patch by patch, as non-finite or implausible.
    assert spin_until(executor, lambda: int(rejected_on_diagnostics().get('rejected', 0))
                      == learner.rejects.total, 10.0), rejected_on_diagnostics()
    values = rejected_on_diagnostics()
    assert int(values.get('rejected_malformed_cloud', 0)) \
        + int(values.get('rejected_missing_fields', 0)) == len(bad) - 1
    assert int(values.get('rejected_nonfinite_patch', 0)) \
        + int(values.get('rejected_implausible_patch', 0)) >= 1

    # Burst: labels normally arrive ~50 Hz and lookaheads 10 Hz; send 2 s worth at 10x. A fixed
    # count, paced at no more than 10x: a loaded machine that publishes slower still sends it all.
    learned_before = learner.model.n_samples_seen_  # train_batch_size 1: learned on arrival
    rejected_before = learner.rejects.total
    received.clear()
    stamps_sent = []
    with fm.spinning(executor) as errors:
        start = time.monotonic()
        sent = 0
        while sent < 1000:
            stamp = fm.T0_NS + sent * 2_000_000
            labeled.publish(fm.patch_cloud(rng, 8, FEATURES, stamp, labeled=True))
            stamps_sent.append((stamp // 10**9, stamp % 10**9))
            if sent % 5 == 0:
                lookahead.publish(fm.patch_cloud(rng, 300, FEATURES, stamp))
            sent += 1
            time.sleep(max(0.0, start + sent / 500.0 - time.monotonic()))  # the rate
    assert not errors, errors
    # Every labeled message sent arrives once, in order, and is learned, however long a loaded
    # machine takes to catch up (the wait is for the count; the timeout only ends a hang): none
    # may vanish in a DDS queue. Lookaheads may be dropped (only the newest matters); a rejected
    # patch would be counted, and these clean ones have none.
    assert spin_until(executor, lambda: len(received) >= sent, 60.0), (len(received), sent)
    assert received == stamps_sent
    assert learner.model.n_samples_seen_ - learned_before == sent * 8
    assert learner.rejects.total == rejected_before, learner.rejects.counts
    # Afterwards, a new lookahead is answered promptly: the node is not stuck in a backlog.
    n_maps = len(maps)
    marker = fm.patch_cloud(rng, 10, FEATURES, fm.T0_NS + 10**12)
    lookahead.publish(marker)
    assert spin_until(executor, lambda: any(m.header.stamp == marker.header.stamp
                                            for m in maps[n_maps:]), 5.0)


_SAVER = r'''
import sys, numpy as np
from terrain_ssl.core.learner import OnlineRoughnessRegressor
from terrain_ssl.core.model_store import ModelFileError
path, features = sys.argv[1], sys.argv[2].split(',')
try:
    model = OnlineRoughnessRegressor.load(path)
except ModelFileError:
    model = OnlineRoughnessRegressor(features, n_components=1024)
rng = np.random.default_rng()
X = rng.lognormal(-3, 0.5, (64, len(features)))
model.partial_fit(X, 5 * X[:, 0] + 0.01)
print('ready', model.n_samples_seen_, flush=True)
while True:
    model.save(path)      # most of the loop: the kill lands inside a save
'''


def test_kill_9_during_model_save_leaves_a_loadable_model(tmp_path):
    """A process saving in a loop is SIGKILLed at random moments; the file always loads, and
    its sample count only grows (old or new model, never a mix)."""
    path = tmp_path / 'model.npz'
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    features = ','.join(FEATURES)
    chooser = random.Random(9)
    seen = 0
    for _ in range(8):
        child = subprocess.Popen([sys.executable, '-c', _SAVER, str(path), features],
                                 stdout=subprocess.PIPE, env=env, text=True)
        try:
            line = child.stdout.readline()
            assert line.startswith('ready'), line
            time.sleep(chooser.uniform(0.0, 0.15))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            child.stdout.close()
        model = OnlineRoughnessRegressor.load(str(path))  # must not raise ModelFileError
        assert model.n_samples_seen_ >= seen
        seen = model.n_samples_seen_
        assert model.predict(np.full((1, len(FEATURES)), 0.05)).shape == (1,)
    # A round killed before its first save completed keeps the previous model: that is the
    # point. Most rounds live long enough to save once.
    assert 4 * 64 <= seen <= 8 * 64
    # Temp files of killed saves stay behind (hidden, never mistaken for the model).
    leftovers = [name for name in os.listdir(tmp_path) if name != 'model.npz']
    assert all(name.startswith('.model.npz.') and name.endswith('.tmp') for name in leftovers)


def _diagnostics(learner):
    return fm.diagnostic_values(learner)


def test_unwritable_save_path_is_a_clear_error_and_the_node_keeps_learning(ros_context,
                                                                           tmp_path):
    blocker = tmp_path / 'not_a_directory'
    blocker.write_text('a file where the model directory should be')
    path = blocker / 'model.npz'
    learner = make_learner(ros_context, model_path=path, warmup_samples=10)
    peer = rclpy.create_node('learner_save_peer', context=ros_context)
    client = peer.create_client(Trigger, '/roughness_learner/save_model')
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(learner)
    executor.add_node(peer)
    rng = np.random.default_rng(4)
    train(learner, rng, n_messages=2)

    assert client.wait_for_service(timeout_sec=10.0)
    future = client.call_async(Trigger.Request())
    assert spin_until(executor, future.done, 10.0)
    response = future.result()
    assert not response.success
    assert str(path) in response.message and 'failed' in response.message
    level, message, values = _diagnostics(learner)
    assert level == DIAG_WARN and 'failed' in message and str(path) in message

    learner.close()  # the shutdown save fails the same way, without raising
    before = learner.model.n_samples_seen_
    train(learner, rng, n_messages=2)
    assert learner.model.n_samples_seen_ == before + 40


def test_disk_full_during_save_keeps_the_old_model(ros_context, tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse the write (EFBIG), as a full disk would (ENOSPC):
    the save fails with a clear error, the old model file is untouched, no temp file is left,
    and the next save after space returns succeeds."""
    path = tmp_path / 'model.npz'
    learner = make_learner(ros_context, model_path=path, warmup_samples=10)
    rng = np.random.default_rng(5)
    train(learner, rng, n_messages=2)
    saved, _ = learner.save()
    assert saved
    old_size = path.stat().st_size
    old_samples = OnlineRoughnessRegressor.load(str(path)).n_samples_seen_
    train(learner, rng, n_messages=3)

    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (old_size // 4, hard))
    try:
        saved, message = learner.save()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert not saved
    assert 'failed' in message and 'too large' in message.lower()
    level, diag_message, _ = _diagnostics(learner)
    assert level == DIAG_WARN and 'failed' in diag_message
    assert OnlineRoughnessRegressor.load(str(path)).n_samples_seen_ == old_samples
    assert sorted(os.listdir(tmp_path)) == ['model.npz']

    train(learner, rng, n_messages=1)  # still learning
    saved, message = learner.save()
    assert saved, message
    assert OnlineRoughnessRegressor.load(str(path)).n_samples_seen_ == old_samples + 80
    level, diag_message, _ = _diagnostics(learner)
    assert 'failed' not in diag_message


def test_corrupt_model_at_start_up_is_set_aside(ros_context, tmp_path):
    """A model file truncated by an earlier crash (not by our atomic save) is moved aside."""
    path = tmp_path / 'model.npz'
    model = OnlineRoughnessRegressor(FEATURES)
    X = np.random.default_rng(6).lognormal(-3, 0.5, (64, len(FEATURES)))
    model.partial_fit(X, X[:, 0])
    model.save(str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFileError):
        OnlineRoughnessRegressor.load(str(path))
    learner = make_learner(ros_context, model_path=path)
    assert learner.model.n_samples_seen_ == 0
    names = os.listdir(tmp_path)
    assert 'model.npz' not in names and any(name.startswith('model.npz.bad-') for name in names)
    _, _, values = _diagnostics(learner)
    assert 'bad model file moved' in values['model_file']
