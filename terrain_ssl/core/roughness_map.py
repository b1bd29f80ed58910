"""The predicted roughness map the speed advisor looks up: cells keyed and sorted for binary
search, merged over time so ground the lidar no longer sees is remembered for a while."""

from __future__ import annotations

import numpy as np

from terrain_ssl.core.patches import cell_keys

# cell_keys packs grid indices within +-2^30 cells into one int64; farther points get no key.
_INDEX_LIMIT = 1 << 30


class RoughnessMap:
    """Predicted roughness per map cell (odom frame), looked up by cell with a binary search.

    Cells are keyed by their integer grid index; the grid's offset is taken from the points
    themselves (median of x mod cell), so centres at (i + 0.5) * cell and at i * cell both work.
    Points with a non-finite coordinate, roughness or uncertainty are dropped and counted in
    `rejected`; negative roughness and uncertainty read as 0. When two points fall in the same
    cell the rougher one is kept (conservative). Each cell remembers when it was predicted
    (`stamp_ns`), so maps can be merged over time (`merged_with`) and old cells forgotten.
    """

    def __init__(self, xy_m, roughness, uncertainty, cell_size_m: float, stamp_ns: int = 0):
        if not cell_size_m > 0.0:
            raise ValueError(f'cell_size_m must be > 0, got {cell_size_m}')
        xy = np.asarray(xy_m, dtype=np.float64).reshape(-1, 2)
        roughness = np.asarray(roughness, dtype=np.float64).reshape(-1)
        uncertainty = np.asarray(uncertainty, dtype=np.float64).reshape(-1)
        if not xy.shape[0] == roughness.shape[0] == uncertainty.shape[0]:
            raise ValueError(f'xy ({xy.shape[0]}), roughness ({roughness.shape[0]}) and '
                             f'uncertainty ({uncertainty.shape[0]}) differ in length')
        self.rejected = 0
        if not (np.isfinite(xy).all() and np.isfinite(roughness).all()
                and np.isfinite(uncertainty).all()):  # (row-wise checks only when needed)
            valid = (np.isfinite(xy).all(axis=1) & np.isfinite(roughness)
                     & np.isfinite(uncertainty))
            self.rejected = int(valid.size - np.count_nonzero(valid))
            xy, roughness, uncertainty = xy[valid], roughness[valid], uncertainty[valid]
        self.cell_size_m = float(cell_size_m)
        if xy.shape[0]:
            self.origin_xy_m = np.median(np.mod(xy, cell_size_m), axis=0)
        else:
            self.origin_xy_m = np.zeros(2)
        # Lowest and highest grid offset (m) among the maps whose cells this map holds; while
        # they differ by well under a cell, every cell has the same integer key on any of those
        # grids, so a newer map can be merged by key without re-keying (see `absorb_newer`).
        self._origin_low_m = self._origin_high_m = self.origin_xy_m
        index = self._cell_index(xy)  # once for the keys and the centres
        keys = self._keys_of_index(index)
        in_range = keys >= 0
        out_of_range = int(in_range.size - np.count_nonzero(in_range))
        if out_of_range:
            self.rejected += out_of_range
            keys, index = keys[in_range], index[in_range]
            roughness, uncertainty = roughness[in_range], uncertainty[in_range]
        self._set_cells(keys, self._centres_of_index(index), np.maximum(roughness, 0.0),
                        np.maximum(uncertainty, 0.0),
                        np.full(keys.shape[0], int(stamp_ns), dtype=np.int64))

    def _set_cells(self, keys, centres, roughness, uncertainty, stamps,
                   prefer=None) -> np.ndarray:
        """Store one entry per key: the highest `prefer` (default roughness) among duplicates.
        Returns the indices of the entries kept."""
        if keys.size < 2 or (keys[1:] > keys[:-1]).all():
            # Already one entry per key, in key order: the learner publishes its maps in cell
            # order, so they need no sorting.
            self._keys_sorted, self.centres_xy_m = keys, centres
            self.roughness, self.uncertainty, self.stamp_ns = roughness, uncertainty, stamps
            return np.arange(keys.size)
        order = np.lexsort((roughness if prefer is None else prefer, keys))
        keys = keys[order]
        last = np.ones(keys.size, dtype=bool)
        last[:-1] = keys[1:] != keys[:-1]
        keep = order[last]
        self._keys_sorted = keys[last]
        self.centres_xy_m = np.take(centres, keep, axis=0)  # (np.take: rows, no fancy indexing)
        self.roughness = roughness[keep]
        self.uncertainty = uncertainty[keep]
        self.stamp_ns = stamps[keep]
        return keep

    @classmethod
    def empty(cls, cell_size_m: float) -> 'RoughnessMap':
        return cls(np.zeros((0, 2)), np.zeros(0), np.zeros(0), cell_size_m)

    def __len__(self) -> int:
        return int(self._keys_sorted.size)

    def merged_with(self, older: 'RoughnessMap', oldest_ns: int, max_cells: int) -> 'RoughnessMap':
        """This map plus the cells of `older` it does not cover (this one wins where both have
        a cell), without cells predicted before `oldest_ns`, and at most `max_cells` (newest kept).
        """
        merged = RoughnessMap.empty(self.cell_size_m)
        merged.origin_xy_m = self.origin_xy_m
        merged._origin_low_m, merged._origin_high_m = self._origin_low_m, self._origin_high_m
        merged.rejected = self.rejected
        with_older = older is not None and len(older) and older.cell_size_m == self.cell_size_m
        if with_older:
            old_keys = self._keys(older.centres_xy_m)  # re-keyed on this map's grid
            keys = np.concatenate([self._keys_sorted, old_keys])
            centres = np.concatenate([self.centres_xy_m, older.centres_xy_m])
            roughness = np.concatenate([self.roughness, older.roughness])
            uncertainty = np.concatenate([self.uncertainty, older.uncertainty])
            stamps = np.concatenate([self.stamp_ns, older.stamp_ns])
            # Where both maps have a cell, this (newer) map's entry wins.
            rank = np.concatenate([np.ones(len(self)), np.zeros(old_keys.size)])
            keep = (keys >= 0) & (stamps >= oldest_ns)
        else:
            keys, centres, roughness = self._keys_sorted, self.centres_xy_m, self.roughness
            uncertainty, stamps = self.uncertainty, self.stamp_ns
            rank = np.ones(len(self))
            keep = stamps >= oldest_ns
        if np.count_nonzero(keep) > max_cells:
            threshold = np.sort(stamps[keep])[-max_cells]
            keep &= stamps >= threshold
        kept = merged._set_cells(keys[keep], centres[keep], roughness[keep], uncertainty[keep],
                                 stamps[keep], prefer=rank[keep])
        if with_older and (rank[keep][kept] == 0).any():  # some of older's cells stay
            merged._origin_low_m = np.minimum(self._origin_low_m, older._origin_low_m)
            merged._origin_high_m = np.maximum(self._origin_high_m, older._origin_high_m)
        return merged

    def absorb_newer(self, newer: 'RoughnessMap', oldest_ns: int, max_cells: int) -> bool:
        """Become `newer.merged_with(self, oldest_ns, max_cells)` in place, cheaply; True if done.

        The advisor merges every new map (hundreds of cells) into its memory (tens of thousands
        of cells); re-keying and re-sorting the whole memory each time is the slow way. Here
        the new cells are matched by key with one binary search and inserted into the
        sorted arrays, which gives the same map when the grids agree and nothing is trimmed by
        `max_cells`. Otherwise (returns False, self unchanged) the caller uses `merged_with`.
        """
        if newer is self or newer.cell_size_m != self.cell_size_m or not len(self):
            return False
        low = np.minimum(self._origin_low_m, newer._origin_low_m)
        high = np.maximum(self._origin_high_m, newer._origin_high_m)
        # Grid offsets within a quarter cell: a cell centre keys the same on every grid (rint).
        if ((high - low) >= 0.25 * self.cell_size_m).any():
            return False
        new_keys = newer._keys_sorted
        if new_keys.size and int(newer.stamp_ns.min()) < oldest_ns:
            return False  # new cells that are already too old: rare, merged_with handles it
        old_keys = self._keys_sorted
        expired = self.stamp_ns < oldest_ns
        if new_keys.size + old_keys.size - int(np.count_nonzero(expired)) > max_cells:
            return False  # the memory bound trims by stamp: merged_with's rule
        # Old cells that a new cell replaces (the newer map wins), or that expired.
        position = np.searchsorted(old_keys, new_keys)
        found = old_keys[np.minimum(position, old_keys.size - 1)] == new_keys
        drop = expired
        drop[position[found]] = True
        stay = np.flatnonzero(~drop)
        # Slots of the new cells in the merged, key-sorted arrays (keys are now disjoint): the
        # old cells before it that stay, plus the new cells before it. And for every slot its
        # row in old + new values concatenated.
        total = stay.size + new_keys.size
        dropped_before = np.searchsorted(np.flatnonzero(drop), position)
        new_slot = position - dropped_before + np.arange(new_keys.size)
        old_slot = np.ones(total, dtype=bool)
        old_slot[new_slot] = False
        source = np.empty(total, dtype=np.int64)
        source[new_slot] = np.arange(old_keys.size, old_keys.size + new_keys.size)
        source[old_slot] = stay

        def merge(old_values, new_values):
            # np.take, not fancy indexing: much cheaper on (n, 2) rows.
            return np.take(np.concatenate([old_values, new_values]), source, axis=0)

        self._keys_sorted = merge(old_keys, new_keys)
        self.centres_xy_m = merge(self.centres_xy_m, newer.centres_xy_m)
        self.roughness = merge(self.roughness, newer.roughness)
        self.uncertainty = merge(self.uncertainty, newer.uncertainty)
        self.stamp_ns = merge(self.stamp_ns, newer.stamp_ns)
        self.origin_xy_m = newer.origin_xy_m
        self.rejected = newer.rejected
        if stay.size:
            self._origin_low_m, self._origin_high_m = low, high
        else:
            self._origin_low_m, self._origin_high_m = newer._origin_low_m, newer._origin_high_m
        return True

    def _keys(self, xy: np.ndarray) -> np.ndarray:
        """int64 key per point; -1 for points too far from the origin to index."""
        return self._keys_of_index(self._cell_index(xy))

    def _cell_index(self, xy: np.ndarray) -> np.ndarray:
        """Grid index per point (float64 holding integers), from which keys and centres follow."""
        return np.rint((xy - self.origin_xy_m) / self.cell_size_m)

    @staticmethod
    def _keys_of_index(index: np.ndarray) -> np.ndarray:
        """int64 key per grid index row (patches.cell_keys); -1 where an index is too large to
        key."""
        within = np.abs(index) < _INDEX_LIMIT
        if within.all():  # the usual case; a row-wise all() costs more than the rest
            index = index.astype(np.int64)
            return cell_keys(index[:, 0], index[:, 1])
        inside = within.all(axis=1)
        # (zeroed first: casting huge floats to int64 is undefined)
        index = np.where(inside[:, None], index, 0).astype(np.int64)
        return np.where(inside, cell_keys(index[:, 0], index[:, 1]), -1)

    def _centres_of_index(self, index: np.ndarray) -> np.ndarray:
        return self.origin_xy_m + index * self.cell_size_m

    def cell_centres(self, xy_m) -> np.ndarray:
        """Centre (m) of the grid cell each point falls in, whether the map knows it or not."""
        xy = np.asarray(xy_m, dtype=np.float64).reshape(-1, 2)
        return self._centres_of_index(self._cell_index(xy))

    def lookup(self, xy_m) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(roughness, uncertainty, known) per query point; unknown points read 0."""
        xy = np.asarray(xy_m, dtype=np.float64).reshape(-1, 2)
        return self._lookup_index(self._cell_index(xy))

    def lookup_with_centres(self, xy_m) -> tuple:
        """`lookup` plus `cell_centres` of the same points (the grid index is computed once)."""
        xy = np.asarray(xy_m, dtype=np.float64).reshape(-1, 2)
        index = self._cell_index(xy)
        return (*self._lookup_index(index), self._centres_of_index(index))

    def _lookup_index(self, index: np.ndarray) -> tuple:
        """`lookup` of points given by their grid index."""
        if self._keys_sorted.size == 0:
            zeros = np.zeros(index.shape[0])
            return zeros, zeros.copy(), np.zeros(index.shape[0], dtype=bool)
        keys = self._keys_of_index(index)
        position = np.searchsorted(self._keys_sorted, keys)
        position = np.minimum(position, self._keys_sorted.size - 1)
        known = (self._keys_sorted[position] == keys) & (keys >= 0)
        return (np.where(known, self.roughness[position], 0.0),
                np.where(known, self.uncertainty[position], 0.0), known)
