"""What a replay keeps of the nodes' outputs for its report: prequential samples, speed limits
and the route's roughness map, in memory that stays small on long bags."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from terrain_ssl.core.patches import cell_keys
from terrain_ssl.replay.report import ReplayRecord
from terrain_ssl.ros.conversions import pointcloud2_to_array
from terrain_ssl.sim.ground_truth import JSON_NAME, GroundTruth

ROUTE_MAP_FIELDS = ('x', 'y', 'roughness', 'uncertainty')


class RouteMapRecorder:
    """The newest prediction per 0.5 m cell over the whole drive, from the roughness maps.

    Every `keep_every`-th map message is kept (the maps overlap heavily from scan to scan), so
    memory stays small on long bags."""

    def __init__(self, cell_m: float = 0.5, keep_every: int = 5):
        self.cell_m = cell_m
        self.keep_every = keep_every
        self._seen = 0
        self._chunks: list = []

    def add(self, msg) -> None:
        self._seen += 1
        if (self._seen - 1) % self.keep_every:
            return
        cloud = pointcloud2_to_array(msg)
        if cloud.shape[0]:
            self._chunks.append(np.column_stack([cloud[name].astype(float)
                                                 for name in ROUTE_MAP_FIELDS]))
            if len(self._chunks) >= 200:
                self._chunks = [self._newest_per_cell(np.concatenate(self._chunks))]

    def _newest_per_cell(self, rows: np.ndarray) -> np.ndarray:
        cells = np.floor(rows[:, :2] / self.cell_m).astype(np.int64)
        keys = cell_keys(cells[:, 0], cells[:, 1])
        # np.unique keeps the first occurrence: search the reversed rows to keep the newest.
        _, first = np.unique(keys[::-1], return_index=True)
        return rows[::-1][first]

    def result(self) -> dict:
        if not self._chunks:
            return {}
        rows = self._newest_per_cell(np.concatenate(self._chunks))
        return {name: rows[:, i] for i, name in enumerate(ROUTE_MAP_FIELDS)}


class SampleRecorder:
    """Prequential events from the learner -> aligned float arrays, one entry per labeled patch.

    Events (a dict of small arrays each, tens per second) are packed into one float64 block
    every `pack_every` events: a long soak would otherwise hold tens of thousands of tiny arrays.
    """

    KEYS = ('stamp_ns', 'x', 'y', 'roughness', 'roughness_class', 'predicted', 'uncertainty',
            'baseline', 'speed')

    def __init__(self, pack_every: int = 500):
        self.pack_every = pack_every
        self._events: list = []
        self._blocks: list = []

    def add(self, event: dict) -> None:
        self._events.append(event)
        if len(self._events) >= self.pack_every:
            self._pack()

    def _pack(self) -> None:
        if self._events:
            self._blocks.append(np.column_stack([
                np.concatenate([np.atleast_1d(np.asarray(e[key], float)) for e in self._events])
                for key in self.KEYS]))
            self._events = []

    def arrays(self, t0_ns: int) -> dict:
        self._pack()
        if not self._blocks:
            return {}
        rows = np.concatenate(self._blocks)
        columns = {key: rows[:, i] for i, key in enumerate(self.KEYS)}
        columns['t_s'] = (columns.pop('stamp_ns') - t0_ns) / 1e9
        return columns


def add_ground_truth(record: ReplayRecord, bag_path: Path) -> None:
    """Add the true roughness of each labeled cell when the bag has the simulator's truth."""
    directory = bag_path if bag_path.is_dir() else bag_path.parent
    if not (directory / JSON_NAME).exists() or not record.samples:
        return
    truth = GroundTruth.load(directory)
    xy = np.column_stack([record.samples['x'], record.samples['y']])
    record.samples['truth'] = np.asarray(truth.roughness_at(xy), float)
