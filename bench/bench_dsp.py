"""Benchmark of dsp_ext against peers; prints one table (run: ``.venv/bin/python bench/bench_dsp.py``).

Rows:
* offline windowed cross-correlation + peak picking of a 50-minute dyad at 4 Hz (window 30 s, step 1 s,
  lags ±10 s): ours (Cython) vs numpy per-window corrcoef (dsp_ext.reference, timed on a slice and scaled)
  vs a vectorised numpy twin vs pandas rolling corr per lag vs NeuroKit2 ``signal_synchrony`` per lag
  (both of the latter compute every sample and are then subsampled, as a user of them would);
* 1000 circular-shift surrogates of that session;
* streaming: the cost of one second of dyad data (2 × EDA at 32 Hz, 2 × PPG at 100 Hz) through every stage
  (filters, EDA features, beats, IBI correction, HR grid, HRV epochs, synchrony on EDA and HR), and the
  state held per dyad.

Times are the minimum over repeats of wall-clock time on one core; the machine is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dsp_ext import _wcc, _wcc_np  # noqa: E402
from dsp_ext.eda import EdaStream  # noqa: E402
from dsp_ext.hrv import HrvStream  # noqa: E402
from dsp_ext.ppg import PpgStream  # noqa: E402
from dsp_ext.reference import wcc_reference  # noqa: E402
from dsp_ext.stats import surrogate_test  # noqa: E402
from dsp_ext.synchrony import StreamingWcc, SyncParams, wcc  # noqa: E402


def best_of(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def dyad_4hz(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    e = rng.standard_normal(n + 10)
    d = np.empty_like(e)
    d[0] = 0.0
    for i in range(1, len(e)):
        d[i] = 0.9 * d[i - 1] + e[i]
    t = 8.0 + 0.3 * d[4 : n + 4]
    c = 6.0 + 0.2 * d[:n] + 0.1 * rng.standard_normal(n)
    return t, c


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}, "
        f"load average {load:.2f} at start"
    )


def offline_rows(t: np.ndarray, c: np.ndarray, p: SyncParams, quick: bool) -> list[tuple[str, float, str]]:
    rows: list[tuple[str, float, str]] = []
    ours = best_of(lambda: wcc(t, c, p), 15)
    rows.append(("ours: dsp_ext.synchrony.wcc (Cython)", ours, "full r(τ) matrix + peaks; goal <= 3.5 ms"))
    eng = best_of(lambda: _wcc.WccEngine(p.win, p.inc, p.lag, p.peak_window // 2, p.rate_hz).push(t, c), 15)
    rows.append(("ours: streaming kernel, whole session pushed", eng, "Welford path (StreamingWcc)"))
    nw = p.n_windows(len(t))
    # numpy per-window corrcoef (the transparent reference), on a slice of windows, scaled to the session
    k = 60 if quick else 200
    span = (k - 1) * p.inc + p.win + 2 * p.lag
    ref = best_of(lambda: wcc_reference(t[:span], c[:span], p), 1) * nw / k
    rows.append(("numpy per-window corrcoef (reference)", ref, f"timed on {k} windows, scaled"))
    vec = best_of(lambda: _wcc_np.WccEngine(p.win, p.inc, p.lag, p.peak_window // 2, p.rate_hz).push(t, c), 3)
    rows.append(("numpy vectorised per lag (dsp_ext._wcc_np)", vec, "two-pass, sliding views"))
    try:
        import pandas as pd

        def pandas_run() -> None:
            ts = pd.Series(t)
            for tau in range(-p.lag, p.lag + 1):
                # r(τ) of the window starting at i: T[i..i+w) with C[i+τ..i+τ+w); rolling windows end at i+w-1
                r = ts.rolling(p.win).corr(pd.Series(c).shift(-tau))
                _ = r.to_numpy()[p.win - 1 :: p.inc]

        rows.append(("pandas rolling corr per lag", best_of(pandas_run, 2), "every sample, 81 lags"))
    except ImportError:
        rows.append(("pandas rolling corr per lag", float("nan"), "pandas not installed"))
    try:
        import neurokit2 as nk

        def nk_run() -> None:
            for tau in range(-p.lag, p.lag + 1):
                cs = np.roll(c, -tau)
                _ = nk.signal_synchrony(t, cs, method="correlation", window_size=p.win)[:: p.inc]

        rows.append(("NeuroKit2 signal_synchrony per lag", best_of(nk_run, 1), "every sample, 81 lags"))
    except ImportError:
        rows.append(("NeuroKit2 signal_synchrony per lag", float("nan"), "neurokit2 not installed"))
    return rows


def streaming_cost(seconds: int, chunk_s: int = 1) -> tuple[float, int]:
    """Wall time per second of dyad data through every stage (pushing ``chunk_s`` seconds at a time), and
    the state bytes per dyad."""
    rng = np.random.default_rng(1)
    eda_rate, ppg_rate = 32, 100
    n_e, n_p = eda_rate * seconds, ppg_rate * seconds
    t_e = np.arange(n_e) / eda_rate
    eda = [5.0 + 0.5 * np.sin(2 * np.pi * t_e / 60 + ph) + 0.001 * rng.standard_normal(n_e) for ph in (0, 1)]
    t_p = np.arange(n_p) / ppg_rate
    ppg = []
    for hz in (1.1, 1.25):
        phase = 2 * np.pi * hz * t_p
        ppg.append(20000 + 500 * np.maximum(np.sin(phase), 0) ** 3 + 5 * rng.standard_normal(n_p))
    eda_s = [EdaStream(eda_rate), EdaStream(eda_rate)]
    ppg_s = [PpgStream(ppg_rate, live=True), PpgStream(ppg_rate, live=True)]
    hrv_s = [HrvStream(), HrvStream()]
    sync_eda = StreamingWcc(SyncParams())
    sync_hr = StreamingWcc(SyncParams())
    t0 = time.perf_counter()
    for s in range(0, seconds, chunk_s):
        e0, e1 = s * eda_rate, (s + chunk_s) * eda_rate
        p0, p1 = s * ppg_rate, (s + chunk_s) * ppg_rate
        fe = [eda_s[i].push(eda[i][e0:e1]) for i in range(2)]
        fp = [ppg_s[i].push(ppg[i][p0:p1]) for i in range(2)]
        for i in range(2):
            hrv_s[i].push_features(fp[i])
        sync_eda.push(fe[0].eda_us, fe[1].eda_us)
        sync_hr.push(fp[0].live_hr_bpm, fp[1].live_hr_bpm)  # the unit default (dsp.hr_grid = "live")
    per_s = (time.perf_counter() - t0) / seconds
    state = sum(x.state_nbytes for x in (*eda_s, *ppg_s, *hrv_s, sync_eda, sync_hr))
    return per_s, state


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and 100 surrogates (smoke run)")
    args = ap.parse_args()
    p = SyncParams()
    t, c = dyad_4hz(50 * 60 * 4)
    print(f"machine: {machine()}")
    print(
        f"dyad: 50 min at 4 Hz ({len(t)} samples per person), window 30 s, step 1 s, lags ±10 s, "
        f"{p.n_windows(len(t))} windows x {p.n_lags} lags"
    )
    rows = offline_rows(t, c, p, args.quick)
    ours = rows[0][1]
    print()
    print(f"{'offline WCC + peak picking':46s} {'time':>12s} {'x ours':>9s}  note")
    for name, sec, note in rows:
        ratio = sec / ours if np.isfinite(sec) else float("nan")
        print(f"{name:46s} {sec * 1e3:9.1f} ms {ratio:9.1f}  {note}")
    n_sur = 100 if args.quick else 1000
    t_sur = best_of(
        lambda: surrogate_test(t, c, p, n=n_sur, method="circular", seed=0), 1 if args.quick else 3
    )
    print()
    print(
        f"{n_sur} circular-shift surrogates (shift >= 2 lag): {t_sur:.2f} s "
        f"({t_sur / n_sur * 1e3:.2f} ms per surrogate session; goal <= 3.5 s per 1000)"
    )
    for chunk_s in (1, 10):
        per_s, state = streaming_cost(120 if args.quick else 600, chunk_s)
        print(
            f"streaming, one second of dyad data (2 x EDA 32 Hz, 2 x PPG 100 Hz, HRV, 2 x WCC), pushed "
            f"{chunk_s:2d} s at a time: {per_s * 1e6:6.0f} us; state per dyad {state / 1024:.1f} KiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
