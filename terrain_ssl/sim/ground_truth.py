"""Ground truth of a simulated drive: per-cell roughness and ISO 8608 class, plus the trajectory.

Stored beside the bag as `ground_truth.npz` (arrays, no pickles) and `ground_truth.json`
(run configuration and a description of the arrays). Read it with `GroundTruth.load(bag_dir)`.
"""

import json
from pathlib import Path

import numpy as np

ISO_CLASSES = ('A', 'B', 'C', 'D', 'E', 'F')
# Upper bounds of G_d(n0) per class (m^3), ISO 8608.
ISO_CLASS_UPPER_GD_N0_M3 = tuple(32e-6 * 4.0 ** i for i in range(len(ISO_CLASSES)))

NPZ_NAME = 'ground_truth.npz'
JSON_NAME = 'ground_truth.json'


class GroundTruth:
    """Per-cell truth on a regular grid in the odom frame.

    roughness_rms_m[iy, ix]: RMS of terrain heights about a least-squares plane fitted to the cell
    (m); iso_class[iy, ix]: ISO 8608 class index (0 = A .. 5 = F) the cell was generated with.
    Cell (iy, ix) covers x in [x0 + ix*cell, x0 + (ix+1)*cell), y likewise. Points outside the grid
    get NaN roughness and class -1.
    """

    def __init__(self, roughness_rms_m, iso_class, origin_xy_m, cell_size, trajectory=None,
                 config=None):
        self.roughness_rms_m = np.asarray(roughness_rms_m, dtype=np.float32)
        self.iso_class = np.asarray(iso_class, dtype=np.int8)
        if self.roughness_rms_m.shape != self.iso_class.shape or self.iso_class.ndim != 2:
            raise ValueError('roughness and class grids must be 2-D and of equal shape')
        self.origin_xy_m = (float(origin_xy_m[0]), float(origin_xy_m[1]))
        self.cell_size = float(cell_size)
        # Optional dict of arrays: t_ns, x_m, y_m, yaw_rad, speed_mps, s_m (true vehicle path).
        self.trajectory = trajectory or {}
        self.config = config or {}

    def _cell_index(self, xy):
        xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        ix = np.floor((xy[:, 0] - self.origin_xy_m[0]) / self.cell_size).astype(np.int64)
        iy = np.floor((xy[:, 1] - self.origin_xy_m[1]) / self.cell_size).astype(np.int64)
        ny, nx = self.iso_class.shape
        inside = (ix >= 0) & (iy >= 0) & (ix < nx) & (iy < ny)
        return np.where(inside, iy, 0), np.where(inside, ix, 0), inside

    def roughness_at(self, xy):
        """Detrended height RMS (m) of the cells holding points `xy` (N, 2); NaN outside."""
        iy, ix, inside = self._cell_index(xy)
        return np.where(inside, self.roughness_rms_m[iy, ix], np.nan)

    def iso_class_at(self, xy):
        """ISO 8608 class index (0 = A .. 5 = F) at points `xy` (N, 2); -1 outside."""
        iy, ix, inside = self._cell_index(xy)
        return np.where(inside, self.iso_class[iy, ix], -1).astype(np.int8)

    def save(self, bag_dir, config: dict | None = None):
        """Write ground_truth.npz and ground_truth.json into `bag_dir`."""
        bag_dir = Path(bag_dir)
        bag_dir.mkdir(parents=True, exist_ok=True)
        arrays = {
            'roughness_rms_m': self.roughness_rms_m, 'iso_class': self.iso_class,
            'origin_xy_m': np.array(self.origin_xy_m), 'cell_size_m': np.array(self.cell_size),
        }
        arrays.update({f'trajectory_{k}': np.asarray(v) for k, v in self.trajectory.items()})
        np.savez_compressed(bag_dir / NPZ_NAME, **arrays)
        doc = {
            'format': 'terrain_ssl ground truth v1',
            'arrays': {
                'roughness_rms_m': 'float32 [ny, nx]: detrended (plane-fit) height RMS per '
                                   'cell, m',
                'iso_class': 'int8 [ny, nx]: ISO 8608 class index, 0=A .. 5=F',
                'origin_xy_m': 'float64 [2]: odom-frame x, y of the grid corner (cell [0, 0])',
                'cell_size_m': 'float64: cell edge length, m',
                'trajectory_*': 'true vehicle path (base_link in odom) at odometry rate: t_ns, '
                                'x_m, y_m, yaw_rad, speed_mps, s_m (arc length along the route)',
            },
            'iso_classes': list(ISO_CLASSES),
            'iso_class_upper_gd_n0_m3': list(ISO_CLASS_UPPER_GD_N0_M3),
            'cell_size_m': self.cell_size,
            'origin_xy_m': list(self.origin_xy_m),
            'shape': list(self.iso_class.shape),
            'config': config if config is not None else self.config,
        }
        (bag_dir / JSON_NAME).write_text(json.dumps(doc, indent=2, sort_keys=True))

    @classmethod
    def load(cls, bag_dir):
        """Read the ground truth written next to a simulated bag in `bag_dir`."""
        bag_dir = Path(bag_dir)
        npz_path = bag_dir / NPZ_NAME
        if not npz_path.is_file():
            raise FileNotFoundError(f'no {NPZ_NAME} in {bag_dir} (not a simulated bag?)')
        with np.load(npz_path, allow_pickle=False) as data:
            trajectory = {key[len('trajectory_'):]: data[key] for key in data.files
                          if key.startswith('trajectory_')}
            truth = cls(data['roughness_rms_m'], data['iso_class'], data['origin_xy_m'],
                        float(data['cell_size_m']), trajectory=trajectory)
        json_path = bag_dir / JSON_NAME
        if json_path.is_file():
            truth.config = json.loads(json_path.read_text()).get('config', {})
        return truth
