"""IMU -> vertical vibration of the body, and a shock measure over a time window.

Pipeline per IMU sample (streaming, filter state kept between calls):

1. up direction in the IMU frame: from the IMU orientation when it is valid (third row of the
   sensor->world rotation), otherwise from a slow low-pass of the specific force (at rest and on
   average the accelerometer reads +1 g along "up"), so any mounting works (z-up, gravity on
   +y...);
2. vertical specific force = accel . up (m/s^2);
3. band-pass (Butterworth, second-order sections, default 1-30 Hz): removes gravity, slow attitude
   and speed changes, and sensor noise above the chassis resonances;
4. optionally ISO 2631-1 Wk frequency weighting on top (vertical whole-body vibration).

`shock(t0, t1)` then gives peak |a|, RMS, or Wk-weighted RMS (m/s^2) over [t0, t1].

Steps 1-3 run per sample in plain Python floats as samples arrive: the labeler asks for a shock
about every second odometry message, ~10 new samples each time, too few for numpy or scipy
calls to pay their overhead. The Wk weighting runs in batches over the backlog.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from scipy import signal

from terrain_ssl.core import kernels

NS_PER_S = 1_000_000_000
SHOCK_MEASURES = ('peak', 'rms', 'wk_rms')
# Why a window has no shock, by the code kernels.window_shocks gives ('' = it has).
_SHOCK_REASONS = ('', 'pending', 'imu_missing', 'imu_gap', 'imu_warmup')
GRAVITY_SOURCES = ('auto', 'orientation', 'estimate')

# Samples used to measure the IMU rate before the filters are designed.
_RATE_SAMPLES = 20
_MAX_QUEUED_SAMPLES = 2000  # move filtered samples to the history at least this often (memory)


def _up_from_orientation(quat_xyzw) -> Optional[tuple]:
    """World up in the sensor frame (third row of the sensor -> world rotation) from an
    orientation quaternion x, y, z, w (normalised here), or None if it is zero or not finite."""
    qx, qy, qz, qw = (float(quat_xyzw[0]), float(quat_xyzw[1]), float(quat_xyzw[2]),
                      float(quat_xyzw[3]))
    norm = math.sqrt(qx * qx + qy * qy + qz * qz + qw * qw)
    if not 0.0 < norm < math.inf:
        return None
    qx, qy, qz, qw = qx / norm, qy / norm, qz / norm, qw / norm
    return 2 * (qx * qz - qy * qw), 2 * (qy * qz + qx * qw), 1 - 2 * (qx * qx + qy * qy)


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


class _SampleHistory:
    """Filtered samples in time order, appended in batches and dropped from the front.

    Preallocated arrays with a live window [start, end): appending writes in place and dropping
    moves `start`, so keeping a few seconds of 200 Hz IMU does not copy the whole history per
    batch (as np.concatenate did). The live part moves to the front only when the end is full.
    """

    def __init__(self, capacity: int = 4096):
        self.t = np.zeros(0, dtype=np.int64)  # live views, refreshed after every change
        self.band = np.zeros(0)
        self.wk = np.zeros(0)
        self.valid = np.zeros(0, dtype=bool)
        self._t = np.zeros(capacity, dtype=np.int64)
        self._band = np.zeros(capacity)
        self._wk = np.zeros(capacity)
        self._valid = np.zeros(capacity, dtype=bool)
        self._start = self._end = 0

    def __len__(self) -> int:
        return self._end - self._start

    def append(self, t: np.ndarray, band: np.ndarray, wk: Optional[np.ndarray],
               valid: np.ndarray) -> None:
        """Add samples after the last ones; wk None = not weighted yet (NaN until set)."""
        n = t.shape[0]
        if self._end + n > self._t.shape[0]:
            live = self._end - self._start
            capacity = max(self._t.shape[0], 2 * (live + n))
            for name in ('_t', '_band', '_wk', '_valid'):
                old = getattr(self, name)
                new = old if capacity == old.shape[0] else np.zeros(capacity, dtype=old.dtype)
                new[:live] = old[self._start:self._end]  # numpy handles the overlap
                setattr(self, name, new)
            self._start, self._end = 0, live
        end = self._end + n
        self._t[self._end:end] = t
        self._band[self._end:end] = band
        self._wk[self._end:end] = np.nan if wk is None else wk
        self._valid[self._end:end] = valid
        self._end = end
        self._refresh_views()

    def drop_before(self, t_ns: int) -> None:
        """Forget the samples stamped before t_ns."""
        dropped = int(np.searchsorted(self.t, t_ns))
        if dropped:
            self._start += dropped
            self._refresh_views()

    def _refresh_views(self) -> None:
        live = slice(self._start, self._end)
        self.t, self.band = self._t[live], self._band[live]
        self.wk, self.valid = self._wk[live], self._valid[live]


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
        self._gaps = 0
        self.rate_hz: Optional[float] = None
        self.reset()

    @property
    def gaps(self) -> int:
        """IMU gaps seen so far (counted as samples arrive, before they are filtered)."""
        return self._gaps

    @property
    def warmup_s(self) -> float:
        """Time after a (re)start during which the filters have not settled (s)."""
        return max(2.0 / self.band_low_hz, self.gravity_tau_s)

    def reset(self) -> None:
        """Forget everything (time went backwards: a new drive or a looping bag)."""
        self._history = _SampleHistory()
        # Band-passed chunks not Wk-weighted yet, (band, filters restarted here). Only the
        # wk_rms measure needs the weighting, so it runs in large batches (see _weigh_backlog).
        self._wk_backlog: list = []
        self._wk_backlog_samples = 0
        self._wk_zi = None
        self._raw: list = []  # samples before the rate is known (they decide the filters)
        # Filtered samples not in the history yet: stamps, band-passed values, warm-up over,
        # and the indices at which the filters restarted (a gap).
        self._new_t: list = []
        self._new_band: list = []
        self._new_valid: list = []
        self._new_restarts: list = []
        self._last_added_ns: Optional[int] = None
        self._band_sos = self._wk_sos = None
        self._restart_filters()

    def _restart_filters(self) -> None:
        # (The Wk filter restarts where its backlog says so: see _weigh_backlog.)
        self._band_state = self._gravity_state = None
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
        Once the IMU rate is known, each sample is filtered as it arrives.
        """
        t_ns = int(t_ns)
        if self._last_added_ns is not None and t_ns - self._last_added_ns > self.max_gap_ns:
            self._gaps += 1
        self._last_added_ns = t_ns
        if self.rate_hz is None:
            self._raw.append((t_ns, accel, quat_xyzw))
            if len(self._raw) >= _RATE_SAMPLES:
                self._design_from_raw()
            return
        self._filter_sample(t_ns, accel, quat_xyzw)
        if len(self._new_t) >= _MAX_QUEUED_SAMPLES:
            self._flush()

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
        # Per-sample filtering in Python floats: coefficients as tuples, one per section
        # (b0, b1, b2, a1, a2; a0 is 1), and the steady-state start per unit input.
        self._band_sections = tuple((float(b0), float(b1), float(b2), float(a1), float(a2))
                                    for b0, b1, b2, _, a1, a2 in self._band_sos)
        self._band_zi_per_unit = signal.sosfilt_zi(self._band_sos)
        # First-order low-pass of the specific force: its direction is "up" (gravity dominates
        # the average; vibration and manoeuvres average out over gravity_tau_s).
        # y[n] = alpha x[n] + (1 - alpha) y[n - 1], started in steady state on the first sample.
        dt_s = 1.0 / self.rate_hz
        alpha = dt_s / (self.gravity_tau_s + dt_s)
        self._gravity_alpha = float(alpha)
        self._gravity_a1 = float(alpha - 1.0)  # denominator 1 + a1 z^-1
        self._gravity_zi_per_unit = float(
            signal.lfilter_zi(np.array([alpha]), np.array([1.0, alpha - 1.0]))[0])
        self._warmup_ns = self.warmup_s * NS_PER_S
        raw, self._raw = self._raw, []
        for t_ns, accel, quat_xyzw in raw:
            self._filter_sample(t_ns, accel, quat_xyzw)

    def _filter_sample(self, t_ns: int, accel, quat_xyzw) -> None:
        """Steps 1-3 of the module docstring for one sample; the result waits in self._new_*.

        The arithmetic is that of scipy's lfilter / sosfilt loops (direct form II transposed),
        operation for operation, so the values are the same as filtering the whole stream with
        them: bit for bit, and independent of how often the history is asked for.
        """
        if self._last_ns is not None and t_ns - self._last_ns > self.max_gap_ns:
            self._restart_filters()  # a gap (counted in add()): start again, warm up again
        ax, ay, az = float(accel[0]), float(accel[1]), float(accel[2])
        gravity = self._gravity_state
        if gravity is None:  # steady state on this sample: no start-up transient
            unit = self._gravity_zi_per_unit
            gravity = self._gravity_state = [unit * ax, unit * ay, unit * az]
        alpha, a1 = self._gravity_alpha, self._gravity_a1
        gx = gravity[0] + alpha * ax
        gy = gravity[1] + alpha * ay
        gz = gravity[2] + alpha * az
        gravity[0], gravity[1], gravity[2] = -a1 * gx, -a1 * gy, -a1 * gz
        up = None
        if quat_xyzw is not None and self.gravity_source != 'estimate':
            up = _up_from_orientation(quat_xyzw)
        if up is None:  # no usable orientation: up is the direction of the low-passed force
            norm = math.sqrt(gx * gx + gy * gy + gz * gz)
            up = (gx / norm, gy / norm, gz / norm) if norm > 1e-6 else (0.0, 0.0, 1.0)
        ux, uy, uz = up
        # (x, z first, then y: the order in which np.einsum summed this dot product when the
        # samples were filtered in numpy batches, so labels stay bit for bit what they were.)
        vertical = (ax * ux + az * uz) + ay * uy
        state = self._band_state
        if state is None:  # steady state on this sample
            state = self._band_state = [[float(unit * vertical) for unit in section]
                                        for section in self._band_zi_per_unit]
            self._started_ns = t_ns
            self._new_restarts.append(len(self._new_t))
        value = vertical
        for (b0, b1, b2, a1, a2), z in zip(self._band_sections, state):
            out = b0 * value + z[0]
            z[0] = b1 * value - a1 * out + z[1]
            z[1] = b2 * value - a2 * out
            value = out
        self._new_t.append(t_ns)
        self._new_band.append(value)
        self._new_valid.append(t_ns - self._started_ns >= self._warmup_ns)
        self._last_ns = t_ns

    def _weigh_backlog(self) -> None:
        """Wk-weight the band-passed samples of the backlog, in order, into the history.

        The weighting filter is causal with state carried between calls, so filtering the
        backlog in one batch per filter run gives the same values as filtering each small batch
        as it came (one scipy call per ~10 samples cost more than the arithmetic)."""
        chunks, self._wk_backlog = self._wk_backlog, []
        self._wk_backlog_samples = 0
        outputs = []
        first = 0
        while first < len(chunks):
            end = first + 1  # a run of chunks without a filter restart in between
            while end < len(chunks) and not chunks[end][1]:
                end += 1
            if chunks[first][1]:  # the filters (re)started here
                self._wk_zi = signal.sosfilt_zi(self._wk_sos) * 0.0
            band = np.concatenate([chunk for chunk, _ in chunks[first:end]])
            weighted, self._wk_zi = signal.sosfilt(self._wk_sos, band, zi=self._wk_zi)
            outputs.append(weighted)
            first = end
        if outputs:
            # The backlog is the newest samples of the history (older ones may be dropped).
            weighted = np.concatenate(outputs)
            live = min(weighted.shape[0], len(self._history))
            if live:
                self._history.wk[-live:] = weighted[-live:]

    def _flush(self) -> None:
        """Move the filtered samples into the history (and the Wk backlog); drop old history."""
        if not self._new_t:
            return
        t = np.array(self._new_t, dtype=np.int64)
        band = np.array(self._new_band, dtype=np.float64)
        self._history.append(t, band, None, np.array(self._new_valid, dtype=bool))
        bounds = self._new_restarts + [t.shape[0]]
        if bounds[0] != 0:
            bounds.insert(0, 0)
        restarts = set(self._new_restarts)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            self._wk_backlog.append((band[lo:hi], lo in restarts))
        self._wk_backlog_samples += t.shape[0]
        self._new_t, self._new_band, self._new_valid, self._new_restarts = [], [], [], []
        if self._wk_backlog_samples >= _MAX_QUEUED_SAMPLES:  # bounded memory
            self._weigh_backlog()
        self._history.drop_before(int(self._history.t[-1]) - self.history_ns)

    def signal_between(self, t0_ns: int, t1_ns: int) -> tuple:
        """(t_ns, band-passed vertical m/s^2, Wk-weighted m/s^2) for stamps in [t0, t1]."""
        self._flush()
        self._weigh_backlog()
        history = self._history
        lo = int(np.searchsorted(history.t, t0_ns, side='left'))
        hi = int(np.searchsorted(history.t, t1_ns, side='right'))
        return history.t[lo:hi].copy(), history.band[lo:hi].copy(), history.wk[lo:hi].copy()

    def shock(self, t0_ns: int, t1_ns: int, measure: str = 'rms') -> tuple:
        """(shock m/s^2 or None, reason) over [t0, t1].

        reason is '' on success, 'pending' when the IMU has not reached t1 yet (ask again later),
        otherwise why there is no value: 'imu_missing', 'imu_gap', 'imu_warmup'.
        """
        values, reasons = self.shocks([t0_ns], [t1_ns], measure)
        return (None if reasons[0] else float(values[0])), reasons[0]

    def shocks(self, t0_ns, t1_ns, measure: str = 'rms') -> tuple:
        """`shock` over many windows [t0_ns[k], t1_ns[k]] at once (the labeler asks for every
        crossing that completed): (values (K,) m/s^2, NaN where none; reasons, list of K str)."""
        if measure not in SHOCK_MEASURES:
            raise ValueError(f'shock measure must be one of {SHOCK_MEASURES}, got {measure!r}')
        t0 = np.asarray(t0_ns, dtype=np.int64).reshape(-1)
        t1 = np.asarray(t1_ns, dtype=np.int64).reshape(-1)
        self._flush()
        if measure == 'wk_rms':
            self._weigh_backlog()
        history = self._history
        t = history.t
        values = np.full(t0.shape[0], np.nan)
        if t.shape[0] == 0 or not t0.shape[0]:
            return values, ['pending'] * t0.shape[0]
        signal_values = history.band if measure != 'wk_rms' else history.wk
        codes = np.empty(t0.shape[0], dtype=np.int8)
        kernels.window_shocks(t, signal_values, history.valid, t0, t1, int(self.max_gap_ns),
                              measure == 'peak', values, codes)
        return values, [_SHOCK_REASONS[code] for code in codes.tolist()]
