"""Spinning lidar: presets and a fast, vectorised ray caster against the terrain height map.

Why it is fast: all beams of one column (one azimuth) lie in one plane, the plane through the
sensor spanned by its horizontal direction u and its spin axis w. The caster samples the terrain's
cut through that plane once per column (distances a along u, geometrically spaced: fine near the
sensor, coarser far away, as the beams themselves spread), turns it into elevation tangents
b/a as seen from the sensor, and takes their running maximum along a. A beam of elevation alpha
hits at the first sample whose running maximum reaches tan(alpha) (occlusion included), found for
all beams and columns at once with one `searchsorted`; the hit is then placed by linear
interpolation between the two samples that bracket it. The cost is columns x samples height
look-ups, independent of the beam count. This first pass uses nearest-sample heights; each hit
is then refined along the beam's own exact ray (sensor tilt from body pitch and roll included) with
bilinear heights at the three samples around it, so the points lie on the terrain surface.
"""

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class LidarPreset:
    name: str
    elevations_deg: tuple           # one per beam (ring), any order; rings are sorted ascending
    columns: int                    # azimuth steps per revolution
    rate_hz: float = 10.0
    min_range_m: float = 0.5
    max_range_m: float = 100.0
    range_noise_m: float = 0.02     # 1-sigma, along the beam
    dropout_probability: float = 0.002
    near_spacing_m: float = 0.05    # terrain sampling step near the sensor
    spacing_fraction: float = 0.01  # and its growth with distance (step = fraction * distance)

    def __post_init__(self):
        if self.columns < 8 or len(self.elevations_deg) < 1:
            raise ValueError('a lidar needs >= 8 columns and >= 1 beam')
        if not 0 < self.min_range_m < self.max_range_m:
            raise ValueError('need 0 < min_range_m < max_range_m')
        if self.rate_hz <= 0 or self.range_noise_m < 0 or not 0 <= self.dropout_probability < 1:
            raise ValueError('bad lidar rate, noise or dropout probability')

    @property
    def beams(self) -> int:
        return len(self.elevations_deg)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d['elevations_deg'] = [float(e) for e in self.elevations_deg]
        return d


PRESETS = {
    # Velodyne VLP-16: 16 beams over +-15 deg, 0.2 deg azimuth steps at 10 Hz, +-3 cm accuracy.
    'vlp16': LidarPreset('vlp16', tuple(np.linspace(-15.0, 15.0, 16)), 1800,
                         max_range_m=100.0, range_noise_m=0.02),
    # Ouster OS1-64: 64 beams over +-22.5 deg, 1024 columns at 10 Hz.
    'os64': LidarPreset('os64', tuple(np.linspace(-22.5, 22.5, 64)), 1024,
                        min_range_m=0.3, max_range_m=100.0, range_noise_m=0.015),
    # Ouster OS1-128: 128 beams over +-22.5 deg, 1024 columns at 10 Hz.
    'os128': LidarPreset('os128', tuple(np.linspace(-22.5, 22.5, 128)), 1024,
                         min_range_m=0.3, max_range_m=100.0, range_noise_m=0.015),
}


def lidar_preset(name: str, **overrides) -> LidarPreset:
    """A preset by name ('vlp16', 'os64', 'os128'), optionally with fields replaced."""
    if name not in PRESETS:
        raise ValueError(f'unknown lidar preset {name!r}; choose one of {sorted(PRESETS)}')
    return replace(PRESETS[name], **overrides)


@dataclass
class Scan:
    """One revolution, organised (rings x columns), in the sensor frame at each firing time."""

    xyz_m: np.ndarray          # (beams, columns, 3) float32, NaN for no return
    intensity: np.ndarray      # (beams, columns) float32
    ring: np.ndarray           # (beams, columns) uint16
    time_offset_s: np.ndarray  # (beams, columns) float32, since the scan's first column
    extra: dict = field(default_factory=dict)


def _sample_distances(preset: LidarPreset) -> np.ndarray:
    """Distances (m) along the horizontal direction at which the terrain cut is sampled."""
    distances = [max(0.5 * preset.min_range_m, 0.5)]
    while distances[-1] < preset.max_range_m:
        distances.append(distances[-1] + max(preset.near_spacing_m,
                                             preset.spacing_fraction * distances[-1]))
    return np.asarray(distances, dtype=np.float32)


class LidarCaster:
    """Casts scans of one preset against one terrain."""

    def __init__(self, preset: LidarPreset, terrain, seed: int = 0):
        self.preset = preset
        self.terrain = terrain
        self.rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1616]))
        order = np.argsort(preset.elevations_deg)
        elevations_deg = np.asarray(preset.elevations_deg, dtype=np.float64)[order]
        self.elevations_rad = np.deg2rad(elevations_deg)
        self.tan_elev = np.tan(self.elevations_rad)
        self.distances = _sample_distances(preset)
        c = preset.columns
        # Azimuths sweep counter-clockwise starting behind the sensor, so "ahead" is mid-scan.
        self.azimuths_rad = -np.pi + 2.0 * np.pi * np.arange(c) / c
        self.column_time_s = (np.arange(c) / (c * preset.rate_hz)).astype(np.float32)

    def _first_pass_hits(self, o, u, w) -> tuple:
        """(hit (C, B) sample index, has_hit (C, B), samples per column): where each beam first
        meets the terrain cut through its column plane, on the nearest-sample heights."""
        nc, nb = self.preset.columns, self.preset.beams
        terrain = self.terrain
        a = self.distances[None, :]                                                # (1, J)

        # Terrain cut through each column plane, first pass: nearest-sample heights at the points
        # the plane passes over, as heights b above the sensor along w, seen as tangents b / a.
        px = o[:, 0:1] + a * u[:, 0:1]
        py = o[:, 1:2] + a * u[:, 1:2]
        pz = o[:, 2:3] + a * u[:, 2:3]
        b = (terrain.height_nearest(px, py) - pz) / w[:, 2:3]
        if np.max(np.hypot(w[:, 0], w[:, 1])) > 0.02:
            # Tilted spin axis: the plane point at height b lies b * w_xy off; look there once.
            b = np.where(np.isnan(b), 0.0, b)
            b = (terrain.height_nearest(px + b * w[:, 0:1], py + b * w[:, 1:2]) - pz) / w[:, 2:3]
        tangent = b / a
        tangent = np.where(np.isnan(tangent), -2.0, np.clip(tangent, -2.0, 2.0))
        running_max = np.maximum.accumulate(tangent, axis=1).astype(np.float64)

        # First sample per (column, beam) whose running max reaches tan(elevation): one search
        # over all rows at once, each row shifted into its own value band.
        j_count = running_max.shape[1]
        offsets = 8.0 * np.arange(nc)[:, None]
        flat = (running_max + offsets).ravel()
        queries = self.tan_elev[None, :] + offsets                                 # (C, B)
        hit = np.searchsorted(flat, queries.ravel(), side='left').reshape(nc, nb)
        hit -= (np.arange(nc) * j_count)[:, None]
        has_hit = (hit > 0) & (hit < j_count)
        return hit, has_hit, j_count

    def cast(self, origins_m, rotations) -> Scan:
        """Ray-cast one revolution.

        origins_m (columns, 3): sensor position in the world at each column's firing time.
        rotations (columns, 3, 3): sensor-to-world rotation at each column's firing time.
        """
        p = self.preset
        nc, nb = p.columns, p.beams
        terrain = self.terrain
        cos_az, sin_az = np.cos(self.azimuths_rad), np.sin(self.azimuths_rad)
        horizontal_s = np.stack([cos_az, sin_az, np.zeros(nc)], axis=1)
        u = np.einsum('cij,cj->ci', rotations, horizontal_s).astype(np.float32)  # (C, 3)
        w = rotations[:, :, 2].astype(np.float32)                                  # spin axis
        o = origins_m.astype(np.float32)
        hit, has_hit, j_count = self._first_pass_hits(o, u, w)

        # Refine along each beam's exact ray (tilt included) with bilinear heights at the three
        # samples around the first-pass hit; keep the pair that brackets the crossing.
        cos_el = np.cos(self.elevations_rad).astype(np.float32)
        sin_el = np.sin(self.elevations_rad).astype(np.float32)
        direction = (cos_el[None, :, None] * u[:, None, :]
                     + sin_el[None, :, None] * w[:, None, :])                       # (C, B, 3)
        cols, beams = np.nonzero(has_hit)
        j = hit[cols, beams]
        trio = np.clip(j[:, None] + np.arange(-1, 2)[None, :], 0, j_count - 1)      # (H, 3)
        t = self.distances[trio] / cos_el[beams][:, None]                           # along ray
        d = direction[cols, beams]
        rays = o[cols][:, None, :] + t[..., None] * d[:, None, :]
        gap = rays[..., 2] - terrain.height_at(rays[..., 0], rays[..., 1])          # above ground
        first_pair = (gap[:, 0] > 0) & (gap[:, 1] <= 0)
        g0 = np.where(first_pair, gap[:, 0], gap[:, 1])
        g1 = np.where(first_pair, gap[:, 1], gap[:, 2])
        t0 = np.where(first_pair, t[:, 0], t[:, 1])
        t1 = np.where(first_pair, t[:, 1], t[:, 2])
        denominator = g0 - g1
        frac = np.clip(g0 / np.where(np.abs(denominator) > 1e-9, denominator, 1e-9), 0.0, 1.0)
        rng_m = np.full((nc, nb), np.nan)
        rng_m[cols, beams] = t0 + frac * (t1 - t0)
        # How steeply the beam meets the ground (for intensity): closing rate of the gap.
        incidence = np.zeros((nc, nb))
        incidence[cols, beams] = np.clip(np.abs(denominator) / np.maximum(t1 - t0, 1e-6), 0, 1)
        has_hit[cols, beams] &= ~np.isnan(rng_m[cols, beams])

        rng_m = rng_m + self.rng.normal(0.0, p.range_noise_m, rng_m.shape)
        valid = (has_hit & (rng_m >= p.min_range_m) & (rng_m <= p.max_range_m)
                 & (self.rng.random(rng_m.shape) >= p.dropout_probability))
        rng_m = np.where(valid, rng_m, np.nan)
        xyz = np.empty((nb, nc, 3), dtype=np.float32)
        xyz[..., 0] = (rng_m * cos_el[None, :] * cos_az[:, None]).T
        xyz[..., 1] = (rng_m * cos_el[None, :] * sin_az[:, None]).T
        xyz[..., 2] = (rng_m * sin_el[None, :]).T
        # Diffuse-ish return: brighter when hit square-on, dimmer with range, a little speckle.
        intensity = (10.0 + 90.0 * incidence / (1.0 + 0.01 * np.nan_to_num(rng_m))
                     * self.rng.uniform(0.9, 1.1, rng_m.shape))
        intensity = np.where(valid, intensity, np.nan).T.astype(np.float32)
        ring = np.broadcast_to(np.arange(nb, dtype=np.uint16)[:, None], (nb, nc))
        time_offset = np.broadcast_to(self.column_time_s[None, :], (nb, nc))
        return Scan(xyz, intensity, ring, time_offset)
