"""Which ground cells did the vehicle drive over, and what did they look like beforehand?

`CellMap` keeps the cells seen ahead (a sorted int64 key index over slots of parallel numpy arrays,
so merging a scan is a searchsorted and not a Python loop). Repeated sightings merge into one
feature vector, weighted by point count (nearer sightings have more points and count more).
Once the footprint has covered a cell its features are frozen: labels must pair the shock with
what the cell looked like *before* the crossing. When the footprint leaves a covered cell the
crossing is complete and the cell leaves the map as a `Crossings` row, ready for a shock measure.
The map is bounded: cells not seen for `max_age_s` age out, and beyond `max_cells` the stalest go.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from terrain_ssl.core import kernels
from terrain_ssl.core.patches import FEATURE_INDEX, FEATURE_NAMES, PatchSet

NS_PER_S = 1_000_000_000
_NOT_YET = -1


def _rows(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """values[index] for integer row indices: np.take gathers rows with less overhead than
    fancy indexing, and this runs several times per scan and crossing."""
    return np.take(values, index, axis=0)


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
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return Crossings(self.keys[index], _rows(self.centres, index),
                         _rows(self.features, index), self.first_seen_ns[index],
                         self.enter_ns[index], self.exit_ns[index])

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

    Storage (why it looks like this: a replay calls `update_footprint` at 50 Hz and `observe`
    at 10 Hz on a map of ~20,000 cells, so nothing may copy the whole map per call):
      * each cell lives in a fixed slot of preallocated row arrays (`_key`, `_centres`, ...);
        removing a cell frees its slot instead of compacting every array;
      * `_index_keys` / `_index_slots` list the live cells sorted by key, so merging a scan is
        one searchsorted (and the public views and crossings come out in key order, as before);
        removed cells leave it in one batch when it is next read (`_compact_index`);
      * `_candidate` flags every cell whose centre is within `_near_radius` m of the position
        of the last refresh, plus every cell being crossed. The footprint test only looks at
        those; the flags are refreshed (one pass over the map) once the vehicle has moved far
        enough that a cell outside the radius could be under the footprint.
    """

    _GROWTH = 2

    def __init__(self, max_cells: int = 20000, max_age_s: float = 20.0,
                 footprint_length: float = 2.0, footprint_width: float = 1.4,
                 footprint_offset_x: float = 1.0):
        self.max_cells = int(max_cells)
        self.max_age_ns = int(max_age_s * NS_PER_S)
        self.footprint_length = footprint_length
        self.footprint_width = footprint_width
        self.footprint_offset_x = footprint_offset_x
        # Farthest a covered cell centre can be from base_link (m); candidates are flagged out
        # to `_near_radius`, so the vehicle may move `_refresh_distance` before a refresh.
        self._footprint_reach = float(np.hypot(abs(footprint_offset_x) + 0.5 * footprint_length,
                                               0.5 * footprint_width))
        self._refresh_distance = 2.0  # m
        self._near_radius = self._footprint_reach + self._refresh_distance + 0.01  # + rounding
        self.evicted = 0
        self.aged_out = 0
        self.clear()

    def clear(self) -> None:
        self._allocate(0)
        self._index_keys = np.zeros(0, dtype=np.int64)   # live cells, ascending key
        self._index_slots = np.zeros(0, dtype=np.int64)  # their slots
        self._removed_keys: list = []  # key arrays of removed cells still in the index
        self._removed_count = 0
        self._near_origin = None  # (x, y) m of the last candidate refresh
        self._candidate_slots = None  # cached np.flatnonzero(self._candidate)

    def _allocate(self, capacity: int) -> None:
        """Empty row arrays with `capacity` free slots."""
        self._key = np.zeros(capacity, dtype=np.int64)
        self._centres = np.zeros((capacity, 3))
        self._features = np.zeros((capacity, len(FEATURE_NAMES)))
        self._weight = np.zeros(capacity)
        self._first_seen = np.zeros(capacity, dtype=np.int64)
        self._last_seen = np.zeros(capacity, dtype=np.int64)
        self._enter = np.full(capacity, _NOT_YET, dtype=np.int64)
        self._exit = np.full(capacity, _NOT_YET, dtype=np.int64)
        self._alive = np.zeros(capacity, dtype=bool)
        self._candidate = np.zeros(capacity, dtype=bool)
        self._free = np.arange(capacity - 1, -1, -1, dtype=np.int64)  # a stack: pop from the end

    _SLOT_ARRAYS = ('_key', '_centres', '_features', '_weight', '_first_seen', '_last_seen',
                    '_enter', '_exit', '_alive', '_candidate')

    def _take_slots(self, count: int) -> np.ndarray:
        if self._free.shape[0] < count:  # grow geometrically: amortised O(1) per cell
            old = self._key.shape[0]
            capacity = max(self._GROWTH * old, old + count, 1024)
            saved = {name: getattr(self, name) for name in self._SLOT_ARRAYS}
            free = self._free
            self._allocate(capacity)
            for name, values in saved.items():
                getattr(self, name)[:old] = values
            self._free = np.concatenate([np.arange(capacity - 1, old - 1, -1, dtype=np.int64),
                                         free])
        slots = self._free[-count:][::-1].copy() if count else np.zeros(0, dtype=np.int64)
        self._free = self._free[:self._free.shape[0] - count]
        return slots

    def _remove(self, slots: np.ndarray) -> None:
        """Free the slots of these live cells."""
        self._alive[slots] = False
        self._candidate[slots] = False
        self._enter[slots] = _NOT_YET
        self._exit[slots] = _NOT_YET
        if self._candidate_slots is not None:  # drop them from the cached list (still sorted)
            self._candidate_slots = self._candidate_slots[
                self._candidate[self._candidate_slots]]
        self._free = np.concatenate([self._free, slots])
        # Their entries leave the key index when it is next read (_compact_index): the footprint
        # removes a few cells per odometry message, and rewriting the ~20,000-entry index each
        # time cost more than the footprint test itself.
        self._removed_keys.append(self._key[slots])
        self._removed_count += slots.shape[0]

    def _compact_index(self) -> None:
        """Drop the removed cells from the key index (before anything reads it)."""
        if not self._removed_count:
            return
        removed = np.concatenate(self._removed_keys)
        self._removed_keys, self._removed_count = [], 0
        # Their places by binary search (keys are unique): cheaper than gathering the alive
        # flag of every indexed cell.
        keep = np.ones(self._index_keys.shape[0], dtype=bool)
        keep[np.searchsorted(self._index_keys, removed)] = False
        self._index_keys = self._index_keys[keep]
        self._index_slots = self._index_slots[keep]

    def __len__(self) -> int:
        return self._index_keys.shape[0] - self._removed_count

    # Public views, one row per cell in ascending key order (copies; for inspection and tests).
    @property
    def keys(self) -> np.ndarray:
        self._compact_index()
        return self._index_keys.copy()

    @property
    def centres(self) -> np.ndarray:
        self._compact_index()
        return self._centres[self._index_slots]

    @property
    def features(self) -> np.ndarray:
        self._compact_index()
        return self._features[self._index_slots]

    @property
    def weight(self) -> np.ndarray:
        self._compact_index()
        return self._weight[self._index_slots]

    @property
    def first_seen_ns(self) -> np.ndarray:
        self._compact_index()
        return self._first_seen[self._index_slots]

    @property
    def last_seen_ns(self) -> np.ndarray:
        self._compact_index()
        return self._last_seen[self._index_slots]

    @property
    def enter_ns(self) -> np.ndarray:
        self._compact_index()
        return self._enter[self._index_slots]

    @property
    def exit_ns(self) -> np.ndarray:
        self._compact_index()
        return self._exit[self._index_slots]

    def observe(self, patches: PatchSet) -> None:
        """Merge one scan's cells (keys sorted) into the map; age out and bound it."""
        if len(patches):
            self._compact_index()
            t_ns = patches.t_ns
            weight_new = np.maximum(patches.features[:, FEATURE_INDEX['point_count']], 1.0)
            position = np.searchsorted(self._index_keys, patches.keys)
            clipped = np.minimum(position, max(self._index_keys.shape[0] - 1, 0))
            known = (self._index_keys[clipped] == patches.keys) \
                if self._index_keys.shape[0] else np.zeros(len(patches), dtype=bool)
            # Known cells not yet driven over: weighted merge. Frozen once entered.
            rows = self._index_slots[clipped[known]]
            merge = self._enter[rows] == _NOT_YET
            rows = rows[merge]
            source = np.flatnonzero(known)[merge]
            if rows.shape[0]:
                kernels.merge_sightings(
                    self._features, self._centres, self._weight, self._last_seen, rows,
                    np.ascontiguousarray(patches.features, dtype=np.float64),
                    np.ascontiguousarray(patches.centres, dtype=np.float64),
                    np.ascontiguousarray(weight_new, dtype=np.float64), source, int(t_ns))
                self._flag_if_near(rows)  # a merge moves the centre (slightly)
            new = np.flatnonzero(~known)
            if new.shape[0]:
                at = position[new]  # insertion points into the old, sorted key array
                slots = self._take_slots(int(new.shape[0]))
                self._key[slots] = patches.keys[new]
                self._centres[slots] = _rows(patches.centres, new)
                self._features[slots] = _rows(patches.features, new)
                self._weight[slots] = weight_new[new]
                self._first_seen[slots] = t_ns
                self._last_seen[slots] = t_ns
                self._alive[slots] = True
                # np.insert twice, sharing the placement (`at` ascends: the keys are sorted).
                placed = at + np.arange(at.shape[0])
                old = np.ones(self._index_keys.shape[0] + at.shape[0], dtype=bool)
                old[placed] = False
                index_keys = np.empty(old.shape[0], dtype=np.int64)
                index_keys[placed] = patches.keys[new]
                index_keys[old] = self._index_keys
                index_slots = np.empty(old.shape[0], dtype=np.int64)
                index_slots[placed] = slots
                index_slots[old] = self._index_slots
                self._index_keys, self._index_slots = index_keys, index_slots
                self._flag_if_near(slots)
            self.age_out(t_ns)

    def age_out(self, now_ns: int) -> None:
        """Drop cells not seen for max_age_s (unless being crossed), then enforce max_cells."""
        before_ns = now_ns - self.max_age_ns
        stale = np.empty(self._alive.shape[0], dtype=np.int64)
        stale = stale[:kernels.stale_slots(self._alive, self._last_seen, self._enter,
                                           int(before_ns), stale)]
        if stale.shape[0]:
            self.aged_out += int(stale.shape[0])
            self._remove(stale)
        self._compact_index()
        excess = self._index_keys.shape[0] - self.max_cells
        if excess > 0:
            # Evict the stalest, ties by key (as a stable sort of the key-ordered rows would):
            # deterministic.
            slots = self._index_slots
            oldest = np.lexsort((self._index_keys, self._last_seen[slots]))[:excess]
            self.evicted += excess
            self._remove(slots[oldest])

    def covered(self, position, yaw: float) -> np.ndarray:
        """Mask of cells (in key order, as the public views) whose centre lies inside the
        footprint at this base_link pose."""
        self._compact_index()
        return self._covered_slots(self._index_slots, position, yaw)

    def _covered_slots(self, slots: np.ndarray, position, yaw: float) -> np.ndarray:
        centres = _rows(self._centres, slots)
        dx = centres[:, 0] - position[0]
        dy = centres[:, 1] - position[1]
        cos_yaw, sin_yaw = math.cos(yaw), math.sin(yaw)
        forward = cos_yaw * dx + sin_yaw * dy - self.footprint_offset_x
        left = -sin_yaw * dx + cos_yaw * dy
        return (np.abs(forward) <= 0.5 * self.footprint_length) & \
            (np.abs(left) <= 0.5 * self.footprint_width)

    def _flag_if_near(self, slots: np.ndarray) -> None:
        """Flag these (new or moved) cells as candidates if near the last refresh position."""
        if self._near_origin is None or not slots.shape[0]:
            return
        dx = self._centres[slots, 0] - self._near_origin[0]
        dy = self._centres[slots, 1] - self._near_origin[1]
        near = slots[dx * dx + dy * dy <= self._near_radius ** 2]
        if near.shape[0]:
            self._candidate[near] = True
            self._candidate_slots = None

    def _refresh_candidates(self, position) -> None:
        """Flag every live cell near `position`, and every cell being crossed (one map pass)."""
        self._near_origin = (float(position[0]), float(position[1]))
        dx = self._centres[:, 0] - self._near_origin[0]
        dy = self._centres[:, 1] - self._near_origin[1]
        self._candidate = self._alive & ((dx * dx + dy * dy <= self._near_radius ** 2)
                                         | (self._enter != _NOT_YET))
        self._candidate_slots = None

    def update_footprint(self, t_ns: int, position, yaw: float) -> Crossings:
        """Advance crossings to this pose; returns (and removes) cells the footprint has left."""
        if not len(self):
            return Crossings.empty()
        if self._near_origin is None or (
                (position[0] - self._near_origin[0]) ** 2
                + (position[1] - self._near_origin[1]) ** 2 > self._refresh_distance ** 2):
            self._refresh_candidates(position)
        if self._candidate_slots is None:
            self._candidate_slots = np.flatnonzero(self._candidate)
        slots = self._candidate_slots
        # Every cell under the footprint is a candidate, and so is every cell being crossed
        # (it was under the footprint when it was entered), so testing the candidates is exact.
        left = np.empty(slots.shape[0], dtype=np.int64)
        count = kernels.footprint_update(
            self._centres, self._enter, self._exit, slots, float(position[0]),
            float(position[1]), math.cos(yaw), math.sin(yaw), float(self.footprint_offset_x),
            0.5 * self.footprint_length, 0.5 * self.footprint_width, int(t_ns), left)
        left = left[:count]
        if not left.shape[0]:
            return Crossings.empty()
        left = left[np.argsort(self._key[left])]  # crossings in key order, as the map holds them
        done = Crossings(self._key[left], _rows(self._centres, left), _rows(self._features, left),
                         self._first_seen[left], self._enter[left], self._exit[left])
        self._remove(left)
        return done
