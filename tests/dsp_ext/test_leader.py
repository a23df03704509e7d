"""Who leads: the one rule (global maximum of r(τ)), the Boker peak height, and SyncParams' peak-window check."""

from __future__ import annotations

import numpy as np
import pytest

from dsp_ext.errors import DspError
from dsp_ext.reference import window_values_reference
from dsp_ext.synchrony import StreamingWcc, SyncParams, leader, session_leadership, wcc

from .conftest import coupled_pair


def _bumpy_profile(lag: int, true_col: int) -> np.ndarray:
    """A profile with a small local maximum near τ = 0 (r 0.3 at +1.5 s) and the true peak (r 0.95) farther
    out: the shape that fools Boker's nearest-peak rule at lags of 3 s and more."""
    tau = np.arange(-lag, lag + 1)
    prof = 0.95 * np.exp(-0.5 * ((tau - (true_col - lag)) / 6.0) ** 2) - 0.1
    prof += 0.3 * np.exp(-0.5 * ((tau - 6) / 1.2) ** 2)
    return prof


@pytest.mark.parametrize("true_s", [6.0, -8.0, 3.0])
def test_rule_on_a_profile_with_a_near_zero_bump(true_s):
    p = SyncParams()
    col = p.lag + int(true_s * p.rate_hz)
    prof = _bumpy_profile(p.lag, col)
    v = window_values_reference(prof, p)
    assert v["max_lag_s"] == true_s and v["leader"] == np.sign(true_s)
    assert v["max_r"] == pytest.approx(prof.max())
    assert leader(v["max_r"], v["max_lag_s"]) == np.sign(true_s)
    if abs(true_s) >= 6:  # Boker's nearest local maximum is the bump at +1.5 s
        assert v["inphase_lag_s"] == 1.5
        high = window_values_reference(prof, SyncParams(peak_min_r=0.5))
        assert high["inphase_lag_s"] == pytest.approx(true_s)  # a minimum height skips the bump


def test_leader_values_and_threshold():
    out = leader(np.array([0.8, 0.8, 0.29, 0.9, np.nan]), np.array([3.0, -2.0, 5.0, 0.0, 1.0]))
    np.testing.assert_array_equal(out, [1.0, -1.0, 0.0, 0.0, np.nan])
    assert leader(0.29, 5.0, min_r=0.2) == 1.0


@pytest.mark.parametrize("lag_samples,sign", [(32, 1.0), (-24, -1.0), (8, 1.0)])
def test_kernels_name_the_leader_of_coupled_series(lag_samples, sign):
    """AR(1) dyads with the follower 2-8 s behind: the kernels' ``leader`` (offline and streaming) names the
    leader and its lag in (nearly) every window."""
    rng = np.random.default_rng(abs(lag_samples))
    t, c = coupled_pair(rng, 1600, lag_samples, coupling=0.8, phi=0.95)
    res = wcc(t, c)
    assert np.mean(res.leader == sign) >= 0.95
    assert np.median(np.abs(res.max_lag_s - lag_samples / 4.0)) <= 0.25
    np.testing.assert_array_equal(res.leader, leader(res.max_r, res.max_lag_s))
    s = StreamingWcc()
    rows = s.push(t[:700], c[:650]) + s.push(t[700:], c[650:])
    np.testing.assert_array_equal([v["leader"] for _, v in rows], res.leader)
    np.testing.assert_allclose([v["max_lag_s"] for _, v in rows], res.max_lag_s)
    lead = session_leadership(res)
    assert lead.verdict == ("therapist" if sign > 0 else "client")
    assert lead.lag_s == pytest.approx(lag_samples / 4.0, abs=0.25)


def test_uncoupled_noise_names_no_leader_in_most_windows():
    rng = np.random.default_rng(3)
    res = wcc(rng.standard_normal(1200), rng.standard_normal(1200))
    assert np.mean(res.leader == 0) >= 0.9  # white noise: max r over 81 lags stays below 0.3
    assert session_leadership(res).verdict == "none"


def test_syncparams_refuses_a_peak_window_wider_than_the_lag_range():
    with pytest.raises(DspError, match="wider than the lag range"):
        SyncParams(lag_s=0.5, peak_window=7)  # 2 lags each side: 5 lags, a 7-lag neighbourhood never fits
    assert SyncParams(lag_s=0.5, peak_window=5).lag == 2
    assert SyncParams(lag_s=0.0, peak_window=3).lag == 0  # zero-lag only: no peaks asked for
    for bad in (-0.1, 1.5, True, float("nan")):
        with pytest.raises(DspError, match="peak_min_r"):
            SyncParams(peak_min_r=bad)
