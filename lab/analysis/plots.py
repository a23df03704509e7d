"""Figures for the reports (matplotlib, Agg backend), returned as base64 PNG ``data:`` URIs.

Every figure is drawn on its own :class:`matplotlib.figure.Figure` (no pyplot state), so figures can be
made from any thread and nothing leaks between reports.

Cost (issue 18: a report in seconds): each figure is laid out with fixed margins in inches (:func:`_margins`)
and drawn once; :func:`to_data_uri` then crops the white border from the pixels. ``savefig(bbox_inches=
"tight")`` did the same with a second, layout-only draw and a tight-bbox pass over every text, about 40 % of
the report's figure time. Many equal shapes are one collection (histograms as one filled step outline, the
leadership asymmetry bars as one :class:`~matplotlib.collections.PolyCollection`), not one patch each.
"""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from .compute import ROLES, SessionAnalysis  # noqa: E402
from .source import SessionData  # noqa: E402

COLORS = {"therapist": "#1f5fa8", "client": "#c0392b"}
DPI = 90


#: White border kept around the drawn content, in inches (savefig's ``pad_inches`` default).
PAD_IN = 0.1


def _margins(fig: Figure, left: float = 0.85, right: float = 0.2, bottom: float = 0.6, top: float = 0.4,
             **kw: float) -> None:
    """Subplot margins in inches (room for tick labels, axis labels and titles whatever the figure's size):
    everything is drawn inside the canvas, so one draw and a crop (:func:`to_data_uri`) replace
    ``bbox_inches="tight"``."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h, **kw)


def png_bytes(fig: Figure) -> bytes:
    """The figure drawn once at :data:`DPI`, its white border cropped to :data:`PAD_IN`, as an RGB PNG."""
    fig.set_dpi(DPI)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[:, :, :3]
    ink = np.any(rgb != 255, axis=2)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if len(rows):
        rgb = rgb[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    pad = round(PAD_IN * DPI)
    rgb = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), constant_values=255)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="png", dpi=(DPI, DPI), compress_level=3)  # ~as small as 6, 1/3 less time
    return buf.getvalue()


def to_data_uri(fig: Figure) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(fig)).decode("ascii")


def _t0(data: SessionData) -> int:
    if data.started_ns:
        return int(data.started_ns)
    starts = [s.t0_ns for s in data.streams.values()]
    return min(starts) if starts else 0


def _markers(ax, data: SessionData, t0: int) -> None:
    """Every session marker as a dashed line with its label, at its time since the session start (markers
    from the simulator's truth segments, ``truth: …``, are drawn like any other)."""
    for m in data.markers:
        x = (m["time_ns"] - t0) / 1e9
        ax.axvline(x, color="#555", lw=0.8, ls="--")
        ax.annotate(str(m.get("label") or ""), (x, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                    rotation=90, va="top", ha="right", color="#333")


def signals_figure(data: SessionData) -> Figure:
    """Both people's EDA and heart rate (4 Hz features) with markers and lost samples shaded."""
    t0 = _t0(data)
    fig = Figure(figsize=(10, 5.2))
    _margins(fig, top=0.45)
    axes = fig.subplots(2, 1, sharex=True)
    for ax, signal, label in zip(axes, ("eda", "hr"), ("EDA (µS)", "heart rate (bpm)"), strict=True):
        for role in ROLES:
            s = data.feature(f"{role}/{signal}")
            if s is None:
                continue
            x = (s.t_ns - t0) / 1e9
            ax.plot(x, s.values, lw=0.9, color=COLORS[role], label=f"{role} {data.therapist_code if role == 'therapist' else data.client_code or ''}")
            if s.lost.any():
                ax.fill_between(x, 0, 1, where=s.lost, transform=ax.get_xaxis_transform(), color="#f5b041",
                                alpha=0.4, lw=0)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        _markers(ax, data, t0)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("time since session start (s)")
    fig.suptitle("Features (4 Hz); shaded: samples lost in transit; dashed: markers", fontsize=10)
    return fig


def sync_map_figure(an: SessionAnalysis, signal: str) -> Figure:
    """r(τ, t): lag × time heatmap with the in-phase (•) and anti-phase (×) peaks picked in each window."""
    ch = an.channels[signal]
    res = ch.res
    t0 = _t0(an.data)
    x = (ch.window_t_ns - t0) / 1e9 + res.params.win_s / 2
    fig = Figure(figsize=(10, 3.8))
    _margins(fig)
    ax = fig.subplots()
    if len(res):
        dx = res.params.inc_s
        extent = (x[0] - dx / 2, x[-1] + dx / 2, res.lags_s[0], res.lags_s[-1])
        im = ax.imshow(res.r.T, aspect="auto", origin="lower", extent=extent, cmap="RdBu_r", vmin=-1, vmax=1,
                       interpolation="nearest")
        fig.colorbar(im, ax=ax, label="r")
        ax.plot(x, res.inphase_lag_s, ".", ms=2.5, color="k", label="in-phase peak")
        ax.plot(x, res.antiphase_lag_s, "x", ms=2.5, color="#2e7d32", label="anti-phase peak")
        ax.legend(loc="upper right", fontsize=7)
    ax.axhline(0, color="k", lw=0.5)
    _markers(ax, an.data, t0)
    ax.set_xlabel("window centre (s)")
    ax.set_ylabel("lag τ (s); > 0 therapist leads")
    ax.set_title(f"{signal.upper()}: windowed cross-correlation r(τ, t), window {res.params.win_s:g} s, "
                 f"step {res.params.inc_s:g} s", fontsize=10)
    return fig


def leadership_figure(an: SessionAnalysis, signal: str) -> Figure:
    ch = an.channels[signal]
    res = ch.res
    t0 = _t0(an.data)
    x = (ch.window_t_ns - t0) / 1e9 + res.params.win_s / 2
    fig = Figure(figsize=(10, 3.4))
    _margins(fig)
    ax = fig.subplots()
    ax.plot(x, res.therapist_led, color=COLORS["therapist"], lw=1, label="therapist-led z (τ > 0)")
    ax.plot(x, res.client_led, color=COLORS["client"], lw=1, label="client-led z (τ < 0)")
    le = ch.leadership
    if len(le.asymmetry):
        xe = (t0 * 0 + ch.t0_ns - t0 + le.epoch_start * 1e9 / res.params.rate_hz) / 1e9
        width = 10 * res.params.inc_s
        # one collection of rectangles, as ax.bar(x, h, width=0.9 * width) draws them (one patch each)
        xc = xe + width / 2 + res.params.win_s / 2
        ok = np.isfinite(le.asymmetry)
        lo, hi = xc[ok] - 0.45 * width, xc[ok] + 0.45 * width
        h = le.asymmetry[ok]
        z = np.zeros_like(h)
        bars = PolyCollection(np.stack([np.c_[lo, z], np.c_[lo, h], np.c_[hi, h], np.c_[hi, z]], axis=1),
                              facecolors="#7f8c8d", alpha=0.35, linewidths=0, label="asymmetry per 10 windows (T − C)")
        ax.add_collection(bars)
    ax.axhline(0, color="k", lw=0.5)
    _markers(ax, an.data, t0)
    ax.set_xlabel("window centre (s)")
    ax.set_ylabel("mean Fisher z")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    ax.set_title(f"{signal.upper()}: therapist-led vs client-led synchrony", fontsize=10)
    return fig


def peaks_figure(an: SessionAnalysis, signal: str) -> Figure:
    ch = an.channels[signal]
    res = ch.res
    t0 = _t0(an.data)
    x = (ch.window_t_ns - t0) / 1e9 + res.params.win_s / 2
    fig = Figure(figsize=(10, 3.2))
    _margins(fig, top=0.45, wspace=0.25)
    ax, hx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    ax.plot(x, res.inphase_z, ".", ms=3, color="#c0392b", label="in-phase peak z")
    ax.plot(x, res.antiphase_z, ".", ms=3, color="#2471a3", label="anti-phase peak z")
    ax.axhline(0, color="k", lw=0.5)
    _markers(ax, an.data, t0)
    ax.set_xlabel("window centre (s)")
    ax.set_ylabel("peak Fisher z")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    bins = np.linspace(-3, 3, 31)
    for v, col in ((res.inphase_z, "#c0392b"), (res.antiphase_z, "#2471a3")):
        f = v[np.isfinite(v)]
        if len(f):
            hx.hist(f, bins=bins, color=col, alpha=0.6, histtype="stepfilled")
    hx.set_xlabel("peak z")
    fig.suptitle(f"{signal.upper()}: in-phase vs anti-phase peaks (kept apart, never |r|)", fontsize=10)
    return fig


def surrogate_figure(an: SessionAnalysis, signal: str) -> Figure:
    ch = an.channels[signal]
    n = max(len(ch.surrogates), 1)
    fig = Figure(figsize=(10, 3.2))
    _margins(fig, left=0.5, bottom=0.35, top=0.7, wspace=0.3)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (stat, s) in zip(axes, ch.surrogates.items(), strict=False):
        null = s.null[np.isfinite(s.null)]
        if len(null):
            ax.hist(null, bins=30, color="#95a5a6", histtype="stepfilled")
        ax.axvline(s.observed, color="#c0392b", lw=2)
        ax.set_title(f"{stat}\np={s.p_value:.3g}, d={s.effect_size:.2f}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{signal.upper()}: observed (red) against {an.n_surrogates} mirror-ring rotation surrogates", fontsize=10,
                 y=1 - 0.12 / 3.2, va="top")
    return fig


def hrv_figure(an: SessionAnalysis) -> Figure:
    t0 = _t0(an.data)
    fig = Figure(figsize=(10, 4))
    _margins(fig, top=0.45)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    for role, h in an.hrv.items():
        x = (h.epoch_t_ns - t0) / 1e9 + 15.0
        ax1.plot(x, h.rsa_ln_ms2, "o-", ms=3, color=COLORS[role], label=role)
        ax2.plot(x, h.rmssd_ms, "o-", ms=3, color=COLORS[role], label=role)
    ax1.set_ylabel("RSA (ln ms²)")
    ax2.set_ylabel("RMSSD (ms)")
    ax2.set_xlabel("epoch centre (s)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        _markers(ax, an.data, t0)
    fig.suptitle("Regulation per 30-s epoch (Porges–Bohrer RSA; RMSSD)", fontsize=10)
    return fig


def quality_figure(data: SessionData) -> Figure:
    """One row per stored stream: lost samples (orange), flagged samples (purple), NaN samples (grey)."""
    t0 = _t0(data)
    items = sorted(data.streams.items())
    fig = Figure(figsize=(10, 0.35 * max(len(items), 2) + 1.2))
    _margins(fig, left=1.6, bottom=0.55, top=0.35)
    ax = fig.subplots()
    for i, (_key, s) in enumerate(items):
        x = (s.t_ns - t0) / 1e9
        span = (x[0], x[-1]) if len(x) else (0, 0)
        ax.plot(span, (i, i), color="#2ecc71", lw=6, solid_capstyle="butt")
        for mask, col in ((~np.isfinite(s.values) & ~s.lost, "#7f8c8d"), (s.flags != 0, "#8e44ad"),
                          (s.lost, "#e67e22")):
            if mask.any():
                ax.plot(x[mask], np.full(mask.sum(), i), "|", color=col, ms=9)
    ax.set_yticks(range(len(items)), [f"{k}:{s}" for k, s in (key for key, _ in items)], fontsize=7)
    _markers(ax, data, t0)
    ax.set_xlabel("time since session start (s)")
    ax.set_title("Quality: green recorded, orange lost in transit, purple flagged (contact, saturation, invalid), "
                 "grey NaN", fontsize=9)
    if not items:
        ax.text(0.5, 0.5, "no streams", transform=ax.transAxes, ha="center")
    ax.set_ylim(-1, max(len(items), 1))
    return fig

