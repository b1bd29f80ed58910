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

# The compiled loops behind scipy.signal.sosfilt and lfilter. The labeler filters a few IMU
# samples per call (every label needs the signal up to its window's end), and the public
# functions' argument handling (~60 us per call) cost more than the filtering; calling the
# loops they call gives the same numbers. Private to SciPy, so the public functions are the
# fallback if they move.
try:
    from scipy.signal._sigtools import _linear_filter as _lfilter_loop
    from scipy.signal._sosfilt import _sosfilt as _sosfilt_loop
except ImportError:  # pragma: no cover - another SciPy layout
    _lfilter_loop = _sosfilt_loop = None


def _sosfilt(sos: np.ndarray, x: np.ndarray, zi: np.ndarray) -> tuple:
    """signal.sosfilt(sos, x, zi=zi) for 1-D float64 x: (y, zf)."""
    if _sosfilt_loop is None or sos.dtype != np.float64 or not sos.flags.c_contiguous:
        return signal.sosfilt(sos, x, zi=zi)
    y = np.array(x, dtype=np.float64, order='C').reshape(1, -1)  # filtered in place
    state = np.array(zi, dtype=np.float64, order='C').reshape(1, -1, 2)
    _sosfilt_loop(sos, y, state)
    return y.reshape(-1), state.reshape(np.shape(zi))


def _lfilter_axis0(b: np.ndarray, a: np.ndarray, x: np.ndarray, zi: np.ndarray) -> tuple:
    """signal.lfilter(b, a, x, axis=0, zi=zi) for float64 b, a (a[0] == 1), x and zi: (y, zf)."""
    if _lfilter_loop is None:
        return signal.lfilter(b, a, x, axis=0, zi=zi)
    return _lfilter_loop(b, a, np.asarray(x, dtype=np.float64), 0,
                         np.asarray(zi, dtype=np.float64))

NS_PER_S = 1_000_000_000
SHOCK_MEASURES = ('peak', 'rms', 'wk_rms')
GRAVITY_SOURCES = ('auto', 'orientation', 'estimate')

# Samples used to measure the IMU rate before the filters are designed.
_RATE_SAMPLES = 20
_MAX_QUEUED_SAMPLES = 2000  # filter at least this often even when nobody asks (memory)
_NO_QUAT = (np.nan,) * 4


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
        self._raw: list = []  # samples waiting to be filtered (and for the rate estimate)
        self._last_added_ns: Optional[int] = None
        self._band_sos = self._wk_sos = None
        self._restart_filters()

    def _restart_filters(self) -> None:
        # (The Wk filter restarts where its backlog says so: see _weigh_backlog.)
        self._band_zi = self._gravity_state = None
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
        Samples are queued and filtered in batches when a shock is asked for: a scipy filter
        call per 200 Hz sample would cost more than everything else the labeler does.
        """
        t_ns = int(t_ns)
        if self._last_added_ns is not None and t_ns - self._last_added_ns > self.max_gap_ns:
            self._gaps += 1
        self._last_added_ns = t_ns
        self._raw.append((t_ns, accel, quat_xyzw))
        if self.rate_hz is None:
            if len(self._raw) >= _RATE_SAMPLES:
                self._design_from_raw()
        elif len(self._raw) >= _MAX_QUEUED_SAMPLES:
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
        # First-order low-pass of the specific force: its direction is "up" (gravity dominates
        # the average; vibration and manoeuvres average out over gravity_tau_s).
        dt_s = 1.0 / self.rate_hz
        alpha = dt_s / (self.gravity_tau_s + dt_s)
        self._gravity_ba = (np.array([alpha]), np.array([1.0, alpha - 1.0]))

    def _process_queue(self) -> None:
        """Filter every queued sample, one vectorised pass per gap-free segment."""
        raw, self._raw = self._raw, []
        t = np.fromiter((sample[0] for sample in raw), dtype=np.int64, count=len(raw))
        accel = np.array([sample[1] for sample in raw], dtype=float).reshape(-1, 3)
        if self.gravity_source != 'estimate':  # one array call, not a row assignment each
            quat = np.array([_NO_QUAT if sample[2] is None else sample[2] for sample in raw],
                            dtype=float).reshape(-1, 4)
        else:
            quat = np.full((len(raw), 4), np.nan)
        previous = np.concatenate([[self._last_ns if self._last_ns is not None else t[0]],
                                   t[:-1]])
        breaks = np.flatnonzero(t - previous > self.max_gap_ns)
        bounds = sorted({0, len(raw), *breaks.tolist()})
        gap_starts = set(breaks.tolist())
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if lo in gap_starts:  # counted in add(); here the filters restart
                self._restart_filters()
            if hi > lo:
                self._process_segment(t[lo:hi], accel[lo:hi], quat[lo:hi])

    def _process_segment(self, t: np.ndarray, accel: np.ndarray, quat: np.ndarray) -> None:
        b, a = self._gravity_ba
        if self._gravity_state is None:  # (1, 3): filter state per axis
            self._gravity_state = signal.lfilter_zi(b, a)[:, None] * accel[0][None, :]
        # All three axes in one call (per-call overhead dominates the ~10-sample batches).
        gravity, self._gravity_state = _lfilter_axis0(b, a, accel,
                                                     zi=self._gravity_state)
        norm = np.linalg.norm(gravity, axis=1)
        up = np.where(norm[:, None] > 1e-6, gravity / np.maximum(norm, 1e-6)[:, None],
                      np.array([0.0, 0.0, 1.0]))
        has_quat = np.isfinite(quat).all(axis=1)
        if has_quat.any():
            q = quat[has_quat] / np.linalg.norm(quat[has_quat], axis=1)[:, None]
            x, y, z, w = q.T
            up[has_quat] = np.column_stack([2 * (x * z - y * w), 2 * (y * z + x * w),
                                            1 - 2 * (x * x + y * y)])
        vertical = np.einsum('ij,ij->i', accel, up)
        starting = self._band_zi is None
        if starting:
            # Start the filters in steady state on this sample, so there is no start-up step.
            self._band_zi = signal.sosfilt_zi(self._band_sos) * vertical[0]
            self._started_ns = int(t[0])
        band, self._band_zi = _sosfilt(self._band_sos, vertical, self._band_zi)
        self._wk_backlog.append((band, starting))
        self._wk_backlog_samples += band.shape[0]
        valid = t - self._started_ns >= self.warmup_s * NS_PER_S
        self._history.append(t, band, None, valid)
        self._last_ns = int(t[-1])

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
            weighted, self._wk_zi = _sosfilt(self._wk_sos, band, self._wk_zi)
            outputs.append(weighted)
            first = end
        if outputs:
            # The backlog is the newest samples of the history (older ones may be dropped).
            weighted = np.concatenate(outputs)
            live = min(weighted.shape[0], len(self._history))
            if live:
                self._history.wk[-live:] = weighted[-live:]

    def _flush(self) -> None:
        if not (self._raw and self.rate_hz is not None):
            return
        self._process_queue()
        if self._wk_backlog_samples >= _MAX_QUEUED_SAMPLES:  # bounded memory
            self._weigh_backlog()
        if len(self._history):
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
        if measure not in SHOCK_MEASURES:
            raise ValueError(f'shock measure must be one of {SHOCK_MEASURES}, got {measure!r}')
        self._flush()
        if measure == 'wk_rms':
            self._weigh_backlog()
        history = self._history
        t = history.t
        if t.shape[0] == 0 or t[-1] < t1_ns:
            return None, 'pending'
        lo = int(np.searchsorted(t, t0_ns, side='left'))
        hi = int(np.searchsorted(t, t1_ns, side='right'))
        if hi - lo < 2 or lo == 0 and t[0] > t0_ns:
            return None, 'imu_missing'
        # The window must be covered: no step between samples (edges included) larger than a gap.
        first, last = lo - 1 if lo > 0 else lo, min(hi, t.shape[0] - 1)
        span = t[first:last + 1]
        if (np.diff(span) > self.max_gap_ns).any():
            return None, 'imu_gap'
        if not history.valid[lo:hi].all():
            return None, 'imu_warmup'
        if measure == 'peak':
            return float(np.max(np.abs(history.band[lo:hi]))), ''
        values = history.band[lo:hi] if measure == 'rms' else history.wk[lo:hi]
        return float(np.sqrt(np.mean(values * values))), ''
