"""roughness_learner: learns patch roughness online and publishes predictions for the ground ahead.

In:  terrain_ssl/lookahead_patches  (PointCloud2, one point per patch: x, y, z, feature fields)
     terrain_ssl/labeled_patches    (same, plus roughness (m/s^2)/(m/s) measured on crossing)
Out: terrain_ssl/roughness_map      (PointCloud2: x, y, z, roughness, uncertainty; frame as input)
     terrain_ssl/roughness_grid     (nav_msgs/OccupancyGrid, 0..100 = roughness / grid_full_scale)
     /diagnostics                   (samples learned, prequential MAE / Spearman, baseline MAE)
Services: ~/save_model, ~/reset_model (std_srvs/Trigger)

Labeled patches are predicted first, then learned ("predict, then train"), so the running error
is honest. Lookahead patches are predicted and published once `warmup_samples` labels are learned;
before that nothing is published and the advisor keeps its cautious default. Where the wheels
already crossed a cell, its labels are fused into the published prediction (`label_memory`,
terrain_ssl.core.label_memory); the prequential scores are the model's alone.

Model file policy: loaded at start-up when `model_path` exists. A file that cannot be used is
renamed aside to `<model_path>.bad-<UTC time>` (kept for inspection, never overwritten) and the
node starts a fresh model under `model_path`. If the rename is impossible, saving is disabled
(diagnostics say so) rather than overwrite the bad file. Saving happens every `save_period_s`,
on ~/save_model and on shutdown, and only once something has been learned.
"""

from __future__ import annotations

import os
import time

import numpy as np
from nav_msgs.msg import OccupancyGrid
from rclpy.node import Node
from sensor_msgs.msg import PointCloud2
from std_srvs.srv import Trigger

from terrain_ssl.core.grid import roughness_grid
from terrain_ssl.core.label_memory import CellLabelMemory
from terrain_ssl.core.learner import MODEL_KINDS, OnlineRoughnessRegressor
from terrain_ssl.core.metrics import BinnedIsotonicBaseline, PrequentialScore
from terrain_ssl.core.model_store import ModelFileError, quarantine_model_file
from terrain_ssl.ros.diagnostics import (DIAG_ERROR, DIAG_OK, DIAG_WARN, DiagnosticsPublisher,
                                         RejectCounter)
from terrain_ssl.ros.linked_publisher import LinkedPublisher
from terrain_ssl.ros.node_main import run_node
from terrain_ssl.ros.parameters import LiveParameters, ParamSpec
from terrain_ssl.ros.qos import LABELS_QOS, RELIABLE_QOS
from terrain_ssl.ros.conversions import (MalformedCloudError, occupancy_grid, pointcloud2_to_array,
                                         stamp_to_ns, structured_columns,
                                         xyz_fields_to_pointcloud2)

DEFAULT_MODEL_PATH = '~/.ros/terrain_ssl/roughness_model.npz'
# Sanity bounds on patch values: no real cell feature (m, rad, point counts) comes near 1e6, and
# no odom position (m) or roughness label near 1e9.
MAX_ABS_FEATURE = 1e6
MAX_ABS_VALUE = 1e9

PARAMS = [
    ParamSpec('model', 'rff_sgd', 'Regressor for a new model (start-up or ~/reset_model): '
              'rff_sgd = random Fourier features + SGD ensemble, '
              'linear_sgd = linear SGD ensemble. '
              'A loaded model keeps its own kind.', choices=MODEL_KINDS),
    ParamSpec('ensemble_size', 5, 'Online-bagging members of a new model (spread = uncertainty).',
              min=1, max=32),
    ParamSpec('n_components', 128, 'Random Fourier features of a new rff_sgd model.',
              min=8, max=4096),
    ParamSpec('learning_rate', 0.02, 'SGD step size (constant), applied live. Higher adapts '
              'faster to new ground but tracks the latest labels rather than the geometry.',
              min=1e-6, max=1.0),
    ParamSpec('novelty_scale', 0.5, 'Log-space sigma added per standard deviation outside the '
              'feature range seen so far, applied live.', min=0.0, max=10.0),
    ParamSpec('feature_names', '', 'Comma-separated patch-cloud fields to learn from, for a new '
              'model; empty = terrain_ssl.core.patches.TERRAIN_FEATURES (what the ground looks '
              'like, not how it was seen).', read_only=True),
    ParamSpec('baseline_feature', 'height_std', 'Feature (m) the geometric baseline maps '
              'monotonically to roughness; its MAE is reported beside the learner\'s.'),
    ParamSpec('model_path', DEFAULT_MODEL_PATH,
              'Model file (.npz); loaded at start-up if present. Empty = never load or save.',
              read_only=True),
    ParamSpec('save_period_s', 60.0, 'Seconds between periodic saves (s); 0 = only on request '
              'and shutdown.', min=0.0, max=86400.0),
    ParamSpec('learn', True, 'Learn from labeled patches. false = predict only (still scored '
              'prequentially): evaluate a model on new terrain without changing it.'),
    ParamSpec('train_batch_size', 32, 'Labels predicted, then learned together in one batch '
              '(fewer, larger updates are much cheaper; each label is still predicted before it '
              'is learned).', min=1, max=100_000),
    ParamSpec('label_memory', True, 'Fuse the labels already measured on a cell into its '
              'published prediction (the prediction counts as one label): ground driven before '
              'is known from experience. Kept per odom cell, not saved with the model; cleared '
              'on ~/reset_model. Also off while learn is false.'),
    ParamSpec('label_memory_cell_size_m', 0.5, 'Cell edge of the label memory (m); match the '
              "labeler's patch.size. Read at start-up.", min=0.05, max=10.0, read_only=True),
    ParamSpec('label_memory_max_cells', 100_000, 'Memory bound of the label memory (cells, '
              '~150 bytes each: ~15 MB at 100,000, ~40 km of driving with a 2 m wide '
              'footprint); the cells labeled longest ago go first. Read at start-up.',
              min=1, max=100_000_000, read_only=True),
    ParamSpec('warmup_samples', 200, 'Labels to learn before lookahead predictions are '
              'published.', min=0, max=10_000_000),
    ParamSpec('metrics_window', 1000, 'Recent labeled samples in the windowed MAE / Spearman.',
              min=10, max=1_000_000),
    ParamSpec('grid_resolution_m', 0.5, 'Occupancy grid cell size (m).', min=0.05, max=10.0),
    ParamSpec('grid_size_m', 40.0, 'Occupancy grid side length (m), centred on the patches.',
              min=1.0, max=1000.0),
    ParamSpec('grid_full_scale', 2.0, 'Roughness ((m/s^2)/(m/s)) shown as 100 in the grid.',
              min=1e-6, max=1e6),
    ParamSpec('diagnostics_period_s', 1.0, 'Period of /diagnostics (s).', min=0.05, max=60.0,
              read_only=True),
]


class RoughnessLearnerNode(Node):
    """Thin ROS shell over OnlineRoughnessRegressor (see module docstring)."""

    def __init__(self, context=None, **kwargs):
        super().__init__('roughness_learner', context=context, **kwargs)
        self.rejects = RejectCounter(self.get_logger())
        self._prequential_listeners = []
        self._pending = []  # (X, y) predicted but not yet learned
        self._pending_count = 0
        # Labeled patches not scored yet: (X, y, event columns). The model only changes when it
        # learns (flush_training), so they are predicted there, just before, in one batch:
        # the same "predict, then train", without a predict call per small labeled message.
        self._unscored = []
        self._unscored_count = 0
        self.labels_not_learned = 0  # while learn is false
        self.params = LiveParameters(self, PARAMS, validate=self._validate,
                                     on_change=self._apply)
        values = self.params.values
        self.model_path = os.path.expanduser(values['model_path']) if values['model_path'] else ''
        self.save_enabled = bool(self.model_path)
        self.save_problem = ''
        self.last_save_unix_s = None
        self.model_file_message = 'no model file configured' if not self.model_path else ''
        self.model = self._load_or_create()
        self._reset_scores()
        self.lookahead_skipped_warmup = 0
        self.memory = CellLabelMemory(values['label_memory_cell_size_m'],
                                      values['label_memory_max_cells'],
                                      floor=self.model.roughness_floor)

        self.map_outlet = LinkedPublisher(self, PointCloud2, 'terrain_ssl/roughness_map',
                                          RELIABLE_QOS)
        self.grid_outlet = LinkedPublisher(self, OccupancyGrid, 'terrain_ssl/roughness_grid',
                                           RELIABLE_QOS)
        self.create_subscription(PointCloud2, 'terrain_ssl/lookahead_patches',
                                 self.on_lookahead, RELIABLE_QOS)
        self.create_subscription(PointCloud2, 'terrain_ssl/labeled_patches',
                                 self.on_labeled, LABELS_QOS)
        self.create_service(Trigger, '~/save_model', self.on_save_model)
        self.create_service(Trigger, '~/reset_model', self.on_reset_model)
        self.diagnostics = DiagnosticsPublisher(self, values['diagnostics_period_s'],
                                                self.collect_diagnostics)
        self.save_timer = None
        self._apply(values)

    # -- parameters ----------------------------------------------------------------------------

    @staticmethod
    def _validate(values: dict):
        if values['grid_size_m'] < values['grid_resolution_m']:
            return 'grid_size_m must be at least grid_resolution_m'
        return None

    def _apply(self, values: dict) -> None:
        if hasattr(self, 'model'):
            self.score_pending()  # with the settings they arrived under (novelty, baseline)
            self.model.set_learning_rate(values['learning_rate'])
            self.model.novelty_scale = values['novelty_scale']
        period = values['save_period_s']
        if getattr(self, 'save_timer', None) is not None:
            self.destroy_timer(self.save_timer)
            self.save_timer = None
        if period > 0 and self.save_enabled:
            self.save_timer = self.create_timer(period, self.on_save_timer)

    def _feature_names(self) -> list:
        names = self.params.values['feature_names']
        if names.strip():
            return [name.strip() for name in names.split(',') if name.strip()]
        from terrain_ssl.core.patches import TERRAIN_FEATURES  # the labeler's current features
        return list(TERRAIN_FEATURES)

    def _new_model(self) -> OnlineRoughnessRegressor:
        values = self.params.values
        return OnlineRoughnessRegressor(
            self._feature_names(), model=values['model'], n_members=values['ensemble_size'],
            learning_rate=values['learning_rate'], n_components=values['n_components'],
            novelty_scale=values['novelty_scale'])

    def _load_or_create(self) -> OnlineRoughnessRegressor:
        if not self.model_path or not os.path.exists(self.model_path):
            if self.model_path:
                self.model_file_message = f'no model at {self.model_path}; started fresh'
            return self._new_model()
        try:
            model = OnlineRoughnessRegressor.load(self.model_path)
            wanted = self._feature_names()
            if list(model.feature_names) != wanted:
                raise ModelFileError(f'model file {self.model_path} was learned on features '
                                     f'{list(model.feature_names)}, the patches now carry '
                                     f'{wanted}')
        except ModelFileError as error:
            self.get_logger().error(f'{error}; starting a fresh model')
            try:
                moved = quarantine_model_file(self.model_path)
                self.model_file_message = f'bad model file moved to {moved}; started fresh'
                self.get_logger().error(f'kept the unusable model file as {moved}')
            except OSError as move_error:
                self.save_enabled = False
                self.save_problem = (f'cannot move the bad model file aside ({move_error}); '
                                     'saving disabled so it is not overwritten')
                self.model_file_message = self.save_problem
                self.get_logger().error(self.save_problem)
            return self._new_model()
        model.set_learning_rate(self.params.values['learning_rate'])
        model.novelty_scale = self.params.values['novelty_scale']
        self.model_file_message = (f'loaded {self.model_path}: {model.n_samples_seen_} samples, '
                                   f'model {model.model}')
        self.get_logger().info(self.model_file_message)
        return model

    def _reset_scores(self) -> None:
        window = self.params.values['metrics_window']
        self.score = PrequentialScore(window)
        self.baseline_score = PrequentialScore(window)
        self.baseline = BinnedIsotonicBaseline()

    # -- inputs --------------------------------------------------------------------------------

    def _features(self, msg: PointCloud2, extra: tuple = ()):
        """(points, X, extras..., keep mask) from a patch cloud, or None if it is unusable."""
        try:
            points = pointcloud2_to_array(msg)
        except MalformedCloudError as error:
            self.rejects.reject('malformed_cloud', str(error))
            return None
        needed = list(self.model.feature_names) + ['x', 'y', 'z'] + list(extra)
        missing = [name for name in needed if name not in (points.dtype.names or ())]
        if missing:
            self.rejects.reject('missing_fields', f'patch cloud lacks {missing}')
            return None
        # A field with count > 1 is a subarray per point: not one value per patch.
        multi = [name for name in needed if points.dtype[name].shape]
        if multi:
            self.rejects.reject('malformed_cloud', f'patch cloud fields {multi} have count > 1')
            return None
        # Features first, then x, y, z and the extras: one float64 matrix, checked at once.
        n_features = self.model.n_features_in_
        values = structured_columns(points, needed)
        X = values[:, :n_features]
        # Finite but absurd values (corrupted bytes read as float32 reach 3e38) would overflow
        # the running standardiser and ruin the model for good: dropped, as NaN and inf are.
        bounds = np.full(len(needed), MAX_ABS_VALUE)
        bounds[:n_features] = MAX_ABS_FEATURE
        with np.errstate(invalid='ignore'):
            within = np.abs(values) <= bounds  # false for NaN and inf as well
        if within.all():
            # The usual cloud: nothing to drop. One check over the whole matrix; the row-wise
            # checks only when something must go.
            return points, X, np.ones(values.shape[0], dtype=bool)
        keep = np.isfinite(values).all(axis=1)
        if not keep.all():
            self.rejects.reject('nonfinite_patch', f'{int((~keep).sum())} patches with NaN/inf '
                                'dropped')
        plausible = within.all(axis=1)
        implausible = keep & ~plausible
        if implausible.any():
            self.rejects.reject('implausible_patch', f'{int(implausible.sum())} patches with '
                                f'|feature| > {MAX_ABS_FEATURE:g} or |x, y, z, label| > '
                                f'{MAX_ABS_VALUE:g} dropped')
            keep &= plausible
        return points, X, keep

    def on_labeled(self, msg: PointCloud2) -> None:
        parsed = self._features(msg, extra=('roughness',))
        if parsed is None:
            return
        points, X, keep = parsed
        with np.errstate(invalid='ignore'):  # signalling NaNs: rejected in _features already
            y = points['roughness'].astype(np.float64)
        negative = keep & (y < 0)
        if negative.any():
            self.rejects.reject('negative_roughness', f'{int(negative.sum())} labels dropped')
            keep &= ~negative
        X, y = X[keep], y[keep]
        if y.shape[0] == 0:
            return
        event = None
        if self._prequential_listeners:
            event = {'stamp_ns': np.full(y.shape[0], stamp_to_ns(msg.header.stamp)),
                     'x': points['x'][keep], 'y': points['y'][keep], 'roughness': y}
            for name in ('roughness_class', 'speed'):
                event[name] = points[name][keep] if name in points.dtype.names \
                    else np.full(y.shape[0], np.nan)
        self._unscored.append((X, y, event))
        self._unscored_count += y.shape[0]
        batch = self.params.values['train_batch_size']
        if not self.model.is_fitted:
            self.score_pending()  # nothing to predict with yet: scored as NaN now
        if not self.params.values['learn']:
            self.labels_not_learned += y.shape[0]
            if self._unscored_count >= batch:
                self.score_pending()
            return
        if self.params.values['label_memory']:
            self.memory.add(points['x'][keep], points['y'][keep], y)
        self._pending.append((X, y))
        self._pending_count += y.shape[0]
        if not self.model.is_fitted or self._pending_count >= batch:
            self.flush_training()

    def score_pending(self) -> None:
        """Predict the labeled patches received since the last call (the model has not learned
        them), update the prequential scores and tell the listeners."""
        if not self._unscored:
            return
        parts, self._unscored = self._unscored, []
        self._unscored_count = 0
        X = parts[0][0] if len(parts) == 1 else np.concatenate([part[0] for part in parts])
        y = parts[0][1] if len(parts) == 1 else np.concatenate([part[1] for part in parts])
        predicted = uncertainty = baseline = np.full(y.shape[0], np.nan)
        if self.model.is_fitted:  # predict, then train
            predicted, uncertainty = self.model.predict(X, return_std=True)
            self.score.update(predicted, y)
            baseline_column = self._baseline_column()
            if baseline_column is not None and self.baseline.is_fitted:
                baseline = self.baseline.predict(X[:, baseline_column])
                self.baseline_score.update(baseline, y)
        start = 0
        for _, labels, event in parts:  # one event per labeled message, as it arrived
            end = start + labels.shape[0]
            if event is not None:  # (None: nobody listened when it arrived)
                event.update(predicted=predicted[start:end],
                             uncertainty=uncertainty[start:end], baseline=baseline[start:end])
                for listener in self._prequential_listeners:
                    listener(event)
            start = end

    def flush_training(self) -> None:
        """Score, then learn every label received so far. Labels arrive a few per odometry
        message; a learning step has a fixed overhead per call and ensemble member, so they
        are learned in batches (each predicted before it is learned)."""
        self.score_pending()
        if not self._pending:
            return
        X = np.concatenate([x for x, _ in self._pending])
        y = np.concatenate([labels for _, labels in self._pending])
        self._pending.clear()
        self._pending_count = 0
        self.model.partial_fit(X, y)
        baseline_column = self._baseline_column()
        if baseline_column is not None:
            self.baseline.partial_fit(X[:, baseline_column], y)

    def add_prequential_listener(self, callback) -> None:
        """Call `callback(event)` for every labeled batch with the predictions made before
        learning it (dict of aligned arrays: stamp_ns, x, y, roughness, predicted, uncertainty,
        baseline, roughness_class, speed); offline evaluation records these."""
        self._prequential_listeners.append(callback)

    def _baseline_column(self):
        name = self.params.values['baseline_feature']
        names = self.model.feature_names
        return names.index(name) if name in names else None

    def on_lookahead(self, msg: PointCloud2) -> None:
        if self.model.n_samples_seen_ < max(self.params.values['warmup_samples'], 1):
            self.lookahead_skipped_warmup += 1
            return
        parsed = self._features(msg)
        if parsed is None:
            return
        points, X, keep = parsed
        if not keep.all():
            points, X = points[keep], X[keep]
        if X.shape[0]:
            roughness, uncertainty = self.model.predict(X, return_std=True)
            if self.params.values['label_memory'] and len(self.memory):
                roughness, uncertainty = self.memory.fused(points['x'], points['y'],
                                                           roughness, uncertainty)
        else:
            roughness = uncertainty = np.zeros(0)
        stamp_ns = stamp_to_ns(msg.header.stamp)
        frame = msg.header.frame_id
        self.map_outlet.publish(xyz_fields_to_pointcloud2(
            {'x': points['x'], 'y': points['y'], 'z': points['z'], 'roughness': roughness,
             'uncertainty': uncertainty}, frame, stamp_ns))
        # The grid is for RViz and Nav2 costmaps only: not built when nobody takes it (replay,
        # bringup without viewers).
        if self.grid_outlet.has_listeners():
            self.grid_outlet.publish(self._grid_message(points, roughness, msg))

    def _grid_message(self, points, roughness, msg: PointCloud2) -> OccupancyGrid:
        values = self.params.values
        xy = np.column_stack([points['x'], points['y']]).astype(np.float64)
        grid = roughness_grid(xy, roughness, values['grid_resolution_m'], values['grid_size_m'],
                              values['grid_full_scale'])
        return occupancy_grid(grid.cells, grid.origin_x_m, grid.origin_y_m, grid.resolution_m,
                              msg.header)

    # -- persistence and services -------------------------------------------------------------

    def save(self) -> tuple:
        """(success, message). Never overwrites a bad file; skips an empty model."""
        self.flush_training()
        if not self.save_enabled:
            return False, self.save_problem or 'no model_path configured'
        if not self.model.is_fitted:
            return False, 'nothing learned yet; not saved'
        try:
            self.model.save(self.model_path)
        except (OSError, ValueError) as error:
            self.save_problem = f'save to {self.model_path} failed: {error}'
            self.get_logger().error(self.save_problem)
            return False, self.save_problem
        self.save_problem = ''
        self.last_save_unix_s = time.time()
        return True, f'saved {self.model.n_samples_seen_} samples to {self.model_path}'

    def on_save_timer(self) -> None:
        self.save()

    def on_save_model(self, request, response):
        response.success, response.message = self.save()
        return response

    def on_reset_model(self, request, response):
        self.score_pending()  # by the model that had not learned them yet
        self._pending.clear()
        self._pending_count = 0
        try:
            self.model = self._new_model()
        except (ValueError, ImportError) as error:
            response.success, response.message = False, f'reset failed: {error}'
            return response
        self._reset_scores()
        self.memory.clear()
        response.success = True
        response.message = ('model reset to a fresh one; the file at '
                            f'{self.model_path or "(none)"} is replaced at the next save')
        self.get_logger().info(response.message)
        return response

    def close(self) -> None:
        """Save on shutdown (run_node calls this after spinning stops)."""
        saved, message = self.save()
        if saved:
            self.get_logger().info(message)

    # -- diagnostics ---------------------------------------------------------------------------

    def collect_diagnostics(self):
        # Scores cover the labels learned so far (labels waiting for the next training batch,
        # fewer than train_batch_size, are scored with it: diagnostics never change batches).
        model = self.model
        now = time.time()
        values = {
            'samples_learned': model.n_samples_seen_,
            'learning': self.params.values['learn'],
            'labels_not_learned': self.labels_not_learned,
            'model': model.model,
            'ensemble_size': model.n_members,
            'features': ','.join(model.feature_names),
            'model_age_s': now - model.created_unix_s_,
            'prequential_samples': self.score.count,
            'prequential_mae': self.score.mae,
            'window_mae': self.score.window_mae,
            'window_spearman': self.score.window_spearman,
            'baseline_window_mae': self.baseline_score.window_mae,
            'last_save_age_s': (now - self.last_save_unix_s) if self.last_save_unix_s else 'never',
            'model_path': self.model_path,
            'model_file': self.model_file_message,
            'lookahead_skipped_warmup': self.lookahead_skipped_warmup,
            'label_memory_cells': len(self.memory),
            'maps_published': self.map_outlet.published,
            'rejected': self.rejects.total,
        }
        for reason, count in self.rejects.counts.items():
            values[f'rejected_{reason}'] = count
        if self.save_problem:
            return DIAG_ERROR if not self.save_enabled else DIAG_WARN, self.save_problem, values
        if model.n_samples_seen_ < self.params.values['warmup_samples']:
            return DIAG_WARN, (f'warming up: {model.n_samples_seen_}/'
                               f'{self.params.values["warmup_samples"]} samples'), values
        return DIAG_OK, f'learning: {model.n_samples_seen_} samples', values


def main(args=None) -> int:
    return run_node(RoughnessLearnerNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
