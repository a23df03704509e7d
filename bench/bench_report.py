"""Benchmark of the researcher-facing jobs of issue 18; prints one table (run:
``.venv/bin/python bench/bench_report.py``; ``--quick`` skips the 50-minute report).

Rows:
* ``dyadsync report`` (the CLI, a subprocess, default 1000 surrogates) of a simulated 50-minute and
  5-minute session stored in a real hub SQLite the way the recorder does (hil.study_sim.write_hub_db, as `dyadsync hil study` does),
  and the same with ``--surrogates 0`` (the rest of the report);
* one offline WCC pass (default parameters) of a 50-minute session without and with 100 missing samples
  (isolated NaN in both series), and the ratio;
* 1000 mirror-ring surrogates of a 50-minute session with the report's four statistics
  (``dsp_ext.stats.surrogate_tests``), single-threaded and with the default thread count.

Times are wall clock: the minimum over repeats for the kernels, one run per report (a subprocess, so import
and database read included). The machine is printed with the table; it is shared, so run twice.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dsp_ext.stats import surrogate_tests  # noqa: E402
from dsp_ext.synchrony import SyncParams, wcc  # noqa: E402
from hil.study_sim import write_hub_db  # noqa: E402
from lab.analysis.compute import SURROGATE_STATS  # noqa: E402


def best(f, repeat: int) -> float:
    out = float("inf")
    for _ in range(repeat):
        a = time.perf_counter()
        f()
        out = min(out, time.perf_counter() - a)
    return out


def ar1(rng: np.random.Generator, n: int, phi: float = 0.95) -> np.ndarray:
    e = rng.standard_normal(n)
    x = np.empty(n)
    x[0] = e[0]
    for i in range(1, n):
        x[i] = phi * x[i - 1] + e[i]
    return x


def report_time(db: Path, session: str, out: Path, surrogates: int | None) -> float:
    cmd = [sys.executable, "-m", "dyadsync", "report", session, "--db", str(db), "--out", str(out), "--quiet"]
    if surrogates is not None:
        cmd += ["--surrogates", str(surrogates)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    a = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=out.parent, stdout=subprocess.DEVNULL)
    return time.perf_counter() - a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the 50-minute report")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rows: list[tuple[str, str, str]] = []
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, numpy {np.__version__}")

    # kernels
    rng = np.random.default_rng(18)
    p = SyncParams()
    n = int(50 * 60 * p.rate_hz)
    t = ar1(rng, n) + 5.0
    c = 0.5 * ar1(rng, n) + 0.3 * t + 7.0
    tg, cg = t.copy(), c.copy()
    tg[rng.choice(n, 50, replace=False)] = np.nan
    cg[rng.choice(n, 50, replace=False)] = np.nan
    full = best(lambda: wcc(t, c, p), args.repeat)
    gaps = best(lambda: wcc(tg, cg, p), args.repeat)
    rows.append(("WCC pass, 50 min, no missing samples", f"{full * 1e3:.2f} ms", ""))
    rows.append(("WCC pass, 50 min, 100 missing samples", f"{gaps * 1e3:.2f} ms", f"{gaps / full:.2f}x the above"))
    for threads in (1, None):
        s = best(lambda th=threads: surrogate_tests(t, c, p, SURROGATE_STATS, n=1000, threads=th), 2)
        rows.append((f"1000 mirror surrogates, 50 min, 4 statistics, threads={threads or 'default'}",
                     f"{s:.3f} s", f"{s / full:.0f} WCC passes"))

    # reports from a hub database, through the CLI
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for minutes in ((5,) if args.quick else (5, 50)):
            db = d / f"hub{minutes}.sqlite"
            (row,) = write_hub_db(db, seed=minutes, effect=1.0, n_dyads=1, n_sessions=1, duration_s=minutes * 60.0)
            session = row["session"]
            for sur in (None, 0):
                w = report_time(db, session, d / f"r{minutes}-{sur}.html", sur)
                rows.append((f"dyadsync report, {minutes} min, surrogates {'default (1000)' if sur is None else sur}",
                             f"{w:.2f} s", ""))

    wid = max(len(r[0]) for r in rows)
    print(f"{'job':<{wid}}  {'wall':>10}  note")
    for name, val, note in rows:
        print(f"{name:<{wid}}  {val:>10}  {note}")


if __name__ == "__main__":
    main()
