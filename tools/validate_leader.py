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

Run: ``PYTHONPATH=. .venv/bin/python tools/validate_leader.py [--seeds 6] [--duration 600] [--spans 30,60,120]``
(~4 min with the default 6 seeds on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import os
import sys

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


def pooled_xspec(t: np.ndarray, c: np.ndarray, p: SyncParams) -> tuple[np.ndarray, np.ndarray]:
    """(pooled tapered correlation at its maximum, its lag in s) per window of ``wcc(t, c, p)``: the ``xspec``
    rule above. Windows start where the WCC's do (lag .. n - win - lag, step inc); NaN samples count as 0."""
    w, inc, lag = int(round(p.win_s * p.rate_hz)), int(round(p.inc_s * p.rate_hz)), int(round(p.lag_s * p.rate_hz))
    k_pool = max(1, int(p.leader_span_s // p.inc_s))
    nfft = 1 << int(np.ceil(np.log2(w + lag + 1)))  # zero padding: no circular wrap within ±lag
    starts = np.arange(lag, len(t) - w - lag + 1, inc)
    idx = starts[:, None] + np.arange(w)[None, :]
    taper = np.hanning(w)

    def spectra(x: np.ndarray) -> np.ndarray:
        seg = np.nan_to_num(x[idx])
        return np.fft.rfft((seg - seg.mean(axis=1, keepdims=True)) * taper, nfft, axis=1)

    a, b = spectra(t), spectra(c)

    def running(z: np.ndarray) -> np.ndarray:  # sums over the trailing k_pool windows
        cs = np.concatenate([np.zeros((1,) + z.shape[1:], z.dtype), np.cumsum(z, axis=0)])
        lo = np.maximum(np.arange(len(z)) + 1 - k_pool, 0)
        return cs[1:] - cs[lo]

    def energy(z: np.ndarray) -> np.ndarray:  # Σ x² of each window from its one-sided spectrum (Parseval)
        e = np.abs(z) ** 2
        return (2.0 * e.sum(axis=1) - e[:, 0] - e[:, -1]) / nfft

    sxy = running(np.conj(a) * b)
    exx, eyy = running(energy(a)), running(energy(b))
    cc = np.fft.irfft(sxy, nfft, axis=1)  # Σ over the pool of Σ_t x(t) y(t + τ)
    prof = np.concatenate([cc[:, -lag:], cc[:, : lag + 1]], axis=1)  # τ = -lag .. lag, τ > 0: client later
    # the tapers of a pair overlap less at larger |τ|: divide by that overlap, Σ w(t)w(t+τ) / Σ w², so a pure
    # delay reads r = 1 at its lag instead of being pulled toward τ = 0
    overlap = np.array([np.dot(taper[: w - abs(k)], taper[abs(k):]) for k in range(-lag, lag + 1)]) / np.dot(taper, taper)
    with np.errstate(invalid="ignore", divide="ignore"):
        prof = prof / np.sqrt(exx * eyy)[:, None] / overlap[None, :]
    j = np.argmax(prof, axis=1)
    return prof[np.arange(len(j)), j], (j - lag) / p.rate_hz


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
            cfg = SimConfig(seed=1000 * seed + int(10 * lag_s) + int(100 * gain) + 500 * k * (gain == 0),
                            duration_s=duration_s,
                            schedule=(Segment(0.0, duration_s, mode, lag_s, gain),))
            truth = DyadSimulator(cfg).truth
            t, c = truth.feature(f"therapist/{channel}"), truth.feature(f"client/{channel}")
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
    args = ap.parse_args(argv)
    params = SyncParams()
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
