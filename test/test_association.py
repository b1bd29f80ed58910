"""Cell map: merging sightings, freezing at the crossing, emitting crossings, bounds."""

import numpy as np
import pytest

from terrain_ssl.core.association import CellMap
from terrain_ssl.core.patches import FEATURE_INDEX, FEATURE_NAMES, PatchSet, cell_keys

S = 1_000_000_000


def patch_set(t_ns, ix, iy, value, count=10.0, size=0.5):
    ix, iy = np.asarray(ix), np.asarray(iy)
    keys = cell_keys(ix, iy)
    order = np.argsort(keys)
    features = np.full((ix.shape[0], len(FEATURE_NAMES)), float(value))
    features[:, FEATURE_INDEX['point_count']] = count
    centres = np.column_stack([(ix + 0.5) * size, (iy + 0.5) * size, np.zeros(ix.shape[0])])
    return PatchSet(t_ns, keys[order], centres[order], features[order])


def test_repeated_sightings_merge_weighted_by_point_count():
    cells = CellMap()
    cells.observe(patch_set(0, [20], [0], 1.0, count=10))
    cells.observe(patch_set(S, [20], [0], 4.0, count=30))
    assert len(cells) == 1
    assert cells.features[0, FEATURE_INDEX['height_std']] == pytest.approx(3.25)
    assert cells.first_seen_ns[0] == 0 and cells.last_seen_ns[0] == S


def test_crossing_is_emitted_with_features_from_before_it():
    cells = CellMap(footprint_length=2.0, footprint_width=1.4, footprint_offset_x=1.0)
    row = np.arange(0, 40)  # cells along x from 0 to 20 m on the centre line
    cells.observe(patch_set(0, row[10:], np.zeros(30, dtype=int), 1.0))
    crossings = []
    for step in range(200):  # drive along +x at 1 m/s... 0.1 m per 0.1 s
        t_ns = int(0.1 * step * S)
        if step == 60:  # a sighting of everything after some cells were entered
            cells.observe(patch_set(t_ns, row[10:], np.zeros(30, dtype=int), 9.0, count=1000))
        done = cells.update_footprint(t_ns, (0.1 * step, 0.0, 0.0), 0.0)
        if len(done):
            crossings.append(done)
    keys = np.concatenate([c.keys for c in crossings])
    assert len(set(keys.tolist())) == keys.shape[0]  # each cell once
    first = [c for c in crossings if c.keys[0] == cell_keys(np.array([10]), np.array([0]))[0]][0]
    # Cell 10 spans x 5.0..5.5 (centre 5.25): covered from base x 3.25 to 5.25.
    assert first.enter_ns[0] == pytest.approx(3.3 * S, abs=0.11 * S)
    assert first.exit_ns[0] == pytest.approx(5.2 * S, abs=0.11 * S)
    features = np.concatenate([c.features for c in crossings])[:, FEATURE_INDEX['height_std']]
    enter = np.concatenate([c.enter_ns for c in crossings])
    entered_before_update = enter < 6 * S
    assert features[entered_before_update] == pytest.approx(1.0)  # frozen at the crossing
    assert (features[~entered_before_update] > 8.0).all()  # later cells took the new sighting


def test_cells_off_the_path_are_not_crossed_and_age_out():
    cells = CellMap(max_age_s=5.0)
    cells.observe(patch_set(0, [10, 10], [0, 20], 1.0))  # one on the path, one 10 m to the left
    for step in range(80):
        cells.update_footprint(int(0.1 * step * S), (0.1 * step, 0.0, 0.0), 0.0)
    assert len(cells) == 1  # the left one stays, never covered
    cells.observe(patch_set(6 * S, [30], [0], 1.0))
    assert len(cells) == 1 and cells.aged_out == 1


def test_map_is_bounded_by_max_cells_evicting_the_stalest():
    cells = CellMap(max_cells=50)
    for scan in range(5):
        cells.observe(patch_set(scan * S, np.arange(20) + 20 * scan, np.zeros(20, dtype=int), 1.0))
    assert len(cells) == 50
    assert cells.evicted == 50
    assert cells.last_seen_ns.min() >= 2 * S


def test_heading_is_respected():
    cells = CellMap(footprint_length=2.0, footprint_width=1.0, footprint_offset_x=1.0)
    cells.observe(patch_set(0, [0, 2], [2, 0], 1.0))  # centres (0.25, 1.25) and (1.25, 0.25)
    inside = cells.covered((0.25, 0.0, 0.0), np.pi / 2)  # facing +y
    centres = cells.centres[inside]
    assert centres.shape[0] == 1 and centres[0, 1] == pytest.approx(1.25)


def test_crossed_cells_leave_the_index_and_can_come_back():
    # Crossed cells are removed from the key index lazily (at its next read): the map's size,
    # its views and a later sighting of the same ground must not see them.
    cells = CellMap(footprint_length=2.0, footprint_width=1.4, footprint_offset_x=1.0)
    row = np.arange(0, 40)
    cells.observe(patch_set(0, row, np.zeros(40, dtype=int), 1.0))
    crossed = []
    for step in range(60):  # 6 m along +x
        done = cells.update_footprint(int(0.1 * step * S), (0.1 * step, 0.0, 0.0), 0.0)
        crossed.extend(done.keys.tolist())
        assert len(cells) == 40 - len(crossed) == cells.keys.shape[0]
    assert len(crossed) >= 5
    assert not np.isin(crossed, cells.keys).any()
    # The same ground seen again: new cells (first seen now), merged once, in key order.
    cells.observe(patch_set(7 * S, row, np.zeros(40, dtype=int), 2.0))
    assert len(cells) == 40 and np.all(np.diff(cells.keys) > 0)
    again = np.isin(cells.keys, crossed)
    assert (cells.first_seen_ns[again] == 7 * S).all()
    assert (cells.first_seen_ns[~again] == 0).all()
