"""The Wk weighting of VibrationFilter runs scipy.signal.sosfilt over backlogs of samples, its
state carried from one batch to the next (public `zi` argument): however the samples are
batched, the weighted signal is that of one pass of the filter over all of them."""

import numpy as np
from scipy import signal

from terrain_ssl.core.vibration import VibrationFilter, wk_weighting_sos

RATE_HZ = 200.0


def weighted_history(ask_every):
    """Feed 20 s of a bumpy ride; ask for a Wk shock every `ask_every` samples (each request
    weighs the backlog so far: one sosfilt call per batch). (band, wk) of the whole history."""
    rng = np.random.default_rng(21)
    vibration = VibrationFilter(history_s=100.0)
    n = int(20 * RATE_HZ)
    stamps = (np.arange(n) * 1e9 / RATE_HZ).astype(np.int64)
    vertical = rng.normal(0.0, 1.0, n) + 3.0 * np.sin(2 * np.pi * 5.0 * stamps / 1e9)
    for k, (t_ns, a) in enumerate(zip(stamps.tolist(), vertical.tolist())):
        vibration.add(t_ns, (0.0, 0.0, 9.81 + a), (0.0, 0.0, 0.0, 1.0))
        if ask_every and k % ask_every == ask_every - 1:
            vibration.shock(t_ns - 50_000_000, t_ns, 'wk_rms')
    _, band, wk = vibration.signal_between(int(stamps[0]), int(stamps[-1]))
    return vibration, band, wk


def test_wk_weighting_in_batches_equals_one_pass():
    vibration, band, wk = weighted_history(ask_every=0)  # one batch at the end
    one_pass, _ = signal.sosfilt(wk_weighting_sos(vibration.rate_hz), band,
                                 zi=np.zeros((wk_weighting_sos(vibration.rate_hz).shape[0], 2)))
    scale = np.abs(one_pass).max()
    assert scale > 1.0
    np.testing.assert_allclose(wk, one_pass, rtol=0, atol=1e-12 * scale)
    for ask_every in (7, 13, 250):
        _, chunked_band, chunked_wk = weighted_history(ask_every)
        np.testing.assert_allclose(chunked_band, band, rtol=0, atol=1e-12 * scale)
        np.testing.assert_allclose(chunked_wk, one_pass, rtol=0, atol=1e-12 * scale)
