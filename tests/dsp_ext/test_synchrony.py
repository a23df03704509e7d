"""Windowed cross-correlation: definitions, kernel == numpy reference, streaming == batch, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from core.errors import DyadsyncError
from dsp_ext import _wcc_np
from dsp_ext.errors import DspError
from dsp_ext.reference import corr_reference, wcc_reference, window_values_reference
from dsp_ext.synchrony import METRIC_VALUE_NAMES, WINDOW_VALUE_NAMES, StreamingWcc, SyncParams, WccResult, wcc

from .conftest import KINDS, adversarial, coupled_pair

PEAK_FIELDS = tuple(n for n in WINDOW_VALUE_NAMES if n.startswith(("inphase", "antiphase")))
MAX_FIELDS = ("max_lag_s", "leader")  # decided by which lag holds the maximum: flips on a near tie


def _close(x: np.ndarray, y: np.ndarray, atol: float, msg: str) -> None:
    np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=f"{msg}: NaN pattern")
    np.testing.assert_allclose(x, y, rtol=0, atol=atol, equal_nan=True, err_msg=msg)


def _near_tie(prof: np.ndarray, half: int, eps: float = 1e-9) -> bool:
    """True if a peak decision on this profile could flip under a perturbation of ``eps``."""
    if np.any(np.abs(prof[np.isfinite(prof)]) < eps):
        return True
    for d in range(1, 2 * half + 1):
        a, b = prof[:-d], prof[d:]
        if np.any(np.abs(a - b) < eps):
            return True
    return False


def _near_tie_max(prof: np.ndarray, leader_min_r: float, eps: float = 1e-9) -> bool:
    """True if the global maximum's lag or the leader could flip under a perturbation of ``eps``."""
    f = prof[np.isfinite(prof)]
    if not len(f):
        return False
    top = f.max()
    return bool(np.sum(f >= top - eps) > 1 or abs(top - leader_min_r) < eps)


def assert_same(a: WccResult, b: WccResult, ctx: str, atol: float = 1e-9) -> None:
    """``a`` equals ``b``; peak fields may differ only in windows whose profile has a near tie, and there
    ``a``'s peaks must be what the reference peak picking finds on ``a``'s own profile."""
    assert len(a) == len(b), f"{ctx}: {len(a)} vs {len(b)} windows"
    np.testing.assert_array_equal(a.window_start, b.window_start, err_msg=ctx)
    _close(a.r, b.r, atol, f"{ctx}: r")
    half = a.params.peak_window // 2
    for name in WINDOW_VALUE_NAMES:
        x, y = getattr(a, name), getattr(b, name)
        if name in PEAK_FIELDS + MAX_FIELDS:
            differ = ~((np.isnan(x) & np.isnan(y)) | (np.abs(x - y) <= atol))
            for k in np.flatnonzero(differ):
                tie = _near_tie(b.r[k], half) if name in PEAK_FIELDS else _near_tie_max(b.r[k], a.params.leader_min_r)
                assert tie, (
                    f"{ctx}: {name} window {k}: {x[k]} vs {y[k]}, profile {b.r[k]}"
                )
                own = window_values_reference(a.r[k], a.params)[name]
                _close(np.array([x[k]]), np.array([own]), atol, f"{ctx}: {name} window {k} (tie)")
            x, y = x[~differ], y[~differ]
        _close(x, y, atol, f"{ctx}: {name}")


def test_corr_reference_matches_numpy_corrcoef(rng):
    x, y = rng.standard_normal(50), rng.standard_normal(50)
    assert corr_reference(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert np.isnan(corr_reference(np.full(10, 3.0), y[:10]))  # constant side
    x2 = x.copy()
    x2[:26] = np.nan  # 26 of 50 invalid: more than half
    assert np.isnan(corr_reference(x2, y))
    x2[25] = 1.0  # exactly half invalid is still computed
    assert np.isfinite(corr_reference(x2, y))


def test_defaults_and_sample_counts():
    p = SyncParams()
    assert (p.rate_hz, p.win_s, p.inc_s, p.lag_s, p.peak_window) == (4.0, 30.0, 1.0, 10.0, 5)
    assert (p.win, p.inc, p.lag, p.n_lags) == (120, 4, 40, 81)
    assert p.n_windows(199) == 0 and p.n_windows(0) == 0
    assert p.n_windows(120 + 80) == 1 and p.n_windows(120 + 80 + 4) == 2
    with pytest.raises(AttributeError):
        p.win_s = 10.0  # frozen


@pytest.mark.parametrize(
    "kw",
    [
        {"rate_hz": 0.0},
        {"win_s": 0.25},
        {"inc_s": 0.0},
        {"lag_s": -1.0},
        {"peak_window": 4},
        {"peak_window": 1},
        {"win_s": 30.1},
        {"rate_hz": float("nan")},
    ],
)
def test_bad_params_raise(kw):
    with pytest.raises(DspError) as ei:
        SyncParams(**kw)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, DyadsyncError)


def test_bad_inputs_raise(rng):
    x = rng.standard_normal(300)
    with pytest.raises(DspError, match="lengths differ"):
        wcc(x, x[:-1])
    with pytest.raises(DspError, match="1-D"):
        wcc(x.reshape(3, 100), x.reshape(3, 100))
    with pytest.raises(DspError, match="real numbers"):
        wcc(np.array(["a"] * 300), x)
    with pytest.raises(DspError, match="SyncParams"):
        wcc(x, x, params={"win_s": 30})
    s = StreamingWcc()
    with pytest.raises(DspError, match="1-D"):
        s.push(x.reshape(2, 150), x[:150])


@pytest.mark.parametrize("lag_samples", [-3, -2, 0, 2, 3])
def test_sign_convention_and_peak_lag(lag_samples):
    """τ > 0: therapist leads. A client that copies the therapist d samples later peaks at τ = +d."""
    rng = np.random.default_rng(100 + lag_samples)
    t, c = coupled_pair(rng, 1200, lag_samples, coupling=0.9, phi=0.8)
    res = wcc(t, c)
    lag_s = lag_samples / 4.0
    hit = np.abs(res.inphase_lag_s - lag_s) <= 0.25 + 1e-12
    assert hit.mean() >= 0.95, f"in-phase peak at {lag_s} s in only {hit.mean():.2%} of windows"
    if lag_samples > 0:
        assert np.mean(res.therapist_led > res.client_led) >= 0.9
    elif lag_samples < 0:
        assert np.mean(res.client_led > res.therapist_led) >= 0.9
    assert np.all(res.inphase_r > 0)
    assert np.all(np.isnan(res.antiphase_r) | (res.antiphase_r < 0))


def test_anti_phase_is_kept_apart():
    rng = np.random.default_rng(7)
    t, c = coupled_pair(rng, 800, 3, coupling=0.9, phi=0.8)
    res = wcc(t, -c)
    assert np.mean(np.abs(res.antiphase_lag_s - 0.75) <= 0.25) >= 0.85
    assert np.median(res.antiphase_lag_s) == 0.75
    assert np.all(res.antiphase_r < 0)
    assert np.median(res.antiphase_r) < -0.7
    assert np.mean(res.r0 < 0) > 0.9  # never an absolute value


def test_profile_equals_lagged_corrcoef(rng):
    t, c = rng.standard_normal(260), rng.standard_normal(260)
    p = SyncParams()
    res = wcc(t, c, p)
    for k in (0, len(res) - 1):
        s = res.window_start[k]
        for tau in (-40, -1, 0, 7, 40):
            exp = np.corrcoef(t[s : s + p.win], c[s + tau : s + tau + p.win])[0, 1]
            assert res.r[k, tau + p.lag] == pytest.approx(exp, abs=1e-12), (k, tau)
    v = res.window_values(0)
    assert list(v) == list(METRIC_VALUE_NAMES)  # the kernel values, then the pooled leadership values
    assert all(isinstance(x, float) for x in v.values())
    assert v["r0"] == res.r0[0]
    with pytest.raises(IndexError):
        res.window_values(len(res))


def test_nan_rules():
    rng = np.random.default_rng(3)
    p = SyncParams(rate_hz=1.0, win_s=10, inc_s=1, lag_s=2)
    t, c = rng.standard_normal(60), rng.standard_normal(60)
    t[20:30] = 5.0  # constant therapist window starting at 20
    c[40:46] = np.nan  # 6 of 10 invalid for windows covering 40..46 fully
    res = wcc(t, c, p)
    k = list(res.window_start).index(20)
    assert np.all(np.isnan(res.r[k])) and np.isnan(res.r0[k]) and np.isnan(res.therapist_led[k])
    k2 = list(res.window_start).index(36)
    assert np.isnan(res.r[k2, p.lag + 2])  # C[38..48) holds 6 NaN of 10: more than half invalid
    assert np.isfinite(res.r[k2, p.lag - 2])  # C[34..44) holds 4 NaN
    k3 = list(res.window_start).index(35)
    assert np.isfinite(res.r[k3, p.lag])  # C[35..45) holds 5 NaN: exactly half is still computed
    assert np.isnan(res.r[k3, p.lag + 1])  # C[36..46) holds 6
    assert not np.any(res.r == 0.0)


@pytest.mark.parametrize(
    "win,inc,lag,pw",
    [(2, 1, 0, 3), (3, 2, 1, 3), (5, 1, 2, 3), (7, 3, 4, 5), (10, 5, 3, 5), (12, 1, 6, 7), (6, 13, 2, 3)],
)
def test_engines_match_reference_adversarial(win, inc, lag, pw):
    p = SyncParams(rate_hz=1.0, win_s=win, inc_s=inc, lag_s=lag, peak_window=pw, peak_min_r=0.1 * (lag % 3))
    rng = np.random.default_rng(win * 1000 + inc * 100 + lag)
    span = win + 2 * lag
    for n, kt, kc in itertools.product((0, 1, win - 1, span - 1, span, span + inc, 61), KINDS, KINDS[::3]):
        t, c = adversarial(rng, n, kt), adversarial(rng, n, kc)
        t_copy, c_copy = t.copy(), c.copy()
        ctx = f"win={win} inc={inc} lag={lag} pw={pw} n={n} kinds=({kt},{kc})"
        ref = wcc_reference(t, c, p)
        got = wcc(t, c, p)
        assert_same(got, ref, ctx)
        np.testing.assert_array_equal(t, t_copy, err_msg=ctx)
        np.testing.assert_array_equal(c, c_copy, err_msg=ctx)


def _stream(p: SyncParams, t: np.ndarray, c: np.ndarray, rng: np.random.Generator, uneven: bool) -> WccResult:
    s = StreamingWcc(p)
    out: list[tuple[int, dict[str, float]]] = []
    profs = []
    it = jt = 0
    while it < len(t) or jt < len(c):
        a = int(rng.integers(0, 40))
        b = int(rng.integers(0, 40)) if uneven else a
        out += s.push(t[it : it + a], c[jt : jt + b])
        profs.append(s.last_profiles)
        it, jt = it + a, jt + b
    res = WccResult.empty(p, len(out))
    for k, (start, vals) in enumerate(out):
        res.window_start[k] = start
        for name in WINDOW_VALUE_NAMES:
            getattr(res, name)[k] = vals[name]
    res.r[:] = np.concatenate(profs)
    return res


@pytest.mark.parametrize("uneven", [False, True])
def test_streaming_equals_batch(uneven):
    rng = np.random.default_rng(11 if uneven else 12)
    p = SyncParams()
    t, c = coupled_pair(rng, 1500, 8)
    t[300:340] = np.nan
    c[700:720] = 1e9 + c[700:720]
    batch = wcc(t, c, p)
    res = _stream(p, t, c, rng, uneven)
    assert_same(res, batch, f"uneven={uneven}")
    for kind in KINDS:
        t2, c2 = adversarial(rng, 400, kind), adversarial(rng, 400, "walk")
        assert_same(_stream(p, t2, c2, rng, uneven), wcc(t2, c2, p), f"uneven={uneven} kind={kind}")


def test_streaming_small_windows_uneven_chunks_match_reference():
    """The streaming kernel's sample buffers (append, skip before the first window, trim per block, the
    running count of non-finite client samples) with small windows, pushed in uneven chunks."""
    rng = np.random.default_rng(77)
    for _ in range(40):
        win, inc, lag = int(rng.integers(2, 13)), int(rng.integers(1, 6)), int(rng.integers(0, 6))
        pw = int(rng.choice([q for q in (3, 5, 7) if lag == 0 or q <= 2 * lag + 1]))
        p = SyncParams(rate_hz=1.0, win_s=win, inc_s=inc, lag_s=lag, peak_window=pw)
        n = win + 2 * lag + int(rng.integers(0, 120))
        kt, kc = rng.choice(KINDS, size=2)
        t, c = adversarial(rng, n, str(kt)), adversarial(rng, n, str(kc))
        ctx = f"win={win} inc={inc} lag={lag} pw={pw} n={n} kinds=({kt},{kc})"
        assert_same(_stream(p, t, c, rng, uneven=True), wcc_reference(t, c, p), ctx)


def test_streaming_reset_and_state(rng):
    p = SyncParams()
    s = StreamingWcc(p)
    t, c = rng.standard_normal(600), rng.standard_normal(600)
    first = s.push(t, c)
    assert len(first) == p.n_windows(600)
    assert s.n_samples == (600, 600)
    assert 0 < s.state_nbytes < 1_000_000
    s.reset()
    assert s.n_samples == (0, 0)
    again = s.push(t, c)
    assert [w for w, _ in again] == [w for w, _ in first]
    assert again[3][1]["r0"] == first[3][1]["r0"]
    assert first[0][0] == p.lag


def test_every_small_window_size_matches_reference():
    """Windows of 2..16 samples with random step, lag and peak window, on short adversarial pairs."""
    rng = np.random.default_rng(2024)
    for win in range(2, 17):
        inc, lag = int(rng.integers(1, 6)), int(rng.integers(0, 6))
        pw = int(rng.choice([q for q in (3, 5, 7) if lag == 0 or q <= 2 * lag + 1]))
        pmin, lmin = (float(v) for v in rng.choice([0.0, 0.2, 0.5], size=2))
        p = SyncParams(rate_hz=2.0, win_s=win / 2, inc_s=inc / 2, lag_s=lag / 2, peak_window=pw, peak_min_r=pmin,
                       leader_min_r=lmin)
        n = win + 2 * lag + int(rng.integers(0, 30))
        kt, kc = rng.choice(KINDS, size=2)
        t, c = adversarial(rng, n, str(kt)), adversarial(rng, n, str(kc))
        ctx = f"win={win} inc={inc} lag={lag} pw={pw} n={n} kinds=({kt},{kc})"
        assert_same(wcc(t, c, p), wcc_reference(t, c, p), ctx)
        engine = _wcc_np.WccEngine(p.win, p.inc, p.lag, p.peak_window // 2, p.rate_hz, p.peak_min_r, p.leader_min_r)
        starts, prof, _ = engine.push(np.ascontiguousarray(t, float), np.ascontiguousarray(c, float))
        np.testing.assert_array_equal(starts, wcc(t, c, p).window_start, err_msg=ctx)
        np.testing.assert_allclose(prof, wcc_reference(t, c, p).r, atol=1e-9, equal_nan=True, err_msg=ctx)


def test_streaming_state_stays_bounded():
    rng = np.random.default_rng(6)
    s = StreamingWcc()
    sizes = []
    for _ in range(300):  # 50 minutes in 10-s chunks
        s.push(rng.standard_normal(40), rng.standard_normal(40))
        sizes.append(s.state_nbytes)
    assert max(sizes) < 300_000
    assert max(sizes[150:]) <= max(sizes[:150])  # no growth with session length


@pytest.mark.parametrize("lag_s", [10.0, 40.0])
def test_side_means_with_many_lags_and_r_near_one(lag_s):
    """therapist_led/client_led use log-products over runs of 64 lags: exact for long lag ranges and r ≈ ±1."""
    rng = np.random.default_rng(int(lag_s))
    t = np.cumsum(rng.standard_normal(3000))
    c = -t + rng.standard_normal(3000) * 0.001  # r ≈ −1 (clipped to −0.999) over many lags
    p = SyncParams(win_s=60.0, lag_s=lag_s)
    res = wcc(t, c, p)
    z = np.arctanh(np.clip(res.r, -0.999, 0.999))
    lag = p.lag
    np.testing.assert_allclose(res.therapist_led, np.nanmean(z[:, lag + 1 :], axis=1), atol=1e-12)
    np.testing.assert_allclose(res.client_led, np.nanmean(z[:, :lag], axis=1), atol=1e-12)
    np.testing.assert_allclose(res.client_led_max, np.nanmax(z[:, :lag], axis=1), atol=1e-12)
    assert np.min(res.r) <= -0.999


@pytest.mark.parametrize("kind", ["plain", "offset", "const_runs", "inf", "dense"])
def test_windows_with_missing_samples_match_numpy_twin(kind):
    """Windows that touch missing samples (the masked-count fast path of ``wcc_batch``, with the Welford
    fallback where precision asks for it) equal the numpy twin to 1e-9 at the default parameters."""
    rng = np.random.default_rng(["plain", "offset", "const_runs", "inf", "dense"].index(kind) + 77)
    p = SyncParams()
    t, c = coupled_pair(rng, 1400, 6, coupling=0.6)
    n_gaps = 120 if kind == "dense" else 12
    for x in (t, c):
        x[rng.choice(len(x), n_gaps, replace=False)] = np.nan
        s = int(rng.integers(0, len(x) - 10))
        x[s : s + int(rng.integers(1, 8))] = np.nan  # a short run
    t[:3] = np.nan  # a missing start (the stand-in is the first finite value)
    c[-2:] = np.nan
    if kind == "offset":
        t += 1e9
        c[700:] += 1e6
    elif kind == "const_runs":
        c[300:420] = 2.5  # a constant stretch longer than a window, with gaps in it
        c[350] = np.nan
    elif kind == "inf":
        t[rng.choice(len(t), 5, replace=False)] = np.inf
        c[rng.choice(len(c), 5, replace=False)] = -np.inf
    engine = _wcc_np.WccEngine(p.win, p.inc, p.lag, p.peak_window // 2, p.rate_hz, p.peak_min_r, p.leader_min_r)
    starts, prof, _ = engine.push(t.copy(), c.copy())
    got = wcc(t, c, p)
    ctx = f"kind={kind} win={p.win} inc={p.inc} lag={p.lag} gaps={n_gaps}"
    np.testing.assert_array_equal(starts, got.window_start, err_msg=ctx)
    _close(got.r, prof, 1e-9, ctx)
    assert_same(got, wcc_reference(t, c, p), ctx)
