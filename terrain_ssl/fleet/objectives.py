"""What `terrain-ssl tune` minimises, from one replay's labeled samples (numpy only).

- consistency (label parameters, no ground truth): a cell crossed more than once (laps, the way
  back) should get the same label whatever the speed. Score: the spread of a cell's labels
  across its crossings (within-cell variance) relative to the spread between cells (variance
  of the cells' means). Dimensionless, so scaling every label up or down does not change it.
- prequential (learner parameters, labels fixed): predict-then-learn mean absolute error.
- truth (simulated bags): 1 - Spearman rank correlation of the prediction made before each
  crossing with the simulator's true roughness of the cell.
"""

from __future__ import annotations

import numpy as np

from terrain_ssl.core.metrics import finite_spearman

OBJECTIVES = ('consistency', 'prequential', 'truth')

# Labels of one cell further apart in time than this belong to different crossings (s).
CROSSING_GAP_S = 5.0
# Fewer cells crossed more than once than this: no consistency score (too few to compare).
MIN_REPEATED_CELLS = 5


class ObjectiveError(ValueError):
    """The replay gave nothing this objective can score (e.g. no cell crossed twice)."""


def consistency_score(x_m, y_m, roughness, t_s, cell_m: float = 0.5,
                      crossing_gap_s: float = CROSSING_GAP_S) -> float:
    """Within-cell variance across crossings / between-cell variance, over cells crossed more
    than once (lower is better; 0: every crossing of a cell got the same label)."""
    x_m, y_m, roughness, t_s = (np.asarray(a, float) for a in (x_m, y_m, roughness, t_s))
    ok = np.isfinite(x_m) & np.isfinite(y_m) & np.isfinite(roughness) & np.isfinite(t_s)
    x_m, y_m, roughness, t_s = x_m[ok], y_m[ok], roughness[ok], t_s[ok]
    if roughness.size == 0:
        raise ObjectiveError('consistency: no labels')
    cells = np.floor(np.column_stack([x_m, y_m]) / cell_m).astype(np.int64)
    _, cell = np.unique(cells, axis=0, return_inverse=True)
    cell = cell.ravel()
    order = np.lexsort((t_s, cell))
    cell, roughness, t_s = cell[order], roughness[order], t_s[order]
    # A new crossing starts at each new cell and after each long enough pause within a cell.
    starts = np.ones(cell.size, bool)
    starts[1:] = (cell[1:] != cell[:-1]) | (np.diff(t_s) > crossing_gap_s)
    crossing = np.cumsum(starts) - 1
    crossing_mean = np.bincount(crossing, roughness) / np.bincount(crossing)
    crossing_cell = cell[starts]
    crossings_per_cell = np.bincount(crossing_cell)
    repeated = crossings_per_cell[crossing_cell] >= 2
    n_repeated = int(np.count_nonzero(crossings_per_cell >= 2))
    if n_repeated < MIN_REPEATED_CELLS:
        raise ObjectiveError(f'consistency: {n_repeated} cell(s) crossed more than once '
                             f'(needs {MIN_REPEATED_CELLS}): the bag must cross ground twice '
                             '(laps, the way back)')
    means, owners = crossing_mean[repeated], crossing_cell[repeated]
    counts = np.bincount(owners)
    cell_mean = np.bincount(owners, means) / np.maximum(counts, 1)
    within = float(np.mean((means - cell_mean[owners]) ** 2))
    between = float(np.var(cell_mean[counts > 0]))
    if not between > 0.0:
        raise ObjectiveError('consistency: all repeated cells have the same mean label')
    return within / between


def score_record(record, objective: str) -> float:
    """The objective's score (lower is better) of a replay's record (ReplayRecord)."""
    samples = record.samples
    if not len(samples.get('roughness', ())):
        raise ObjectiveError(f'{objective}: the replay made no labels')
    if objective == 'consistency':
        return consistency_score(samples['x'], samples['y'], samples['roughness'],
                                 samples['t_s'])
    if objective == 'prequential':
        error = np.abs(np.asarray(samples['predicted'], float)
                       - np.asarray(samples['roughness'], float))
        error = error[np.isfinite(error)]
        if error.size == 0:
            raise ObjectiveError('prequential: no finite predictions')
        return float(np.mean(error))
    if objective == 'truth':
        if 'truth' not in samples:
            raise ObjectiveError('truth: no ground_truth.json beside the bag')
        rho = finite_spearman(samples['predicted'], samples['truth'])
        if not np.isfinite(rho):
            raise ObjectiveError('truth: too few finite predictions to rank')
        return 1.0 - rho
    raise ObjectiveError(f'unknown objective {objective!r}; one of {", ".join(OBJECTIVES)}')
