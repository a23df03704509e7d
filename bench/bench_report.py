"""Benchmark of the researcher-facing jobs of issue 18; prints one table (run:
``.venv/bin/python bench/bench_report.py``; ``--quick`` skips the 50-minute report).

Rows:
* ``dyadsync report`` (the CLI, a subprocess, default 1000 surrogates) of a simulated 50-minute and
  5-minute session stored in a real hub SQLite the way the recorder does (hil.study_sim.write_hub_db, as `dyadsync hil study` does),
  and the same with ``--surrogates 0`` (the rest of the report);
* one offline WCC pass (default parameters) of a 50-minute session without and with 100 missing samples
  (isolated NaN in both series), and the ratio;
* 1000 mirror-ring surrogates of a 50-minute session with the report's four statistics
  (``dsp_ext.stats.surrogate_tests``), single-threaded and with the default thread count;
* ``--study``: ``lab.study.run_study`` of 24 simulated 50-minute sessions (6 dyads x 4) with the default
  surrogates, in 1 and 2 worker processes (fresh output folders), and a re-run that finds every session in
  the cache.

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

from dsp_ext.stats import default_threads, surrogate_tests  # noqa: E402
from dsp_ext.synchrony import SyncParams, wcc  # noqa: E402
from hil.study_sim import write_hub_db  # noqa: E402
from lab.analysis.compute import SURROGATE_STATS  # noqa: E402


def best(f, repeat: int) -> float:
    """Minimum wall time over ``repeat`` runs."""
    out = float("inf")
    for _ in range(repeat):
        a = time.perf_counter()
        f()
        out = min(out, time.perf_counter() - a)
    return out


def best_cpu(f, repeat: int) -> float:
    """Minimum CPU time of this process over ``repeat`` runs (single-threaded work: steadier than wall time
    on a shared machine, where another session's burst lands in one run and not the next)."""
    out = float("inf")
    for _ in range(repeat):
        a = time.process_time()
        f()
        out = min(out, time.process_time() - a)
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
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--study", action="store_true", help="also time the 24-session study (minutes)")
    ap.add_argument("--no-report", action="store_true", help="skip the report rows")
    args = ap.parse_args()
    rows: list[tuple[str, str, str]] = []
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, numpy {np.__version__}, load average {os.getloadavg()[0]:.2f}")

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
    full_cpu = best_cpu(lambda: wcc(t, c, p), args.repeat)
    gaps_cpu = best_cpu(lambda: wcc(tg, cg, p), args.repeat)
    rows.append(("WCC pass, 50 min, no missing samples", f"{full * 1e3:.2f} ms", f"CPU {full_cpu * 1e3:.2f} ms"))
    rows.append(("WCC pass, 50 min, 100 missing samples", f"{gaps * 1e3:.2f} ms",
                 f"CPU {gaps_cpu * 1e3:.2f} ms; {gaps / full:.2f}x the above (CPU {gaps_cpu / full_cpu:.2f}x)"))
    for threads in (1, None):
        s = best(lambda th=threads: surrogate_tests(t, c, p, SURROGATE_STATS, n=1000, threads=th), 2)
        s_cpu = best_cpu(lambda th=threads: surrogate_tests(t, c, p, SURROGATE_STATS, n=1000, threads=th), 2)
        rows.append((f"1000 mirror surrogates, 50 min, 4 statistics, threads={threads or default_threads()}",
                     f"{s:.3f} s", f"CPU {s_cpu:.3f} s (all threads)"))

    # reports from a hub database, through the CLI
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for minutes in (() if args.no_report else (5,) if args.quick else (5, 50)):
            db = d / f"hub{minutes}.sqlite"
            (row,) = write_hub_db(db, seed=minutes, effect=1.0, n_dyads=1, n_sessions=1, duration_s=minutes * 60.0)
            session = row["session"]
            for sur in (None, 0):
                w = report_time(db, session, d / f"r{minutes}-{sur}.html", sur)
                rows.append((f"dyadsync report, {minutes} min, surrogates {'default (1000)' if sur is None else sur}",
                             f"{w:.2f} s", ""))
        if args.study:
            from lab.study import run_study

            db = d / "study.sqlite"
            write_hub_db(db, seed=24, effect=1.0, n_dyads=6, n_sessions=4, duration_s=50 * 60.0)
            walls = {}
            for jobs in (1, 2):
                a = time.perf_counter()
                res = run_study([db], d / f"study-{jobs}", jobs=jobs)
                walls[jobs] = time.perf_counter() - a
                rows.append((f"study, 24 x 50 min, default surrogates, {jobs} process(es)", f"{walls[jobs]:.1f} s",
                             f"{res.n_sessions} sessions" + (f", {walls[1] / walls[2]:.2f}x speed-up" if jobs == 2 else "")))
            a = time.perf_counter()
            res = run_study([db], d / "study-2", jobs=2)
            rows.append(("study re-run, every session from the cache", f"{time.perf_counter() - a:.1f} s",
                         f"{res.n_cached} cached"))

    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    wid = max(len(r[0]) for r in rows)
    print(f"{'job':<{wid}}  {'wall':>10}  note")
    for name, val, note in rows:
        print(f"{name:<{wid}}  {val:>10}  {note}")


if __name__ == "__main__":
    main()
