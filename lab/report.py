"""``dyadsync report``: one self-contained HTML page about one recorded session.

The page (no external resources; plots are embedded base64 PNGs drawn with matplotlib's Agg backend)
shows both people's EDA and heart rate, the lag × time synchrony map r(τ, t), therapist-led vs client-led
synchrony over time, in-phase vs anti-phase peaks, each person's RSA and RMSSD per 30-s epoch, markers and
data quality (losses in transit, flagged samples, unit status), and a table of session indices with
surrogate p-values and effect sizes (:mod:`dsp_ext.stats`). Definitions: ARCHITECTURE §4 and
``docs/analysis.md``.

Sources: a hub database (``--db``) or a folder pulled with ``dyadsync lab pull`` (``--dir``).
By default synchrony is recomputed from the stored 4 Hz features with the unit's parameters and
checked window by window against the metrics the unit published live; ``--recompute`` first rebuilds the
4 Hz features from the raw signals with :mod:`dsp_ext` and may use other parameters (``--win-s`` ...).
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dsp_ext.synchrony import SyncParams

from .analysis.compute import SessionAnalysis, _held, analyse_session
from .analysis.source import (
    AnalysisError,
    IncompleteSession,
    Series,
    SessionData,
    SessionNotFound,
    SourceError,
    load_session,
)

logger = logging.getLogger(__name__)

__all__ = [
    "AnalysisError",
    "IncompleteSession",
    "SessionNotFound",
    "SourceError",
    "features_from_raw",
    "render_report",
    "write_report",
]

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;font-size:0.85em;margin:0.6em 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}.sig{font-weight:bold;color:#1e7d32}.note{color:#666;font-size:0.85em}
img{max-width:100%;display:block;margin:0.5em 0}.warn{background:#fff4e0;padding:0.5em;border-left:4px solid #e67e22}
.ok{color:#1e7d32}.bad{color:#b03a2e;font-weight:bold}
"""


def _e(x: object) -> str:
    return html.escape(str(x))


def _f(x: float, d: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{d}g}" if (x != 0 and abs(x) < 10 ** -(d - 1)) else f"{x:.{d}f}"


def _utc(ns: int | None) -> str:
    if not ns:
        return "–"
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def features_from_raw(data: SessionData) -> SessionData:
    """Replace the stored 4 Hz features by ones rebuilt from the raw signals with dsp_ext.

    EDA: :class:`dsp_ext.eda.EdaStream` when available, else the mean of the raw samples per 250-ms bin (the
    unit's plain extractor). HR: :func:`dsp_ext.ppg.ppg_features` (beats, corrected IBIs, HR on the grid).
    Raises :class:`IncompleteSession` if a raw stream is missing.
    """
    new = dict(data.streams)
    for role in ("therapist", "client"):
        for signal, raw_name in (("eda", "eda"), ("hr", "ppg")):
            raw = data.raw(f"{role}/{raw_name}")
            if raw is None:
                raise IncompleteSession(f"session {data.session}: --recompute needs the raw {role}/{raw_name} stream")
            vals = _held(raw.values)
            if signal == "eda":
                from core.vocab import BlockFlags

                v = _eda_grid(vals, raw.rate_hz, ((raw.flags & BlockFlags.CONTACT_LOST) == 0) & ~raw.lost)
            else:
                from dsp_ext import ppg

                f = ppg.ppg_features(vals, raw.rate_hz)
                v = np.full(int(len(vals) / raw.rate_hz * 4), np.nan)
                ok = f.index < len(v)
                v[f.index[ok]] = f.hr_bpm[ok]
            lost = np.zeros(len(v), dtype=bool)
            bins = np.minimum((np.arange(len(raw.lost)) / raw.rate_hz * 4).astype(np.int64), len(v) - 1)
            if len(v):
                np.logical_or.at(lost, bins[raw.lost[: len(bins)]], True)
            v = np.where(lost, np.nan, v)
            new[("feat", f"{role}/{signal}")] = Series(f"{role}/{signal}", "feat", raw.t0_ns, 4.0, v,
                                                       np.zeros(len(v), np.int64), lost, raw.unit)
    return SessionData(**{**data.__dict__, "streams": new})


def _eda_grid(vals: np.ndarray, rate_hz: float, contact_ok: np.ndarray) -> np.ndarray:
    try:
        from dsp_ext import eda

        feats = eda.eda_features(vals, rate_hz, contact=contact_ok) if hasattr(eda, "eda_features") else None
    except ImportError:
        feats = None
    if feats is not None and hasattr(feats, "index") and hasattr(feats, "eda_us"):
        v = np.full(int(len(vals) / rate_hz * 4), np.nan)
        ok = feats.index < len(v)
        v[feats.index[ok]] = feats.eda_us[ok]
        return v
    per = rate_hz / 4.0
    n = int(len(vals) // per)
    edges = np.round(np.arange(n + 1) * per).astype(np.int64)
    return np.add.reduceat(vals, edges[:-1])[:n] / np.diff(edges)


# --------------------------------------------------------------------------------------------- HTML
def data_span_ns(data: SessionData) -> tuple[int, int] | None:
    """(first sample, end of the last sample) over every stored stream, on the session's own clock (the
    samples' ``t0_ns``: the unit's UTC for a recording, the simulated clock for a simulated session)."""
    spans = [(s.t0_ns, s.t0_ns + round(len(s.values) * 1e9 / s.rate_hz)) for s in data.streams.values()
             if len(s.values)]
    return (min(a for a, _ in spans), max(b for _, b in spans)) if spans else None


#: A stop command stamped further than this from the end of the data is reported as such.
STOP_MISMATCH_S = 5.0


def _times_rows(d: SessionData) -> str:
    """Header rows with the session's own times: start command, recorded span and length from the samples'
    time stamps; the stop command's stamp only when it disagrees with the data (a simulation run faster than
    real time stamps its stop with the wall clock of the run)."""
    span = data_span_ns(d)
    start = d.started_ns or (span[0] if span else None)
    rows = [f"<tr><th class='l'>start</th><td class='l' id='t-start'>{_utc(start)}</td></tr>"]
    if span is None:
        rows.append(f"<tr><th class='l'>stop</th><td class='l'>{_utc(d.stopped_ns)}</td></tr>")
        return "".join(rows)
    end = span[1]
    length_s = (end - start) / 1e9 if start else math.nan
    rows.append(f"<tr><th class='l'>end of the recorded data</th><td class='l' id='t-end'>{_utc(end)}</td></tr>")
    rows.append(f"<tr><th class='l'>length</th><td class='l' id='t-length'>{length_s:.0f} s "
                f"({length_s / 60:.1f} min); the plots' time axes count seconds from the start</td></tr>")
    if d.stopped_ns and abs(d.stopped_ns - end) / 1e9 > STOP_MISMATCH_S:
        rel = (d.stopped_ns - start) / 1e9 if start else math.nan
        rows.append(f"<tr><th class='l'>stop command</th><td class='l note' id='t-stop'>stamped {_utc(d.stopped_ns)} "
                    f"({rel:.0f} s after the start) while the data run to {length_s:.0f} s: its stamp comes from "
                    "another clock (a simulation run faster than real time stamps its stop with the wall clock). "
                    "The times above are the data's own.</td></tr>")
    elif d.stopped_ns:
        rows.append(f"<tr><th class='l'>stop command</th><td class='l'>{_utc(d.stopped_ns)}</td></tr>")
    return "".join(rows)


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{_e(alt)}">'


def _index_table(an: SessionAnalysis) -> str:
    rows = an.index_rows()
    out = ['<table><tr><th class="l">channel</th><th class="l">index</th><th>value</th><th>p (surrogates)</th>'
           '<th>effect size</th><th class="l">note</th></tr>']
    for r in rows:
        sig = ' class="sig"' if math.isfinite(r["p_value"]) and r["p_value"] < 0.05 else ""
        out.append(f'<tr><td class="l">{_e(r["channel"])}</td><td class="l">{_e(r["index"])}</td>'
                   f'<td>{_f(r["value"])}</td><td{sig}>{_f(r["p_value"])}</td><td>{_f(r["effect_size"], 2)}</td>'
                   f'<td class="l note">{_e(r["note"])}</td></tr>')
    out.append("</table>")
    return "\n".join(out)


def _quality_table(data: SessionData) -> str:
    q = data.quality
    out = ['<table><tr><th class="l">stream</th><th class="l">unit</th><th>rate (Hz)</th><th>samples</th>'
           '<th>lost (missing blocks)</th><th>NaN</th><th>contact lost</th><th>saturated</th><th>invalid</th></tr>']
    for s in q["streams"]:
        out.append(f'<tr><td class="l">{_e(s["kind"])}:{_e(s["stream"])}</td><td class="l">{_e(s["unit"])}</td>'
                   f'<td>{s["rate_hz"]:g}</td><td>{s["samples"]}</td>'
                   f'<td>{s["lost_samples"]} ({s["missing_blocks"]})</td><td>{s["nan_samples"]}</td>'
                   f'<td>{s["contact_lost_samples"]}</td><td>{s["saturated_samples"]}</td>'
                   f'<td>{s["invalid_samples"]}</td></tr>')
    out.append("</table>")
    mm = ", ".join(f"{k}: {v}" for k, v in q["missing_metrics"].items()) or "none"
    out.append(f'<p>Missing blocks in all streams: {q["missing_blocks"]}; metrics missing (seq holes): {_e(mm)}; '
               f'samples the unit reported dropped: {q["unit_reported_dropped"]}; status changes: '
               f'{q["status_changes"]}.</p>')
    return "\n".join(out)


def _artefact_table(an: SessionAnalysis) -> str:
    if not an.artefacts:
        return "<p>No raw signals stored: artefacts in the raw EDA and PPG cannot be counted.</p>"
    keys = sorted({k for a in an.artefacts.values() for k in a})
    out = ["<h3>Artefacts found in the raw signals</h3><table id='artefacts'><tr><th class='l'>person</th>"
           + "".join(f"<th>{_e(k.replace('_', ' '))}</th>" for k in keys) + "</tr>"]
    for role, a in an.artefacts.items():
        out.append(f"<tr><td class='l'>{_e(role)}</td>" + "".join(f"<td>{a.get(k, '–')}</td>" for k in keys)
                   + "</tr>")
    out.append("</table><p class='note'>PPG: beats, beats of low quality (the template-correlation index "
               "of dsp_ext.sqi; left out of HR, RMSSD and RSA) and the corrections of the Lipponen–Tarvainen IBI "
               "classifier (dsp_ext.ppg); EDA: raw samples out of range, too steep, without contact or lost, and "
               "the 4 Hz bins they invalidate (dsp_ext.eda).</p>")
    return "\n".join(out)


def _figure_jobs(an: SessionAnalysis) -> list[tuple[str, float, Callable[[], object]]]:
    """Every figure of the page in page order: (key, relative cost, builder). The key is also the progress
    label; the cost (measured CPU time of the 50-min bench session, surrogates the dearest) only balances the
    split between two processes."""
    from .analysis import plots

    jobs: list[tuple[str, float, Callable[[], object]]] = [("signals", 1.2, lambda: plots.signals_figure(an.data))]
    for sig, ch in an.channels.items():
        jobs += [(f"{sig} lag × time map", 1.2, lambda s=sig: plots.sync_map_figure(an, s)),
                 (f"{sig} leadership", 0.8, lambda s=sig: plots.leadership_figure(an, s)),
                 (f"{sig} peaks", 1.0, lambda s=sig: plots.peaks_figure(an, s))]
        if ch.surrogates:
            jobs.append((f"{sig} surrogates", 1.5, lambda s=sig: plots.surrogate_figure(an, s)))
    if an.hrv:
        jobs.append(("regulation", 0.8, lambda: plots.hrv_figure(an)))
    jobs.append(("quality", 0.5, lambda: plots.quality_figure(an.data)))
    return jobs


def default_figure_jobs() -> int:
    """Processes that draw a report's figures: ``DYADSYNC_JOBS`` (1 or 2); else 2 when this process may run on
    two CPUs and one is free (load average below the CPU count), 1 otherwise. The PNGs are the same either way
    (a test compares). bench/bench_report.py: two paid off on an idle 2-core machine (a 5-min report 2.6 -> 1.7
    s) and not when every core was busy, hence the load check."""
    env = os.environ.get("DYADSYNC_JOBS", "").strip()
    if env:
        try:
            return max(1, min(2, int(env)))
        except ValueError:
            logger.warning("DYADSYNC_JOBS=%r is not an integer; drawing the figures in this process", env)
            return 1
    try:
        ncpu = len(os.sched_getaffinity(0))
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on Linux
        return 1
    return 2 if ncpu >= 2 and load < ncpu - 0.5 else 1


def _draw(builders: list[Callable[[], object]]) -> list[bytes]:
    from .analysis import plots

    return [plots.png_bytes(b()) for b in builders]


def _child_draw(conn, builders: list[Callable[[], object]]) -> None:  # runs in the forked child
    try:
        conn.send(("ok", _draw(builders)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which draws them itself
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _fork_safe() -> bool:
    """Whether this process may fork: the platform has fork and no thread runs but the main one and tqdm's
    progress-bar monitor (which only sleeps and refreshes bars; the child draws no bar)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return False
    try:
        from tqdm._monitor import TMonitor
    except ImportError:  # pragma: no cover - tqdm is a lab dependency
        TMonitor = ()  # noqa: N806
    main = threading.main_thread()
    return all(t is main or isinstance(t, TMonitor) for t in threading.enumerate())


def render_figures(an: SessionAnalysis, jobs: int | None = None,
                   progress: Callable[[str], None] | None = None) -> dict[str, bytes]:
    """The PNG of every figure of the page, by key (:func:`_figure_jobs`).

    With ``jobs`` = 2 (default :func:`default_figure_jobs`, 1) a forked child draws about half of them (balanced
    by cost) while this process draws the rest; the child shares this process's memory (the analysis,
    matplotlib already imported), so nothing is pickled but the PNGs coming back. The fork is done only when
    this process runs no other thread (a fork copies no thread but can copy a lock one of them holds; see
    :func:`_fork_safe`) and the platform has it; otherwise, or if the child fails, every figure is drawn
    here. Same PNGs either way."""
    step = progress or (lambda label: None)
    todo = _figure_jobs(an)
    jobs = default_figure_jobs() if jobs is None else jobs
    fork = jobs >= 2 and len(todo) >= 2 and _fork_safe()
    mine, theirs = list(range(len(todo))), []
    if fork:
        load = [0.0, 0.0]
        mine = []
        for i in sorted(range(len(todo)), key=lambda i: -todo[i][1]):  # longest first to the lighter side
            side = 0 if load[0] <= load[1] else 1
            (mine if side == 0 else theirs).append(i)
            load[side] += todo[i][1]
        mine.sort()
        theirs.sort()
    out: dict[str, bytes] = {}
    child = conn = None
    if theirs:
        ctx = multiprocessing.get_context("fork")
        conn, child_conn = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_child_draw, args=(child_conn, [todo[i][2] for i in theirs]),
                            name="report-figures", daemon=True)
        child.start()
        child_conn.close()
    status, got = "ok", []
    try:
        for i in mine:
            key, _, build = todo[i]
            out[key] = _draw([build])[0]
            step(f"figure: {key}")
    finally:
        if child is not None:  # always collected, also when a figure here failed
            try:
                status, got = conn.recv()
            except EOFError:
                status, got = "error", f"the figure process ended with exit code {child.exitcode}"
            conn.close()
            child.join()
    if status == "ok":
        out.update({todo[i][0]: png for i, png in zip(theirs, got, strict=True)})
    else:
        logger.warning("figures drawn in this process after the figure process failed: %s", got)
    for i in theirs:
        if todo[i][0] not in out:
            out[todo[i][0]] = _draw([todo[i][2]])[0]
        step(f"figure: {todo[i][0]}")
    return out


def _uri(png: bytes) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_report(an: SessionAnalysis, progress: Callable[[str], None] | None = None, *,
                  jobs: int | None = None, figures: dict[str, bytes] | None = None) -> str:
    """The HTML page of an analysed session (``progress`` is called once per figure; ``jobs``: processes that
    draw the figures, :func:`render_figures`, unless they are given as ``figures``)."""
    figs = figures if figures is not None else render_figures(an, jobs, progress)
    d = an.data
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>dyadsync report {_e(d.session)}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Session {_e(d.session)}</h1>",
             "<table>"
             f"<tr><th class='l'>room</th><td class='l'>{_e(d.room)}</td></tr>"
             f"<tr><th class='l'>therapist / client</th><td class='l'>{_e(d.therapist_code)} / {_e(d.client_code)}</td></tr>"
             + _times_rows(d) +
             f"<tr><th class='l'>source</th><td class='l'>{_e(d.origin)}</td></tr>"
             f"<tr><th class='l'>markers</th><td class='l'>{len(d.markers)}</td></tr>"
             "</table>"]
    if an.notes:
        parts.append("<div class='warn'><b>Notes</b><ul>" + "".join(f"<li>{_e(n)}</li>" for n in an.notes)
                     + "</ul></div>")
    parts.append("<h2>Signals</h2>")
    parts.append(_img(_uri(figs["signals"]), "EDA and heart rate of both people"))
    parts.append("<h2>Session indices</h2>")
    parts.append(f"<p class='note'>p-values: one-sided rank of the observed pair among {an.n_surrogates} rotations "
                 "of the client series on its mirrored ring, each statistic standardized against the rotations more "
                 "than 2·lag away (the calibrated test of docs/dsp.md); effect size = (observed − null mean) / null "
                 "SD. Fisher z of r "
                 "clipped to ±0.999; τ &gt; 0 means the therapist leads.</p>")
    parts.append(_index_table(an))
    parts.append("<h2>Agreement with the live metrics</h2><table><tr><th class='l'>metric</th><th>live windows</th>"
                 "<th>compared</th><th>max |difference|</th><th class='l'>note</th></tr>")
    for sig, ch in an.channels.items():
        lc = ch.live
        if lc is None:
            parts.append(f"<tr><td class='l'>sync_{sig}</td><td>0</td><td>0</td><td>–</td>"
                         "<td class='l'>no live metric stored</td></tr>")
            continue
        cls = "ok" if lc.comparable and lc.max_abs_diff <= 1e-6 else ("bad" if lc.comparable else "")
        parts.append(f"<tr><td class='l'>{_e(lc.metric)}</td><td>{lc.n_live}</td><td>{lc.n_compared}</td>"
                     f"<td class='{cls}' id='live-{_e(sig)}'>{_f(lc.max_abs_diff, 2) if lc.comparable else '–'}</td>"
                     f"<td class='l'>{_e(lc.note)}</td></tr>")
    parts.append("</table>")
    for sig, ch in an.channels.items():
        p = ch.res.params
        parts.append(f"<h2>{sig.upper()} synchrony</h2><p class='note'>window {p.win_s:g} s, step {p.inc_s:g} s, "
                     f"lags ±{p.lag_s:g} s, peak window {p.peak_window} lags; {len(ch.res)} windows.</p>")
        for name in ("lag × time map", "leadership", "peaks"):
            parts.append(_img(_uri(figs[f"{sig} {name}"]), f"{sig} {name}"))
        if ch.surrogates:
            parts.append(_img(_uri(figs[f"{sig} surrogates"]), f"{sig} surrogates"))
    parts.append("<h2>Regulation: RSA and RMSSD</h2>")
    if an.hrv:
        parts.append("<p class='note'>" + "; ".join(f"{_e(r)}: {_e(h.source)}" for r, h in an.hrv.items()) + "</p>")
        parts.append(_img(_uri(figs["regulation"]), "RSA and RMSSD per epoch"))
    else:
        parts.append("<p>RSA not available: " + _e("; ".join(n for n in an.notes if "RSA" in n) or "no heart data")
                     + "</p>")
    parts.append("<h2>Markers</h2>")
    if d.markers:
        t0 = d.started_ns or 0
        parts.append("<table><tr><th class='l'>label</th><th>time (s)</th><th class='l'>UTC</th></tr>" + "".join(
            f"<tr><td class='l'>{_e(m.get('label'))}</td><td>{(m['time_ns'] - t0) / 1e9:.1f}</td>"
            f"<td class='l'>{_utc(m['time_ns'])}</td></tr>" for m in d.markers) + "</table>")
    else:
        parts.append("<p>No markers were set in this session.</p>")
    parts.append("<h2>Data quality</h2>")
    parts.append(_img(_uri(figs["quality"]), "data quality timeline"))
    parts.append(_quality_table(d))
    parts.append(_artefact_table(an))
    if d.status:
        states = ", ".join(sorted({s for _, _, s in d.status}))
        parts.append(f"<p>Unit states seen: {_e(states)}.</p>")
    parts.append(f"<p class='note'>Generated by dyadsync on {_utc(int(dt.datetime.now(dt.UTC).timestamp() * 1e9))}."
                 "</p></body></html>")
    return "\n".join(parts)


N_FIGURE_STEPS = 1 + 4 * 2 + 2


def _import_plots(timings: dict[str, float]) -> None:
    a = time.perf_counter()
    from .analysis import plots  # noqa: F401  (matplotlib: about half a second of imports)

    timings["import_thread"] = time.perf_counter() - a


def write_report(
    session: str | None,
    *,
    db: Path | str | None = None,
    folder: Path | str | None = None,
    out: Path | str | None = None,
    params: SyncParams | None = None,
    recompute: bool = False,
    n_surrogates: int = 1000,
    seed: int = 0,
    progress: bool = False,
    jobs: int | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[Path, SessionAnalysis]:
    """Load, analyse and render one session; returns the HTML path and the analysis.

    ``params=None`` and ``recompute=False``: the unit's parameters on the stored features (the numbers
    then equal the live metrics). ``jobs``: processes that draw the figures (:func:`render_figures`).
    Raises :class:`SessionNotFound`, :class:`IncompleteSession` or :class:`SourceError` (all
    :class:`AnalysisError`, a ``DyadsyncError``).

    matplotlib is imported by a thread while the session loads and is analysed (the surrogate kernel runs
    without the GIL), and joined before the figures. ``timings``, if given, receives the wall time of each
    phase in seconds (``load``, ``analysis``, ``surrogates``, ``import_thread`` (the thread's own time),
    ``import_wait`` (how long the figures waited for it), ``figures``, ``html`` (the page put together and
    written); for bench/bench_report.py)."""
    from tqdm import tqdm

    from .analysis.compute import n_steps

    tm: dict[str, float] = timings if timings is not None else {}
    importer = threading.Thread(target=_import_plots, args=(tm,), name="report-import-matplotlib", daemon=True)
    importer.start()
    clock = [time.perf_counter()]

    def lap(key: str) -> None:
        now = time.perf_counter()
        tm[key] = tm.get(key, 0.0) + now - clock[0]
        clock[0] = now

    bar = tqdm(total=2 + n_steps(n_surrogates) + N_FIGURE_STEPS, desc="report", unit="step", disable=not progress)
    try:
        data = load_session(session, db=db, folder=folder, with_raw=True)
        bar.update(1)
        if recompute:
            data = features_from_raw(data)
            if params is None:
                params = SyncParams()
        bar.set_description("report: features")
        bar.update(1)
        lap("load")

        def step(label: str) -> None:
            bar.set_description(f"report: {label}")
            bar.update(1)
            if not label.startswith("figure"):
                lap("surrogates" if label.endswith("surrogates") else "analysis")

        an = analyse_session(data, params, n_surrogates=n_surrogates, seed=seed, progress=step)
        importer.join()
        lap("import_wait")
        figs = render_figures(an, jobs, step)
        lap("figures")
        page = render_report(an, figures=figs)
    finally:
        importer.join()
        bar.close()
    path = Path(out) if out else Path(f"report-{data.session}.html")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    lap("html")
    logger.info("report of %s written to %s", data.session, path)
    logger.debug("report phases (s): %s", ", ".join(f"{k} {v:.3f}" for k, v in tm.items()))
    return path, an

