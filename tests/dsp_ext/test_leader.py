"""Who leads: the one rule (global maximum of the pooled r(τ) profile, per window and pooled), the Boker peak
height, and SyncParams' peak-window and leader-span checks."""

from __future__ import annotations

import numpy as np
import pytest

from dsp_ext.errors import DspError
from dsp_ext.reference import window_values_reference
from dsp_ext.synchrony import (
    METRIC_VALUE_NAMES,
    POOLED_VALUE_NAMES,
    LeaderPool,
    StreamingWcc,
    SyncParams,
    leader,
    session_leadership,
    wcc,
)
from hil.physiology import DyadSimulator, Segment, SimConfig

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


# ---------------------------------------------------------------------------------------------------------
# the ONE rule over time: the maximum of the pooled (trailing mean Fisher-z) profile, LeaderPool


def _peak_profile(p: SyncParams, lag_s: float, height: float = 0.8, width_s: float = 2.0) -> np.ndarray:
    """A smooth r(τ) profile with its maximum ``height`` at ``lag_s``."""
    tau = p.lags / p.rate_hz
    return height * np.exp(-0.5 * ((tau - lag_s) / width_s) ** 2)


def test_pooled_leader_reads_the_mean_profile_not_each_window():
    """Every third window's own maximum is a spurious peak at −1 s (r 0.7), the others peak at the true +3 s
    (r 0.6): the per-window rule names the client in those windows; the pooled rule names the therapist at
    +3 s in every window once fewer than ~45 % of the pooled windows are spurious (from window 10 on)."""
    p = SyncParams()
    good = _peak_profile(p, 3.0, 0.6) + _peak_profile(p, -1.0, 0.2, 0.5)
    bad = _peak_profile(p, 3.0, 0.3) + _peak_profile(p, -1.0, 0.7, 0.5)
    prof = np.array([bad if k % 3 == 0 else good for k in range(300)])
    r, lag_s, lead = LeaderPool(p).push(prof)
    own = window_values_reference(bad, p)
    assert own["leader"] == -1.0 and own["max_lag_s"] == -1.0  # the window alone: wrong side
    assert lead[0] == -1.0 and lag_s[0] == -1.0  # the first pool is that window alone
    assert lead[3] == -1.0  # 2 of 4 pooled windows spurious: the spurious peak still wins
    assert np.all(lead[10:] == 1.0) and np.all(lag_s[10:] == 3.0)
    # pooled r is tanh of the mean z at the chosen lag (here over the whole pool of 120 windows at the end)
    z3 = np.arctanh(prof[-120:, p.lag + 12])
    assert r[-1] == pytest.approx(np.tanh(z3.mean()), abs=1e-12)


def test_pooled_leader_switches_when_the_pool_holds_more_new_windows():
    """200 therapist-led windows (+2 s), then mirrored client-led ones (−2 s). With 120 windows pooled, the
    mean profile is symmetric when 60 of each are in the pool (window 259: a tie up to rounding, either side)
    and the client leads from window 260 on: the rule's temporal resolution is the pool span."""
    p = SyncParams()
    assert p.leader_windows == 120
    prof = np.array([_peak_profile(p, 2.0) if k < 200 else _peak_profile(p, -2.0) for k in range(400)])
    _, lag_s, lead = LeaderPool(p).push(prof)
    assert np.all(lead[:259] == 1.0) and np.all(lead[260:] == -1.0)
    assert np.all(lag_s[:200] == 2.0) and np.all(lag_s[320:] == -2.0)
    short = LeaderPool(SyncParams(leader_span_s=30.0)).push(prof)[2]  # 30 windows: the switch at 15-16 new ones
    assert np.all(short[:214] == 1.0) and np.all(short[215:] == -1.0)
    single = SyncParams(leader_span_s=0.5)  # shorter than the step: each window alone (= the kernels' leader)
    assert single.leader_windows == 1
    np.testing.assert_array_equal(LeaderPool(single).push(prof)[2], np.where(np.arange(400) < 200, 1.0, -1.0))


def test_pooled_leader_nan_windows_and_threshold():
    """NaN windows are left out of the pool (a lag needs at least half the pooled windows finite); a pool of
    NaN windows only gives NaN; a pooled maximum below leader_min_r names no one."""
    p = SyncParams(leader_span_s=10.0)
    prof = np.array([_peak_profile(p, -4.0)] * 30)
    prof[10:14] = np.nan  # 4 of 10 pooled windows missing: still named
    prof[20:30] = np.nan  # the last windows' pools are all NaN from window 29 on
    r, lag_s, lead = LeaderPool(p).push(prof)
    assert np.all(lead[:25] == -1.0) and np.all(lag_s[:25] == -4.0)
    assert np.all(np.isnan(lead[25:])) and np.all(np.isnan(r[25:]))  # more than half of the pool NaN
    weak = LeaderPool(SyncParams(leader_span_s=10.0, leader_min_r=0.5)).push(0.5 * prof[:10])
    assert np.all(weak[2] == 0.0) and np.all(weak[1] == -4.0)  # r 0.4 < 0.5: no leader, lag still given


def test_pooled_values_do_not_depend_on_chunking_and_stream_equals_batch():
    """LeaderPool gives bit-identical numbers however the windows are split; the unit's StreamingWcc publishes
    the same pooled values as the offline wcc (exactly here; the kernels' profiles differ by ~1e-15, so only a
    near-tie in a pooled profile could flip a lag)."""
    rng = np.random.default_rng(21)
    t, c = coupled_pair(rng, 2400, -20, coupling=0.6, phi=0.95)
    t[900:960] = np.nan
    res = wcc(t, c)
    pool, parts, k = LeaderPool(res.params), [], 0
    while k < len(res):
        m = int(rng.integers(0, 40))
        parts.append(pool.push(res.r[k : k + m]))
        k += m
    for q, name in enumerate(POOLED_VALUE_NAMES):
        np.testing.assert_array_equal(np.concatenate([x[q] for x in parts]), getattr(res, name), err_msg=name)
    s, rows, i, j = StreamingWcc(), [], 0, 0
    while i < len(t) or j < len(c):
        a, b = int(rng.integers(0, 200)), int(rng.integers(0, 200))
        rows += s.push(t[i : i + a], c[j : j + b])
        i, j = i + a, j + b
    assert [w for w, _ in rows] == res.window_start.tolist()
    assert list(rows[0][1]) == list(METRIC_VALUE_NAMES)
    np.testing.assert_allclose([v["pooled_r"] for _, v in rows], res.pooled_r, rtol=0, atol=1e-12)
    for name in ("pooled_lag_s", "pooled_leader"):
        np.testing.assert_array_equal([v[name] for _, v in rows], getattr(res, name), err_msg=name)
    assert res.window_values(5)["pooled_leader"] == res.pooled_leader[5]
    s.reset()
    again = s.push(t, c)
    assert again[0][1]["pooled_lag_s"] == rows[0][1]["pooled_lag_s"]  # reset: a fresh pool


@pytest.mark.parametrize("seed,mode,lag_s,gain", [(2, "client_led", 6.0, 0.7), (1, "therapist_led", 8.0, 0.6)])
def test_pooled_leader_on_simulated_eda(seed, mode, lag_s, gain):
    """The project's dyad simulator (10 min, true EDA features): the pooled rule names the right leader in
    ≥ 95 % of the windows with a median lag error ≤ 0.25 s, where the window read alone does worse."""
    sign = 1.0 if mode == "therapist_led" else -1.0
    truth = DyadSimulator(SimConfig(seed=seed, duration_s=600.0, schedule=(Segment(0.0, 600.0, mode, lag_s, gain),))).truth
    res = wcc(truth.feature("therapist/eda"), truth.feature("client/eda"))
    hit = np.mean(res.pooled_leader == sign)
    assert hit >= 0.95 and hit > np.mean(res.leader == sign) + 0.04
    assert np.median(np.abs(res.pooled_lag_s - sign * lag_s)) <= 0.25
    assert session_leadership(res).therapist_share == pytest.approx(np.mean(res.pooled_leader == 1.0))


def test_pooled_leader_names_no_one_more_often_without_coupling():
    """Uncoupled simulated dyads: a window alone names a leader in most windows (band-limited series correlate
    by chance); the pooled rule far less often — still not rarely, so read it beside a significance test."""
    truth = DyadSimulator(SimConfig(seed=3, duration_s=600.0, schedule=(Segment(0.0, 600.0, "uncoupled", 0.0, 0.0),))).truth
    res = wcc(truth.feature("therapist/eda"), truth.feature("client/eda"))
    assert np.mean(res.leader != 0) > 0.8
    assert np.mean(res.pooled_leader != 0) < 0.5


def test_syncparams_leader_span():
    assert SyncParams(leader_span_s=120.0).leader_windows == 120
    assert SyncParams(inc_s=7.0, leader_span_s=120.0).leader_windows == 17  # whole windows in the span
    assert SyncParams(inc_s=0.25, leader_span_s=60.0).leader_windows == 240
    for bad in (0.0, -1.0, float("nan"), "60"):
        with pytest.raises(DspError, match="leader_span_s"):
            SyncParams(leader_span_s=bad)
    with pytest.raises(DspError, match="shape"):
        LeaderPool(SyncParams()).push(np.zeros((3, 5)))
