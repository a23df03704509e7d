"""Calibration of the surrogate test (issue 17): false-positive rates under null models, power on coupled pairs.

For each null model and session length it draws ``--pairs`` independent therapist/client pairs, runs
:func:`dsp_ext.stats.surrogate_tests` (``--surrogates`` surrogates, every statistic from one WCC pass per
surrogate) with the mirrored circular shifts (the default) and with plain circular shifts, and prints the
fraction of pairs with p <= 0.05 and p <= 0.01 per statistic. With ``--pairs 200`` the binomial standard
error of a 5 % rate is 1.5 points.

Null models (4 Hz, default SyncParams: window 30 s, step 1 s, lags ±10 s):

* ``ar.5``, ``ar.9``, ``ar.99``: AR(1) with φ = 0.5, 0.9, 0.99 (started in its stationary distribution);
* ``ar.5s``, ``ar.99s``: the same smoothed by a 4-s moving average (as a low-passed feature is);
* ``pink``: 1/f noise (spectral synthesis, random phases);
* ``real``: pseudo-dyads of real recordings from the PyPI packages of /work/shared/DATA.md (systole: EDA,
  ECG-derived heart rate and respiration of one 25.6-min recording; heartpy: PPG-derived heart rate of an
  11-min one), two different signals with non-overlapping time ranges (or from different recordings) each.

Power: AR(1) φ = 0.9 pairs where the client follows the therapist 3 s later, ``c = g·T(t − 3 s) + √(1−g²)·own``,
for g = 0.2 and 0.4.

Run: ``PYTHONPATH=. .venv/bin/python bench/calibrate_surrogates.py [--pairs 200] [--surrogates 199]``
(about 20 min on one core with the defaults; ``--quick`` for a 1-min smoke run).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dsp_ext.stats import surrogate_tests  # noqa: E402
from dsp_ext.synchrony import SyncParams  # noqa: E402

RATE = 4.0
TESTS = (("inphase_z", "greater"), ("r0", "greater"), ("therapist_led", "greater"), ("max_z", "greater"))


def ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    e = rng.standard_normal(n)
    x = np.empty(n)
    x[0] = e[0] / np.sqrt(1.0 - phi * phi)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + e[i]
    return x


def smooth(x: np.ndarray, n_avg: int = 16) -> np.ndarray:
    k = np.ones(n_avg) / n_avg
    return np.convolve(x, k, mode="same")


def pink(rng: np.random.Generator, n: int) -> np.ndarray:
    f = np.fft.rfftfreq(n)
    amp = np.zeros_like(f)
    amp[1:] = 1.0 / np.sqrt(f[1:])
    spec = amp * np.exp(2j * np.pi * rng.random(len(f)))
    return np.fft.irfft(spec, n)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec and spec.origin else None


def _to_grid(t_s: np.ndarray, v: np.ndarray, duration_s: float) -> np.ndarray:
    grid = np.arange(0.0, duration_s, 1.0 / RATE)
    return np.interp(grid, t_s, v)


def _hr_from_peaks(peaks_s: np.ndarray, duration_s: float) -> np.ndarray:
    ibi = np.diff(peaks_s)
    keep = (ibi > 0.33) & (ibi < 1.8)
    return _to_grid(peaks_s[1:][keep], 60.0 / ibi[keep], duration_s)


def real_sources() -> dict[str, tuple[str, np.ndarray]]:
    """name -> (recording, 4 Hz series). Empty if the packages are not installed."""
    from scipy import signal as sps  # the benchmark may use scipy; dsp_ext does not

    out: dict[str, tuple[str, np.ndarray]] = {}
    sd = _package_dir("systole")
    if sd is not None:
        d = sd / "datasets"
        eda = np.load(d / "Task1_EDA.npy").astype(float).ravel()
        resp = np.load(d / "Task1_Respiration.npy").astype(float).ravel()
        ecg = np.load(d / "Task1_ECG.npy").astype(float).ravel()
        dur = len(eda) / 1000.0
        n4 = int(dur * RATE)
        out["systole/eda"] = ("systole", eda[: n4 * 250].reshape(n4, 250).mean(axis=1))
        out["systole/resp"] = ("systole", resp[: n4 * 250].reshape(n4, 250).mean(axis=1))
        b, a = sps.butter(2, [5.0, 30.0], btype="band", fs=1000.0)
        ef = sps.filtfilt(b, a, ecg)
        pk, _ = sps.find_peaks(ef, distance=330, height=np.percentile(ef, 98) * 0.4)
        out["systole/hr"] = ("systole", _hr_from_peaks(pk / 1000.0, dur))
    hd = _package_dir("heartpy")
    if hd is not None:
        import csv

        with open(hd / "data" / "data3.csv") as f:
            rows = list(csv.reader(f))[1:]
        from datetime import datetime

        t = np.array([datetime.fromisoformat(r[0]).timestamp() for r in rows])
        v = np.array([float(r[1]) for r in rows])
        t -= t[0]
        fs = len(t) / t[-1]
        b, a = sps.butter(2, [0.7, 3.5], btype="band", fs=fs)
        grid = np.arange(0.0, t[-1], 1.0 / fs)
        vf = sps.filtfilt(b, a, np.interp(grid, t, v))
        pk, _ = sps.find_peaks(vf, distance=int(0.33 * fs), prominence=np.std(vf) * 0.5)
        out["heartpy/hr"] = ("heartpy", _hr_from_peaks(grid[pk], t[-1]))
    return out


def real_pair(rng: np.random.Generator, n: int, sources: dict[str, tuple[str, np.ndarray]]) -> tuple | None:
    names = list(sources)
    for _ in range(200):
        a, b = rng.choice(len(names), size=2, replace=False)
        (ra, xa), (rb, xb) = sources[names[a]], sources[names[b]]
        if len(xa) < n or len(xb) < n:
            continue
        oa = int(rng.integers(0, len(xa) - n + 1))
        ob = int(rng.integers(0, len(xb) - n + 1))
        if ra == rb and abs(oa - ob) < n:  # same recording: time ranges must not overlap
            continue
        return xa[oa : oa + n], xb[ob : ob + n]
    return None


def null_pair(model: str, rng: np.random.Generator, n: int, sources: dict) -> tuple | None:
    if model == "real":
        return real_pair(rng, n, sources)
    if model == "pink":
        return pink(rng, n), pink(rng, n)
    phi = {"ar.5": 0.5, "ar.9": 0.9, "ar.99": 0.99, "ar.5s": 0.5, "ar.99s": 0.99}[model]
    t, c = ar1(rng, n, phi), ar1(rng, n, phi)
    if model.endswith("s"):
        t, c = smooth(t), smooth(c)
    return t, c


def coupled_pair(rng: np.random.Generator, n: int, gain: float, lag_s: float = 3.0) -> tuple:
    lag = int(lag_s * RATE)
    t = ar1(rng, n + lag, 0.9)
    own = ar1(rng, n, 0.9)
    c = gain * t[:n] + np.sqrt(1 - gain * gain) * own
    return t[lag:], c  # c[i] follows t 3 s earlier: therapist leads


def rates(pairs: list, n_sur: int, method: str, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    params = SyncParams()
    pv = np.full((len(pairs), len(TESTS)), np.nan)
    for k, (t, c) in enumerate(pairs):
        res = surrogate_tests(t, c, params, TESTS, n=n_sur, method=method, seed=seed + k)
        pv[k] = [res[s].p_value for s, _ in TESTS]
    ok = np.isfinite(pv)
    return (np.sum((pv <= 0.05) & ok, axis=0) / ok.sum(axis=0), np.sum((pv <= 0.01) & ok, axis=0) / ok.sum(axis=0),
            len(pairs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--surrogates", type=int, default=199)
    ap.add_argument("--lengths", default="2,5,10,20,50", help="session lengths in minutes")
    ap.add_argument("--models", default="ar.5,ar.9,ar.99,ar.5s,ar.99s,pink,real")
    ap.add_argument("--methods", default="mirror,circular")
    ap.add_argument("--quick", action="store_true", help="40 pairs, 99 surrogates, 2 and 10 min")
    ap.add_argument("--no-power", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.pairs, args.surrogates, args.lengths = 40, 99, "2,10"
    lengths = [float(x) for x in args.lengths.split(",")]
    sources = real_sources() if "real" in args.models else {}
    print(f"pairs {args.pairs}, surrogates {args.surrogates}; statistics {[s for s, _ in TESTS]}; "
          f"real sources: {[(k, round(len(v[1]) / RATE / 60, 1)) for k, v in sources.items()]}")
    print("rates: p<=0.05 / p<=0.01 per statistic")
    head = "  ".join(f"{s:>13}" for s, _ in TESTS)
    print(f"{'model':<8}{'min':>5} {'method':<9}{'pairs':>6}  {head}")
    for model in args.models.split(","):
        for minutes in lengths:
            n = int(minutes * 60 * RATE)
            rng = np.random.default_rng([zlib.crc32(model.encode()), int(minutes * 10)])
            pairs = [p for p in (null_pair(model, rng, n, sources) for _ in range(args.pairs)) if p is not None]
            if len(pairs) < args.pairs // 2:
                print(f"{model:<8}{minutes:>5g}  (not enough data for this length)")
                continue
            for method in args.methods.split(","):
                t0 = time.perf_counter()
                r5, r1, m = rates(pairs, args.surrogates, method, 17)
                cells = "  ".join(f"{a * 100:5.1f} /{b * 100:4.1f}" for a, b in zip(r5, r1))  # noqa: B905
                print(f"{model:<8}{minutes:>5g} {method:<9}{m:>6}  {cells}   ({time.perf_counter() - t0:.0f} s)",
                      flush=True)
    if not args.no_power:
        print("\npower (AR(1) φ=0.9, therapist leads by 3 s), p<=0.05 / p<=0.01")
        for gain in (0.2, 0.4):
            for minutes in lengths:
                n = int(minutes * 60 * RATE)
                rng = np.random.default_rng(int(1000 * gain + minutes))
                pairs = [coupled_pair(rng, n, gain) for _ in range(max(args.pairs // 4, 20))]
                r5, r1, m = rates(pairs, args.surrogates, "mirror", 23)
                cells = "  ".join(f"{a * 100:5.1f} /{b * 100:4.1f}" for a, b in zip(r5, r1))  # noqa: B905
                print(f"g={gain:<5}{minutes:>5g} {'mirror':<9}{m:>6}  {cells}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
