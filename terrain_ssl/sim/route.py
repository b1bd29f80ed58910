"""The route the simulated vehicle drives: a closed rounded rectangle, parametrised by arc length.

Arc length `s` (m) starts at the beginning of the bottom straight and grows counter-clockwise.
Straights are axis-aligned, which keeps speed bumps (placed across straights) simple to draw.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RoundedRectangleRoute:
    """Closed loop: two straights of `long_m`, two of `short_m`, joined by quarter circles."""

    long_m: float = 100.0
    short_m: float = 30.0
    corner_radius_m: float = 20.0
    origin_xy_m: tuple = (0.0, 0.0)  # lower-left end of the bottom straight

    def __post_init__(self):
        if min(self.long_m, self.short_m) < 0.0 or self.corner_radius_m <= 0.0:
            raise ValueError('route straights must be >= 0 m and the corner radius > 0 m')

    @property
    def arc_m(self) -> float:
        return 0.5 * np.pi * self.corner_radius_m

    @property
    def length_m(self) -> float:
        return 2.0 * (self.long_m + self.short_m) + 4.0 * self.arc_m

    def _pieces(self):
        """(start_s, length, kind, start_xy, start_heading) for the 8 pieces of the loop."""
        r = self.corner_radius_m
        x0, y0 = self.origin_xy_m
        pieces = []
        s = 0.0
        xy = np.array([x0, y0], dtype=float)
        heading = 0.0
        for straight in (self.long_m, self.short_m, self.long_m, self.short_m):
            pieces.append((s, straight, 'line', xy.copy(), heading))
            xy = xy + straight * np.array([np.cos(heading), np.sin(heading)])
            s += straight
            pieces.append((s, self.arc_m, 'arc', xy.copy(), heading))
            # Left turn by 90 deg about the centre at distance r to the left.
            centre = xy + r * np.array([-np.sin(heading), np.cos(heading)])
            heading += 0.5 * np.pi
            xy = centre + r * np.array([np.sin(heading), -np.cos(heading)])
            s += self.arc_m
        return pieces

    def pose_at(self, s_m):
        """(x m, y m, heading rad, curvature 1/m) arrays for arc lengths `s_m` (wrapped)."""
        s = np.mod(np.asarray(s_m, dtype=float), self.length_m)
        x = np.empty_like(s)
        y = np.empty_like(s)
        heading = np.empty_like(s)
        curvature = np.zeros_like(s)
        r = self.corner_radius_m
        for start, length, kind, xy, h0 in self._pieces():
            inside = (s >= start) & (s < start + length + 1e-12)
            if not np.any(inside):
                continue
            d = s[inside] - start
            if kind == 'line':
                x[inside] = xy[0] + d * np.cos(h0)
                y[inside] = xy[1] + d * np.sin(h0)
                heading[inside] = h0
            else:
                centre = xy + r * np.array([-np.sin(h0), np.cos(h0)])
                h = h0 + d / r
                x[inside] = centre[0] + r * np.sin(h)
                y[inside] = centre[1] - r * np.cos(h)
                heading[inside] = h
                curvature[inside] = 1.0 / r
        return x, y, np.mod(heading + np.pi, 2.0 * np.pi) - np.pi, curvature

    def bounds_xy(self, margin_m: float = 0.0):
        """(x_min, y_min, x_max, y_max) of the centreline, grown by `margin_m`."""
        x0, y0 = self.origin_xy_m
        r = self.corner_radius_m
        return (x0 - r - margin_m, y0 - margin_m,
                x0 + self.long_m + r + margin_m, y0 + self.short_m + 2.0 * r + margin_m)

    def polyline(self, spacing_m: float = 0.25):
        """Centreline samples: (s, x, y) arrays every `spacing_m` (m)."""
        s = np.arange(0.0, self.length_m, spacing_m)
        x, y, _, _ = self.pose_at(s)
        return s, x, y
