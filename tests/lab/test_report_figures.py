"""The report's figures are drawn once on a canvas with fixed margins and cropped from the pixels (no
``bbox_inches="tight"`` pass): every label, tick label, title and legend must lie inside the canvas, or the crop
would cut it off; the PNG keeps a white border and is RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from hil.study_sim import write_hub_db
from lab.analysis import plots
from lab.analysis.compute import analyse_session
from lab.analysis.source import load_session


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    db = tmp_path_factory.mktemp("fig") / "hub.sqlite"
    (row,) = write_hub_db(db, seed=11, effect=1.0, n_dyads=1, n_sessions=1, duration_s=240.0)
    return analyse_session(load_session(row["session"], db=db), n_surrogates=50)


def _figures(an):
    yield "signals", plots.signals_figure(an.data)
    for sig in an.channels:
        for fn in (plots.sync_map_figure, plots.leadership_figure, plots.peaks_figure, plots.surrogate_figure):
            yield f"{sig} {fn.__name__}", fn(an, sig)
    yield "hrv", plots.hrv_figure(an)
    yield "quality", plots.quality_figure(an.data)


def test_every_text_lies_inside_the_canvas(analysis):
    n_texts = 0
    for name, fig in _figures(analysis):
        png = plots.png_bytes(fig)  # draws the figure at the report's dpi
        renderer = fig.canvas.get_renderer()
        # what savefig(bbox_inches="tight") would have kept, in pixels, must lie inside the canvas we crop from
        tight = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)
        box = fig.bbox
        assert box.x0 - 1 <= tight.x0 and tight.x1 <= box.x1 + 1 and box.y0 - 1 <= tight.y0 and tight.y1 <= box.y1 + 1, \
            (name, tight, box)
        n_texts += len([t for t in fig.findobj(lambda a: hasattr(a, "get_text")) if t.get_text().strip()])
        img = Image.open(io.BytesIO(png))
        assert img.mode == "RGB"
        px = np.asarray(img)
        pad = round(plots.PAD_IN * plots.DPI)
        # the white border left by the crop, and ink right inside it on every side
        for edge in (px[:pad], px[-pad:], px[:, :pad], px[:, -pad:]):
            assert (edge == 255).all(), name
        ink = (px != 255).any(axis=2)
        assert ink[pad].any() or ink[pad + 1].any(), name
        assert ink[:, pad].any() or ink[:, pad + 1].any(), name
    assert n_texts > 100


def test_leadership_bars_and_histograms_keep_their_numbers(analysis):
    """One collection for the asymmetry bars (a rectangle per finite epoch, height = asymmetry) and one filled
    outline per histogram (counts of np.histogram on the report's bins)."""
    from matplotlib.collections import PolyCollection

    an = analysis
    ch = an.channels["eda"]
    ax = plots.leadership_figure(an, "eda").axes[0]
    (bars,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    heights = [p.vertices[1, 1] for p in bars.get_paths()]
    fin = ch.leadership.asymmetry[np.isfinite(ch.leadership.asymmetry)]
    assert len(fin) > 5 and np.array_equal(heights, fin)
    hx = plots.peaks_figure(an, "eda").axes[1]
    (inph, _anti) = hx.patches
    v = ch.res.inphase_z[np.isfinite(ch.res.inphase_z)]
    counts, _ = np.histogram(v, bins=np.linspace(-3, 3, 31))
    assert inph.get_path().vertices[:, 1].max() == counts.max()


def test_figures_drawn_in_two_processes_equal_those_drawn_in_one(analysis, monkeypatch, caplog):
    """The forked figure process gives the very PNGs this process draws; if it dies, this process draws its
    share (a warning says so) and the page is the same."""
    import os

    from lab import report

    one = report.render_figures(analysis, jobs=1)
    assert len(one) == 11
    forks = []
    real = report.multiprocessing.get_context
    monkeypatch.setattr(report.multiprocessing, "get_context", lambda m=None: forks.append(m) or real(m))
    two = report.render_figures(analysis, jobs=2)
    assert forks == ["fork"] and two == one
    monkeypatch.setattr(report, "_child_draw", lambda conn, builders: os._exit(3))
    assert report.render_figures(analysis, jobs=2) == one
    assert "exit code 3" in caplog.text
