"""Per-beat signal quality of PPG: template correlation (Orphanidou et al. 2015), causal (live) and offline.

Orphanidou C. et al. (2015), "Signal-quality indices for the electrocardiogram and photoplethysmogram:
derivation and applications to wireless monitoring", IEEE J Biomed Health Inform 19(3): 832-838. Their PPG
index: the pulses of a 10-s window, each cut around its beat with the window's median inter-beat interval as
length, are averaged into a template; the window is acceptable if the mean correlation of its pulses with the
template is at least 0.86. Here the same correlation is kept **per beat**: each pulse is correlated with the
template of the pulses within ``window_s`` around it, and a beat whose correlation is below ``min_corr`` is
flagged. Beats in artefacts (motion, contact loss) do not look like their neighbours and are flagged; their
intervals can then be left out of HR, RMSSD and RSA.

Two forms:

* :func:`beat_template_sqi` (offline, a centred window): the template of the pulses within ±``window_s``/2.
* :class:`BeatSqiStream` (causal, used by ``dsp_ext.ppg.PpgStream`` live and offline, so the unit and the lab
  recompute agree): the template of the beats in the ``window_s`` *before* the beat (the beat included) that
  were themselves judged good (a causal variant of Orphanidou's template; our adaptation) — or of all of
  them when fewer than ``MIN_GOOD`` were (start, after a long artefact or a change of pulse shape, so the
  template cannot lock onto an old shape for longer than one window). A beat is judged as soon as the sample at the end of its pulse (half a median interval after it)
  has arrived. The correlation is blind to scale, so a pulse is also flagged when its SD is more than
  ``MAX_AMP_FACTOR`` (2.5) times the median SD of the template's pulses — a per-pulse amplitude
  check after Sukor J.A., Redmond S.J., Lovell N.H. (2011), "Signal quality measures for pulse oximetry
  through waveform morphology analysis", Physiol Meas 32(3): 369-384. :func:`causal_template_sqi` is its
  one-shot numpy twin (same numbers, any chunking).
"""

from __future__ import annotations

import numpy as np

from .errors import DspError

__all__ = ["ORPHANIDOU_MIN_CORR", "BeatSqiStream", "beat_template_sqi", "causal_template_sqi"]

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


#: fewer good beats than this in the causal window: the template is the mean of all its pulses instead
MIN_GOOD = 3
#: a pulse whose SD exceeds the median SD of the template's pulses by more than this factor is flagged (the
#: correlation is blind to scale; a per-pulse amplitude check after Sukor et al. 2011). Upper side only: real
#: pulses halve their amplitude within a beat (vasoconstriction; 98.5 s of the pyphysio recording) and stay
#: clean; motion adds amplitude. 2.5: the largest ratio of a clean real beat seen was 2.2 (tools/validate_sqi.py)
MAX_AMP_FACTOR = 2.5


def _median(x: np.ndarray) -> float:
    """Median of a short array (cheaper than ``np.median`` for a dozen values)."""
    v = np.sort(x)
    n = len(v)
    return float(v[n // 2]) if n % 2 else float((v[n // 2 - 1] + v[n // 2]) / 2)


def _corr(a: np.ndarray, t: np.ndarray) -> float:
    a = a - a.mean()
    t = t - t.mean()
    den = np.sqrt(np.dot(a, a) * np.dot(t, t))
    return float(np.dot(a, t) / den) if den > 0 else float("nan")


def _causal_one(
    y: np.ndarray, y0: int, b: np.ndarray, good: np.ndarray, i: int, half_w: float
) -> tuple[float, float, int]:
    """Correlation of beat ``i`` (of the beats ``b`` so far, samples of the whole stream; ``good`` the
    judgements of beats ``< i``) with its causal template; ``y`` holds the stream's samples from ``y0`` on.
    Returns ``(corr, amp, need)``: ``amp`` the pulse's SD over the median SD of the template's pulses, ``need``
    the number of samples of the stream that must have arrived to judge it; ``corr`` and ``amp`` are only
    meaningful once they have."""
    nan = float("nan")
    lo = int(np.searchsorted(b, b[i] - half_w, side="left"))
    near = np.arange(lo, i + 1)
    if len(near) < 3:
        return nan, nan, 0
    h = int(round(_median(np.diff(b[near])) / 2))
    c_own = int(round(b[i]))
    need = c_own + h + 1
    if h < 2 or c_own + h + 1 > y0 + len(y):
        return nan, nan, need
    prev = near[:-1]
    use = prev[good[prev]] if int(good[prev].sum()) >= MIN_GOOD else prev
    c = np.rint(b[np.append(use, i)]).astype(np.int64) - y0
    c = c[(c - h >= 0) & (c + h + 1 <= len(y))]
    segs = y[c[:, None] + np.arange(-h, h + 1)]  # one pulse per row, the beat's own last if it fits
    segs = segs[np.isfinite(segs).all(axis=1)]
    o = c_own - y0
    own = y[o - h : o + h + 1] if o - h >= 0 else None
    if own is None or len(own) != 2 * h + 1 or not np.all(np.isfinite(own)) or len(segs) < 3:
        return nan, nan, need
    sd = _median(segs.std(axis=1))
    return _corr(own, segs.mean(axis=0)), (float(np.std(own)) / sd if sd > 0 else nan), need


def _is_good(corr: float, amp: float, min_corr: float) -> bool:
    return bool(corr >= min_corr and amp <= MAX_AMP_FACTOR)


def causal_template_sqi(
    filtered: object,
    beat_idx: object,
    rate_hz: float,
    window_s: float = 10.0,
    min_corr: float = ORPHANIDOU_MIN_CORR,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-shot numpy twin of :class:`BeatSqiStream`: ``(corr, ok, ready)`` per beat; ``ready`` is the number
    of samples after which the beat was judged (non-decreasing). Beats whose pulse is not complete by the end
    of ``filtered`` are left out (as the stream keeps them pending)."""
    y = np.asarray(filtered, dtype=np.float64)
    b = np.asarray(beat_idx, dtype=np.float64)
    if y.ndim != 1 or b.ndim != 1:
        raise DspError("causal_template_sqi: filtered and beat_idx must be 1-D")
    half_w = window_s * rate_hz
    corr, ok, ready = [], np.zeros(len(b), dtype=bool), []
    last = 0
    for i in range(len(b)):
        c, amp, need = _causal_one(y, 0, b, ok, i, half_w)
        if need > len(y):
            break
        last = max(last, need)
        corr.append(c)
        ok[i] = _is_good(c, amp, min_corr)
        ready.append(last)
    n = len(corr)
    return np.array(corr, dtype=np.float64), ok[:n].copy(), np.array(ready, dtype=np.int64)


class BeatSqiStream:
    """Causal per-beat template correlation for a stream (see the module docstring): ``push(y, beats)`` with
    the band-passed samples of one push and the beats (fractional sample indices of the stream) the detector
    found in it; returns ``(beats, corr, ok, ready)`` for the beats judged by this push, in order (a beat is
    judged when its pulse has ended, so some come one push later). ``ready``: the number of samples after
    which each was judged (non-decreasing), for a live consumer that must not look ahead. Results do not
    depend on how the samples are chunked (tested against :func:`causal_template_sqi`)."""

    def __init__(self, rate_hz: float, window_s: float = 10.0, min_corr: float = ORPHANIDOU_MIN_CORR) -> None:
        if not (np.isfinite(rate_hz) and rate_hz > 0 and window_s > 0):
            raise DspError(f"BeatSqiStream: bad rate_hz={rate_hz!r} or window_s={window_s!r}")
        self.rate_hz = float(rate_hz)
        self.window_s = float(window_s)
        self.min_corr = float(min_corr)
        # samples kept: the window, plus a pulse on either side of it (intervals up to 2 s)
        self._keep = int(np.ceil((window_s + 4.0) * rate_hz)) + 4
        self.reset()

    def reset(self) -> None:
        self._y = np.empty(0)
        self._y0 = 0  # stream index of self._y[0]
        self._b: list[float] = []  # beats of the last window (and the pending ones), oldest first
        self._good: list[bool] = []
        self._next = 0  # index in self._b of the first beat not yet judged
        self._wait = 0  # samples that beat needs (0: not known yet)
        self._last_ready = 0

    @property
    def state_nbytes(self) -> int:
        return int(self._y.nbytes + 9 * len(self._b) + 64)

    @property
    def first_pending(self) -> float | None:
        """The oldest beat (fractional sample index) pushed but not yet judged, or None."""
        return self._b[self._next] if self._next < len(self._b) else None

    def push(self, y: object, beats: object) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        y = np.asarray(y, dtype=np.float64)
        self._y = np.concatenate((self._y, y)) if len(self._y) else y.copy()
        self._b += np.asarray(beats, dtype=np.float64).tolist()
        half_w = self.window_s * self.rate_hz
        b = np.asarray(self._b)
        good = np.zeros(len(b), dtype=bool)
        good[: len(self._good)] = self._good
        out_b, out_c, out_ok, out_r = [], [], [], []
        while self._next < len(b):
            i = self._next
            if self._wait > self._y0 + len(self._y):  # its pulse has not ended yet (need depends on b only)
                break
            c, amp, need = _causal_one(self._y, self._y0, b, good, i, half_w)
            if need > self._y0 + len(self._y):
                self._wait = need
                break
            self._wait = 0
            self._last_ready = max(self._last_ready, need)
            ok = _is_good(c, amp, self.min_corr)
            good[i] = ok
            self._good.append(ok)
            out_b.append(b[i])
            out_c.append(c)
            out_ok.append(ok)
            out_r.append(self._last_ready)
            self._next += 1
        # forget beats older than one window before the first pending (or newest) beat, and old samples
        ref = b[self._next] if self._next < len(b) else (b[-1] if len(b) else None)
        if ref is not None:
            drop = int(np.searchsorted(b[: self._next], ref - half_w - 1.0, side="left"))
            if drop:
                del self._b[:drop], self._good[:drop]
                self._next -= drop
        cut = len(self._y) - self._keep
        if cut > 0:
            self._y = self._y[cut:]
            self._y0 += cut
        return (np.array(out_b, dtype=np.float64), np.array(out_c, dtype=np.float64),
                np.array(out_ok, dtype=bool), np.array(out_r, dtype=np.int64))
