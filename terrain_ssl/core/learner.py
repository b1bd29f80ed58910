"""Online roughness regressor: patch features -> roughness ((m/s^2)/(m/s)) with an uncertainty.

Pipeline per batch (KISS):

    features --(log of the scale features)--(online standardisation, Welford)--> z
    z --(random Fourier features, RBFSampler drawn once)--> phi (float32)
    log(roughness + floor) --(online standardisation)--> target
    phi, target --> K linear SGD members (LinearSGD), each seeing every sample with a
                    Poisson(1) weight (online bagging, Oza & Russell 2001)

Prediction is the ensemble mean mapped back through exp (a median estimate, the MAE-optimal
point). The log-space standard deviation combines three parts, because the advisor needs to be
careful for each reason:
  * the ensemble spread (epistemic: members disagree where data are few);
  * the prequential residual (aleatoric: labels are noisy even where the terrain is known), as a
    function of the features: one more linear SGD model on the same random features learns the
    absolute residual of each sample before it is learned. Label noise is not uniform (in log
    units it is smaller on rough ground than on moderate ground), so one global figure would
    make the advisor crawl over rough ground it knows well. Until that model has seen enough
    samples a running global residual variance stands in;
  * a novelty term: `novelty_scale` times the standardised distance outside the feature range
    seen so far (random Fourier features do not fade far from data, so the spread alone would
    not grow there). For the features where a larger value means rougher ground
    (ROUGHER_WHEN_LARGER: heights, residuals, steps, slope) only the excess above the range
    counts: ground smoother than any labeled cell is common (the wheels rarely cross the
    smoothest patches the lidar sees), and a model that falls back towards the mean label away
    from data over-predicts it rather than under-predicts; counting it would make smooth ground
    look far rougher than it is.
`uncertainty` is in roughness units such that `roughness + uncertainty` is the +1 sigma bound
in log space: uncertainty = exp(mu + sigma) - exp(mu).

Why this model: random Fourier features with linear SGD learn a smooth nonlinear map fast
enough online and predict a whole cell map in a few milliseconds; the ensemble's whole state is
plain arrays, so it persists without pickle and resumes exactly. The defaults (log scale
features, the neighbourhood features, terrain features only, a small constant step, a wide
kernel) favour a map of the geometry that carries over to terrain not driven yet
(bench/bench_learning.py scores that) over tracking the latest labels.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.exceptions import NotFittedError
from sklearn.kernel_approximation import RBFSampler

from terrain_ssl.core.linear_sgd import LinearSGD
from terrain_ssl.core.model_store import ModelFileError, load_model_file, save_model_file
from terrain_ssl.core.patches import SCALE_FEATURES
from terrain_ssl.core.standardizer import OnlineStandardizer

__all__ = ['MODEL_KINDS', 'ROUGHER_WHEN_LARGER', 'OnlineStandardizer', 'OnlineRoughnessRegressor',
           'ModelFileError']

MODEL_KINDS = ('rff_sgd', 'linear_sgd')
# Features whose larger values mean rougher ground: for them novelty counts only above the range
# seen (see the module docstring). How the lidar saw a cell (point_count, range, grazing_angle)
# has no such direction and counts both ways.
ROUGHER_WHEN_LARGER = tuple(name for name in SCALE_FEATURES if name != 'point_count') + ('slope',)
FORMAT_NAME = 'terrain_ssl.roughness_model'
FORMAT_VERSION = 2  # 2: log_features and the residual-scale model

# Residual variance forgets with this many samples' memory: recent errors describe today's terrain.
_RESIDUAL_MEMORY_SAMPLES = 500.0
# The residual-scale model takes over from the global residual variance over this many samples.
_RESIDUAL_MODEL_WARMUP_SAMPLES = 500.0
# E|e| = sigma sqrt(2/pi) for Gaussian e: the learned mean absolute residual -> a sigma.
_ABS_TO_SIGMA = float(np.sqrt(np.pi / 2.0))
# Learned residual sigma is kept within these bounds (log units): below, labels are never that
# repeatable; above, the global term and the novelty term say enough.
_RESIDUAL_SIGMA_BOUNDS = (0.05, 3.0)
# Largest log-space sigma reported (e^8 ~ 3000x the estimate): past that, "unknown" is all it says.
_MAX_LOG_SIGMA = 8.0
# Predictions stay within this many target standard deviations of the targets seen: a diverging
# SGD member (too high a learning rate) must not overflow exp() into inf roughness.
_TARGET_MARGIN_STD = 3.0
# log(x + floor) for the log features; 0.1 mm is below any lidar's height resolution.
_FEATURE_LOG_FLOOR = 1e-4


class OnlineRoughnessRegressor:
    """Incremental roughness regressor with uncertainty; scikit-learn style (partial_fit/predict).

    Parameters
    ----------
    feature_names : sequence of str
        Names of the feature columns, in order; stored with the model so a consumer can pick the
        matching fields from patch clouds.
    model : 'rff_sgd' (random Fourier features + linear SGD) or 'linear_sgd' (SGD on z directly).
    log_features : names of the features learned as log(max(x, 0) + 1e-4): lengths and counts
        that span decades, whose ratios (not differences) matter. None -> those of
        terrain_ssl.core.patches.SCALE_FEATURES present in feature_names.
    n_members : ensemble size (online bagging).
    learning_rate : SGD step size (constant, so the model keeps adapting to new terrain).
    n_components : random Fourier features (rff_sgd only).
    gamma : RBF kernel width on the standardised features; None -> 0.3 / n_features (a smooth
        map: on held-out terrain 0.3 to 0.1 / n_features beat 1 / n_features).
    alpha : L2 penalty of each member.
    log_target : learn log(roughness + roughness_floor) (roughness is positive and skewed).
    roughness_floor : (m/s^2)/(m/s), keeps the log finite for zero labels.
    novelty_scale : log-space sigma added per standard deviation outside the seen feature range.
    random_state : int seed for the feature map and the bagging weights.
    """

    def __init__(self, feature_names, model: str = 'rff_sgd', log_features=None,
                 n_members: int = 5, learning_rate: float = 0.02, n_components: int = 128,
                 gamma=None, alpha: float = 1e-5, log_target: bool = True,
                 roughness_floor: float = 1e-3, novelty_scale: float = 0.5, random_state: int = 0):
        self.feature_names = tuple(str(name) for name in feature_names)
        self.model = model
        if log_features is None:
            log_features = [name for name in self.feature_names if name in SCALE_FEATURES]
        self.log_features = tuple(str(name) for name in log_features)
        self.n_members = int(n_members)
        self.learning_rate = float(learning_rate)
        self.n_components = int(n_components)
        self.gamma = gamma
        self.alpha = float(alpha)
        self.log_target = bool(log_target)
        self.roughness_floor = float(roughness_floor)
        self.novelty_scale = float(novelty_scale)
        self.random_state = int(random_state)
        self._check_params()
        self._initialise()

    # -- scikit-learn conventions --------------------------------------------------------------

    def get_params(self, deep: bool = True) -> dict:
        return {'feature_names': list(self.feature_names), 'model': self.model,
                'log_features': list(self.log_features), 'n_members': self.n_members,
                'learning_rate': self.learning_rate,
                'n_components': self.n_components, 'gamma': self.gamma, 'alpha': self.alpha,
                'log_target': self.log_target, 'roughness_floor': self.roughness_floor,
                'novelty_scale': self.novelty_scale, 'random_state': self.random_state}

    def set_learning_rate(self, learning_rate: float) -> None:
        """Change the SGD step size live (applies to the next partial_fit)."""
        if not learning_rate > 0:
            raise ValueError(f'learning_rate must be > 0, got {learning_rate}')
        self.learning_rate = float(learning_rate)
        for member in self.members_ + [self.residual_model_]:
            member.learning_rate = self.learning_rate

    @property
    def n_features_in_(self) -> int:
        return len(self.feature_names)

    @property
    def is_fitted(self) -> bool:
        return self.n_samples_seen_ > 0

    # -- learning ------------------------------------------------------------------------------

    def partial_fit(self, X, y) -> 'OnlineRoughnessRegressor':
        """Learn one batch: X (n, n_features) features, y (n,) roughness >= 0, all finite."""
        X = self._model_inputs(self._check_features(X))
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if y.shape[0] != X.shape[0]:
            raise ValueError(f'X has {X.shape[0]} rows but y has {y.shape[0]} labels')
        if not np.isfinite(y).all() or (y < 0).any():
            bad = int((~np.isfinite(y) | (y < 0)).sum())
            raise ValueError(f'{bad} roughness labels are negative or not finite')
        n = X.shape[0]
        if n == 0:
            return self
        target = self._to_target(y)
        residual = None
        if self.is_fitted:  # predict-then-train: the residual is honest (sample not yet learned)
            residual = target - self._predict_target(X)[0]
            keep = (1.0 - 1.0 / _RESIDUAL_MEMORY_SAMPLES) ** n
            self.residual_var_ = keep * self.residual_var_ + (1 - keep) * float(
                np.mean(residual ** 2))
        self.features_.update(X)
        self.targets_.update(target)
        phi = self._feature_map(X)
        target_z = ((target - self.targets_.mean[0]) / self.targets_.std[0])
        target_z = target_z.astype(np.float32)
        for member in self.members_:
            weights = self._bagging_rng.poisson(1.0, size=n).astype(np.float32)
            if not weights.any() and not member.has_learned:
                # Poisson(1) gives a small first batch zero weight often (1/e per sample);
                # every member must have learned something before the ensemble predicts.
                weights[:] = 1.0
            if weights.any():
                member.partial_fit(phi, target_z, sample_weight=weights)
        if residual is not None:
            self.residual_model_.partial_fit(phi, np.abs(residual))
            self.residual_samples_ += n
        if self.n_samples_seen_ == 0:
            self.residual_var_ = float(np.var(target)) if n > 1 else 1.0
        self.n_samples_seen_ += n
        self._stacked = None
        return self

    # -- prediction ----------------------------------------------------------------------------

    def predict(self, X, return_std: bool = False):
        """Roughness ((m/s^2)/(m/s)) per row; with return_std also the uncertainty (same units).

        `roughness + uncertainty` is the one-sigma upper bound (log space when log_target).
        """
        if not self.is_fitted:
            raise NotFittedError('OnlineRoughnessRegressor has not learned any sample yet')
        X = self._model_inputs(self._check_features(X))
        mean, spread, phi = self._predict_target(X)
        if self.log_target:
            median = np.exp(mean)
            roughness = np.maximum(median - self.roughness_floor, 0.0)
        else:
            roughness = np.maximum(mean, 0.0)
        if not return_std:
            return roughness
        novelty = self.features_.novelty(X, above_only=self._novelty_above_only)
        sigma = np.sqrt(spread ** 2 + self._residual_variance(phi)
                        + (self.novelty_scale * novelty) ** 2)
        if self.log_target:
            # Cap at e^8 (~3000x) above the estimate: beyond that "unknown" is all it says, and
            # an unbounded novelty term would overflow to inf on wildly out-of-range features.
            uncertainty = median * np.expm1(np.minimum(sigma, _MAX_LOG_SIGMA))
        else:
            uncertainty = sigma
        return roughness, uncertainty

    def _residual_variance(self, phi) -> np.ndarray:
        """Aleatoric variance per row (target units): the residual-scale model, blended in from
        the global residual variance as it gains samples."""
        share = min(self.residual_samples_ / _RESIDUAL_MODEL_WARMUP_SAMPLES, 1.0)
        if share == 0.0:
            return np.full(phi.shape[0], self.residual_var_)
        model = self.residual_model_
        learned = _ABS_TO_SIGMA * (phi @ model.coef_.astype(np.float32, copy=False)
                                   + model.intercept_[0])
        learned = np.clip(learned, *_RESIDUAL_SIGMA_BOUNDS)
        return (1.0 - share) * self.residual_var_ + share * learned.astype(np.float64) ** 2

    def _predict_target(self, X):
        """Ensemble mean and spread in target space (log roughness when log_target), and the
        random features (for the residual model)."""
        phi = self._feature_map(X)
        coef, intercept = self._stacked_members()
        member_z = phi @ coef + intercept  # (n, K): all members in one matmul, float64
        n_members = member_z.shape[1]
        # Mean and sample std (ddof=1) over the members, sharing one sum (np.mean and np.std
        # would each add their Python layers for a row of K values).
        member_mean = np.add.reduce(member_z, axis=1) / n_members
        target_std = self.targets_.std[0]
        mean = self.targets_.mean[0] + target_std * member_mean
        margin = _TARGET_MARGIN_STD * target_std
        mean = np.clip(mean, self.targets_.min[0] - margin, self.targets_.max[0] + margin)
        if n_members > 1:
            deviation = member_z - member_mean[:, None]
            deviation *= deviation
            spread = target_std * np.sqrt(np.add.reduce(deviation, axis=1) / (n_members - 1))
        else:
            spread = np.zeros(X.shape[0])
        return mean, spread, phi

    def _stacked_members(self):
        if self._stacked is None:
            coef = np.stack([member.coef_ for member in self.members_], axis=1).astype(np.float32)
            # Intercepts stay float64: SGD keeps them in double, and a saved model must resume
            # bit-exactly.
            intercept = np.array([member.intercept_[0] for member in self.members_],
                                 dtype=np.float64)
            self._stacked = (coef, intercept)
        return self._stacked

    def _feature_map(self, X) -> np.ndarray:
        z = self.features_.transform(X).astype(np.float32)
        if self.feature_map_ is None:
            return z
        # RBFSampler.transform, written out: sqrt(2/D) cos(z W + b). Through scikit-learn its
        # input checks on every call cost more than the arithmetic.
        sampler = self.feature_map_
        projection = z @ sampler.random_weights_.astype(np.float32, copy=False)
        projection += sampler.random_offset_.astype(np.float32, copy=False)
        np.cos(projection, out=projection)
        projection *= np.float32(np.sqrt(2.0 / self.n_components))
        return projection

    # -- persistence ---------------------------------------------------------------------------

    def save(self, path: str) -> None:
        """Atomically write the model to `path` (.npz arrays + JSON metadata, no pickle)."""
        arrays, meta = self.get_state()
        save_model_file(path, arrays, meta)

    @classmethod
    def load(cls, path: str) -> 'OnlineRoughnessRegressor':
        """Read a model saved by `save`; raises ModelFileError if unusable (says why)."""
        arrays, meta = load_model_file(path)
        try:
            return cls.from_state(arrays, meta)
        except ModelFileError as error:
            raise ModelFileError(f'model file {path}: {error}') from None

    def get_state(self) -> tuple:
        """(arrays, meta): everything needed to predict and to keep learning exactly."""
        arrays = {}
        arrays.update(self.features_.state('features_'))
        arrays.update(self.targets_.state('targets_'))
        if self.feature_map_ is not None:
            arrays['rff_weights'] = self.feature_map_.random_weights_
            arrays['rff_offset'] = self.feature_map_.random_offset_
        if self.is_fitted:
            coef, intercept = self._stacked_members()
            arrays['member_coef'] = coef
            arrays['member_intercept'] = intercept
        if self.residual_samples_:
            arrays['residual_coef'] = self.residual_model_.coef_
            arrays['residual_intercept'] = self.residual_model_.intercept_
        meta = {
            'format': FORMAT_NAME,
            'format_version': FORMAT_VERSION,
            'params': self.get_params(),
            'n_samples_seen': int(self.n_samples_seen_),
            'residual_var': float(self.residual_var_),
            'residual_samples': int(self.residual_samples_),
            'residual_t': float(self.residual_model_.t_),
            'created_unix_s': float(self.created_unix_s_),
            'saved_unix_s': time.time(),
            'member_t': [float(member.t_) for member in self.members_],
            'bagging_rng_state': self._bagging_rng.bit_generator.state,
        }
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: dict, meta: dict) -> 'OnlineRoughnessRegressor':
        if meta.get('format') != FORMAT_NAME:
            raise ModelFileError(f"not a roughness model (format {meta.get('format')!r})")
        if meta.get('format_version') != FORMAT_VERSION:
            raise ModelFileError(f"format version {meta.get('format_version')!r} is not "
                                 f'supported (this code reads version {FORMAT_VERSION})')
        try:
            model = cls(**meta['params'])
            n_features = model.n_features_in_
            model.features_ = OnlineStandardizer.from_state(arrays, 'features_', n_features)
            model.targets_ = OnlineStandardizer.from_state(arrays, 'targets_', 1)
            if model.feature_map_ is not None:
                weights = np.asarray(arrays['rff_weights'], dtype=np.float32)
                offset = np.asarray(arrays['rff_offset'], dtype=np.float32)
                if weights.shape != (n_features, model.n_components) or \
                        offset.shape != (model.n_components,):
                    raise ModelFileError(f'feature map has shape {weights.shape}/{offset.shape}, '
                                         f'expected ({n_features}, {model.n_components})')
                model.feature_map_.random_weights_ = weights
                model.feature_map_.random_offset_ = offset
            model.n_samples_seen_ = int(meta['n_samples_seen'])
            model.residual_var_ = float(meta['residual_var'])
            model.created_unix_s_ = float(meta['created_unix_s'])
            model._bagging_rng.bit_generator.state = meta['bagging_rng_state']
            if model.is_fitted:
                model._restore_members(arrays, meta)
            model.residual_samples_ = int(meta['residual_samples'])
            if model.residual_samples_:
                model._restore_residual_model(arrays, meta)
        except ModelFileError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f'incompatible model contents ({type(error).__name__}: '
                                 f'{error})') from None
        return model

    def _restore_members(self, arrays: dict, meta: dict) -> None:
        coef = np.asarray(arrays['member_coef'], dtype=np.float32)
        intercept = np.asarray(arrays['member_intercept'], dtype=np.float64)
        width = self.n_components if self.feature_map_ is not None else self.n_features_in_
        if coef.shape != (width, self.n_members) or intercept.shape != (self.n_members,):
            raise ModelFileError(f'member weights have shape {coef.shape}/{intercept.shape}, '
                                 f'expected ({width}, {self.n_members})')
        member_t = meta['member_t']
        for index, member in enumerate(self.members_):
            member.coef_ = np.ascontiguousarray(coef[:, index])
            member.intercept_ = np.array([intercept[index]], dtype=np.float64)
            member.t_ = float(member_t[index])

    def _restore_residual_model(self, arrays: dict, meta: dict) -> None:
        width = self.n_components if self.feature_map_ is not None else self.n_features_in_
        # As learned: float32 weights (the random features are float32), a float64 intercept.
        coef = np.asarray(arrays['residual_coef'], dtype=np.float32)
        intercept = np.asarray(arrays['residual_intercept'], dtype=np.float64)
        if coef.shape != (width,) or intercept.shape != (1,):
            raise ModelFileError(f'residual model has shape {coef.shape}/{intercept.shape}, '
                                 f'expected ({width},)/(1,)')
        model = self.residual_model_
        model.coef_ = np.ascontiguousarray(coef)
        model.intercept_ = intercept.copy()
        model.t_ = float(meta['residual_t'])

    # -- internals -----------------------------------------------------------------------------

    def _check_params(self) -> None:
        if not self.feature_names:
            raise ValueError('feature_names must not be empty')
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError(f'feature_names has duplicates: {list(self.feature_names)}')
        if self.model not in MODEL_KINDS:
            raise ValueError(f'model must be one of {MODEL_KINDS}, got {self.model!r}')
        if self.n_members < 1:
            raise ValueError(f'n_members must be >= 1, got {self.n_members}')
        if not self.learning_rate > 0:
            raise ValueError(f'learning_rate must be > 0, got {self.learning_rate}')
        if self.n_components < 1:
            raise ValueError(f'n_components must be >= 1, got {self.n_components}')
        if not self.roughness_floor > 0:
            raise ValueError(f'roughness_floor must be > 0, got {self.roughness_floor}')
        if not self.novelty_scale >= 0:
            raise ValueError(f'novelty_scale must be >= 0, got {self.novelty_scale}')
        unknown = [name for name in self.log_features if name not in self.feature_names]
        if unknown:
            raise ValueError(f'log_features {unknown} are not in feature_names')

    def _initialise(self) -> None:
        n_features = self.n_features_in_
        self._log_columns = np.array([self.feature_names.index(name)
                                      for name in self.log_features], dtype=np.int64)
        self._novelty_above_only = np.array([name in ROUGHER_WHEN_LARGER
                                             for name in self.feature_names])
        self.features_ = OnlineStandardizer(n_features)
        self.targets_ = OnlineStandardizer(1)
        self.n_samples_seen_ = 0
        self.residual_var_ = 0.0
        self.residual_samples_ = 0
        self.created_unix_s_ = time.time()
        self._bagging_rng = np.random.default_rng(self.random_state)
        self._stacked = None
        if self.model == 'rff_sgd':
            gamma = self.gamma if self.gamma is not None else 0.3 / n_features
            self.feature_map_ = RBFSampler(gamma=gamma, n_components=self.n_components,
                                           random_state=self.random_state)
            # Drawn once, on the standardised space; float32 input keeps the weights float32.
            self.feature_map_.fit(np.zeros((1, n_features), dtype=np.float32))
        else:
            self.feature_map_ = None
        width = self.n_components if self.feature_map_ is not None else n_features
        self.members_ = [LinearSGD(width, self.learning_rate, self.alpha)
                         for _ in range(self.n_members)]
        self.residual_model_ = LinearSGD(width, self.learning_rate, self.alpha)

    def _check_features(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1 and self.n_features_in_ == 1:
            X = X.reshape(-1, 1)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f'expected features of shape (n, {self.n_features_in_}) '
                             f'({", ".join(self.feature_names)}), got {X.shape}')
        if not np.isfinite(X).all():
            raise ValueError(f'{int((~np.isfinite(X)).any(axis=1).sum())} feature rows contain '
                             'NaN or inf; drop them first')
        return X

    def _model_inputs(self, X: np.ndarray) -> np.ndarray:
        """Checked features -> what the model learns from (log of the scale features)."""
        if self._log_columns.size:
            X = X.copy()
            X[:, self._log_columns] = np.log(np.maximum(X[:, self._log_columns], 0.0)
                                             + _FEATURE_LOG_FLOOR)
        return X

    def _to_target(self, y: np.ndarray) -> np.ndarray:
        return np.log(y + self.roughness_floor) if self.log_target else y
