"""Roughness at patch centres -> an occupancy-grid array (0..100, -1 unknown), as Nav2 expects.

The grid is square, `size_m` wide, centred on the patches' median position snapped to whole
cells (the median so a stray far patch cannot drag it; snapped so it does not jitter). A cell
holding several patches takes the roughest one: the grid is for keeping away from rough ground,
so it errs on the careful side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ['RoughnessGrid', 'roughness_grid']

UNKNOWN = -1


@dataclass(frozen=True)
class RoughnessGrid:
    """Row-major cells (index = row * width + column, row along +y, column along +x)."""

    cells: np.ndarray  # (height, width) int8, 0..100 or -1
    origin_x_m: float  # x of the lower-left corner of cell (0, 0), grid frame
    origin_y_m: float
    resolution_m: float

    @property
    def width(self) -> int:
        return int(self.cells.shape[1])

    @property
    def height(self) -> int:
        return int(self.cells.shape[0])


def roughness_grid(xy, roughness, resolution_m: float, size_m: float,
                   full_scale: float) -> RoughnessGrid:
    """Scale roughness ((m/s^2)/(m/s)) so `full_scale` -> 100 and rasterise; -1 where no patch.

    Non-finite roughness values and patches outside the grid are left out.
    """
    if not resolution_m > 0 or not size_m >= resolution_m or not full_scale > 0:
        raise ValueError(f'need resolution_m > 0, size_m >= resolution_m, full_scale > 0; got '
                         f'{resolution_m}, {size_m}, {full_scale}')
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    roughness = np.asarray(roughness, dtype=np.float64).reshape(-1)
    if xy.shape[0] != roughness.shape[0]:
        raise ValueError(f'{xy.shape[0]} positions for {roughness.shape[0]} roughness values')
    n_cells = int(round(size_m / resolution_m))
    keep = np.isfinite(roughness) & np.isfinite(xy).all(axis=1)
    xy, roughness = xy[keep], roughness[keep]
    if xy.shape[0]:
        centre = np.round(np.median(xy, axis=0) / resolution_m) * resolution_m
    else:
        centre = np.zeros(2)
    origin = centre - n_cells * resolution_m / 2.0
    cells = np.full(n_cells * n_cells, UNKNOWN, dtype=np.int16)
    if xy.shape[0]:
        # Clip before the integer cast: a far-off patch (or a corrupt 1e38) must not overflow.
        column_row = np.clip(np.floor((xy - origin) / resolution_m), -1, n_cells).astype(np.int64)
        inside = ((column_row >= 0) & (column_row < n_cells)).all(axis=1)
        index = column_row[inside, 1] * n_cells + column_row[inside, 0]
        value = np.clip(np.rint(100.0 * roughness[inside] / full_scale), 0, 100).astype(np.int16)
        np.maximum.at(cells, index, value)  # unknown (-1) loses to any value; roughest wins
    return RoughnessGrid(cells=cells.astype(np.int8).reshape(n_cells, n_cells),
                         origin_x_m=float(origin[0]), origin_y_m=float(origin[1]),
                         resolution_m=float(resolution_m))
