"""Honest quality figures for online learning, and the geometric baseline to beat.

Prequential ("predict, then train") evaluation: every label is compared with the prediction made
*before* that label was learned, so the running error is an out-of-sample figure without a
held-out set (Dawid 1984; Gama et al. 2013).
"""

from __future__ import annotations

from collections import deque

import numpy as np
from scipy.optimize import isotonic_regression
from scipy.stats import rankdata

__all__ = ['spearman', 'finite_spearman', 'PrequentialScore', 'BinnedIsotonicBaseline']


def spearman(a, b) -> float:
    """Spearman rank correlation (ties get average ranks); NaN with < 3 pairs or a constant
    side."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f'spearman needs equal lengths, got {a.shape[0]} and {b.shape[0]}')
    if a.shape[0] < 3:
        return float('nan')
    rank_a = rankdata(a)
    rank_b = rankdata(b)
    rank_a -= rank_a.mean()
    rank_b -= rank_b.mean()
    denominator = np.sqrt(np.dot(rank_a, rank_a) * np.dot(rank_b, rank_b))
    if denominator == 0:
        return float('nan')
    return float(np.dot(rank_a, rank_b) / denominator)


def finite_spearman(a, b) -> float:
    """`spearman` over the pairs where both values are finite."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    finite = np.isfinite(a) & np.isfinite(b)
    return spearman(a[finite], b[finite])


class PrequentialScore:
    """Running MAE over everything, plus MAE and Spearman over the last `window` pairs."""

    def __init__(self, window: int = 1000):
        if window < 3:
            raise ValueError(f'window must be >= 3, got {window}')
        self.window = int(window)
        self.count = 0
        self._abs_error_sum = 0.0
        self._predicted = deque(maxlen=self.window)
        self._measured = deque(maxlen=self.window)

    def update(self, predicted, measured) -> None:
        predicted = np.asarray(predicted, dtype=np.float64).reshape(-1)
        measured = np.asarray(measured, dtype=np.float64).reshape(-1)
        if predicted.shape != measured.shape:
            raise ValueError(f'{predicted.shape[0]} predictions for {measured.shape[0]} labels')
        self.count += predicted.shape[0]
        self._abs_error_sum += float(np.abs(predicted - measured).sum())
        self._predicted.extend(predicted.tolist())
        self._measured.extend(measured.tolist())

    @property
    def mae(self) -> float:
        """Mean absolute error over every pair seen (label units); NaN before the first."""
        return self._abs_error_sum / self.count if self.count else float('nan')

    @property
    def window_mae(self) -> float:
        if not self._predicted:
            return float('nan')
        return float(np.mean(np.abs(np.subtract(self._predicted, self._measured))))

    @property
    def window_spearman(self) -> float:
        return spearman(np.fromiter(self._predicted, float), np.fromiter(self._measured, float))


class BinnedIsotonicBaseline:
    """Geometric baseline: roughness from one geometric feature (height spread, m), monotone.

    Learns online: labels are summed into log-spaced bins of the feature (log roughness, so a
    bin's value is a geometric mean, like the learner's median estimate). Prediction fits an
    increasing isotonic curve through the non-empty bins (weighted by count) and interpolates
    in log(feature). This is the "hand-tuned threshold on height spread" idea with its mapping
    fitted by the same labels, so beating it shows the learner uses more than one number.
    """

    def __init__(self, low: float = 1e-4, high: float = 2.0, n_bins: int = 60,
                 roughness_floor: float = 1e-3):
        if not 0 < low < high:
            raise ValueError(f'need 0 < low < high, got {low}, {high}')
        self.edges = np.geomspace(low, high, n_bins + 1)
        self.roughness_floor = float(roughness_floor)
        self.counts = np.zeros(n_bins + 2)  # + under- and overflow bins
        self.sums = np.zeros(n_bins + 2)
        self._curve = None

    @property
    def is_fitted(self) -> bool:
        return bool(self.counts.any())

    def _bin(self, feature: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.edges, feature, side='right')

    def partial_fit(self, feature, y) -> 'BinnedIsotonicBaseline':
        feature = np.asarray(feature, dtype=np.float64).reshape(-1)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        keep = np.isfinite(feature) & np.isfinite(y) & (y >= 0)
        bins = self._bin(feature[keep])
        size = self.counts.shape[0]
        self.counts += np.bincount(bins, minlength=size)
        self.sums += np.bincount(bins, weights=np.log(y[keep] + self.roughness_floor),
                                 minlength=size)
        self._curve = None
        return self

    def predict(self, feature) -> np.ndarray:
        feature = np.asarray(feature, dtype=np.float64).reshape(-1)
        if not self.is_fitted:
            return np.full(feature.shape, np.nan)
        if self._curve is None:
            log_edges = np.log(self.edges)
            centres = np.concatenate([[log_edges[0]], (log_edges[:-1] + log_edges[1:]) / 2,
                                      [log_edges[-1]]])
            used = self.counts > 0
            self._curve = isotonic_curve(centres[used], self.sums[used] / self.counts[used],
                                         self.counts[used])
        knots_x, knots_y = self._curve
        log_feature = np.log(np.clip(feature, self.edges[0], self.edges[-1]))
        fitted = np.interp(np.clip(log_feature, knots_x[0], knots_x[-1]), knots_x, knots_y)
        return np.maximum(np.exp(fitted) - self.roughness_floor, 0.0)


def isotonic_curve(x, y, weight) -> tuple:
    """Knots (x, y) of the increasing isotonic fit of y on strictly increasing x, weighted;
    predict with np.interp(np.clip(x_new, x[0], x[-1]), *knots).

    The same numbers as sklearn's IsotonicRegression(increasing=True, out_of_bounds='clip')
    fitted and predicted (test_learner_core checks it to the bit), without the estimator's
    input checks, which would dominate a refit after every training batch.
    """
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    # IsotonicRegression averages y over equal x (weighted), which for distinct x still
    # rounds through y * w / w.
    y = np.asarray(y, dtype=np.float64) * weight / weight
    fitted = np.asarray(isotonic_regression(y, weights=weight, increasing=True).x,
                        dtype=np.float64)
    # Interior knots equal to both neighbours add nothing to the interpolation.
    keep = np.ones(fitted.shape[0], dtype=bool)
    keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
    return x[keep], fitted[keep]
