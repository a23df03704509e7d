"""Benchmark of the surrogate test (issue 18: "1000 surrogates of a 50-minute session <= 0.5 s"); prints one
table (run: ``.venv/bin/python bench/bench_surrogates.py``; ``--quick``: 100 surrogates, one repeat).

Rows: ``dsp_ext.stats.surrogate_tests`` with the default method (the mirrored-ring rotation test), 1000
surrogates of a simulated 50-minute session at 4 Hz with default SyncParams, for

* the default statistic (``inphase_z``), the report's four (``lab.analysis.compute.SURROGATE_STATS``) and all
  six statistics,
* 1 and 2 threads,
* the reference path (one exact WCC pass per surrogate, ``_exact=True``) and the default path (cross sums
  shared between nearby rotations, only the window values the statistics use: ``_wcc.rotation_null``),

with the ratio reference / default from the same run, and a check that both give the same p-values. Times are
the minimum over repeats of wall clock and of this process's CPU time (all threads). The host is shared: the
load average is printed at the start and the end; compare ratios and CPU times from one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_report import ar1  # noqa: E402  (one AR(1) generator for the benches)
from dsp_ext.stats import surrogate_tests  # noqa: E402
from dsp_ext.synchrony import SyncParams  # noqa: E402
from lab.analysis.compute import SURROGATE_STATS  # noqa: E402

ALL_STATS = tuple((s, "less" if s == "antiphase_z" else "greater")
                  for s in ("inphase_z", "r0", "therapist_led", "client_led", "antiphase_z", "max_z"))


def timed(f, repeat: int) -> tuple[float, float, object]:
    """(min wall s, min CPU s of this process, last result) over ``repeat`` runs."""
    wall = cpu = float("inf")
    out = None
    for _ in range(repeat):
        a, b = time.perf_counter(), time.process_time()
        out = f()
        wall = min(wall, time.perf_counter() - a)
        cpu = min(cpu, time.process_time() - b)
    return wall, cpu, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 surrogates, one repeat")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=50.0)
    args = ap.parse_args()
    n_sur = 100 if args.quick else 1000
    repeat = 1 if args.quick else args.repeat
    p = SyncParams()
    rng = np.random.default_rng(18)
    n = int(args.minutes * 60 * p.rate_hz)
    t = ar1(rng, n) + 5.0
    c = 0.5 * ar1(rng, n) + 0.3 * t + 7.0
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, numpy {np.__version__}, load average {os.getloadavg()[0]:.2f}")
    print(f"{n_sur} mirror-ring surrogates of a {args.minutes:g}-minute session ({n} samples, {p.n_windows(n)} "
          f"windows x {p.n_lags} lags), best of {repeat}")
    print()
    head = (f"{'statistics':22s} {'thr':>3s}  {'exact wall':>10s} {'exact CPU':>10s}  {'fast wall':>9s} "
            f"{'fast CPU':>9s}  {'wall x':>6s} {'CPU x':>6s}  p-values")
    print(head)
    print("-" * len(head))
    for name, tests in (("inphase_z (default)", (("inphase_z", "greater"),)),
                        ("report's 4", SURROGATE_STATS), ("all 6", ALL_STATS)):
        for threads in (1, 2):
            def run(exact: bool, tests=tests, threads=threads) -> dict:
                return surrogate_tests(t, c, p, tests, n=n_sur, threads=threads, _exact=exact)

            ew, ec, old = timed(lambda: run(True), repeat)
            fw, fc, new = timed(lambda: run(False), repeat)
            same = all(old[s].p_value == new[s].p_value for s, _ in tests)
            dmax = max(float(np.nanmax(np.abs(old[s].null - new[s].null))) for s, _ in tests)
            print(f"{name:22s} {threads:3d}  {ew:8.3f} s {ec:8.3f} s  {fw:7.3f} s {fc:7.3f} s  {ew / fw:6.2f} "
                  f"{ec / fc:6.2f}  {'equal' if same else 'DIFFER'} (null max |diff| {dmax:.1e})", flush=True)
    print()
    print(f"load average at the end {os.getloadavg()[0]:.2f}; goal: default statistic <= 0.5 s wall for 1000")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
