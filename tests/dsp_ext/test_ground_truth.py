"""Simulated dyads with a known leader and lag: synchrony recovers them; uncoupled pairs stay insignificant."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from dsp_ext.stats import leadership_asymmetry, session_summary, surrogate_test
from dsp_ext.synchrony import StreamingWcc, SyncParams, wcc

_SOS = signal.butter(2, 0.15, fs=4.0, output="sos")  # slow physiological fluctuations at 4 Hz


def _slow_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    x = signal.sosfilt(_SOS, rng.standard_normal(n + 400))[400:]
    return x / x.std()


def dyad(rng: np.random.Generator, n: int, lag: int, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Therapist and client series at 4 Hz; the follower copies the leader ``|lag|`` samples later plus its
    own slow noise. ``lag > 0``: the therapist leads; ``lag < 0``: the client leads."""
    a = abs(lag)
    d = _slow_noise(rng, n + a)
    lead = d[a : a + n]
    follow = d[:n] + noise * _slow_noise(rng, n)
    return (lead, follow) if lag >= 0 else (follow, lead)


@pytest.mark.parametrize("lag", [-6, -4, -2, 2, 4, 6])
def test_peak_lag_and_leader_recovered(lag):
    hits = side = total = 0
    asym = []
    for seed in range(4):
        t, c = dyad(np.random.default_rng(seed * 31 + lag + 100), 2400, lag)  # 10 minutes
        res = wcc(t, c)
        ok = np.isfinite(res.inphase_lag_s)
        hits += int(np.sum(np.abs(res.inphase_lag_s[ok] * 4 - lag) <= 1))
        side += int(np.sum(np.sign(res.inphase_lag_s[ok]) == np.sign(lag)))
        total += len(res)
        asym.append(leadership_asymmetry(res).session_asymmetry)
    assert hits / total >= 0.95, f"lag {lag}: peak within one sample in {hits / total:.1%} of windows"
    assert side / total >= 0.95, f"lag {lag}: leader side right in {side / total:.1%} of windows"
    assert all(np.sign(a) == np.sign(lag) for a in asym), asym


def test_streaming_recovers_the_same_leader():
    t, c = dyad(np.random.default_rng(77), 1200, -3)
    s = StreamingWcc()
    lags = [v["inphase_lag_s"] for i in range(0, 1200, 10) for _, v in s.push(t[i : i + 10], c[i : i + 10])]
    assert len(lags) == SyncParams().n_windows(1200)
    assert np.mean(np.abs(np.array(lags) * 4 + 3) <= 1) >= 0.95


def test_coupled_dyads_significant_uncoupled_not():
    p = SyncParams(win_s=15.0, lag_s=5.0)
    sig_coupled = sig_uncoupled = 0
    for s in range(10):
        t, c = dyad(np.random.default_rng(500 + s), 960, 4, noise=1.5)  # 4 minutes, weak coupling
        sig_coupled += surrogate_test(t, c, p, n=99, seed=s).p_value <= 0.05
    assert sig_coupled >= 9, f"only {sig_coupled} of 10 coupled dyads significant"
    seeds = range(40)
    for s in seeds:
        rng = np.random.default_rng(700 + s)
        t, u = _slow_noise(rng, 960), _slow_noise(rng, 960)
        sig_uncoupled += surrogate_test(t, u, p, n=99, seed=s).p_value <= 0.05
    assert sig_uncoupled <= 0.1 * len(seeds), f"{sig_uncoupled} of {len(seeds)} uncoupled pairs significant"


def test_session_summary_on_known_lag():
    t, c = dyad(np.random.default_rng(3), 2400, 4)
    s = session_summary(wcc(t, c))
    assert s.inphase_lag_s_mean == pytest.approx(1.0, abs=0.25)
    assert s.inphase_lag_s_sd < 0.5
    assert s.inphase_z_mean > 0.8


@pytest.mark.parametrize("method", ["segment", "pseudo"])
def test_other_surrogates_keep_uncoupled_pairs_insignificant(method):
    p = SyncParams(win_s=15.0, lag_s=5.0)
    significant = 0
    seeds = range(20)
    for s in seeds:
        rng = np.random.default_rng(1900 + s)
        t, u = _slow_noise(rng, 960), _slow_noise(rng, 960)
        partners = [_slow_noise(rng, 1000) for _ in range(8)]
        res = surrogate_test(t, u, p, n=99, seed=s, method=method, partners=partners)
        significant += res.p_value <= 0.05
    assert significant <= 0.1 * len(seeds), (
        f"{method}: {significant} of {len(seeds)} uncoupled pairs significant"
    )
