"""``dyadsync report`` (one session -> one HTML page) and ``dyadsync study`` (all sessions -> tables, models,
an HTML summary). See docs/analysis.md."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from core.errors import DyadsyncError

logger = logging.getLogger(__name__)

REPORT_DESCRIPTION = """One self-contained HTML page about one session: both people's EDA and heart rate, the lag x time
synchrony map, therapist-led vs client-led synchrony, in-phase vs anti-phase peaks, RSA and RMSSD, markers
and data quality, and session indices with surrogate p-values and effect sizes. From a hub database (--db)
or a pulled folder (--dir). By default the numbers are recomputed from the stored 4 Hz features with the
unit's parameters and checked against the metrics the unit published live."""

STUDY_DESCRIPTION = """All sessions of a study (hub databases and/or pulled folders) -> per-session, per-window and
per-epoch tables (CSV; Parquet too when pyarrow is installed), mixed models (client synchrony ~ therapist
RSA regulation split within/between dyads with random intercepts; lagged RSA coupling; therapist-led vs
client-led contrast) with effect sizes and CIs, figures and an HTML summary.

Before the per-session work it says what the design can estimate (dyads, sessions per dyad) and, after it,
what the data can (sessions with therapist RSA, variance of regulation within and between dyads): which
effects are estimable, which are not and why, and what more data would be needed. A verdict on the
hypothesis is given only when the model can carry it; otherwise the answer is "not estimable with these
data". --check stops after the design check (seconds)."""


def _params(args: argparse.Namespace):
    from dsp_ext.synchrony import SyncParams

    given = {k: getattr(args, k) for k in ("win_s", "inc_s", "lag_s") if getattr(args, k) is not None}
    if not given and not args.recompute:
        return None  # the unit's parameters: numbers equal the live metrics
    try:
        return SyncParams(**given)
    except ValueError as exc:
        raise DyadsyncError(f"bad synchrony parameters: {exc}") from exc


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    if (args.db is None) == (args.dir is None):
        raise DyadsyncError("give exactly one of --db HUB.sqlite or --dir PULLED_FOLDER")
    if args.surrogates < 0:
        raise DyadsyncError("--surrogates must be >= 0")
    path, an = write_report(args.session, db=args.db, folder=args.dir, out=args.out, params=_params(args),
                            recompute=args.recompute, n_surrogates=args.surrogates, seed=args.seed,
                            progress=not args.quiet)
    print(f"report of session {an.data.session}: {path}")
    for sig, ch in an.channels.items():
        lc = ch.live
        if lc is not None and lc.comparable:
            print(f"  {sig}: {len(ch.res)} windows; live metrics {lc.n_compared}/{lc.n_live} compared, "
                  f"max |difference| {lc.max_abs_diff:.3g}")
        else:
            print(f"  {sig}: {len(ch.res)} windows")
    for note in an.notes:
        print(f"  note: {note}")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from .study import design_check, run_study

    if args.surrogates < 0:
        raise DyadsyncError("--surrogates must be >= 0")
    sources = [Path(p) for p in args.sources]
    if args.check:
        design, skipped = design_check(sources)
        for line in design.lines():
            print(line)
        for s in skipped:
            print(f"  skipped: {s}")
        return 0
    result = run_study(sources, out_dir=Path(args.out), channel=args.channel, n_surrogates=args.surrogates,
                       seed=args.seed, progress=not args.quiet, announce=print, jobs=args.jobs)
    print(f"study of {result.n_sessions} sessions in {result.n_dyads} dyads: {result.html_path}")
    for f in result.files:
        print(f"  {f}")
    for line in result.headline():
        print(f"  {line}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one session -> a self-contained HTML report",
                       description=REPORT_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("session", nargs="?", help="session id (optional with --dir when the folder holds one session)")
    p.add_argument("--db", help="hub database (hub.sqlite)")
    p.add_argument("--dir", help="folder pulled with `dyadsync lab pull` (a session folder or the pull root)")
    p.add_argument("--out", help="HTML file to write (default report-<session>.html)")
    p.add_argument("--recompute", action="store_true",
                   help="rebuild the 4 Hz features from the raw signals with dsp_ext before the synchrony")
    p.add_argument("--win-s", type=float, help="window length in s (default: the unit's, 30)")
    p.add_argument("--inc-s", type=float, help="step between windows in s (default: the unit's, 1)")
    p.add_argument("--lag-s", type=float, help="largest lag in s each way (default: the unit's, 10)")
    p.add_argument("--surrogates", type=int, default=1000, help="surrogates per test (default 1000; 0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the surrogate draw (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_report)

    s = sub.add_parser("study", help="all sessions -> per-session/per-window tables, mixed models, HTML summary",
                       description=STUDY_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("sources", nargs="+", help="hub databases (*.sqlite) and/or pulled folders")
    s.add_argument("--out", default="study-out", help="output folder (default study-out)")
    s.add_argument("--channel", choices=("eda", "hr"), default="eda",
                   help="synchrony channel the models use (default eda; tables hold both)")
    s.add_argument("--surrogates", type=int, default=200, help="surrogates per session (default 200; 0: none)")
    s.add_argument("--seed", type=int, default=0, help="seed of the surrogate draws (default 0)")
    s.add_argument("--check", action="store_true",
                   help="only say what the design can estimate (dyads, sessions per dyad); no analysis")
    s.add_argument("--jobs", type=int, default=None,
                   help="sessions analysed at once in worker processes (default: DYADSYNC_JOBS or all CPUs)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_study)
