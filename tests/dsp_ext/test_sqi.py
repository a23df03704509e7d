"""Per-beat PPG quality (template correlation, Orphanidou et al. 2015): artefact beats flagged, clean ones kept."""

from __future__ import annotations

import numpy as np
import pytest

from dsp_ext.errors import DspError
from dsp_ext.sqi import ORPHANIDOU_MIN_CORR, beat_template_sqi


def _pulses(rate: float, n_beats: int, ibi_s: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(int((n_beats + 1) * ibi_s * rate)) / rate
    beats = (np.arange(n_beats) + 0.5) * ibi_s
    y = np.zeros_like(t)
    for b in beats:
        x = t - b
        y += np.exp(-0.5 * (x / np.where(x < 0, 0.06, 0.12)) ** 2) + 0.3 * np.exp(-0.5 * ((x - 0.3) / 0.08) ** 2)
    return y + 0.02 * rng.standard_normal(len(t)), beats * rate


def test_clean_beats_pass_and_artefact_beats_are_flagged():
    rng = np.random.default_rng(1)
    rate = 100.0
    y, b = _pulses(rate, 60, 0.8, rng)
    corr, ok = beat_template_sqi(y, b, rate)
    assert np.nanmin(corr) > 0.95 and ok[2:-2].all()  # clean pulses look like their template
    art = (b / rate > 20) & (b / rate < 24)
    t = np.arange(len(y)) / rate
    burst = (t > 19.8) & (t < 24.2)
    y2 = y.copy()
    y2[burst] += 3.0 * np.sin(2 * np.pi * 0.7 * t[burst]) + 1.5 * rng.standard_normal(burst.sum())
    corr2, ok2 = beat_template_sqi(y2, b, rate)
    assert not ok2[art].any(), corr2[art]  # every beat inside the motion burst is flagged
    far = (b / rate < 14) | (b / rate > 30)
    assert ok2[far][2:-2].all()  # beats well away from it are kept
    assert ORPHANIDOU_MIN_CORR == 0.86


def test_edges_nan_and_bad_input():
    rng = np.random.default_rng(2)
    y, b = _pulses(100.0, 20, 0.8, rng)
    y[500:520] = np.nan
    corr, ok = beat_template_sqi(y, b, 100.0)
    hit = np.abs(b - 510) < 40
    assert np.isnan(corr[hit]).all() and not ok[hit].any()  # a pulse with a missing sample has no index
    assert beat_template_sqi(y, b[:2], 100.0)[0].shape == (2,)
    with pytest.raises(DspError):
        beat_template_sqi(y[None, :], b, 100.0)
    with pytest.raises(DspError):
        beat_template_sqi(y, b, 0.0)
