"""Prequential honesty: every label is predicted by the model as it was *before* it learned that
label. The learner's running MAE / Spearman (diagnostics, replay reports, benchmarks) are only
honest if no label leaks into its own prediction.

The real RoughnessLearnerNode, fed through its own subscription callback; the prequential events
are what the replay records (add_prequential_listener).
"""

import copy

import numpy as np
import pytest
from rclpy.parameter import Parameter

import fuzz_messages as fm
from terrain_ssl.ros.conversions import xyz_fields_to_pointcloud2

pytestmark = pytest.mark.ros

FEATURES = ['height_std', 'slope', 'max_step']
BATCH = 32


def labeled_patches(seed, n=BATCH, label_scale=1.0):
    rng = np.random.default_rng(seed)
    columns = {'x': rng.uniform(0, 10, n), 'y': rng.uniform(-5, 5, n), 'z': np.zeros(n),
               'height_std': rng.lognormal(-3, 0.5, n), 'slope': rng.normal(0, 0.1, n),
               'max_step': rng.lognormal(-2.5, 0.5, n)}
    columns['roughness'] = label_scale * (20 * columns['height_std']
                                          + rng.lognormal(-3, 0.3, n))
    X = np.column_stack([columns[name] for name in FEATURES]).astype(np.float32)
    return xyz_fields_to_pointcloud2(columns, 'odom', fm.T0_NS + seed), X.astype(np.float64)


@pytest.fixture
def learner(ros_context):
    from terrain_ssl.ros.learner_node import RoughnessLearnerNode

    node = RoughnessLearnerNode(context=ros_context, parameter_overrides=[
        Parameter('feature_names', value=','.join(FEATURES)), Parameter('model_path', value=''),
        Parameter('train_batch_size', value=BATCH), Parameter('save_period_s', value=0.0),
        Parameter('label_memory', value=False)])
    yield node
    node.destroy_node()


def test_each_label_is_predicted_before_it_is_learned(learner):
    """At every prequential event the model has learned exactly the labels of the events before
    it (not this one), and its predictions equal those of a copy of the model taken before the
    batch arrived."""
    events = []
    learner.add_prequential_listener(
        lambda event: events.append(dict(event, seen=learner.model.n_samples_seen_)))
    on_labeled = fm.callbacks_by_topic(learner)['terrain_ssl/labeled_patches']
    before = []
    for seed in range(10):
        msg, X = labeled_patches(seed)
        before.append((copy.deepcopy(learner.model), X))
        on_labeled(msg)  # one full training batch: scored, then learned
    assert len(events) == 10 and learner.model.n_samples_seen_ == 10 * BATCH
    learned_earlier = 0
    for index, event in enumerate(events):
        assert event['seen'] == learned_earlier, index
        learned_earlier += event['roughness'].size
        model, X = before[index]
        if index == 0:  # a cold model has nothing to predict with
            assert np.isnan(event['predicted']).all()
            continue
        expected, expected_std = model.predict(X, return_std=True)
        np.testing.assert_allclose(event['predicted'], expected, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(event['uncertainty'], expected_std, rtol=1e-9, atol=1e-12)
    assert learner.score.count == 9 * BATCH


def test_a_shifted_batch_is_not_pre_warned(learner):
    """After learning labels = f(features), a batch whose labels are 8x larger is predicted at
    the old level: the prequential error sees the whole shift (a model that learned the batch
    before scoring it would already have moved toward it)."""
    on_labeled = fm.callbacks_by_topic(learner)['terrain_ssl/labeled_patches']
    events = []
    learner.add_prequential_listener(events.append)
    for seed in range(20):
        on_labeled(labeled_patches(seed)[0])
    msg, X = labeled_patches(100, label_scale=8.0)
    old_prediction = copy.deepcopy(learner.model).predict(X)
    on_labeled(msg)
    shifted = events[-1]
    np.testing.assert_allclose(shifted['predicted'], old_prediction, rtol=1e-9)
    # The labels are ~8x the prediction: the log ratio is ~log(8) = 2.08, none of it learned.
    log_ratio = np.median(np.log(shifted['roughness'] / shifted['predicted']))
    assert log_ratio == pytest.approx(np.log(8.0), abs=0.35)
    # Learned afterwards: the next batch at the same scale is predicted higher than before.
    msg, X = labeled_patches(101, label_scale=8.0)
    on_labeled(msg)
    assert np.median(events[-1]['predicted']) > np.median(old_prediction)
