"""Which ground cells did the vehicle drive over, and what did they look like beforehand?

`CellMap` keeps the cells seen ahead (sorted int64 keys, one row per cell in parallel numpy arrays,
so merging a scan is a searchsorted and not a Python loop). Repeated sightings merge into one
feature vector, weighted by point count (nearer sightings have more points and count more).
Once the footprint has covered a cell its features are frozen: labels must pair the shock with
what the cell looked like *before* the crossing. When the footprint leaves a covered cell the
crossing is complete and the cell leaves the map as a `Crossings` row, ready for a shock measure.
The map is bounded: cells not seen for `max_age_s` age out, and beyond `max_cells` the stalest go.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from terrain_ssl.core.patches import FEATURE_INDEX, FEATURE_NAMES, PatchSet

NS_PER_S = 1_000_000_000
_NOT_YET = -1


@dataclass
class Crossings:
    """Cells the footprint has finished crossing; enter/exit are the first/last covered stamps."""

    keys: np.ndarray        # (K,) int64
    centres: np.ndarray     # (K, 3) odom, m
    features: np.ndarray    # (K, F) as merged before the crossing
    first_seen_ns: np.ndarray
    enter_ns: np.ndarray
    exit_ns: np.ndarray

    def __len__(self) -> int:
        return self.keys.shape[0]

    def take(self, index) -> 'Crossings':
        return Crossings(self.keys[index], self.centres[index], self.features[index],
                         self.first_seen_ns[index], self.enter_ns[index], self.exit_ns[index])

    @staticmethod
    def concatenate(parts) -> 'Crossings':
        parts = list(parts)
        if not parts:
            return Crossings.empty()
        return Crossings(*(np.concatenate([getattr(part, name) for part in parts])
                           for name in ('keys', 'centres', 'features', 'first_seen_ns',
                                        'enter_ns', 'exit_ns')))

    @staticmethod
    def empty() -> 'Crossings':
        return Crossings(np.zeros(0, np.int64), np.zeros((0, 3)),
                         np.zeros((0, len(FEATURE_NAMES))), np.zeros(0, np.int64),
                         np.zeros(0, np.int64), np.zeros(0, np.int64))


class CellMap:
    """Bounded map of ground cells seen ahead, with footprint crossing detection.

    Args:
        max_cells: memory bound; the cells seen longest ago are evicted beyond it.
        max_age_s: cells not seen for this long (s) are dropped (never crossed: off the path).
        footprint_length, footprint_width: the rectangle (m) under the vehicle that makes the
            IMU shake, centred `footprint_offset_x` m ahead of base_link.
    """

    def __init__(self, max_cells: int = 20000, max_age_s: float = 20.0,
                 footprint_length: float = 2.0, footprint_width: float = 1.4,
                 footprint_offset_x: float = 1.0):
        self.max_cells = int(max_cells)
        self.max_age_ns = int(max_age_s * NS_PER_S)
        self.footprint_length = footprint_length
        self.footprint_width = footprint_width
        self.footprint_offset_x = footprint_offset_x
        self.evicted = 0
        self.aged_out = 0
        self.clear()

    def clear(self) -> None:
        self.keys = np.zeros(0, dtype=np.int64)
        self.centres = np.zeros((0, 3))
        self.features = np.zeros((0, len(FEATURE_NAMES)))
        self.weight = np.zeros(0)
        self.first_seen_ns = np.zeros(0, dtype=np.int64)
        self.last_seen_ns = np.zeros(0, dtype=np.int64)
        self.enter_ns = np.zeros(0, dtype=np.int64)
        self.exit_ns = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return self.keys.shape[0]

    _ROW_ARRAYS = ('keys', 'centres', 'features', 'weight', 'first_seen_ns', 'last_seen_ns',
                   'enter_ns', 'exit_ns')

    def _keep_rows(self, keep: np.ndarray) -> None:
        for name in self._ROW_ARRAYS:
            setattr(self, name, getattr(self, name)[keep])

    def observe(self, patches: PatchSet) -> None:
        """Merge one scan's cells (keys sorted) into the map; age out and bound it."""
        if len(patches):
            t_ns = patches.t_ns
            weight_new = np.maximum(patches.features[:, FEATURE_INDEX['point_count']], 1.0)
            position = np.searchsorted(self.keys, patches.keys)
            clipped = np.minimum(position, max(self.keys.shape[0] - 1, 0))
            known = (self.keys.shape[0] > 0) & (self.keys[clipped] == patches.keys) \
                if self.keys.shape[0] else np.zeros(len(patches), dtype=bool)
            # Known cells not yet driven over: weighted merge. Frozen once entered.
            rows = clipped[known]
            merge = self.enter_ns[rows] == _NOT_YET
            rows = rows[merge]
            source = np.flatnonzero(known)[merge]
            if rows.shape[0]:
                w_old = self.weight[rows][:, None]
                w_new = weight_new[source][:, None]
                total = w_old + w_new
                self.features[rows] = (w_old * self.features[rows]
                                       + w_new * patches.features[source]) / total
                self.centres[rows] = (w_old * self.centres[rows]
                                      + w_new * patches.centres[source]) / total
                self.weight[rows] = total[:, 0]
                self.last_seen_ns[rows] = t_ns
            new = ~known
            if new.any():
                at = position[new]  # insertion points into the old, sorted key array
                count = int(new.sum())
                stamps = np.full(count, t_ns, dtype=np.int64)
                inserts = {
                    'keys': patches.keys[new], 'centres': patches.centres[new],
                    'features': patches.features[new], 'weight': weight_new[new],
                    'first_seen_ns': stamps, 'last_seen_ns': stamps,
                    'enter_ns': np.full(count, _NOT_YET, dtype=np.int64),
                    'exit_ns': np.full(count, _NOT_YET, dtype=np.int64)}
                for name, values in inserts.items():
                    setattr(self, name, np.insert(getattr(self, name), at, values, axis=0))
            self.age_out(t_ns)

    def age_out(self, now_ns: int) -> None:
        """Drop cells not seen for max_age_s (unless being crossed), then enforce max_cells."""
        stale = (self.last_seen_ns < now_ns - self.max_age_ns) & (self.enter_ns == _NOT_YET)
        if stale.any():
            self.aged_out += int(stale.sum())
            self._keep_rows(~stale)
        excess = self.keys.shape[0] - self.max_cells
        if excess > 0:
            # Evict the stalest; stable sort keeps the decision deterministic.
            oldest = np.argsort(self.last_seen_ns, kind='stable')[:excess]
            keep = np.ones(self.keys.shape[0], dtype=bool)
            keep[oldest] = False
            self.evicted += excess
            self._keep_rows(keep)

    def covered(self, position, yaw: float) -> np.ndarray:
        """Mask of cells whose centre lies inside the footprint at this base_link pose."""
        dx = self.centres[:, 0] - position[0]
        dy = self.centres[:, 1] - position[1]
        cos_yaw, sin_yaw = np.cos(yaw), np.sin(yaw)
        forward = cos_yaw * dx + sin_yaw * dy - self.footprint_offset_x
        left = -sin_yaw * dx + cos_yaw * dy
        return (np.abs(forward) <= 0.5 * self.footprint_length) & \
            (np.abs(left) <= 0.5 * self.footprint_width)

    def update_footprint(self, t_ns: int, position, yaw: float) -> Crossings:
        """Advance crossings to this pose; returns (and removes) cells the footprint has left."""
        if self.keys.shape[0] == 0:
            return Crossings.empty()
        inside = self.covered(position, yaw)
        entering = inside & (self.enter_ns == _NOT_YET)
        self.enter_ns[entering] = t_ns
        self.exit_ns[inside] = t_ns
        left = ~inside & (self.enter_ns != _NOT_YET)
        if not left.any():
            return Crossings.empty()
        done = Crossings(self.keys[left], self.centres[left], self.features[left],
                         self.first_seen_ns[left], self.enter_ns[left], self.exit_ns[left])
        self._keep_rows(~left)
        return done
