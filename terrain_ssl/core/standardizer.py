"""Running per-column statistics of a stream of feature rows: mean, variance and range."""

from __future__ import annotations

import numpy as np

from terrain_ssl.core.model_store import ModelFileError


class OnlineStandardizer:
    """Running per-column mean and variance (Welford, batches merged with Chan's formula) and
    range."""

    def __init__(self, n_features: int):
        self.count = 0
        self.mean = np.zeros(n_features)
        self.m2 = np.zeros(n_features)
        self.min = np.full(n_features, np.inf)
        self.max = np.full(n_features, -np.inf)

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        n = values.shape[0]
        if n == 0:
            return
        batch_mean = values.mean(axis=0)
        batch_m2 = ((values - batch_mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta ** 2 * (self.count * n / total)
        self.count = total
        self.min = np.minimum(self.min, values.min(axis=0))
        self.max = np.maximum(self.max, values.max(axis=0))

    @property
    def std(self) -> np.ndarray:
        """Population std; 1 for columns with (almost) no spread yet, so nothing divides by ~0."""
        if self.count < 2:
            return np.ones_like(self.mean)
        std = np.sqrt(self.m2 / self.count)
        return np.where(std > 1e-12, std, 1.0)

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean) / self.std

    def novelty(self, values: np.ndarray, above_only=None) -> np.ndarray:
        """Euclidean distance outside the seen [min, max] box, per row, in standard deviations.

        `above_only`: boolean per column; where true only values above the seen max count.
        """
        if self.count == 0:
            return np.full(values.shape[0], np.inf)
        below = self.min - values
        if above_only is not None:
            below = np.where(above_only, 0.0, below)
        excess = np.maximum(np.maximum(values - self.max, below), 0.0) / self.std
        return np.sqrt(np.einsum('ij,ij->i', excess, excess))

    def state(self, prefix: str) -> dict:
        return {prefix + 'count': np.array(self.count, dtype=np.int64), prefix + 'mean': self.mean,
                prefix + 'm2': self.m2, prefix + 'min': self.min, prefix + 'max': self.max}

    @classmethod
    def from_state(cls, arrays: dict, prefix: str, n_features: int) -> 'OnlineStandardizer':
        standardizer = cls(n_features)
        standardizer.count = int(arrays[prefix + 'count'])
        for name in ('mean', 'm2', 'min', 'max'):
            value = np.asarray(arrays[prefix + name], dtype=np.float64)
            if value.shape != (n_features,):
                raise ModelFileError(f'{prefix}{name} has shape {value.shape}, '
                                     f'expected ({n_features},)')
            setattr(standardizer, name, value.copy())
        return standardizer
