"""Validate the "who leads" rule on the project's dyad simulator (issue 17; docs/dsp.md "Who leads").

For every lag (1-8 s) x coupling gain (0.4-0.9) it simulates dyads in which one side leads for the whole
session (half therapist-led, half client-led; ``hil.physiology.DyadSimulator``), runs the windowed
cross-correlation on the simulator's true 4 Hz features (EDA and HR), and prints per rule:

* ``hit``: fraction of the coupled windows in which the rule names the right leader ("no leader" is a miss);
* ``cov``: fraction of windows in which the rule names anyone;
* ``err``: median |lag estimate - true lag| in seconds over the windows with an estimate (rules with a lag).

Gain 0 rows are uncoupled dyads (the simulator's ``uncoupled`` mode, 2 x seeds per lag row): there ``hit`` is the
fraction of windows in which the rule names no leader and ``cov`` the fraction in which it names one anyway.

Every window of the session counts, the first ones of a pooled rule (whose pool is still filling) included.

Rules, one column each:

* ``boker``: sign of the nearest in-phase peak's lag (Boker et al. 2002, ``peak_min_r`` = 0);
  ``boker.5``: the same with a minimum peak height of r = 0.5;
* ``max``: the window read alone — the sign of the lag of its global maximum of r when it reaches
  ``leader_min_r`` (the kernels' ``leader``; :func:`dsp_ext.synchrony.leader`);
* ``prom.1``: ``max``, but only when the global maximum stands 0.1 (in r) above the highest r on the other
  side of τ = 0 (a prominence criterion; it trades coverage for precision, hit/cov);
* ``pw``: ``max`` on prewhitened series: each series filtered by its own AR(p) filter, p ≤ 20 chosen by AIC,
  fitted by Yule-Walker (Levinson-Durbin) over the whole session (Box & Jenkins 1976, ch. 11; "double
  prewhitening", Haugh 1976); offline only, the best case for prewhitening; no ``leader_min_r``
  (prewhitened correlations are small); ``pw+pool<S>``: the same on the pooled prewhitened profile;
* ``pool<S>``: **dyadsync's rule** (:class:`dsp_ext.synchrony.LeaderPool`, ``pooled_leader``): the maximum of
  the mean Fisher-z profile of the windows that started in the trailing S seconds (``leader_span_s`` = S);
  the default span is marked with ``*``;
* ``xspec<S>``: a generalized cross-correlation (Knapp & Carter 1976) pooled like ``pool<S>``: each 30-s
  window is demeaned and Hann-tapered, the windows' cross- and auto-spectra are summed over the trailing S
  seconds, and the leader is the sign of the lag of the maximum of the summed cross-covariance over
  ±lag_s, normalized by the summed energies and the tapers' overlap at each lag (a pooled, tapered
  correlation); a leader is named when it reaches ``leader_min_r``. It weights windows by their variance instead of averaging their Fisher z.
  Offline here; not the rule (see docs/dsp.md);
* ``sides``: sign of therapist_led - client_led (rMEA's side means; no lag);
* ``session``: the rule on the session's mean profile (hit = the session verdict is right; one call per dyad).

``--bound`` prints instead what the simulator's data allow on the rule's span (150 s of data) and on 300 s:
the measured therapist-client coherence, the Cramér-Rao bound on the lag of any unbiased estimate (Knapp &
Carter 1976) and the hit rate of an oracle maximum-likelihood cross-correlation that knows the coherence in
advance (docs/dsp.md, "Why the HR goal is out of reach").

Run: ``PYTHONPATH=. .venv/bin/python tools/validate_leader.py [--seeds 6] [--duration 600] [--spans 30,60,120]``
(~4 min with the default 6 seeds on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import os
import sys
from math import erf

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dsp_ext.synchrony import LeaderPool, SyncParams, leader, session_leadership, wcc  # noqa: E402
from hil.physiology import DyadSimulator, Segment, SimConfig  # noqa: E402

LAGS_S = (1, 2, 3, 4, 5, 6, 7, 8)
GAINS = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
AR_MAX_ORDER = 20
PROMINENCE = 0.1


def yule_walker_aic(x: np.ndarray, pmax: int = AR_MAX_ORDER) -> np.ndarray:
    """AR coefficients a_1..a_p of ``x`` (finite samples, mean removed) by Yule-Walker / Levinson-Durbin, the
    order p <= ``pmax`` minimising AIC = n ln(sigma_p^2) + 2p (Akaike 1974)."""
    x = x[np.isfinite(x)]
    x = x - x.mean()
    n = len(x)
    acov = np.array([np.dot(x[: n - k], x[k:]) / n for k in range(pmax + 1)])
    a, e = np.zeros(0), acov[0]
    best, best_aic = a, n * np.log(e)
    for k in range(1, pmax + 1):
        refl = (acov[k] - np.dot(a, acov[k - 1 : 0 : -1])) / e
        a = np.concatenate([a - refl * a[::-1], [refl]])
        e *= 1.0 - refl * refl
        aic = n * np.log(e) + 2 * k
        if aic < best_aic:
            best, best_aic = a.copy(), aic
    return best


def prewhiten(x: np.ndarray) -> np.ndarray:
    """Residuals e[t] = x[t] - sum_j a_j x[t-j] of the series' own AR fit (the first p samples NaN)."""
    a = yule_walker_aic(x)
    y = x - np.nanmean(x)
    out = y.copy()
    for j, aj in enumerate(a, 1):
        out[j:] -= aj * y[:-j]
    out[: len(a)] = np.nan
    return out


def prominent(res, min_gap: float) -> np.ndarray:
    """``leader`` where the global maximum is at least ``min_gap`` above the best r on the other side of τ = 0."""
    lag = res.params.lag
    call = leader(res.max_r, res.max_lag_s, res.params.leader_min_r)
    neg = np.max(np.where(np.isfinite(res.r[:, :lag]), res.r[:, :lag], -np.inf), axis=1)
    pos = np.max(np.where(np.isfinite(res.r[:, lag + 1 :]), res.r[:, lag + 1 :], -np.inf), axis=1)
    other = np.where(call > 0, neg, pos)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(call) & (res.max_r - other >= min_gap), call, 0.0)


def simulate(seed: int, k: int, mode: str, lag_s: float, gain: float, duration_s: float,
             channel: str) -> tuple[np.ndarray, np.ndarray]:
    """The therapist's and client's true 4 Hz ``channel`` features of validation dyad ``seed`` (direction ``k``):
    one lead direction (``mode``) for the whole session."""
    cfg = SimConfig(seed=1000 * seed + int(10 * lag_s) + int(100 * gain) + 500 * k * (gain == 0),
                    duration_s=duration_s, schedule=(Segment(0.0, duration_s, mode, lag_s, gain),))
    truth = DyadSimulator(cfg).truth
    return truth.feature(f"therapist/{channel}"), truth.feature(f"client/{channel}")


def _tapered_spectra(x: np.ndarray, idx: np.ndarray, taper: np.ndarray, nfft: int) -> np.ndarray:
    """One-sided spectra of the demeaned, tapered segments ``x[idx]`` (NaN samples count as 0), zero-padded."""
    seg = np.nan_to_num(x[idx])
    return np.fft.rfft((seg - seg.mean(axis=1, keepdims=True)) * taper, nfft, axis=1)


def _lag_profile(spec: np.ndarray, nfft: int, lag: int, taper: np.ndarray) -> np.ndarray:
    """Cross-covariance at τ = -lag .. lag (τ > 0: client later) from cross-spectra ``spec`` (rows), divided by
    the tapers' overlap at each lag, Σ w(t)w(t+τ) / Σ w², so a pure delay is not pulled toward τ = 0."""
    cc = np.fft.irfft(spec, nfft, axis=1)
    n = len(taper)
    overlap = np.array([np.dot(taper[: n - abs(k)], taper[abs(k):]) for k in range(-lag, lag + 1)]) / np.dot(taper, taper)
    return np.concatenate([cc[:, -lag:], cc[:, : lag + 1]], axis=1) / overlap[None, :]


def pooled_xspec(t: np.ndarray, c: np.ndarray, p: SyncParams) -> tuple[np.ndarray, np.ndarray]:
    """(pooled tapered correlation at its maximum, its lag in s) per window of ``wcc(t, c, p)``: the ``xspec``
    rule above. Windows start where the WCC's do (lag .. n - win - lag, step inc); NaN samples count as 0."""
    w, inc, lag = int(round(p.win_s * p.rate_hz)), int(round(p.inc_s * p.rate_hz)), int(round(p.lag_s * p.rate_hz))
    k_pool = max(1, int(p.leader_span_s // p.inc_s))
    nfft = 1 << int(np.ceil(np.log2(w + lag + 1)))  # zero padding: no circular wrap within ±lag
    starts = np.arange(lag, len(t) - w - lag + 1, inc)
    idx = starts[:, None] + np.arange(w)[None, :]
    taper = np.hanning(w)
    a, b = _tapered_spectra(t, idx, taper, nfft), _tapered_spectra(c, idx, taper, nfft)

    def running(z: np.ndarray) -> np.ndarray:  # sums over the trailing k_pool windows
        cs = np.concatenate([np.zeros((1,) + z.shape[1:], z.dtype), np.cumsum(z, axis=0)])
        lo = np.maximum(np.arange(len(z)) + 1 - k_pool, 0)
        return cs[1:] - cs[lo]

    def energy(z: np.ndarray) -> np.ndarray:  # Σ x² of each window from its one-sided spectrum (Parseval)
        e = np.abs(z) ** 2
        return (2.0 * e.sum(axis=1) - e[:, 0] - e[:, -1]) / nfft

    exx, eyy = running(energy(a)), running(energy(b))
    # Σ over the pool of Σ_t x(t) y(t + τ), normalized by the pooled energies
    with np.errstate(invalid="ignore", divide="ignore"):
        prof = _lag_profile(running(np.conj(a) * b), nfft, lag, taper) / np.sqrt(exx * eyy)[:, None]
    j = np.argmax(prof, axis=1)
    return prof[np.arange(len(j)), j], (j - lag) / p.rate_hz


def _welch(x: np.ndarray, y: np.ndarray, nseg: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Cross- and auto-spectra of ``x``/``y`` summed over Hann segments of ``nseg`` samples (50 % overlap, each
    segment's least-squares line removed; Welch 1967), and the number of segments."""
    starts = np.arange(0, len(x) - nseg + 1, nseg // 2)
    idx = starts[:, None] + np.arange(nseg)[None, :]
    ramp = np.arange(nseg) - (nseg - 1) / 2.0
    taper = np.hanning(nseg)

    def spec(v: np.ndarray) -> np.ndarray:
        seg = np.nan_to_num(v[idx])
        seg = seg - seg.mean(axis=1, keepdims=True)
        seg = seg - np.outer(seg @ ramp / (ramp @ ramp), ramp)
        return np.fft.rfft(seg * taper, axis=1)

    a, b = spec(x), spec(y)
    return (np.conj(a) * b).sum(0), (np.abs(a) ** 2).sum(0), (np.abs(b) ** 2).sum(0), len(starts)


def coherence_bound(channel: str, gain: float, dyads: int, duration_s: float = 3600.0,
                    nseg: int = 1024, rate_hz: float = 4.0) -> tuple[np.ndarray, np.ndarray, float]:
    """(frequencies, magnitude-squared coherence, its null level) of the simulator's ``channel`` at coupling
    ``gain`` (therapist-led, 3-s lag), from ``dyads`` long dyads. Bins whose estimate does not exceed the 99.9 %
    quantile of an uncoupled pair's estimate (a Beta(1, K - 1) variable for K averaged segments) are set to 0,
    the others corrected for the estimate's bias 1/K: the coherence a delay estimator can use."""
    sxy = sxx = syy = 0.0
    k = 0
    for d in range(dyads):
        cfg = SimConfig(seed=90_000 + d, duration_s=duration_s,
                        schedule=(Segment(0.0, duration_s, "therapist_led", 3.0, gain),))
        truth = DyadSimulator(cfg).truth
        a, b, c, n = _welch(truth.feature(f"therapist/{channel}"), truth.feature(f"client/{channel}"), nseg)
        sxy, sxx, syy, k = sxy + a, sxx + b, syy + c, k + n
    k_eff = k / 2.0  # 50 % overlapping Hann segments carry about half as many independent averages
    c2 = np.abs(sxy) ** 2 / (sxx * syy)
    null = 1.0 - 0.001 ** (1.0 / (k_eff - 1.0))
    c2 = np.where(c2 > null, (k_eff * c2 - 1.0) / (k_eff - 1.0), 0.0)
    return np.fft.rfftfreq(nseg, 1.0 / rate_hz), np.clip(c2, 0.0, 0.99), null


def delay_sd_bound(f: np.ndarray, c2: np.ndarray, t_s: float) -> float:
    """Cramér-Rao bound on the SD (s) of any unbiased estimate of a time delay from ``t_s`` seconds of two
    jointly Gaussian series with magnitude-squared coherence ``c2(f)`` (Knapp & Carter 1976):
    var >= [2 T ∫ (2πf)² γ²/(1 - γ²) df]⁻¹. Asymptotic (large time-bandwidth): real estimators on short spans do
    worse, so a goal this bound misses is out of reach of every unbiased rule."""
    df = f[1] - f[0]
    info = 2.0 * t_s * np.sum((2 * np.pi * f) ** 2 * c2 / (1.0 - c2)) * df
    return float(1.0 / np.sqrt(info)) if info > 0 else float("inf")


def oracle_gcc(t: np.ndarray, c: np.ndarray, f_c2: tuple[np.ndarray, np.ndarray], span_s: float,
               p: SyncParams) -> np.ndarray:
    """Lag (s) of the maximum-likelihood generalized cross-correlation (Knapp & Carter 1976; Hannan-Thomson
    weights γ²/(1 - γ²) on the phase of the cross-spectrum) of every ``span_s``-second stretch (1-s steps), with
    the coherence known in advance (``f_c2`` from :func:`coherence_bound`): an oracle no live rule has, the
    best a delay estimate on that span can be expected to do."""
    n, lag = int(span_s * p.rate_hz), int(round(p.lag_s * p.rate_hz))
    nfft = 1 << int(np.ceil(np.log2(n + lag + 1)))
    taper = np.hanning(n)
    starts = np.arange(0, len(t) - n + 1, int(round(p.inc_s * p.rate_hz)))
    idx = starts[:, None] + np.arange(n)[None, :]
    sxy = np.conj(_tapered_spectra(t, idx, taper, nfft)) * _tapered_spectra(c, idx, taper, nfft)
    f, c2 = f_c2
    g = np.interp(np.fft.rfftfreq(nfft, 1.0 / p.rate_hz), f, c2)
    prof = _lag_profile(sxy / np.maximum(np.abs(sxy), 1e-300) * (g / (1.0 - g)), nfft, lag, taper)
    return (np.argmax(prof, axis=1) - lag) / p.rate_hz


def bound_table(channels: list[str], gains: list[float], seeds: int, duration_s: float, params: SyncParams,
                dyads: int) -> None:
    """Print, per channel and coupling, what the simulator's coherence allows on the rule's span (the pooled
    windows' data: ``leader_span_s`` + ``win_s``) and on 5 minutes: the Cramér-Rao SD of the lag, the median
    |lag error| it implies (0.674 SD for a Gaussian estimate), the share of right leaders it implies at a
    1-s lag, and the oracle ML cross-correlation's hit rate and median lag error at lags 1 and 8 s."""
    t_rule = params.leader_span_s + params.win_s
    print(f"\n== bound: what the simulator's coherence allows ({dyads} dyads x 3600 s for the coherence; "
          f"{2 * seeds} dyads x {duration_s:g} s per oracle cell) ==")
    print("chan gain  coh(0.01-0.15Hz)  span_s  CR_sd_s  CR_med_err_s  CR_hit@1s  oracle hit@1s / err  oracle hit@8s / err")
    for channel in channels:
        for gain in gains:
            f, c2, _ = coherence_bound(channel, gain, dyads)
            band = (f >= 0.01) & (f <= 0.15)
            dyads_by_lag = {lag_s: [(simulate(seed, k, mode, lag_s, gain, duration_s, channel), sign)
                                    for seed in range(seeds)
                                    for k, (mode, sign) in enumerate((("therapist_led", 1.0), ("client_led", -1.0)))]
                            for lag_s in (1.0, 8.0)}  # simulated once, read on both spans
            for span in (t_rule, 300.0):
                sd = delay_sd_bound(f, c2, span)
                hit_cr = 0.5 * (1.0 + erf(1.0 / sd / np.sqrt(2.0)))
                cells = []
                for lag_s, dyads_ in dyads_by_lag.items():
                    hits, errs = [], []
                    for (t, c), sign in dyads_:
                        est = oracle_gcc(t, c, (f, c2), span, params)
                        hits.append(np.sign(est) == sign)
                        errs.append(np.abs(np.abs(est) - lag_s))
                    cells.append(f"{np.mean(np.concatenate(hits)):6.3f} / {np.median(np.concatenate(errs)):4.2f}")
                print(f"{channel:>4} {gain:4.1f}  {c2[band].mean():16.3f}  {span:6.0f}  {sd:7.2f}  {0.674 * sd:12.2f}"
                      f"  {hit_cr:9.3f}  {cells[0]:>19}  {cells[1]:>19}", flush=True)


def rule_names(spans: list[float], default_span: float) -> list[str]:
    pooled = [f"pool{s:g}" + ("*" if s == default_span else "") for s in spans]
    return ["boker", "boker.5", "max", "prom.1", "pw", f"pw+pool{default_span:g}", *pooled,
            f"xspec{default_span:g}", "sides", "session"]


def evaluate(lag_s: float, gain: float, seeds: int, duration_s: float, channel: str, params: SyncParams,
             spans: list[float]) -> dict[str, tuple[float, float, float]]:
    kw = _kw(params)
    high = SyncParams(**{**kw, "peak_min_r": 0.5})
    pooled = {s: SyncParams(**{**kw, "leader_span_s": s}) for s in spans}
    pw_params = SyncParams(**{**kw, "leader_min_r": 0.0})
    names = rule_names(spans, params.leader_span_s)
    hits: dict[str, list] = {r: [] for r in names}
    named: dict[str, list] = {r: [] for r in names}
    errs: dict[str, list] = {r: [] for r in names}
    directions = (("therapist_led", 1.0), ("client_led", -1.0)) if gain > 0 else (("uncoupled", 0.0),) * 2
    for seed in range(seeds):
        for k, (mode, sign) in enumerate(directions):
            t, c = simulate(seed, k, mode, lag_s, gain, duration_s, channel)
            res = wcc(t, c, params)
            res_h = wcc(t, c, high)
            res_w = wcc(prewhiten(t), prewhiten(c), pw_params)
            _, w_lag, w_call = LeaderPool(pw_params).push(res_w.r)
            lead = session_leadership(res)
            x_r, x_lag = pooled_xspec(t, c, params)
            calls = {
                "boker": (np.sign(res.inphase_lag_s), res.inphase_lag_s),
                "boker.5": (np.sign(res_h.inphase_lag_s), res_h.inphase_lag_s),
                "max": (leader(res.max_r, res.max_lag_s, params.leader_min_r), res.max_lag_s),
                "prom.1": (prominent(res, PROMINENCE), res.max_lag_s),
                "pw": (leader(res_w.max_r, res_w.max_lag_s, 0.0), res_w.max_lag_s),
                f"pw+pool{params.leader_span_s:g}": (w_call, w_lag),
                f"xspec{params.leader_span_s:g}": (np.where(x_r >= params.leader_min_r, np.sign(x_lag), 0.0), x_lag),
                "sides": (np.sign(res.therapist_led - res.client_led), None),
                "session": (np.array([{"therapist": 1.0, "client": -1.0}.get(lead.verdict, 0.0)]),
                            np.array([lead.lag_s])),
            }
            for s, p in pooled.items():  # the profiles do not depend on the span: one WCC pass, pooled per span
                _, p_lag, p_call = LeaderPool(p).push(res.r)
                if p == params:  # the default span: what wcc() / the unit publish
                    assert np.array_equal(p_call, res.pooled_leader, equal_nan=True)
                calls[f"pool{s:g}" + ("*" if s == params.leader_span_s else "")] = (p_call, p_lag)
            for rule, (call, lag_est) in calls.items():
                call = np.nan_to_num(call, nan=0.0)
                hits[rule].append(call == sign)
                named[rule].append(call != 0)
                if lag_est is not None and sign != 0:
                    e = np.abs(lag_est - sign * lag_s)
                    errs[rule].append(e[np.isfinite(e)])
    out = {}
    for rule in names:
        h = np.concatenate(hits[rule])
        n = np.concatenate(named[rule])
        e = np.concatenate(errs[rule]) if errs[rule] else np.empty(0)
        out[rule] = (float(h.mean()), float(n.mean()), float(np.median(e)) if len(e) else float("nan"))
    return out


def _kw(p: SyncParams) -> dict:
    return {k: getattr(p, k) for k in ("rate_hz", "win_s", "inc_s", "lag_s", "peak_window", "peak_min_r",
                                       "leader_min_r", "leader_span_s")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=6, help="dyads per lead direction and cell (default 6)")
    ap.add_argument("--duration", type=float, default=600.0, help="simulated seconds per dyad (default 600)")
    ap.add_argument("--channels", default="eda,hr")
    ap.add_argument("--spans", default="30,60,90,120,180", help="pool spans (s) to compare with the default")
    ap.add_argument("--lags", default=",".join(map(str, LAGS_S)))
    ap.add_argument("--gains", default=",".join(map(str, GAINS)))
    ap.add_argument("--bound", action="store_true",
                    help="print what the simulator's coherence allows (Cramér-Rao bound, oracle ML) instead")
    ap.add_argument("--bound-dyads", type=int, default=8, help="3600-s dyads for the coherence (default 8)")
    args = ap.parse_args(argv)
    params = SyncParams()
    if args.bound:
        bound_table(args.channels.split(","), [g for g in map(float, args.gains.split(",")) if g > 0],
                    args.seeds, args.duration, params, args.bound_dyads)
        return 0
    spans = sorted({float(s) for s in args.spans.split(",")} | {params.leader_span_s})
    names = rule_names(spans, params.leader_span_s)
    print(f"SyncParams: {params}; windows per cell: {2 * args.seeds} dyads x "
          f"{params.n_windows(int(args.duration * params.rate_hz))}")
    for channel in args.channels.split(","):
        print(f"\n== {channel} (true features) ==  hit / cov / median lag error (s)")
        print(f"{'lag':>3} {'gain':>4} " + " ".join(f"{r:>16}" for r in names))
        worst = {r: 1.0 for r in names}
        err_worst = {r: 0.0 for r in names}
        for lag_s in (float(x) for x in args.lags.split(",")):
            for gain in (float(x) for x in args.gains.split(",")):
                if gain == 0 and lag_s != float(args.lags.split(",")[0]):
                    continue  # uncoupled: no lag, one row
                res = evaluate(lag_s, gain, args.seeds, args.duration, channel, params, spans)
                cells = []
                for r in names:
                    h, cov, e = res[r]
                    cells.append(f"{h:5.3f} {cov:4.2f} {e:5.2f}")
                    if gain >= 0.6:
                        worst[r] = min(worst[r], h)
                        err_worst[r] = max(err_worst[r], e) if np.isfinite(e) else err_worst[r]
                print(f"{lag_s:>3g} {gain:>4} " + " ".join(f"{x:>16}" for x in cells), flush=True)
        print("worst hit rate at gain >= 0.6: " + ", ".join(f"{r} {worst[r]:.3f}" for r in names))
        print("worst median lag error (s) at gain >= 0.6: "
              + ", ".join(f"{r} {err_worst[r]:.2f}" for r in names if r != "sides"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
