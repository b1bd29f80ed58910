"""What the wheels already measured, per ground cell: fused into the lidar prediction of that cell.

A robot that drives the same ground again (laps, a patrol, the way back) has labels for it: the
shock per speed it felt there. The lidar model predicts from geometry, and is wrong on a cell in
its own way; the labels of that very cell are direct evidence. `CellLabelMemory` keeps, per cell
of the odom grid, the count, mean and variance of log roughness of its labels (bounded: the
stalest cells go first), and `fuse` mixes them with the model's prediction:

    the prediction (log mean mu, one-sigma sigma) counts as one label of the cell; the fused
    roughness and uncertainty are the mean and the one-sigma spread (log space) of that mixture.

With no label the prediction passes unchanged; after a few crossings the cell's own mean and
spread dominate, which is what an oracle that knew the terrain would use. Keys are odom-frame
cells: the memory describes one odometry frame and is not saved with the (frame-free) model.
"""

from __future__ import annotations

import numpy as np

from terrain_ssl.core.patches import cell_keys

__all__ = ['CellLabelMemory', 'fuse']


class CellLabelMemory:
    """Per-cell statistics of log(roughness + floor) of the labels seen.

    Args:
        cell_size_m: grid cell edge (m); cells are floor(x / cell_size_m), floor(y / ...).
        max_cells: memory bound; beyond it the cells labeled longest ago are dropped (10% at a
            time, so dropping is rare).
        floor: added before the log, as the learner's roughness_floor ((m/s^2)/(m/s)).
    """

    def __init__(self, cell_size_m: float = 0.5, max_cells: int = 100_000, floor: float = 1e-3):
        if not cell_size_m > 0:
            raise ValueError(f'cell_size_m must be > 0, got {cell_size_m}')
        if max_cells < 1:
            raise ValueError(f'max_cells must be >= 1, got {max_cells}')
        self.cell_size_m = float(cell_size_m)
        self.max_cells = int(max_cells)
        self.floor = float(floor)
        self.clear()

    def clear(self) -> None:
        self._slot: dict = {}  # cell key -> row of the arrays below
        capacity = min(self.max_cells, 4096)
        self._count = np.zeros(capacity)
        self._sum = np.zeros(capacity)       # of log values
        self._sum_sq = np.zeros(capacity)    # of squared log values
        self._last = np.zeros(capacity, dtype=np.int64)  # update counter, for eviction
        self._updates = 0
        # The cells sorted by key, for lookups by binary search (one vectorised search per
        # lookahead instead of a dict lookup per point). Cells created since the index was
        # last brought up to date (`_unindexed`, in row order) are merged in at the next lookup;
        # after an eviction renumbers the rows, the index is built again from `_slot` (None).
        self._index_keys = np.zeros(0, dtype=np.int64)
        self._index_rows = np.zeros(0, dtype=np.int64)
        self._unindexed: list = []

    def __len__(self) -> int:
        return len(self._slot)

    def _keys(self, x, y) -> np.ndarray:
        """int64 cell key per point."""
        ix = np.floor(np.asarray(x, dtype=np.float64) / self.cell_size_m).astype(np.int64)
        iy = np.floor(np.asarray(y, dtype=np.float64) / self.cell_size_m).astype(np.int64)
        return cell_keys(ix, iy)

    def add(self, x, y, roughness) -> None:
        """Remember labels: cell centres (m, odom) and roughness >= 0, all finite (checked by
        the caller, which counts what it rejects)."""
        log_value = np.log(np.asarray(roughness, dtype=np.float64) + self.floor)
        self._updates += 1
        for key, value in zip(self._keys(x, y).tolist(), log_value.tolist()):
            row = self._slot.get(key)
            if row is None:
                row = self._new_row(key)
            self._count[row] += 1.0
            self._sum[row] += value
            self._sum_sq[row] += value * value
            self._last[row] = self._updates

    def _new_row(self, key) -> int:
        if len(self._slot) >= self.max_cells:
            self._evict()
        row = len(self._slot)
        if row >= self._count.shape[0]:
            grown = min(2 * self._count.shape[0], self.max_cells)
            for name in ('_count', '_sum', '_sum_sq', '_last'):
                old = getattr(self, name)
                new = np.zeros(grown, dtype=old.dtype)
                new[:old.shape[0]] = old
                setattr(self, name, new)
        self._slot[key] = row
        if self._index_keys is not None:
            self._unindexed.append(key)
        self._count[row] = self._sum[row] = self._sum_sq[row] = 0.0
        return row

    def _evict(self) -> None:
        """Drop the 10% of cells labeled longest ago; compact the rows."""
        keys = np.fromiter(self._slot.keys(), dtype=np.int64, count=len(self._slot))
        rows = np.fromiter(self._slot.values(), dtype=np.int64, count=len(self._slot))
        order = np.argsort(self._last[rows], kind='stable')
        keep = np.sort(order[max(len(rows) // 10, 1):])
        kept_rows = rows[keep]
        for name in ('_count', '_sum', '_sum_sq', '_last'):
            values = getattr(self, name)
            values[:kept_rows.shape[0]] = values[kept_rows]
        self._slot = dict(zip(keys[keep].tolist(), range(kept_rows.shape[0])))
        self._index_keys = self._index_rows = None  # rows renumbered: rebuilt when needed
        self._unindexed = []

    def _sorted_index(self) -> tuple:
        """(keys ascending, their rows) of every cell."""
        if self._index_keys is None:
            keys = np.fromiter(self._slot.keys(), dtype=np.int64, count=len(self._slot))
            rows = np.fromiter(self._slot.values(), dtype=np.int64, count=len(self._slot))
            order = np.argsort(keys)
            self._index_keys, self._index_rows = keys[order], rows[order]
        elif self._unindexed:
            # New cells got consecutive rows after the indexed ones; insert them in key order.
            first_row = self._index_keys.shape[0]
            keys = np.array(self._unindexed, dtype=np.int64)
            order = np.argsort(keys)
            keys = keys[order]
            at = np.searchsorted(self._index_keys, keys)
            self._index_keys = _insert_sorted(self._index_keys, at, keys)
            self._index_rows = _insert_sorted(self._index_rows, at, first_row + order)
        self._unindexed = []
        return self._index_keys, self._index_rows

    def _rows(self, x, y) -> np.ndarray:
        """Row of each point's cell in the statistics arrays; -1 where the cell has no label."""
        keys = self._keys(x, y)
        index_keys, index_rows = self._sorted_index()
        if not index_keys.shape[0]:
            return np.full(keys.shape[0], -1, dtype=np.int64)
        position = np.minimum(np.searchsorted(index_keys, keys), index_keys.shape[0] - 1)
        return np.where(index_keys[position] == keys, index_rows[position], -1)

    def _statistics(self, rows: np.ndarray) -> tuple:
        """(count, log mean, log variance) of the cells at `rows` (rows >= 0)."""
        count = self._count[rows]
        mean = self._sum[rows] / count
        variance = np.maximum(self._sum_sq[rows] / count - mean ** 2, 0.0)
        return count, mean, variance

    def lookup(self, x, y) -> tuple:
        """(count, log mean, log variance) per query point; count 0 (and 0, 0) where no label."""
        rows = self._rows(x, y)
        known = rows >= 0
        count = np.zeros(rows.shape[0])
        mean = np.zeros(rows.shape[0])
        variance = np.zeros(rows.shape[0])
        if known.any():
            count[known], mean[known], variance[known] = self._statistics(rows[known])
        return count, mean, variance

    def fused(self, x, y, roughness, uncertainty) -> tuple:
        """`fuse` the prediction for cells at (x, y) (m, odom) with their labels."""
        rows = self._rows(x, y)
        roughness = np.array(roughness, dtype=np.float64)
        uncertainty = np.array(uncertainty, dtype=np.float64)
        # Only the labeled cells change (few of a lookahead map's ~800): they alone are fused,
        # the rest is copied rather than run through four transcendental functions for nothing.
        labeled = np.flatnonzero(rows >= 0)
        if labeled.size:
            roughness[labeled], uncertainty[labeled] = fuse(
                roughness[labeled], uncertainty[labeled], *self._statistics(rows[labeled]),
                self.floor)
        return roughness, uncertainty


def _insert_sorted(values: np.ndarray, at: np.ndarray, new_values: np.ndarray) -> np.ndarray:
    """np.insert(values, at, new_values) for ascending `at`, by joining slices: np.insert's
    generic handling costs more than the copy itself for the few values inserted per update."""
    parts, start = [], 0
    for index, position in enumerate(at.tolist()):
        parts += [values[start:position], new_values[index:index + 1]]
        start = position
    parts.append(values[start:])
    return np.concatenate(parts)


def fuse(roughness, uncertainty, count, log_mean, log_variance, floor: float = 1e-3):
    """Prediction (roughness, one-sigma uncertainty as the learner reports them) + the cell's
    labels (count, log mean, log variance) -> fused (roughness, uncertainty), same units.

    In log space the prediction is N(mu, sigma^2) with mu = log(r + floor) and
    sigma = log1p(u / (r + floor)); it counts as one label. The result is the mean and standard
    deviation of the mixture (1 part prediction, `count` parts the labels' empirical spread),
    mapped back the same way. Cells with count 0 pass unchanged.
    """
    roughness = np.asarray(roughness, dtype=np.float64)
    uncertainty = np.asarray(uncertainty, dtype=np.float64)
    count = np.asarray(count, dtype=np.float64)
    mu = np.log(roughness + floor)
    sigma = np.log1p(uncertainty / (roughness + floor))
    total = 1.0 + count
    mixed_mean = (mu + count * log_mean) / total
    mixed_variance = (sigma ** 2 + (mu - mixed_mean) ** 2
                      + count * (log_variance + (log_mean - mixed_mean) ** 2)) / total
    centre = np.exp(mixed_mean)
    fused_roughness = np.maximum(centre - floor, 0.0)
    fused_uncertainty = centre * np.expm1(np.sqrt(mixed_variance))
    labeled = count > 0
    return (np.where(labeled, fused_roughness, roughness),
            np.where(labeled, fused_uncertainty, uncertainty))
