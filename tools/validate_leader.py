"""Validate the "who leads" rule on the project's dyad simulator (issue 17; docs/dsp.md "Who leads").

For every lag (1-8 s) x coupling gain (0.4-0.9) it simulates dyads in which one side leads for the whole
session (half therapist-led, half client-led; ``hil.physiology.DyadSimulator``), runs the windowed
cross-correlation on the simulator's true 4 Hz features (EDA and HR), and prints per rule:

* ``hit``: fraction of the coupled windows in which the rule names the right leader ("no leader" is a miss);
* ``cov``: fraction of windows in which the rule names anyone;
* ``err``: median |lag estimate - true lag| in seconds over the windows with an estimate (rules with a lag).

``session``: dyadsync's rule on the session's mean profile (hit = the session verdict is right; one call per
dyad). Rules: ``boker`` (sign of the nearest in-phase peak's lag, Boker et al. 2002, peak_min_r = 0), ``boker.5``
(the same with a minimum peak height of r = 0.5), ``max`` (dyadsync's rule: the sign of the lag of the
window's global maximum of r when it reaches ``leader_min_r``; :func:`dsp_ext.synchrony.leader`), ``sides``
(sign of therapist_led - client_led, rMEA's side means; no lag).

Run: ``PYTHONPATH=. .venv/bin/python tools/validate_leader.py [--seeds 4] [--duration 300]`` (~1 min).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dsp_ext.synchrony import SyncParams, leader, session_leadership, wcc  # noqa: E402
from hil.physiology import DyadSimulator, Segment, SimConfig  # noqa: E402

RULES = ("boker", "boker.5", "max", "sides")
SESSION = "session"  # the rule on the session's mean profile (dsp_ext.synchrony.session_leadership)
LAGS_S = (1, 2, 3, 4, 5, 6, 7, 8)
GAINS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def evaluate(lag_s: float, gain: float, seeds: int, duration_s: float, channel: str,
             params: SyncParams) -> dict[str, tuple[float, float, float]]:
    high = SyncParams(**{**_kw(params), "peak_min_r": 0.5})
    hits: dict[str, list[np.ndarray]] = {r: [] for r in RULES}
    named: dict[str, list[np.ndarray]] = {r: [] for r in RULES}
    errs: dict[str, list[np.ndarray]] = {r: [] for r in RULES}
    sess_hit: list[bool] = []
    sess_err: list[float] = []
    for seed in range(seeds):
        for mode, sign in (("therapist_led", 1.0), ("client_led", -1.0)):
            cfg = SimConfig(seed=1000 * seed + int(10 * lag_s) + int(100 * gain), duration_s=duration_s,
                            schedule=(Segment(0.0, duration_s, mode, lag_s, gain),))
            truth = DyadSimulator(cfg).truth
            t, c = truth.feature(f"therapist/{channel}"), truth.feature(f"client/{channel}")
            res = wcc(t, c, params)
            res_h = wcc(t, c, high)
            lead = session_leadership(res)
            sess_hit.append(lead.verdict == ("therapist" if sign > 0 else "client"))
            sess_err.append(abs(lead.lag_s - sign * lag_s) if np.isfinite(lead.lag_s) else np.inf)
            calls = {
                "boker": (np.sign(res.inphase_lag_s), res.inphase_lag_s),
                "boker.5": (np.sign(res_h.inphase_lag_s), res_h.inphase_lag_s),
                "max": (leader(res.max_r, res.max_lag_s, params.leader_min_r), res.max_lag_s),
                "sides": (np.sign(res.therapist_led - res.client_led), None),
            }
            for rule, (call, lag_est) in calls.items():
                call = np.nan_to_num(call, nan=0.0)
                hits[rule].append(call == sign)
                named[rule].append(call != 0)
                if lag_est is not None:
                    e = np.abs(lag_est - sign * lag_s)
                    errs[rule].append(e[np.isfinite(e)])
    out = {}
    for rule in RULES:
        h = np.concatenate(hits[rule])
        n = np.concatenate(named[rule])
        e = np.concatenate(errs[rule]) if errs[rule] else np.empty(0)
        out[rule] = (float(h.mean()), float(n.mean()), float(np.median(e)) if len(e) else float("nan"))
    out[SESSION] = (float(np.mean(sess_hit)), 1.0, float(np.median(sess_err)))
    return out


def _kw(p: SyncParams) -> dict:
    return {k: getattr(p, k) for k in ("rate_hz", "win_s", "inc_s", "lag_s", "peak_window", "peak_min_r",
                                       "leader_min_r")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4, help="dyads per lead direction and cell (default 4)")
    ap.add_argument("--duration", type=float, default=300.0, help="simulated seconds per dyad (default 300)")
    ap.add_argument("--channels", default="eda,hr")
    args = ap.parse_args(argv)
    params = SyncParams()
    print(f"SyncParams: {params}; windows per cell: {2 * args.seeds} dyads x "
          f"{params.n_windows(int(args.duration * params.rate_hz))}")
    for channel in args.channels.split(","):
        print(f"\n== {channel} (true features) ==  hit / cov / median lag error (s)")
        print(f"{'lag s':>5} {'gain':>4} " + " ".join(f"{r:>20}" for r in RULES + (SESSION,)))
        worst = {r: 1.0 for r in RULES + (SESSION,)}
        err_worst = {r: 0.0 for r in RULES + (SESSION,)}
        for lag_s in LAGS_S:
            for gain in GAINS:
                res = evaluate(lag_s, gain, args.seeds, args.duration, channel, params)
                cells = []
                for r in RULES + (SESSION,):
                    h, cov, e = res[r]
                    cells.append(f"{h:6.3f} {cov:5.2f} {e:6.2f}")
                    if gain >= 0.6:
                        worst[r] = min(worst[r], h)
                        err_worst[r] = max(err_worst[r], e) if np.isfinite(e) else err_worst[r]
                print(f"{lag_s:>5} {gain:>4} " + " ".join(f"{x:>20}" for x in cells))
        print("worst hit rate at gain >= 0.6: " + ", ".join(f"{r} {worst[r]:.3f}" for r in RULES + (SESSION,)))
        print("worst median lag error (s) at gain >= 0.6: "
              + ", ".join(f"{r} {err_worst[r]:.2f}" for r in RULES + (SESSION,) if r != "sides"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
