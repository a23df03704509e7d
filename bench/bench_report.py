"""Benchmark of the researcher-facing jobs of issue 18; prints one table (run:
``.venv/bin/python bench/bench_report.py``; ``--quick`` skips the 50-minute report).

Rows:
* ``dyadsync report`` (the CLI, a subprocess, default 1000 surrogates) of a simulated 50-minute and
  5-minute session stored in a real hub SQLite the way the recorder does (hil.study_sim.write_hub_db, as `dyadsync hil study` does),
  and the same with ``--surrogates 0`` (the rest of the report), and with ``DYADSYNC_JOBS=2`` (a forked child
  draws about half the figures); wall and CPU time (user + system of the process and its children);
* where a report's time goes: the same report in a fresh interpreter (``lab.report.write_report(timings=)``):
  interpreter start, imports of the CLI's report path, loading, analysis, surrogates, the matplotlib import
  (its own time, and how long the figures waited for it), figures, page put together and written (a tree
  whose ``write_report`` has no ``timings`` is timed phase by phase through the same functions);
* one offline WCC pass (default parameters) of a 50-minute session without and with 100 missing samples
  (isolated NaN in both series), and the ratio;
* 1000 mirror-ring surrogates of a 50-minute session with the report's four statistics
  (``dsp_ext.stats.surrogate_tests``), single-threaded and with the default thread count;
* ``--study``: ``lab.study.run_study`` of 24 simulated 50-minute sessions (6 dyads x 4) with the default
  surrogates, in 1 and 2 worker processes (fresh output folders), and a re-run that finds every session in
  the cache.

Times are wall clock: the minimum over repeats for the kernels, one run per report (a subprocess, so import
and database read included; the minimum of ``--report-repeat`` runs). The machine is printed with the table, and each row carries the 1-minute load
average when it was measured; the machine is shared, so run twice.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def report_time(db: Path, session: str, out: Path, surrogates: int | None, repeat: int = 1,
                **env: str) -> tuple[float, float]:
    """Wall and CPU seconds of ``dyadsync report`` in a subprocess (each the minimum over ``repeat`` runs)."""
    cmd = [sys.executable, "-m", "dyadsync", "report", session, "--db", str(db), "--out", str(out), "--quiet"]
    if surrogates is not None:
        cmd += ["--surrogates", str(surrogates)]
    wall = cpu = float("inf")
    for _ in range(repeat):
        c = _children_cpu()
        a = time.perf_counter()
        subprocess.run(cmd, check=True, env=_env(**env), cwd=out.parent, stdout=subprocess.DEVNULL)
        wall, cpu = min(wall, time.perf_counter() - a), min(cpu, _children_cpu() - c)
    return wall, cpu


# Run by report_phases in a fresh interpreter: the CLI's report path, its imports timed, then write_report.
PHASES_CHILD = """
import inspect, json, sys, time
t_start = time.time()
a = time.perf_counter()
from dyadsync.cli import build_parser
if "only" in inspect.signature(build_parser).parameters:
    build_parser(only="report")
else:  # a tree from before issue 18's report work: every command's module
    build_parser()
from lab.report import write_report
tm = {"imports": time.perf_counter() - a}
db, session, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if "timings" in inspect.signature(write_report).parameters:
    write_report(session, db=db, out=out, n_surrogates=n, timings=tm)
else:  # the same phases of the older write_report, in its order (figures with the page)
    from pathlib import Path
    from lab.report import analyse_session, load_session, render_report
    clock = [time.perf_counter()]
    def lap(key):
        now = time.perf_counter()
        tm[key] = tm.get(key, 0.0) + now - clock[0]
        clock[0] = now
    data = load_session(session, db=db, with_raw=True)
    lap("load")
    an = analyse_session(data, None, n_surrogates=n, seed=0,
                         progress=lambda label: lap("surrogates" if label.endswith("surrogates") else "analysis"))
    from lab.analysis import plots
    lap("import_wait")
    tm["import_thread"] = tm["import_wait"]
    page = render_report(an)
    lap("figures")
    Path(out).write_text(page, encoding="utf-8")
    lap("html")
print(json.dumps({"t_start": t_start, **tm}))
"""

PHASES = (("start", "interpreter start"), ("imports", "imports (CLI report path)"), ("load", "load"),
          ("analysis", "analysis"), ("surrogates", "surrogates"), ("import_wait", "wait for matplotlib"),
          ("figures", "figures"), ("html", "page written"))


def report_phases(db: Path, session: str, out: Path, surrogates: int) -> tuple[float, str]:
    """Wall time of one report in a fresh interpreter and where it went (a note for the table)."""
    a_wall, a = time.time(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PHASES_CHILD, str(db), session, str(out), str(surrogates)],
                          env=_env(), cwd=out.parent, capture_output=True, text=True)
    wall = time.perf_counter() - a
    if proc.returncode != 0:
        return wall, "phases not measured: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
    tm = json.loads(proc.stdout.strip().splitlines()[-1])
    tm["start"] = tm.pop("t_start") - a_wall
    note = ", ".join(f"{label} {tm.get(k, 0.0):.2f}" for k, label in PHASES)
    note += f" (the matplotlib import itself {tm.get('import_thread', float('nan')):.2f})"
    return wall, note


def kernel_rows(repeat: int, row) -> None:
    rng = np.random.default_rng(18)
    p = SyncParams()
    n = int(50 * 60 * p.rate_hz)
    t = ar1(rng, n) + 5.0
    c = 0.5 * ar1(rng, n) + 0.3 * t + 7.0
    tg, cg = t.copy(), c.copy()
    tg[rng.choice(n, 50, replace=False)] = np.nan
    cg[rng.choice(n, 50, replace=False)] = np.nan
    full = best(lambda: wcc(t, c, p), repeat)
    gaps = best(lambda: wcc(tg, cg, p), repeat)
    full_cpu = best_cpu(lambda: wcc(t, c, p), repeat)
    gaps_cpu = best_cpu(lambda: wcc(tg, cg, p), repeat)
    row("WCC pass, 50 min, no missing samples", f"{full * 1e3:.2f} ms", f"CPU {full_cpu * 1e3:.2f} ms")
    row("WCC pass, 50 min, 100 missing samples", f"{gaps * 1e3:.2f} ms",
        f"CPU {gaps_cpu * 1e3:.2f} ms; {gaps / full:.2f}x the above (CPU {gaps_cpu / full_cpu:.2f}x)")
    for threads in (1, None):
        s = best(lambda th=threads: surrogate_tests(t, c, p, SURROGATE_STATS, n=1000, threads=th), 2)
        s_cpu = best_cpu(lambda th=threads: surrogate_tests(t, c, p, SURROGATE_STATS, n=1000, threads=th), 2)
        row(f"1000 mirror surrogates, 50 min, 4 statistics, threads={threads or default_threads()}",
            f"{s:.3f} s", f"CPU {s_cpu:.3f} s (all threads)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the 50-minute report")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--study", action="store_true", help="also time the 24-session study (minutes)")
    ap.add_argument("--no-report", action="store_true", help="skip the report rows")
    ap.add_argument("--no-kernels", action="store_true", help="skip the WCC and surrogate kernel rows")
    ap.add_argument("--report-repeat", type=int, default=3,
                    help="runs of each report; wall and CPU are each the minimum (default 3)")
    args = ap.parse_args()
    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, value: str, note: str = "") -> None:
        rows.append((name, value, f"{os.getloadavg()[0]:.2f}", note))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, numpy {np.__version__}, load average {os.getloadavg()[0]:.2f}")

    # kernels
    if not args.no_kernels:
        kernel_rows(args.repeat, row)

    # reports from a hub database, through the CLI
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for minutes in (() if args.no_report else (5,) if args.quick else (5, 50)):
            db = d / f"hub{minutes}.sqlite"
            (rec,) = write_hub_db(db, seed=minutes, effect=1.0, n_dyads=1, n_sessions=1, duration_s=minutes * 60.0)
            session = rec["session"]
            for sur, env, label in ((None, {}, "default (1000)"), (0, {}, "0"),
                                    (None, {"DYADSYNC_JOBS": "2"}, "default (1000), figures in 2 processes")):
                w, cpu = report_time(db, session, d / f"r{minutes}-{sur}.html", sur, args.report_repeat, **env)
                row(f"dyadsync report, {minutes} min, surrogates {label}", f"{w:.2f} s", f"CPU {cpu:.2f} s")
            w, note = report_phases(db, session, d / f"p{minutes}.html", 1000)
            row(f"  where it goes, {minutes} min, 1000 surrogates (s)", f"{w:.2f} s", note)
        if args.study:
            from lab.study import design_check, run_study

            db = d / "study.sqlite"
            a = time.perf_counter()
            write_hub_db(db, seed=24, effect=1.0, n_dyads=6, n_sessions=4, duration_s=50 * 60.0)
            row("simulating the study's 24 x 50-min sessions into a hub database", f"{time.perf_counter() - a:.1f} s")
            a = time.perf_counter()
            design_check([db])
            row("study design check (reads every session)", f"{time.perf_counter() - a:.1f} s")
            walls = {}
            for jobs in (1, 2):
                a = time.perf_counter()
                res = run_study([db], d / f"study-{jobs}", jobs=jobs)
                walls[jobs] = time.perf_counter() - a
                row(f"study, 24 x 50 min, default surrogates, {jobs} process(es)", f"{walls[jobs]:.1f} s",
                    f"{res.n_sessions} sessions" + (f", {walls[1] / walls[2]:.2f}x speed-up" if jobs == 2 else ""))
            a = time.perf_counter()
            res = run_study([db], d / "study-2", jobs=2)
            row("study re-run, every session from the cache", f"{time.perf_counter() - a:.1f} s",
                f"{res.n_cached} cached (what the study spends outside the per-session analysis)")

    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    wid = max(len(r[0]) for r in rows)
    print(f"{'job':<{wid}}  {'wall':>10}  {'load':>5}  note")
    for name, val, load, note in rows:
        print(f"{name:<{wid}}  {val:>10}  {load:>5}  {note}")


if __name__ == "__main__":
    main()
