"""HRV epochs: RMSSD, RSA (Porges–Bohrer) and HF power on synthetic series with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import savgol_coeffs

from dsp_ext import _hrv
from dsp_ext.errors import DspError
from dsp_ext.filters import butter_sos
from dsp_ext.hrv import (
    HrvStream,
    hf_power_ln_ms2,
    hrv_epochs,
    rmssd_ms,
    rsa_front_reference,
    savgol_detrend_coeffs,
)
from dsp_ext.ppg import ppg_features

from .conftest import KINDS, adversarial
from .test_eda_ppg import _ppg_signal


def _push_grid(ibi_grid: np.ndarray, chunks: int = 1) -> list:
    s = HrvStream()
    out = []
    idx = np.arange(len(ibi_grid))
    for gi, gv in zip(np.array_split(idx, chunks), np.array_split(ibi_grid, chunks), strict=True):
        out += s.push(np.empty(0), np.empty(0), np.empty(0, dtype=bool), gi, gv)
    return out


def test_rmssd_matches_definition():
    ibi = np.array([800.0, 810, 790, 805, 830, 820])
    assert rmssd_ms(ibi) == pytest.approx(np.sqrt(np.mean(np.diff(ibi) ** 2)))
    valid = np.array([1, 1, 0, 1, 1, 1], dtype=bool)  # drops the two differences touching index 2
    d = np.array([10.0, 25.0, -10.0])
    assert rmssd_ms(ibi, valid) == pytest.approx(np.sqrt(np.mean(d**2)))
    assert np.isnan(rmssd_ms([800.0, 810.0]))


def test_savgol_weights_equal_scipy():
    np.testing.assert_allclose(savgol_detrend_coeffs(), savgol_coeffs(21, 3), atol=1e-12)


def test_rsa_follows_respiratory_modulation_and_ignores_slow_drift():
    t = np.arange(4 * 300) / 4.0
    fast = _push_grid(900 + 40 * np.sin(2 * np.pi * 0.25 * t))
    slow = _push_grid(900 + 40 * np.sin(2 * np.pi * 0.05 * t))
    small = _push_grid(900 + 10 * np.sin(2 * np.pi * 0.25 * t))
    assert len(fast) == 9  # 300 s minus the 5 s detrend latency: 9 complete 30-s epochs
    rsa = np.array([e.rsa_ln_ms2 for e in fast[1:]])
    assert np.all(np.abs(rsa - np.log(40**2 / 2)) < 0.4)
    assert np.all(np.array([e.rsa_ln_ms2 for e in slow[1:]]) < rsa.min() - 8)
    # four times the amplitude = 16 times the variance: ln difference ln 16
    np.testing.assert_allclose(rsa - np.array([e.rsa_ln_ms2 for e in small[1:]]), np.log(16), atol=1e-6)
    assert [e.start_index for e in fast[:3]] == [0, 120, 240]


def test_hf_power_of_a_sine():
    t = np.arange(60) / 2.0
    x = 30 * np.sin(2 * np.pi * 0.25 * t)
    assert hf_power_ln_ms2(x) == pytest.approx(np.log(30**2 / 2), abs=0.1)
    y = x.copy()
    y[:40] = np.nan
    assert np.isnan(hf_power_ln_ms2(y))


def test_hrv_streaming_equals_batch_and_nan_epochs():
    t = np.arange(4 * 200) / 4.0
    g = 850 + 30 * np.sin(2 * np.pi * 0.3 * t) + np.random.default_rng(1).normal(0, 5, len(t))
    g[4 * 65 : 4 * 85] = np.nan  # 20 of the 30 s of epoch 2 invalid
    one = _push_grid(g)
    many = _push_grid(g, chunks=37)
    fields = ("epoch", "start_index", "rmssd_ms", "rsa_ln_ms2", "hf_ln_ms2", "n_beats")
    np.testing.assert_array_equal(
        [[getattr(e, f) for f in fields] for e in one], [[getattr(e, f) for f in fields] for e in many]
    )
    assert np.isnan(one[2].rsa_ln_ms2) and np.isfinite(one[1].rsa_ln_ms2)
    h = HrvStream()
    h.push(np.empty(0), np.empty(0), np.empty(0, dtype=bool), np.array([3, 4]), np.ones(2))
    with pytest.raises(DspError, match="jumps"):
        h.push(np.empty(0), np.empty(0), np.empty(0, dtype=bool), np.array([6, 7]), np.ones(2))
    with pytest.raises(DspError):
        HrvStream(epoch_s=2.0)


def test_hrv_from_ppg_pipeline():
    """RSA-modulated beats → PPG → beats → IBI grid → RSA: the modulation is recovered end to end."""
    rate = 100.0
    beats = [1.0]
    while beats[-1] < 178.0:
        beats.append(beats[-1] + 0.85 + 0.05 * np.sin(2 * np.pi * 0.25 * beats[-1]))
    beats_arr = np.array(beats)
    x = _ppg_signal(rate, beats_arr, 180.0, seed=3)
    feats = ppg_features(x, rate)
    ep = hrv_epochs(feats)
    assert len(ep) >= 4
    true_rmssd = np.sqrt(np.mean(np.diff(np.diff(beats_arr) * 1000) ** 2))
    for e in ep[1:]:
        assert e.n_beats > 25
        assert e.rmssd_ms == pytest.approx(true_rmssd, rel=0.25)
        assert 6.0 < e.rsa_ln_ms2 < 8.5  # ~50 ms modulation: ln(50²/2) ≈ 7.1


def test_utc_grid_alignment_lines_epochs_up():
    """With t0_ns the grid is UTC k * 250 ms: a stream starting mid-epoch gets a partial (NaN) first epoch
    and later epochs equal to those of a stream that started on the epoch boundary."""
    rate = 100.0
    beats = [1.0]
    while beats[-1] < 208.0:
        beats.append(beats[-1] + 0.85 + 0.05 * np.sin(2 * np.pi * 0.25 * beats[-1]))
    x = _ppg_signal(rate, np.array(beats), 210.0, seed=4)
    t0 = 1_700_000_010_000_000_000  # a multiple of 30 s: epoch boundary
    base = hrv_epochs(ppg_features(x, rate, t0_ns=t0), t0_ns=t0)
    late = 1_700_000_010_000_000_000 + 10 * 10**9  # the same samples, stamped 10 s later
    shifted = hrv_epochs(ppg_features(x, rate, t0_ns=late), t0_ns=late)
    assert base[0].start_index == t0 // 250_000_000
    assert shifted[0].start_index == base[0].start_index and np.isnan(shifted[0].rsa_ln_ms2)
    assert np.isfinite(base[1].rsa_ln_ms2) and base[1].start_index % 120 == 0
    for e in shifted[1:]:
        assert e.start_index % 120 == 0 and 6.0 < e.rsa_ln_ms2 < 8.5


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(4))
def test_rsa_kernel_equals_numpy_twin_for_any_chunking(kind, seed):
    """Detrend + band-pass + epochs of ``_hrv.RsaKernel`` (pushed in random chunks of the 4 Hz grid) against
    ``rsa_front_reference`` on the 2 Hz series (the even grid points)."""
    rng = np.random.default_rng(seed)
    n = int(rng.choice([0, 1, 2, 20, 41, 42, 43, 200, 700, 2000]))
    x = 850.0 + 40.0 * adversarial(rng, n, kind)
    k_first = int(rng.choice([0, 1, 7, 118, 119, 6_800_000_001]))
    gi = np.arange(k_first, k_first + n, dtype=np.int64)
    epoch_n = int(rng.choice([16, 60]))
    w = savgol_detrend_coeffs()
    sos = butter_sos(2, (0.12, 0.40), 2.0, "bandpass")
    before = x.copy()
    kern = _hrv.RsaKernel(epoch_n, w, sos)
    cuts = np.sort(rng.integers(0, n + 1, size=int(rng.integers(0, 60))))
    got = []
    for gs, xs in zip(np.split(gi, cuts), np.split(x, cuts), strict=True):
        got += kern.push(gs, np.ascontiguousarray(xs))
    assert np.array_equal(x, before, equal_nan=True)  # input never mutated
    even = gi % 2 == 0
    first_m = -(-k_first // 2)
    ref = rsa_front_reference(x[even], first_m, epoch_n, w, sos)
    msg = f"kind={kind} seed={seed} n={n} k_first={k_first} epoch_n={epoch_n} cuts={cuts.tolist()}"
    assert [e for e, _, _ in got] == [e for e, _, _ in ref], msg
    for (e, r1, b1), (_, r2, b2) in zip(got, ref, strict=True):
        for a, b in ((r1, r2), (b1, b2)):
            assert np.array_equal(np.isfinite(a), np.isfinite(b)), f"{msg} epoch={e}"
            fin = np.isfinite(a)
            assert np.array_equal(a[~fin], b[~fin], equal_nan=True), f"{msg} epoch={e}"
            if fin.any():
                assert np.max(np.abs(a[fin] - b[fin])) <= 1e-9, f"{msg} epoch={e}"
    if kind == "constant" and got:  # a constant series has a zero residual once the fit is complete
        r = np.concatenate([r for _, r, _ in got])
        assert np.all(r[np.isfinite(r)] == 0.0), msg


def test_rsa_kernel_input_checks():
    w = savgol_detrend_coeffs()
    sos = butter_sos(2, (0.12, 0.40), 2.0, "bandpass")
    k = _hrv.RsaKernel(60, w, sos)
    with pytest.raises(DspError):
        k.push(np.arange(3, dtype=np.int64), np.ones(3, dtype=np.float32))
    with pytest.raises(DspError):
        k.push(np.arange(3, dtype=np.int32), np.ones(3))
    with pytest.raises(DspError):
        k.push(np.arange(3, dtype=np.int64), np.ones(4))
    with pytest.raises(ValueError):
        _hrv.RsaKernel(60, w[:20], sos)
    s = HrvStream()
    with pytest.raises(DspError):
        s.push(np.array([1.0]), np.empty(0), np.empty(0, dtype=bool), np.array([0, 1]), np.ones(2))


def test_epochs_count_the_beats_left_out():
    """Each epoch says how many of its beats end an invalid interval (flagged by the beat-quality index or the
    correction): those are out of RMSSD, and the count is what the console and the report show."""
    n = 4 * 100
    g = np.full(n, 800.0)
    beat_s = np.arange(0.4, 99.0, 0.8)
    ibi = 800 + 20 * np.sin(beat_s)
    valid = np.ones(len(beat_s), dtype=bool)
    bad = (beat_s > 31) & (beat_s < 36)  # five seconds of flagged beats in epoch 1
    valid[bad] = False
    h = HrvStream()
    epochs = h.push(beat_s, ibi, valid, np.arange(n), g)
    assert [e.epoch for e in epochs][:3] == [0, 1, 2]
    assert epochs[1].n_invalid == int(bad.sum()) >= 5 and epochs[0].n_invalid == 0 == epochs[2].n_invalid
    assert epochs[1].n_beats == int(((beat_s >= 30) & (beat_s < 60)).sum())
