"""The live heart rate (``PpgStream(live=True)`` / ``dsp_ext.ppg.LiveHr``): causal, no look-ahead, chunking-free,
robust to a missed or an extra beat, NaN without beats, and as good as the corrected series for synchrony."""

from __future__ import annotations

import numpy as np
import pytest

from dsp_ext.grid import GridClock
from dsp_ext.ppg import LiveHr, LiveHrReference, PpgStream, ppg_features
from dsp_ext.synchrony import wcc

from .test_eda_ppg import _beats, _ppg_signal

RATE = 100.0


def _live(x: np.ndarray, chunks: list[np.ndarray] | None = None, **kw) -> tuple[np.ndarray, np.ndarray]:
    s = PpgStream(RATE, live=True, **kw)
    parts = [s.push(p) for p in (chunks if chunks is not None else [x])]
    return (np.concatenate([p.live_index for p in parts]), np.concatenate([p.live_hr_bpm for p in parts]))


def test_streaming_any_chunks_equals_batch():
    rng = np.random.default_rng(11)
    x = _ppg_signal(RATE, _beats(rng, 90.0, 75.0), 90.0)
    x[4000:4050] = np.nan
    k_b, hr_b = _live(x)
    for seed in range(3):
        cuts = np.sort(np.random.default_rng(seed).integers(0, len(x), size=60))
        k_s, hr_s = _live(x, np.split(x, cuts))
        np.testing.assert_array_equal(k_s, k_b)
        np.testing.assert_array_equal(hr_s, hr_b)
    # the corrected outputs are unchanged by live=True
    a, b = ppg_features(x, RATE), ppg_features(x, RATE, live=True)
    np.testing.assert_array_equal(a.hr_bpm, b.hr_bpm)
    np.testing.assert_array_equal(a.beat_s, b.beat_s)
    assert not len(a.live_index)


def test_no_look_ahead_and_no_waiting():
    """Every grid point is out as soon as the sample at its time is in, and its value never changes when
    later samples arrive (it is the same as in the full record)."""
    rng = np.random.default_rng(3)
    x = _ppg_signal(RATE, _beats(rng, 60.0, 66.0), 60.0)
    k_full, hr_full = _live(x)
    s = PpgStream(RATE, live=True)
    n_out = 0
    for i in range(len(x)):
        f = s.push(x[i : i + 1])
        n_out += len(f.live_index)
        # grid point k sits at sample 25 k (4 Hz grid, 100 Hz): out exactly when sample 25 k has arrived
        assert n_out == i // 25 + 1
        np.testing.assert_array_equal(f.live_hr_bpm, hr_full[n_out - len(f.live_index) : n_out])
    assert n_out == len(k_full)


def test_follows_the_rate_with_a_constant_delay():
    rng = np.random.default_rng(8)
    beats = _beats(rng, 120.0, 72.0)
    x = _ppg_signal(RATE, beats, 120.0)
    k, hr = _live(x)
    t = k / 4.0
    ibi = np.diff(beats)
    # truth: instantaneous rate of the interval ending at each beat, linear between beats, DELAY_S later
    truth = np.interp(t - LiveHr.DELAY_S, beats[1:], 60.0 / ibi, left=np.nan, right=np.nan)
    ok = (t > 8.0) & np.isfinite(truth)
    assert np.isfinite(hr[ok]).all()
    err = np.abs(hr[ok] - truth[ok])
    # the detector's beat times are good to ~10 ms (test_ppg_beats_and_heart_rate): ~1 bpm at 72 bpm
    assert np.median(err) < 1.0 and np.percentile(err, 99) < 4.0, np.percentile(err, [50, 99])


@pytest.mark.parametrize("fault", ["missed", "extra"])
def test_a_missed_or_extra_beat_is_not_followed(fault):
    rng = np.random.default_rng(21)
    beats = _beats(rng, 90.0, 70.0)
    i = int(np.searchsorted(beats, 45.0))
    if fault == "missed":
        beats = np.delete(beats, i)  # the pulse is not there: one interval of ~2 IBI
    else:
        beats = np.insert(beats, i, 0.5 * (beats[i - 1] + beats[i]))  # a second pulse between two
    x = _ppg_signal(RATE, beats, 90.0)
    k, hr = _live(x)
    near = (k / 4.0 > 40.0) & (k / 4.0 < 52.0)
    assert np.isfinite(hr[near]).all()
    # the rate is ~70 bpm with 5 % sinus variation; a missed beat would read ~35, an extra one ~140
    assert hr[near].min() > 55.0 and hr[near].max() < 90.0, (hr[near].min(), hr[near].max())


def test_no_beats_gives_nan_after_the_hold():
    rng = np.random.default_rng(4)
    x = _ppg_signal(RATE, _beats(rng, 80.0, 70.0), 80.0)
    x[3000:5000] = np.nan  # contact lost from 30 s to 50 s
    k, hr = _live(x)
    t = k / 4.0
    assert np.isfinite(hr[(t > 10) & (t < 29)]).all()
    gone = (t > 30.0 + LiveHr.DELAY_S + LiveHr.HOLD_S + 1.0) & (t < 50.0)
    assert gone.any() and np.isnan(hr[gone]).all()
    assert np.isfinite(hr[(t > 62.0)]).all()  # back a few seconds after contact returns


def test_rate_change_is_followed_after_rejections():
    """A genuine step of the rate (70 -> 100 bpm) is rejected at first, then followed."""
    b1 = 1.0 + np.cumsum(np.full(50, 60.0 / 70.0))
    b2 = b1[-1] + np.cumsum(np.full(80, 0.6))
    beats = np.concatenate([b1, b2])
    x = _ppg_signal(RATE, beats, float(beats[-1] + 1.0))
    k, hr = _live(x)
    t = k / 4.0
    assert abs(np.nanmedian(hr[(t > 20) & (t < b1[-1])]) - 70.0) < 1.0
    assert abs(np.nanmedian(hr[t > b1[-1] + 10.0]) - 100.0) < 1.0


def test_live_hr_recovers_leader_like_the_corrected_series():
    """Simulated dyad with a known leader on heart rate: the peak lag from the live series matches the
    truth in the median, and the leader's side as often as with the corrected series (within 5 points)."""
    from hil.physiology import DyadSimulator, Segment, SimConfig

    for mode, lag in (("therapist_led", 3.0), ("client_led", 2.0)):
        sim = DyadSimulator(SimConfig(seed=1, duration_s=600.0, schedule=(Segment(0, 600, mode, lag, 0.9, "hr"),)))
        data = sim.read(600.0)
        live, corr = [], []
        for role in ("therapist", "client"):
            f = ppg_features(data[f"{role}/ppg"], RATE, live=True)
            live.append(f.live_hr_bpm)
            corr.append(f.hr_bpm)
        expected = lag if mode == "therapist_led" else -lag
        side = {}
        for name, (t, c) in (("live", live), ("corrected", corr)):
            n = min(len(t), len(c))
            r = wcc(t[:n], c[:n])
            lags = r.inphase_lag_s[np.isfinite(r.inphase_lag_s)]
            assert len(lags) > 400
            assert abs(np.median(lags) - expected) <= 0.25, (name, mode, np.median(lags))
            side[name] = np.mean(np.sign(lags) == np.sign(expected))
        assert side["live"] >= 0.9 and side["live"] >= side["corrected"] - 0.05, side


@pytest.mark.parametrize("seed", range(6))
def test_kernel_equals_its_python_twin(seed):
    """``LiveHr`` (Cython kernel) against ``LiveHrReference`` (plain Python), exactly, on adversarial beat
    streams: jittered rates, extra and missed beats, rate jumps (history restarts), long gaps (hold), bursts
    of beats in one push, empty pushes, NaN beats, a UTC grid far from zero, random chunkings, and beats
    flagged by the quality index (``ok`` False; half the seeds)."""
    rng = np.random.default_rng(seed)
    rate = [100.0, 64.0, 250.0][seed % 3]
    n = 40_000
    ibi = rng.choice([0.8, 0.5, 1.3], p=[0.7, 0.2, 0.1]) * rate * (1 + 0.05 * rng.standard_normal(400))
    ibi[rng.random(400) < 0.05] *= 0.5  # extra beats
    ibi[rng.random(400) < 0.05] *= 2.0  # missed beats
    ibi[rng.random(400) < 0.02] += 5 * rate  # gaps longer than HOLD_S
    beats = np.cumsum(np.abs(ibi))
    beats = beats[beats < n - 1]
    beats[rng.random(beats.size) < 0.01] = np.nan
    decided = np.minimum(np.nan_to_num(beats, nan=0.0).astype(np.int64) + rng.integers(0, 80, beats.size), n - 1)
    decided = np.maximum.accumulate(decided)
    ok = rng.random(beats.size) > (0.1 if seed % 2 == 0 else 0.0)
    t0_ns = None if seed % 2 else 1_764_000_000_123_456_789 + seed * 37_000_000
    clock = GridClock(t0_ns)
    cuts = np.unique(rng.integers(0, n, size=rng.integers(5, 400)))
    ref, fast = LiveHrReference(rate, clock), LiveHr(rate, clock)
    got_r, got_f = [], []
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, n], strict=True):
        sel = (decided >= a) & (decided < b)
        for impl, out in ((ref, got_r), (fast, got_f)):
            out.append(impl.push(beats[sel].copy(), decided[sel].copy(), int(b), ok[sel].copy()))
    k_r = np.concatenate([k for k, _ in got_r])
    k_f = np.concatenate([k for k, _ in got_f])
    h_r = np.concatenate([h for _, h in got_r])
    h_f = np.concatenate([h for _, h in got_f])
    np.testing.assert_array_equal(k_f, k_r)
    np.testing.assert_array_equal(h_f, h_r)  # NaN where NaN, and bit-identical values elsewhere
    assert np.isfinite(h_r).mean() > 0.5 and np.isnan(h_r).any()
    assert all(k.dtype == np.int64 and h.dtype == np.float64 for k, h in got_f)
