"""Per-beat signal quality of PPG: template correlation (Orphanidou et al. 2015), offline.

Orphanidou C. et al. (2015), "Signal-quality indices for the electrocardiogram and photoplethysmogram:
derivation and applications to wireless monitoring", IEEE J Biomed Health Inform 19(3): 832-838. Their PPG
index: the pulses of a 10-s window, each cut around its beat with the window's median inter-beat interval as
length, are averaged into a template; the window is acceptable if the mean correlation of its pulses with the
template is at least 0.86. Here the same correlation is kept **per beat**: each pulse is correlated with the
template of the pulses within ``window_s`` around it, and a beat whose correlation is below ``min_corr`` is
flagged. Beats in artefacts (motion, contact loss) do not look like their neighbours and are flagged; their
intervals can then be left out of HR, RMSSD and RSA.

Status: offline only (``beat_template_sqi``); the live pipeline (``dsp_ext.ppg.PpgStream`` / ``LiveHr``) does
not use it yet (docs/dsp.md, "Not done").
"""

from __future__ import annotations

import numpy as np

from .errors import DspError

__all__ = ["ORPHANIDOU_MIN_CORR", "beat_template_sqi"]

#: Orphanidou et al.'s (2015) threshold of the mean pulse-template correlation for an acceptable PPG window.
ORPHANIDOU_MIN_CORR = 0.86


def beat_template_sqi(
    filtered: object,
    beat_idx: object,
    rate_hz: float,
    window_s: float = 10.0,
    min_corr: float = ORPHANIDOU_MIN_CORR,
) -> tuple[np.ndarray, np.ndarray]:
    """Template correlation of every beat and its flag: ``(corr, ok)``, one per beat.

    ``filtered``: the band-passed PPG (e.g. 0.5-8 Hz, as ``dsp_ext.ppg`` filters it); ``beat_idx``: beat
    positions in samples of it (fractional allowed, rounded). Each pulse is the stretch of one median inter-beat
    interval (the median over the beats within ``window_s`` around it) centred on its beat; the template is the
    mean of the pulses whose beats lie within ±``window_s``/2 of it (the beat itself included, as in
    Orphanidou et al.); ``corr`` is Pearson r of the pulse with the template (NaN when the pulse runs off the
    signal, holds a non-finite value, or fewer than 3 pulses are near); ``ok = corr >= min_corr``.
    """
    y = np.asarray(filtered, dtype=np.float64)
    b = np.asarray(beat_idx, dtype=np.float64)
    if y.ndim != 1 or b.ndim != 1:
        raise DspError("beat_template_sqi: filtered and beat_idx must be 1-D")
    if not (np.isfinite(rate_hz) and rate_hz > 0 and window_s > 0):
        raise DspError(f"beat_template_sqi: bad rate_hz={rate_hz!r} or window_s={window_s!r}")
    n = len(b)
    corr = np.full(n, np.nan)
    if n < 3:
        return corr, np.zeros(n, dtype=bool)
    ibi = np.diff(b)
    half_w = 0.5 * window_s * rate_hz
    for i in range(n):
        near = np.flatnonzero(np.abs(b - b[i]) <= half_w)
        if len(near) < 3:
            continue
        local = ibi[near[near < n - 1]]  # the intervals starting at the near beats
        med = float(np.median(local)) if len(local) else float(np.median(ibi))
        h = int(round(med / 2))
        if h < 2:
            continue
        segs = []
        own = None
        for j in near:
            c = int(round(b[j]))
            if c - h < 0 or c + h + 1 > len(y):
                continue
            s = y[c - h : c + h + 1]
            if not np.all(np.isfinite(s)):
                continue
            segs.append(s)
            if j == i:
                own = s
        if own is None or len(segs) < 3:
            continue
        tpl = np.mean(segs, axis=0)
        a, t = own - own.mean(), tpl - tpl.mean()
        den = np.sqrt(np.dot(a, a) * np.dot(t, t))
        corr[i] = float(np.dot(a, t) / den) if den > 0 else np.nan
    with np.errstate(invalid="ignore"):
        ok = corr >= min_corr
    return corr, ok
