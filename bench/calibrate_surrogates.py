"""Calibration of the surrogate test (issue 17): false-positive rates under null models, power on coupled pairs.

For each null model and session length it draws independent therapist/client pairs, runs
:func:`dsp_ext.stats.surrogate_tests` (``--surrogates`` surrogates, every statistic from one WCC pass per
surrogate) with the mirrored rotations (the default) and, on fewer pairs, with plain circular shifts (the
classic test, the control), and reports the fraction of pairs with p <= 0.05 and p <= 0.01 per statistic with
Wilson 95 % intervals. With 1000 pairs the binomial standard error of a 5 % rate is 0.69 points, so an exact
test lands outside 3–7 % in about 0.4 % of cells (|z| > 2.9) and above 2 % at α = 0.01 in < 0.1 %.

Null models (4 Hz, default SyncParams: window 30 s, step 1 s, lags ±10 s):

* ``ar.5``, ``ar.9``, ``ar.99``: AR(1) with φ = 0.5, 0.9, 0.99 (started in its stationary distribution);
* ``ar.5s``, ``ar.99s``: the same smoothed by a 4-s moving average (as a low-passed feature is; full
  averages only, no zero-padded edges);
* ``pink``: 1/f noise (spectral synthesis, random phases);
* ``real``: pseudo-dyads of real recordings from the PyPI packages of /work/shared/DATA.md — systole: EDA,
  ECG-derived heart rate and respiration of one 25.6-min recording, PPG-derived heart rate of a 5.5-min one,
  heart rate from its 245 RR intervals (3.6 min); heartpy: PPG-derived heart rate of an 11.4-min and a
  2.1-min recording; biopeaks 1.4.1 (its test data, installed with ``--no-deps`` like the others): ECG-derived
  heart rate and respiration of one 85-min BITalino recording (``OSmontage0J.txt``). A pair is two different
  signals from different recordings, or from the same recording over non-overlapping time ranges
  (simultaneous signals of one person are physiologically coupled, so they are no null). 20-min pairs come
  from the 25.6-min and the 85-min recordings; 50 min cannot be formed (one recording is that long, and two
  non-overlapping 50-min stretches of it do not fit). The pool is small, so its pairs share stretches of
  data and are not independent: the binomial interval understates the real cell's uncertainty.

Power: AR(1) φ = 0.9 pairs where the client follows the therapist 3 s later, ``c = g·T(t − 3 s) + √(1−g²)·own``,
for g = 0.2 and 0.4.

Every pair has its own seed (model, length, index), so results do not depend on how the work is split. The
work is cut into chunks of ``--chunk`` pairs per cell, each cached as JSON (the p-values) under ``--out``;
a run skips chunks already there, so runs can be stopped, resumed and split over processes
(``--shard i/k``). ``--table`` only reads the cache and prints the tables.

Run (two processes, then the table)::

    for i in 0 1; do PYTHONPATH=. nice -n 10 .venv/bin/python bench/calibrate_surrogates.py \\
        --out /tmp/calib --shard $i/2 & done; wait
    PYTHONPATH=. .venv/bin/python bench/calibrate_surrogates.py --out /tmp/calib --table

Cost (measured, one thread, 199 surrogates): 0.02 s CPU per pair at 2 min, 0.06 s at 10 min, 0.31 s at
50 min; the default grid (7 null models × 5 lengths × 1000 pairs, the control and power) is about 1.3 CPU-hours.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
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
MODELS = ("ar.5", "ar.9", "ar.99", "ar.5s", "ar.99s", "pink", "real")
LABELS = {
    "ar.5": "AR(1) φ 0.5", "ar.9": "AR(1) φ 0.9", "ar.99": "AR(1) φ 0.99", "ar.5s": "AR(1) φ 0.5, smoothed 4 s",
    "ar.99s": "AR(1) φ 0.99, smoothed 4 s", "pink": "1/f noise", "real": "real pseudo-dyads",
}
SMOOTH_N = 16  # 4 s at 4 Hz


def ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    from scipy.signal import lfilter  # the benchmark may use scipy; dsp_ext does not

    e = rng.standard_normal(n)
    x0 = e[0] / np.sqrt(1.0 - phi * phi)
    rest, _ = lfilter([1.0], [1.0, -phi], e[1:], zi=[phi * x0])  # x[i] = φ·x[i−1] + e[i]
    return np.concatenate([[x0], rest])


def smoothed_ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    x = ar1(rng, n + SMOOTH_N - 1, phi)
    return np.convolve(x, np.ones(SMOOTH_N) / SMOOTH_N, mode="valid")


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


def _ppg_hr(t: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Heart rate on the 4 Hz grid from a PPG sampled at times ``t`` (s from 0): band-pass, peaks, IBIs."""
    from scipy import signal as sps

    fs = len(t) / t[-1]
    b, a = sps.butter(2, [0.7, 3.5], btype="band", fs=fs)
    grid = np.arange(0.0, t[-1], 1.0 / fs)
    vf = sps.filtfilt(b, a, np.interp(grid, t, v))
    pk, _ = sps.find_peaks(vf, distance=int(0.33 * fs), prominence=np.std(vf) * 0.5)
    return _hr_from_peaks(grid[pk], t[-1])


def _block_mean_4hz(x: np.ndarray) -> np.ndarray:
    """A 1000 Hz signal as 4 Hz means of 250-sample blocks (the incomplete last block dropped)."""
    n4 = len(x) // 250
    return x[: n4 * 250].reshape(n4, 250).mean(axis=1)


def _ecg_hr(ecg: np.ndarray) -> np.ndarray:
    """Heart rate on the 4 Hz grid from a 1000 Hz ECG: zero-phase 5-30 Hz band-pass, R peaks, IBIs."""
    from scipy import signal as sps

    b, a = sps.butter(2, [5.0, 30.0], btype="band", fs=1000.0)
    ef = sps.filtfilt(b, a, ecg)
    pk, _ = sps.find_peaks(ef, distance=330, height=np.percentile(ef, 98) * 0.4)
    return _hr_from_peaks(pk / 1000.0, len(ecg) / 1000.0)


def real_sources() -> dict[str, tuple[str, np.ndarray]]:
    """name -> (recording, 4 Hz series). Empty if the packages are not installed."""
    from datetime import datetime


    out: dict[str, tuple[str, np.ndarray]] = {}
    sd = _package_dir("systole")
    if sd is not None:
        d = sd / "datasets"
        eda = np.load(d / "Task1_EDA.npy").astype(float).ravel()
        resp = np.load(d / "Task1_Respiration.npy").astype(float).ravel()
        ecg = np.load(d / "Task1_ECG.npy").astype(float).ravel()
        out["systole/eda"] = ("systole-task1", _block_mean_4hz(eda))
        out["systole/resp"] = ("systole-task1", _block_mean_4hz(resp))
        out["systole/hr"] = ("systole-task1", _ecg_hr(ecg))
        ppg = np.load(d / "ppg.npy").astype(float).ravel()
        out["systole/ppg-hr"] = ("systole-ppg", _ppg_hr(np.arange(len(ppg)) / 75.0, ppg))
        rr = np.loadtxt(d / "rr.txt", delimiter=",", skiprows=1)[:, 1] / 1000.0
        beats = np.concatenate([[0.0], np.cumsum(rr)])
        out["systole/rr-hr"] = ("systole-rr", _hr_from_peaks(beats, beats[-1]))
    bp = importlib.util.find_spec("biopeaks")  # a namespace package: no __init__, no origin
    if bp is not None and bp.submodule_search_locations:
        import pandas as pd

        f = Path(list(bp.submodule_search_locations)[0]) / "tests" / "testdata" / "OSmontage0J.txt"
        if f.exists():  # OpenSignals text, BITalino at 1000 Hz: A2 respiration (column 5), A3 ECG (column 6)
            df = pd.read_csv(f, sep="\t", comment="#", header=None, usecols=[5, 6], dtype=np.float64)
            out["biopeaks/resp"] = ("biopeaks-0J", _block_mean_4hz(df[5].to_numpy()))
            out["biopeaks/hr"] = ("biopeaks-0J", _ecg_hr(df[6].to_numpy()))
    hd = _package_dir("heartpy")
    if hd is not None:
        with open(hd / "data" / "data3.csv") as f:
            rows = list(csv.reader(f))[1:]
        t = np.array([datetime.fromisoformat(r[0]).timestamp() for r in rows])
        v = np.array([float(r[1]) for r in rows])
        out["heartpy/data3-hr"] = ("heartpy-data3", _ppg_hr(t - t[0], v))
        with open(hd / "data" / "data2.csv") as f:
            rows = list(csv.reader(f))[1:]
        t = np.array([float(r[0]) for r in rows]) / 1000.0
        v = np.array([float(r[1]) for r in rows])
        out["heartpy/data2-hr"] = ("heartpy-data2", _ppg_hr(t - t[0], v))
    return out


def real_pair(rng: np.random.Generator, n: int, sources: dict[str, tuple[str, np.ndarray]]) -> tuple | None:
    names = [k for k, (_, x) in sources.items() if len(x) >= n]
    if len(names) < 2:
        return None
    for _ in range(200):
        a, b = rng.choice(len(names), size=2, replace=False)
        (ra, xa), (rb, xb) = sources[names[a]], sources[names[b]]
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
    if model.endswith("s"):
        return smoothed_ar1(rng, n, phi), smoothed_ar1(rng, n, phi)
    return ar1(rng, n, phi), ar1(rng, n, phi)


def coupled_pair(rng: np.random.Generator, n: int, gain: float, lag_s: float = 3.0) -> tuple:
    lag = int(lag_s * RATE)
    t = ar1(rng, n + lag, 0.9)
    own = ar1(rng, n, 0.9)
    c = gain * t[:n] + np.sqrt(1 - gain * gain) * own
    return t[lag:], c  # c[i] follows t 3 s earlier: therapist leads


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95 % interval of a binomial proportion k / n (Wilson 1927)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return mid - half, mid + half


# ---- work units ----------------------------------------------------------------------------------------


def tasks(args: argparse.Namespace) -> list[dict]:
    """Every chunk of the run: ``kind`` null (model, method) or power (gain), length, chunk index, pairs."""
    out = []
    lengths = [float(x) for x in args.lengths.split(",")]

    def add(kind: str, name: str, method: str, minutes: float, total: int) -> None:
        for ci in range(-(-total // args.chunk)):
            lo = ci * args.chunk
            out.append(dict(kind=kind, name=name, method=method, minutes=minutes, chunk=ci, lo=lo,
                            hi=min(total, lo + args.chunk)))

    for model in args.models.split(","):
        for m in lengths:
            add("null", model, "mirror", m, args.pairs)
            if m in [float(x) for x in args.control_lengths.split(",") if x]:
                add("null", model, "circular", m, args.control_pairs)
    if args.power_pairs:
        for gain in (0.2, 0.4):
            for m in lengths:
                add("power", f"g{gain}", "mirror", m, args.power_pairs)
    # first chunk of every cell, then the second, ...: a partial run has every cell started
    out.sort(key=lambda d: (d["chunk"], d["minutes"]))
    return out


def chunk_path(out: Path, d: dict) -> Path:
    return out / f"{d['kind']}_{d['name']}_{d['minutes']:g}min_{d['method']}_{d['lo']:05d}-{d['hi']:05d}.json"


def run_chunk(d: dict, n_sur: int, sources: dict) -> dict:
    params = SyncParams()
    n = int(d["minutes"] * 60 * RATE)
    pv: list[list[float]] = []
    missing = 0
    t0 = time.process_time()
    for k in range(d["lo"], d["hi"]):
        if d["kind"] == "null":
            rng = np.random.default_rng([zlib.crc32(d["name"].encode()), int(d["minutes"] * 10), k])
            pair = null_pair(d["name"], rng, n, sources)
        else:
            gain = float(d["name"][1:])
            rng = np.random.default_rng([7, int(gain * 1000), int(d["minutes"] * 10), k])
            pair = coupled_pair(rng, n, gain)
        if pair is None:
            missing += 1
            continue
        res = surrogate_tests(pair[0], pair[1], params, TESTS, n=n_sur, method=d["method"], seed=100_000 + k,
                              threads=1)
        pv.append([res[s].p_value for s, _ in TESTS])
    return dict(task=d, surrogates=n_sur, statistics=[s for s, _ in TESTS], p_values=pv, missing=missing,
                cpu_s=time.process_time() - t0)


def work(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    all_tasks = tasks(args)
    i, k = (int(x) for x in args.shard.split("/"))
    # deterministic greedy split by cost (pairs × minutes), in task order
    load = [0.0] * k
    mine = []
    for d in all_tasks:
        j = min(range(k), key=lambda q: (load[q], q))
        load[j] += (d["hi"] - d["lo"]) * (d["minutes"] + 0.5)
        if j == i:
            mine.append(d)
    sources = real_sources() if "real" in args.models else {}
    print(f"shard {i}/{k}: {len(mine)} of {len(all_tasks)} chunks; real sources: "
          f"{[(n, r, round(len(x) / RATE / 60, 1)) for n, (r, x) in sources.items()]}", flush=True)
    for d in mine:
        path = chunk_path(out, d)
        if path.exists():
            continue
        res = run_chunk(d, args.surrogates, sources)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res))
        tmp.replace(path)
        print(f"{path.name}: {len(res['p_values'])} pairs, {res['cpu_s']:.1f} s CPU "
              f"({res['cpu_s'] / max(1, len(res['p_values'])):.3f} s/pair)", flush=True)
    return 0


# ---- tables --------------------------------------------------------------------------------------------


def load_cells(out: Path) -> dict[tuple, dict]:
    cells: dict[tuple, dict] = {}
    for f in sorted(out.glob("*.json")):
        r = json.loads(f.read_text())
        d = r["task"]
        key = (d["kind"], d["name"], float(d["minutes"]), d["method"])
        c = cells.setdefault(key, dict(p=[], missing=0, cpu_s=0.0))
        c["p"].extend(r["p_values"])
        c["missing"] += r["missing"]
        c["cpu_s"] += r["cpu_s"]
    return cells


def fmt_rate(p: np.ndarray, alpha: float, ci: bool = True) -> str:
    ok = np.isfinite(p)
    k, n = int(np.sum(p[ok] <= alpha)), int(ok.sum())
    if n == 0:
        return "–"
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f} [{100 * lo:.1f}–{100 * hi:.1f}]" if ci else f"{100 * k / n:.1f}"


def _band_chance(n: int) -> tuple[float, float]:
    """For an exact test on ``n`` pairs: P(rate outside 3–7 % at α = 0.05), P(rate > 2 % at α = 0.01)."""
    from scipy.stats import binom

    k5 = np.arange(n + 1)
    out5 = float(binom.pmf(k5[(k5 < 0.03 * n) | (k5 > 0.07 * n)], n, 0.05).sum())
    return out5, float(binom.sf(math.floor(0.02 * n), n, 0.01))


def table(args: argparse.Namespace) -> int:
    from scipy.stats import poisson

    cells = load_cells(Path(args.out))
    stats = [s for s, _ in TESTS]
    lengths = [float(x) for x in args.lengths.split(",")]
    print("False-positive rates, % with p ≤ 0.05 / p ≤ 0.01; default statistic with Wilson 95 % intervals\n")
    print(f"| null model | min | pairs | {stats[0]} (default), α 0.05 | α 0.01 | "
          + " | ".join(stats[1:]) + " | classic circular (pairs): inphase_z · max_z |")
    print("|---|---|---|---|---|" + "---|" * len(stats))
    outside5: list = []
    outside1: list = []
    exp5 = exp1 = 0.0
    n_cells = total = 0
    pooled: dict[str, list] = {s: [] for s in stats}
    for model in args.models.split(","):
        for m in lengths:
            c = cells.get(("null", model, m, "mirror"))
            if c is None or not c["p"]:
                why = f"no pair can be formed ({c['missing']} draws)" if c else "not run"
                print(f"| {LABELS.get(model, model)} | {m:g} | 0 | {why} |" + " |" * len(stats))
                continue
            p = np.array(c["p"], dtype=float)
            n_cells += 1
            for q, s in enumerate(stats):
                ok = np.isfinite(p[:, q])
                r5, r1 = np.mean(p[ok, q] <= 0.05), np.mean(p[ok, q] <= 0.01)
                pooled[s].append(p[ok, q])
                total += 1
                c5, c1 = _band_chance(int(ok.sum()))
                exp5 += c5
                exp1 += c1
                if not 0.03 <= r5 <= 0.07:
                    outside5.append(f"{model}/{m:g}/{s} {100 * r5:.1f}")
                if r1 > 0.02:
                    outside1.append(f"{model}/{m:g}/{s} {100 * r1:.1f}")
            rest = [f"{fmt_rate(p[:, q], 0.05, False)} / {fmt_rate(p[:, q], 0.01, False)}" for q in range(1, len(stats))]
            cc = cells.get(("null", model, m, "circular"))
            if cc and cc["p"]:
                pc = np.array(cc["p"], dtype=float)
                ctl = (f"({len(pc)}) {fmt_rate(pc[:, 0], 0.05, False)} / {fmt_rate(pc[:, 0], 0.01, False)} · "
                       f"{fmt_rate(pc[:, 3], 0.05, False)} / {fmt_rate(pc[:, 3], 0.01, False)}")
            else:
                ctl = "–"
            print(f"| {LABELS.get(model, model)} | {m:g} | {len(p)} | {fmt_rate(p[:, 0], 0.05)} | "
                  f"{fmt_rate(p[:, 0], 0.01)} | " + " | ".join(rest) + f" | {ctl} |")
    print(f"\n{n_cells} cells × {len(stats)} statistics = {total} statistic-cells.")
    print(f"outside 3–7 % at α = 0.05: {len(outside5)} (an exact test: {exp5:.2f} expected, "
          f"P(≥ {len(outside5)}) = {poisson.sf(len(outside5) - 1, exp5):.3g}): {outside5}")
    print(f"above 2 % at α = 0.01: {len(outside1)} (an exact test: {exp1:.2f} expected, "
          f"P(≥ {len(outside1)}) = {poisson.sf(len(outside1) - 1, exp1):.3g}): {outside1}")
    print("pooled over cells (pairs weighted):",
          ", ".join(f"{s} {100 * np.mean(np.concatenate(v) <= 0.05):.2f} / {100 * np.mean(np.concatenate(v) <= 0.01):.2f}"
                    for s, v in pooled.items() if v))
    print("\nPower (AR(1) φ 0.9, the client follows 3 s later with coupling g), % with p ≤ 0.05 / p ≤ 0.01\n")
    print("| coupling | min | pairs | " + " | ".join(stats) + " |")
    print("|---|---|---|" + "---|" * len(stats))
    for gain in (0.2, 0.4):
        for m in lengths:
            c = cells.get(("power", f"g{gain}", m, "mirror"))
            if c is None or not c["p"]:
                continue
            p = np.array(c["p"], dtype=float)
            row = [f"{fmt_rate(p[:, q], 0.05, False)} / {fmt_rate(p[:, q], 0.01, False)}" for q in range(len(stats))]
            print(f"| {gain} | {m:g} | {len(p)} | " + " | ".join(row) + " |")
    print("\nCPU seconds per pair (default test, null cells, one thread):")
    for m in lengths:
        v = [c["cpu_s"] / len(c["p"]) for (kd, _, mm, me), c in cells.items()
             if kd == "null" and mm == m and me == "mirror" and c["p"]]
        if v:
            print(f"  {m:g} min: {np.median(v):.3f} s (median over {len(v)} cells)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory of the per-chunk JSON cache")
    ap.add_argument("--pairs", type=int, default=1000, help="pairs per null cell, default test")
    ap.add_argument("--control-pairs", type=int, default=200, help="pairs per cell, classic circular test")
    ap.add_argument("--control-lengths", default="2,10", help="lengths (min) with the classic test")
    ap.add_argument("--power-pairs", type=int, default=200, help="coupled pairs per power cell (0: none)")
    ap.add_argument("--surrogates", type=int, default=199)
    ap.add_argument("--chunk", type=int, default=100, help="pairs per cached chunk")
    ap.add_argument("--lengths", default="2,5,10,20,50", help="session lengths in minutes")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--shard", default="0/1", help="i/k: this process takes share i of k")
    ap.add_argument("--table", action="store_true", help="print the tables from the cache only")
    args = ap.parse_args(argv)
    return table(args) if args.table else work(args)


if __name__ == "__main__":
    raise SystemExit(main())
