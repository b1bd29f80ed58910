"""IMU -> vertical vibration of the body, and a shock measure over a time window.

Pipeline per IMU sample (streaming, filter state kept between calls):

1. up direction in the IMU frame: from the IMU orientation when it is valid (third row of the
   sensor->world rotation), otherwise from a slow low-pass of the specific force (at rest and on
   average the accelerometer reads +1 g along "up"), so any mounting works (z-up, gravity on +y...);
2. vertical specific force = accel . up (m/s^2);
3. band-pass (Butterworth, second-order sections, default 1-30 Hz): removes gravity, slow attitude
   and speed changes, and sensor noise above the chassis resonances;
4. optionally ISO 2631-1 Wk frequency weighting on top (vertical whole-body vibration).

`shock(t0, t1)` then gives peak |a|, RMS, or Wk-weighted RMS (m/s^2) over [t0, t1].
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import signal

NS_PER_S = 1_000_000_000
SHOCK_MEASURES = ('peak', 'rms', 'wk_rms')
GRAVITY_SOURCES = ('auto', 'orientation', 'estimate')

# Samples used to measure the IMU rate before the filters are designed.
_RATE_SAMPLES = 20


def wk_weighting_sos(fs_hz: float) -> np.ndarray:
    """ISO 2631-1 (1997) Annex A frequency weighting Wk as digital second-order sections.

    The analog band-limiting (0.4-100 Hz), acceleration-velocity transition (12.5 Hz, Q 0.63) and
    upward step (2.37 / 3.35 Hz, Q 0.91) filters are multiplied and mapped to `fs_hz` with the
    bilinear transform. The 100 Hz band limit is left out when it is not below Nyquist.
    """
    two_pi = 2.0 * np.pi
    w1, w2 = two_pi * 0.4, two_pi * 100.0
    w3, w4, q4 = two_pi * 12.5, two_pi * 12.5, 0.63
    w5, q5, w6, q6 = two_pi * 2.37, 0.91, two_pi * 3.35, 0.91
    q1 = q2 = 1.0 / np.sqrt(2.0)
    numerators = [[1.0, 0.0, 0.0],                      # high-pass band limit
                  [1.0 / w3, 1.0],                      # a-v transition
                  [1.0, w5 / q5, w5 * w5]]              # upward step
    denominators = [[1.0, w1 / q1, w1 * w1],
                    [1.0 / (w4 * w4), 1.0 / (q4 * w4), 1.0],
                    [1.0, w6 / q6, w6 * w6]]
    if 100.0 < 0.45 * fs_hz:
        numerators.append([w2 * w2])
        denominators.append([1.0, w2 / q2, w2 * w2])
    zeros, poles, gain = [], [], 1.0
    for numerator, denominator in zip(numerators, denominators):
        zeros.extend(np.roots(numerator))
        poles.extend(np.roots(denominator))
        gain *= numerator[0] / denominator[0]
    z, p, k = signal.bilinear_zpk(np.array(zeros), np.array(poles), gain, fs_hz)
    return signal.zpk2sos(z, p, k)


class VibrationFilter:
    """Streaming vertical-vibration extractor with a short history for shock queries.

    Args:
        band_low_hz, band_high_hz: band-pass corners (Hz); the high corner is capped at 0.45 x the
            IMU rate, which is measured from the first samples.
        band_order: Butterworth order per band edge.
        gravity_source: 'orientation' (use the IMU quaternion; samples without one fall back to
            the estimate), 'estimate' (ignore orientation), or 'auto' (same as 'orientation').
        gravity_tau_s: time constant (s) of the low-pass that estimates the up direction.
        max_gap_s: a larger step between IMU stamps is a gap: filters restart, and windows that
            include a gap or the filter warm-up after it give no shock.
        history_s: how much filtered signal to keep for queries (s).
    """

    def __init__(self, band_low_hz: float = 1.0, band_high_hz: float = 30.0,
                 band_order: int = 2, gravity_source: str = 'auto',
                 gravity_tau_s: float = 1.0, max_gap_s: float = 0.05,
                 history_s: float = 10.0):
        if not 0.0 < band_low_hz < band_high_hz:
            raise ValueError(
                f'band-pass needs 0 < low < high, got {band_low_hz}, {band_high_hz} Hz')
        if gravity_source not in GRAVITY_SOURCES:
            raise ValueError(f'gravity_source must be one of {GRAVITY_SOURCES}')
        self.band_low_hz = band_low_hz
        self.band_high_hz = band_high_hz
        self.band_order = band_order
        self.gravity_source = gravity_source
        self.gravity_tau_s = gravity_tau_s
        self.max_gap_ns = int(max_gap_s * NS_PER_S)
        self.history_ns = int(history_s * NS_PER_S)
        self.gaps = 0
        self.rate_hz: Optional[float] = None
        self.reset()

    @property
    def warmup_s(self) -> float:
        """Time after a (re)start during which the filters have not settled (s)."""
        return max(2.0 / self.band_low_hz, self.gravity_tau_s)

    def reset(self) -> None:
        """Forget everything (time went backwards: a new drive or a looping bag)."""
        self._t = np.zeros(0, dtype=np.int64)
        self._band = np.zeros(0)
        self._wk = np.zeros(0)
        self._valid = np.zeros(0, dtype=bool)
        self._pending: list = []
        self._raw: list = []  # samples waiting for the rate estimate
        self._band_sos = self._wk_sos = None
        self._restart_filters()

    def _restart_filters(self) -> None:
        self._band_zi = self._wk_zi = self._gravity_state = None
        self._started_ns: Optional[int] = None
        self._last_ns: Optional[int] = None

    @property
    def last_t_ns(self) -> Optional[int]:
        if self._raw:
            return self._raw[-1][0]
        return self._last_ns

    def add(self, t_ns: int, accel, quat_xyzw=None) -> None:
        """One IMU sample: stamp (ns), specific force (3,) m/s^2, orientation (4,) or None.

        Stamps must increase and values be finite (the caller filters and counts bad input).
        """
        if self.rate_hz is None:
            self._raw.append((int(t_ns), np.asarray(accel, dtype=float), quat_xyzw))
            if len(self._raw) >= _RATE_SAMPLES:
                self._design_from_raw()
            return
        self._process(int(t_ns), np.asarray(accel, dtype=float), quat_xyzw)

    def _design_from_raw(self) -> None:
        stamps = np.array([sample[0] for sample in self._raw], dtype=np.int64)
        steps = np.diff(stamps)
        steps = steps[(steps > 0) & (steps <= self.max_gap_ns)]
        if steps.shape[0] < _RATE_SAMPLES // 2:
            self._raw = self._raw[-1:]  # too gappy to tell the rate; try again
            return
        self.rate_hz = NS_PER_S / float(np.median(steps))
        high = min(self.band_high_hz, 0.45 * self.rate_hz)
        low = min(self.band_low_hz, 0.5 * high)
        self._band_sos = signal.butter(self.band_order, [low, high], btype='bandpass',
                                       fs=self.rate_hz, output='sos')
        self._wk_sos = wk_weighting_sos(self.rate_hz)
        raw, self._raw = self._raw, []
        for t_ns, accel, quat in raw:
            self._process(t_ns, accel, quat)

    def _up_estimate(self, accel: np.ndarray, dt_s: float) -> np.ndarray:
        alpha = dt_s / (self.gravity_tau_s + dt_s)
        if self._gravity_state is None:
            self._gravity_state = accel.copy()
        else:
            self._gravity_state += alpha * (accel - self._gravity_state)
        norm = np.linalg.norm(self._gravity_state)
        return self._gravity_state / norm if norm > 1e-6 else np.array([0.0, 0.0, 1.0])

    def _process(self, t_ns: int, accel: np.ndarray, quat) -> None:
        if self._last_ns is not None and t_ns - self._last_ns > self.max_gap_ns:
            self.gaps += 1
            self._restart_filters()
        dt_s = 1.0 / self.rate_hz if self._last_ns is None else (t_ns - self._last_ns) / NS_PER_S
        up = self._up_estimate(accel, dt_s)
        if quat is not None and self.gravity_source != 'estimate':
            x, y, z, w = np.asarray(quat, dtype=float) / np.linalg.norm(quat)
            up = np.array([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)])
        vertical = np.array([float(accel @ up)])
        if self._band_zi is None:
            # Start the filters in steady state on this sample, so there is no start-up step.
            self._band_zi = signal.sosfilt_zi(self._band_sos) * vertical[0]
            self._wk_zi = signal.sosfilt_zi(self._wk_sos) * 0.0
            self._started_ns = t_ns
        band, self._band_zi = signal.sosfilt(self._band_sos, vertical, zi=self._band_zi)
        weighted, self._wk_zi = signal.sosfilt(self._wk_sos, band, zi=self._wk_zi)
        valid = t_ns - self._started_ns >= self.warmup_s * NS_PER_S
        self._pending.append((t_ns, band[0], weighted[0], valid))
        self._last_ns = t_ns

    def _flush(self) -> None:
        if not self._pending:
            return
        t, band, weighted, valid = zip(*self._pending)
        self._pending = []
        self._t = np.concatenate([self._t, np.asarray(t, dtype=np.int64)])
        self._band = np.concatenate([self._band, band])
        self._wk = np.concatenate([self._wk, weighted])
        self._valid = np.concatenate([self._valid, np.asarray(valid, dtype=bool)])
        start = int(np.searchsorted(self._t, self._t[-1] - self.history_ns))
        if start > 0:
            self._t, self._band = self._t[start:], self._band[start:]
            self._wk, self._valid = self._wk[start:], self._valid[start:]

    def signal_between(self, t0_ns: int, t1_ns: int) -> tuple:
        """(t_ns, band-passed vertical m/s^2, Wk-weighted m/s^2) for stamps in [t0, t1]."""
        self._flush()
        lo = int(np.searchsorted(self._t, t0_ns, side='left'))
        hi = int(np.searchsorted(self._t, t1_ns, side='right'))
        return self._t[lo:hi], self._band[lo:hi], self._wk[lo:hi]

    def shock(self, t0_ns: int, t1_ns: int, measure: str = 'rms') -> tuple:
        """(shock m/s^2 or None, reason) over [t0, t1].

        reason is '' on success, 'pending' when the IMU has not reached t1 yet (ask again later),
        otherwise why there is no value: 'imu_missing', 'imu_gap', 'imu_warmup'.
        """
        if measure not in SHOCK_MEASURES:
            raise ValueError(f'shock measure must be one of {SHOCK_MEASURES}, got {measure!r}')
        self._flush()
        if self._t.shape[0] == 0 or self._t[-1] < t1_ns:
            return None, 'pending'
        lo = int(np.searchsorted(self._t, t0_ns, side='left'))
        hi = int(np.searchsorted(self._t, t1_ns, side='right'))
        if hi - lo < 2 or lo == 0 and self._t[0] > t0_ns:
            return None, 'imu_missing'
        # The window must be covered: no step between samples (edges included) larger than a gap.
        first, last = lo - 1 if lo > 0 else lo, min(hi, self._t.shape[0] - 1)
        span = self._t[first:last + 1]
        if (np.diff(span) > self.max_gap_ns).any():
            return None, 'imu_gap'
        if not self._valid[lo:hi].all():
            return None, 'imu_warmup'
        if measure == 'peak':
            return float(np.max(np.abs(self._band[lo:hi]))), ''
        values = self._band[lo:hi] if measure == 'rms' else self._wk[lo:hi]
        return float(np.sqrt(np.mean(values * values))), ''
