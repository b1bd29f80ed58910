"""Synthetic off-road terrain: a height map along a route with ISO 8608 roughness segments.

Heights are the sum of
  * an isotropic random field with an ISO 8608 displacement PSD G_d(n) = G_d(n0) (n/n0)^-2
    (n0 = 0.1 cycles/m), made by spectral filtering of white noise and band-limited to the
    wavelengths a vehicle and a lidar care about; its amplitude follows the class of the nearest
    route segment, blended over a few metres so class changes are not cliffs;
  * discrete features: speed bumps across the route, potholes and rocks (denser on rough ground);
  * gentle large-scale slopes (a few plane waves, grade <= a few %), so that absolute height says
    nothing about roughness.

Ground truth is computed from the final height map: per truth cell (default 0.5 m), the RMS of
the heights about a least-squares plane (detrended height RMS, m), and the ISO class of the
segment that generated the cell.
"""

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from terrain_ssl.sim.ground_truth import GroundTruth, ISO_CLASSES
from terrain_ssl.sim.route import RoundedRectangleRoute

ISO_N0_CYCLES_PER_M = 0.1
# Geometric mean of each class's G_d(n0) (m^3); each class is 4x the previous (2x in amplitude).
ISO_GD_N0_M3 = {name: 16e-6 * 4.0 ** i for i, name in enumerate(ISO_CLASSES)}

DEFAULT_SEGMENTS = (('A', 40.0), ('B', 40.0), ('C', 50.0), ('D', 50.0), ('E', 60.0),
                    ('F', 40.0), ('E', 30.0), ('C', 40.0), ('B', 36.0))
# Discrete features per 100 m^2 of corridor, by ISO class index (A..F).
DEFAULT_ROCKS_PER_100M2 = (0.0, 0.0, 0.5, 2.0, 5.0, 10.0)
DEFAULT_POTHOLES_PER_100M2 = (0.0, 0.0, 0.3, 0.6, 1.0, 1.5)


@dataclass(frozen=True)
class TerrainConfig:
    """Everything that shapes the terrain; with a seed it fixes the height map exactly."""

    route: RoundedRectangleRoute = field(default_factory=RoundedRectangleRoute)
    # (ISO class letter, relative length); lengths are scaled to the route length, in route order.
    segments: tuple = DEFAULT_SEGMENTS
    resolution_m: float = 0.05
    truth_cell_m: float = 0.5
    margin_m: float = 15.0
    corridor_half_width_m: float = 4.0
    transition_m: float = 3.0            # class amplitude blends over about this distance
    min_wavelength_m: float = 0.15       # band limit of the random field
    max_wavelength_m: float = 20.0
    max_grade: float = 0.04              # of the large-scale slopes (rise / run)
    speed_bumps_per_class_c_segment: int = 2
    speed_bump_height_m: float = 0.08
    speed_bump_width_m: float = 0.9
    rocks_per_100m2: tuple = DEFAULT_ROCKS_PER_100M2
    potholes_per_100m2: tuple = DEFAULT_POTHOLES_PER_100M2

    def __post_init__(self):
        if not 0.005 <= self.resolution_m <= 0.05:
            raise ValueError('terrain resolution must be in [0.005, 0.05] m, '
                             f'got {self.resolution_m}')
        ratio = self.truth_cell_m / self.resolution_m
        if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 2:
            raise ValueError('truth_cell_m must be an integer multiple (>= 2) of resolution_m')
        if not self.segments:
            raise ValueError('terrain needs at least one segment')
        for name, length in self.segments:
            if name not in ISO_CLASSES or not length > 0:
                raise ValueError(f'bad segment {(name, length)}: class must be one of '
                                 f'{ISO_CLASSES} and length > 0')
        if not 0 < self.min_wavelength_m < self.max_wavelength_m:
            raise ValueError('need 0 < min_wavelength_m < max_wavelength_m')
        if self.min_wavelength_m < 2.0 * self.resolution_m:
            raise ValueError('min_wavelength_m below the grid Nyquist wavelength (2 * resolution)')

    def to_dict(self) -> dict:
        return {
            'route': {'type': 'rounded_rectangle', 'long_m': self.route.long_m,
                      'short_m': self.route.short_m,
                      'corner_radius_m': self.route.corner_radius_m,
                      'origin_xy_m': list(self.route.origin_xy_m),
                      'length_m': self.route.length_m},
            'segments': [[name, float(length)] for name, length in self.segments],
            'resolution_m': self.resolution_m, 'truth_cell_m': self.truth_cell_m,
            'margin_m': self.margin_m, 'corridor_half_width_m': self.corridor_half_width_m,
            'transition_m': self.transition_m, 'min_wavelength_m': self.min_wavelength_m,
            'max_wavelength_m': self.max_wavelength_m, 'max_grade': self.max_grade,
            'speed_bumps_per_class_c_segment': self.speed_bumps_per_class_c_segment,
            'speed_bump_height_m': self.speed_bump_height_m,
            'speed_bump_width_m': self.speed_bump_width_m,
            'rocks_per_100m2': list(self.rocks_per_100m2),
            'potholes_per_100m2': list(self.potholes_per_100m2),
        }


def unit_iso_field(shape, resolution_m, min_wavelength_m, max_wavelength_m, rng):
    """Isotropic random heights (m) whose profiles have the ISO 8608 PSD of G_d(n0) = 1 m^3.

    A two-sided 2-D PSD S(k) = C |k|^-3 gives line profiles (any direction) with the one-sided
    1-D PSD G(n) = 2 * integral S(n, m) dm = 4 C / n^2, so C = G_d(n0) n0^2 / 4. White noise of
    unit variance on a grid of spacing d has the flat 2-D PSD d^2, hence the filter gain
    sqrt(C) / d * |k|^-1.5 inside the band (with raised-cosine edges, one octave wide).
    """
    ny, nx = shape
    noise = rng.standard_normal(shape, dtype=np.float32)
    spectrum = np.fft.rfft2(noise)
    ky = np.fft.fftfreq(ny, d=resolution_m).astype(np.float32)
    kx = np.fft.rfftfreq(nx, d=resolution_m).astype(np.float32)
    k = np.hypot(ky[:, None], kx[None, :])
    n_lo, n_hi = 1.0 / max_wavelength_m, 1.0 / min_wavelength_m
    k_safe = np.maximum(k, n_lo * 0.5)
    gain = np.float32(np.sqrt(ISO_N0_CYCLES_PER_M ** 2 / 4.0) / resolution_m) * k_safe ** -1.5
    # Smooth (raised-cosine over an octave) band edges avoid ringing around the features.
    low = np.clip(np.log2(k_safe / (0.5 * n_lo)), 0.0, 1.0)
    high = np.clip(np.log2(2.0 * n_hi / k_safe), 0.0, 1.0)
    gain *= (0.5 - 0.5 * np.cos(np.pi * low)) * (0.5 - 0.5 * np.cos(np.pi * high))
    gain[0, 0] = 0.0
    spectrum *= gain
    return np.fft.irfft2(spectrum, s=shape).astype(np.float32)


def _interp_matrix(n_out, n_in, factor):
    """Dense linear-interpolation matrix from a coarse grid to one `factor` times finer."""
    coarse_pos = (np.arange(n_out) + 0.5) / factor - 0.5
    eye = np.eye(n_in, dtype=np.float32)
    return np.stack([np.interp(coarse_pos, np.arange(n_in), eye[:, j]) for j in range(n_in)],
                    axis=1).astype(np.float32)


class Terrain:
    """Height map (float32, m) on a regular grid, with its ground truth.

    Sample (iy, ix) sits at x = x_min + (ix + 0.5) * resolution, y = y_min + (iy + 0.5) *
    resolution, so each truth cell holds a whole block of samples.
    """

    def __init__(self, config: TerrainConfig = TerrainConfig(), seed: int = 0):
        self.config = config
        self.seed = int(seed)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 8608]))
        route = config.route
        self.route = route
        res = config.resolution_m
        block = int(round(config.truth_cell_m / res))
        x_min, y_min, x_max, y_max = route.bounds_xy(config.margin_m)
        ny_c = int(np.ceil((y_max - y_min) / config.truth_cell_m))
        nx_c = int(np.ceil((x_max - x_min) / config.truth_cell_m))
        self.origin_xy_m = (float(x_min), float(y_min))
        self.resolution_m = res
        ny, nx = ny_c * block, nx_c * block

        # Segment table: route arc-length intervals and their ISO classes.
        lengths = np.array([length for _, length in config.segments], dtype=float)
        lengths *= route.length_m / lengths.sum()
        self.segment_start_s = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
        self.segment_end_s = np.cumsum(lengths)
        self.segment_class = np.array([ISO_CLASSES.index(name) for name, _ in config.segments])

        # Class of every truth cell = class of the nearest centreline point's segment.
        s_line, x_line, y_line = route.polyline(0.25)
        tree = cKDTree(np.column_stack([x_line, y_line]))
        cx = x_min + (np.arange(nx_c) + 0.5) * config.truth_cell_m
        cy = y_min + (np.arange(ny_c) + 0.5) * config.truth_cell_m
        gx, gy = np.meshgrid(cx, cy)
        _, nearest = tree.query(np.column_stack([gx.ravel(), gy.ravel()]))
        cell_class = self.class_at_s(s_line[nearest]).reshape(ny_c, nx_c).astype(np.int8)

        # Amplitude doubles per class; blend in log space, then upsample to the fine grid.
        sigma_cells = 0.5 * config.transition_m / config.truth_cell_m
        log_amp = ndimage.gaussian_filter(cell_class.astype(np.float32), sigma_cells,
                                          mode='nearest')
        amp_coarse = np.exp2(log_amp) * np.float32(np.sqrt(ISO_GD_N0_M3['A']))
        amp = _interp_matrix(ny, ny_c, block) @ amp_coarse @ _interp_matrix(nx, nx_c, block).T

        heights = unit_iso_field((ny, nx), res, config.min_wavelength_m,
                                 config.max_wavelength_m, rng)
        heights *= amp
        del amp
        self.heights = heights
        self._add_slopes(rng)
        self._add_speed_bumps()
        self._add_rocks_and_potholes(rng)
        self.height_min_m = float(self.heights.min())
        self.height_max_m = float(self.heights.max())
        self.ground_truth = GroundTruth(
            roughness_rms_m=self._detrended_rms(block), iso_class=cell_class,
            origin_xy_m=self.origin_xy_m, cell_size=config.truth_cell_m)

    # -- construction helpers -------------------------------------------------------------
    def _sample_axes(self):
        ny, nx = self.heights.shape
        x = self.origin_xy_m[0] + (np.arange(nx) + 0.5) * self.resolution_m
        y = self.origin_xy_m[1] + (np.arange(ny) + 0.5) * self.resolution_m
        return x, y

    def _add_slopes(self, rng, waves: int = 3):
        x, y = self._sample_axes()
        for _ in range(waves):
            wavelength = rng.uniform(60.0, 200.0)
            direction = rng.uniform(0.0, 2.0 * np.pi)
            phase = rng.uniform(0.0, 2.0 * np.pi)
            k = 2.0 * np.pi / wavelength
            amplitude = self.config.max_grade / waves / k
            ax = (k * np.cos(direction) * x).astype(np.float32)
            ay = (k * np.sin(direction) * y + phase).astype(np.float32)
            # cos(a + b) = cos a cos b - sin a sin b: two outer products, no full-grid trig.
            self.heights += np.float32(amplitude) * (np.outer(np.cos(ay), np.cos(ax))
                                                     - np.outer(np.sin(ay), np.sin(ax)))

    def _window(self, cx, cy, half_m):
        """Index slices and sample coordinates of a square window around (cx, cy)."""
        res = self.resolution_m
        ny, nx = self.heights.shape
        ix0 = max(int((cx - half_m - self.origin_xy_m[0]) / res), 0)
        ix1 = min(int((cx + half_m - self.origin_xy_m[0]) / res) + 2, nx)
        iy0 = max(int((cy - half_m - self.origin_xy_m[1]) / res), 0)
        iy1 = min(int((cy + half_m - self.origin_xy_m[1]) / res) + 2, ny)
        xs = self.origin_xy_m[0] + (np.arange(ix0, ix1) + 0.5) * res
        ys = self.origin_xy_m[1] + (np.arange(iy0, iy1) + 0.5) * res
        return (slice(iy0, iy1), slice(ix0, ix1)), xs[None, :], ys[:, None]

    def _add_speed_bumps(self):
        cfg = self.config
        self.speed_bumps_s = []
        for start, end, cls in zip(self.segment_start_s, self.segment_end_s, self.segment_class):
            if cls != ISO_CLASSES.index('C'):
                continue
            n = cfg.speed_bumps_per_class_c_segment
            self.speed_bumps_s.extend(start + (end - start) * (np.arange(n) + 1) / (n + 1))
        half_w = cfg.corridor_half_width_m
        for s in self.speed_bumps_s:
            bx, by, heading, _ = self.route.pose_at(np.array([s]))
            window, xs, ys = self._window(bx[0], by[0], half_w + 1.0)
            along = (xs - bx[0]) * np.cos(heading[0]) + (ys - by[0]) * np.sin(heading[0])
            across = -(xs - bx[0]) * np.sin(heading[0]) + (ys - by[0]) * np.cos(heading[0])
            profile = np.where(np.abs(along) < 0.5 * cfg.speed_bump_width_m,
                               np.cos(np.pi * along / cfg.speed_bump_width_m) ** 2, 0.0)
            ends = np.clip((half_w + 0.5 - np.abs(across)) / 0.5, 0.0, 1.0)  # ramped ends
            self.heights[window] += (cfg.speed_bump_height_m * profile * ends).astype(np.float32)

    def _add_rocks_and_potholes(self, rng):
        cfg = self.config
        half_w = cfg.corridor_half_width_m
        self.rocks = []      # (x, y, radius m, height m)
        self.potholes = []   # (x, y, radius m, depth m)
        for start, end, cls in zip(self.segment_start_s, self.segment_end_s, self.segment_class):
            area_100m2 = (end - start) * 2.0 * half_w / 100.0
            for kind, density in (('rock', cfg.rocks_per_100m2[cls]),
                                  ('pothole', cfg.potholes_per_100m2[cls])):
                count = rng.poisson(density * area_100m2)
                s = rng.uniform(start, end, count)
                lateral = rng.uniform(-half_w, half_w, count)
                px, py, heading, _ = self.route.pose_at(s)
                px = px - lateral * np.sin(heading)
                py = py + lateral * np.cos(heading)
                for x, y in zip(px, py):
                    if kind == 'rock':
                        radius, height = rng.uniform(0.1, 0.35), rng.uniform(0.04, 0.18)
                        window, xs, ys = self._window(x, y, radius)
                        r2 = ((xs - x) ** 2 + (ys - y) ** 2) / radius ** 2
                        bump = height * np.sqrt(np.clip(1.0 - r2, 0.0, None))
                        self.heights[window] += bump.astype(np.float32)
                        self.rocks.append((x, y, radius, height))
                    else:
                        radius, depth = rng.uniform(0.25, 0.6), rng.uniform(0.04, 0.12)
                        window, xs, ys = self._window(x, y, radius)
                        r = np.sqrt((xs - x) ** 2 + (ys - y) ** 2) / radius
                        dip = np.where(r < 1.0, depth * np.cos(0.5 * np.pi * r) ** 2, 0.0)
                        self.heights[window] -= dip.astype(np.float32)
                        self.potholes.append((x, y, radius, depth))

    def _detrended_rms(self, block):
        """RMS (m) of heights about a least-squares plane, per block x block truth cell."""
        ny, nx = self.heights.shape
        cells = self.heights.reshape(ny // block, block, nx // block, block).transpose(0, 2, 1, 3)
        cells = cells.reshape(ny // block, nx // block, block * block).astype(np.float64)
        u = np.arange(block) - 0.5 * (block - 1)
        uy, ux = np.meshgrid(u, u, indexing='ij')
        design = np.column_stack([np.ones(block * block), ux.ravel(), uy.ravel()])
        fitted = cells @ (design @ np.linalg.pinv(design)).T   # projection onto planes
        return np.sqrt(np.mean((cells - fitted) ** 2, axis=-1)).astype(np.float32)

    # -- queries -------------------------------------------------------------------------
    def class_at_s(self, s_m):
        """ISO class index (0 = A .. 5 = F) of the route segment at arc length `s_m`."""
        s = np.mod(np.asarray(s_m, dtype=float), self.route.length_m)
        idx = np.searchsorted(self.segment_end_s, s, side='right')
        return self.segment_class[np.minimum(idx, len(self.segment_class) - 1)]

    def segment_containing(self, iso_class: str):
        """(start_s, end_s) of the first segment of class `iso_class` (e.g. 'E')."""
        cls = ISO_CLASSES.index(iso_class)
        for start, end, c in zip(self.segment_start_s, self.segment_end_s, self.segment_class):
            if c == cls:
                return float(start), float(end)
        raise ValueError(f'no segment of class {iso_class!r} on this route')

    def _fractional_index(self, x, y):
        fx = (np.asarray(x, dtype=np.float32) - np.float32(self.origin_xy_m[0])) / np.float32(
            self.resolution_m) - np.float32(0.5)
        fy = (np.asarray(y, dtype=np.float32) - np.float32(self.origin_xy_m[1])) / np.float32(
            self.resolution_m) - np.float32(0.5)
        return fx, fy

    def height_nearest(self, x, y):
        """Height (m) of the nearest grid sample (fast, 1 look-up); NaN outside the map."""
        fx, fy = self._fractional_index(x, y)
        ix = np.rint(fx).astype(np.int32)
        iy = np.rint(fy).astype(np.int32)
        ny, nx = self.heights.shape
        inside = (ix >= 0) & (iy >= 0) & (ix < nx) & (iy < ny)
        flat_index = np.where(inside, iy * nx + ix, 0)
        return np.where(inside, self.heights.ravel()[flat_index], np.float32(np.nan))

    def height_at(self, x, y):
        """Bilinear height (m) at world points; NaN outside the map."""
        fx, fy = self._fractional_index(x, y)
        ny, nx = self.heights.shape
        inside = (fx >= 0) & (fy >= 0) & (fx <= nx - 1) & (fy <= ny - 1)
        fx = np.where(inside, fx, 0).astype(np.float32)
        fy = np.where(inside, fy, 0).astype(np.float32)
        ix = np.minimum(fx.astype(np.int32), nx - 2)
        iy = np.minimum(fy.astype(np.int32), ny - 2)
        tx = fx - ix
        ty = fy - iy
        flat = self.heights.ravel()
        i00 = iy * nx + ix
        h0 = flat[i00] * (1 - tx) + flat[i00 + 1] * tx
        h1 = flat[i00 + nx] * (1 - tx) + flat[i00 + nx + 1] * tx
        h = h0 * (1 - ty) + h1 * ty
        return np.where(inside, h, np.float32(np.nan))
