"""A linear model learned online by stochastic gradient descent, one ensemble member of the
learner: squared loss, an L2 penalty and a constant step size, one pass over each batch in
order. That is scikit-learn's SGDRegressor.partial_fit with these settings (test_learner_core
compares the two); owning the loop (compiled, `kernels.sgd_epoch`) spares the input checks it
runs on every call, which cost more than learning a batch, and keeps the learner off the
library's private methods.
"""

from __future__ import annotations

import numpy as np

from terrain_ssl.core import kernels


class LinearSGD:
    """y ~ X coef_ + intercept_, learned by partial_fit; coef_ float32 (the learner's random
    features are float32), intercept_ float64 (1,), as scikit-learn keeps them.

    Parameters
    ----------
    n_features : input columns.
    learning_rate : the constant SGD step (eta); may be changed between batches.
    alpha : L2 penalty: every sample shrinks the weights by a factor 1 - learning_rate alpha.
    """

    def __init__(self, n_features: int, learning_rate: float, alpha: float):
        self.learning_rate = float(learning_rate)
        self.alpha = float(alpha)
        self.coef_ = np.zeros(int(n_features), dtype=np.float32)
        self.intercept_ = np.zeros(1)
        self.t_ = 1.0  # 1 + the samples learned (scikit-learn's count)

    @property
    def has_learned(self) -> bool:
        return self.t_ > 1.0

    def partial_fit(self, X, y, sample_weight=None) -> 'LinearSGD':
        """One SGD pass over the rows of X (n, n_features) with targets y (n,) and per-sample
        weights (default 1). Raises ValueError if the weights overflow."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        y = np.ascontiguousarray(y, dtype=np.float32).reshape(-1)
        if X.ndim != 2 or X.shape != (y.shape[0], self.coef_.shape[0]):
            raise ValueError(f'X must have shape ({y.shape[0]}, {self.coef_.shape[0]}), '
                             f'got {X.shape}')
        if sample_weight is None:
            sample_weight = np.ones(y.shape[0], dtype=np.float32)
        sample_weight = np.ascontiguousarray(sample_weight, dtype=np.float32).reshape(-1)
        if sample_weight.shape != y.shape:
            raise ValueError(f'sample_weight must have shape {y.shape}, got {sample_weight.shape}')
        coef = self.coef_.copy()  # unchanged if the pass fails
        intercept = kernels.sgd_epoch(coef, float(self.intercept_[0]), X, y, sample_weight,
                                      self.learning_rate, self.alpha)
        self.coef_, self.intercept_ = coef, np.array([intercept])
        self.t_ += y.shape[0]
        return self

    def predict(self, X) -> np.ndarray:
        return np.asarray(X, dtype=np.float32) @ self.coef_ + self.intercept_[0]
