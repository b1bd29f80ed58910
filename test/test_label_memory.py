"""Label memory: per-cell statistics of measured roughness, fused into the lidar prediction."""

import numpy as np
import pytest

from terrain_ssl.core.label_memory import CellLabelMemory, fuse


def test_cells_collect_their_own_labels_only():
    memory = CellLabelMemory(cell_size_m=0.5)
    memory.add([0.25, 0.25, 0.30, 5.25], [0.25, 0.25, 0.40, -3.75], [0.1, 0.4, 0.2, 1.0])
    count, log_mean, log_variance = memory.lookup([0.1, 5.4, 9.0], [0.1, -3.6, 9.0])
    assert count.tolist() == [3.0, 1.0, 0.0]
    values = np.log(np.array([0.1, 0.4, 0.2]) + 1e-3)
    assert log_mean[0] == pytest.approx(values.mean())
    assert log_variance[0] == pytest.approx(values.var())
    assert log_mean[1] == pytest.approx(np.log(1.001)) and log_variance[1] == 0.0
    assert len(memory) == 2
    memory.clear()
    assert len(memory) == 0 and memory.lookup([0.1], [0.1])[0][0] == 0.0


def test_memory_is_bounded_and_forgets_the_stalest_cells():
    memory = CellLabelMemory(cell_size_m=1.0, max_cells=100)
    for i in range(300):  # one new cell per update, 3x the bound
        memory.add([i + 0.5], [0.5], [0.2])
    assert len(memory) <= 100
    newest = memory.lookup([299.5], [0.5])[0][0]
    oldest = memory.lookup([0.5], [0.5])[0][0]
    assert newest == 1.0 and oldest == 0.0
    # Statistics survive the compaction of rows.
    memory.add([299.5], [0.5], [0.4])
    count, log_mean, _ = memory.lookup([299.5], [0.5])
    assert count[0] == 2.0
    assert log_mean[0] == pytest.approx(np.log(np.array([0.2, 0.4]) + 1e-3).mean())


def test_fusion_moves_from_the_prediction_to_the_labels_as_they_accumulate():
    predicted, uncertainty = np.full(4, 0.2), np.full(4, 0.2)  # sigma = log1p(0.2/0.201) ~ 0.69
    truth = 0.8
    count = np.array([0.0, 1.0, 5.0, 5000.0])
    log_mean = np.full(4, np.log(truth + 1e-3))
    log_variance = np.full(4, 0.1 ** 2)
    roughness, spread = fuse(predicted, uncertainty, count, log_mean, log_variance)
    assert roughness[0] == predicted[0] and spread[0] == uncertainty[0]  # no label: unchanged
    assert np.all(np.diff(roughness) > 0)          # more labels: closer to what they measured
    assert roughness[-1] == pytest.approx(truth, rel=0.05)
    # ... and the spread becomes the labels' own (0.1 in log space), not the model's (~0.69).
    assert spread[-1] / roughness[-1] == pytest.approx(np.expm1(0.1), rel=0.2)
    with pytest.raises(ValueError):
        CellLabelMemory(cell_size_m=0.0)


def test_sorted_index_lookups_match_a_plain_dictionary_through_growth_and_eviction():
    """Lookups by binary search over the cells (merged in as they appear, rebuilt after an
    eviction) must give what per-cell dictionary lookups give; fused must equal fuse on all."""
    rng = np.random.default_rng(2)
    memory = CellLabelMemory(cell_size_m=0.5, max_cells=150)
    query_x, query_y = rng.uniform(-10, 10, 400), rng.uniform(-10, 10, 400)
    assert memory.lookup(query_x, query_y)[0].tolist() == [0.0] * 400  # empty memory
    for step in range(120):
        n = rng.integers(1, 6)
        x, y = rng.uniform(-10, 10, n), rng.uniform(-10, 10, n)
        memory.add(x, y, rng.random(n))
        if step % 7 == 0:
            count, log_mean, log_variance = memory.lookup(query_x, query_y)
            keys = memory._keys(query_x, query_y).tolist()
            rows = np.array([memory._slot.get(key, -1) for key in keys])
            assert np.array_equal(count > 0, rows >= 0)
            known = rows >= 0
            assert np.array_equal(count[known], memory._count[rows[known]])
            assert np.array_equal(log_mean[known],
                                  memory._sum[rows[known]] / memory._count[rows[known]])
            roughness, uncertainty = rng.random(400), rng.random(400)
            fused = memory.fused(query_x, query_y, roughness, uncertainty)
            expected = fuse(roughness, uncertainty, count, log_mean, log_variance)
            assert np.array_equal(fused[0], expected[0])
            assert np.array_equal(fused[1], expected[1])
    assert len(memory) <= 150  # it did evict
