"""Photoplethysmography: raw counts in; beats, inter-beat intervals and heart rate on the 4 Hz grid out.

Stages (issue #8):

1. causal band-pass 0.5–8 Hz (2nd-order Butterworth, started in its steady state);
2. systolic peaks after Elgendi et al. (2013) with a rolling ≈10 s threshold and sub-sample refinement
   (Cython kernel ``_ppg.ElgendiDetector``);
3. inter-beat intervals (ms) with hard limits 300–2000 ms, then artefact detection and correction after
   Lipponen & Tarvainen (2019) (:class:`IbiCorrector`): extra beats removed, missed beats inserted, ectopic
   and long/short beats moved to the midpoint of their neighbours; the quartile-deviation thresholds use
   the 91 intervals ending two beats after the one judged, so the correction is causal with a two-beat
   latency (the paper centres that window);
4. beat quality (``sqi=True``, the default): each detected beat's pulse is correlated with the template of
   the recent good pulses (:class:`dsp_ext.sqi.BeatSqiStream`, after Orphanidou et al. 2015; threshold 0.86);
   a corrected interval with a flagged beat in it or at either end is invalid (``ibi_valid`` False), so it is
   left out of HR, RMSSD and RSA; the live HR drops the intervals ending and starting at a flagged beat.
   Final beats are held until every detected beat up to them has been judged (half an interval after it);
5. heart rate (bpm) and IBI (ms) on the shared 4 Hz grid, linearly interpolated between corrected beats;
   grid points in an interval that is still outside the limits, or flagged, are NaN.

Beat times are fractional sample indices of the raw stream (``/ rate_hz`` for seconds since its first
sample). NeuroKit2's ``ppg_clean`` filters forwards and backwards (zero phase); our filter is causal, and
the peaks of the causally filtered pulse come a little later (see docs/dsp.md for the measured offset).
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from . import _ibi, _ppg
from ._arrays import real_1d
from ._blocks import BlockTimeline
from .errors import DspError
from .filters import SosFilter, butter_sos
from .grid import FEATURE_RATE_HZ, GridClock
from .sqi import ORPHANIDOU_MIN_CORR, BeatSqiStream

logger = logging.getLogger(__name__)

__all__ = [
    "IBI_MAX_MS",
    "IBI_MIN_MS",
    "IbiCorrector",
    "IbiCorrectorReference",
    "PpgFeatures",
    "LiveHr",
    "LiveHrReference",
    "elgendi_reference",
    "PpgStream",
    "lipponen_classify",
    "ppg_features",
]

IBI_MIN_MS = 300.0
_EMPTY_F = np.empty(0)
_EMPTY_I = np.empty(0, dtype=np.int64)
_EMPTY_B = np.empty(0, dtype=bool)
IBI_MAX_MS = 2000.0
#: a flagged detected beat within this of a corrected interval (s) invalidates it (less than IBI_MIN_MS / 2)
SQI_TOL_S = 0.1

# Lipponen & Tarvainen (2019) constants
_ALPHA = 5.2
_C1 = 0.13
_C2 = 0.17
_QD_WIN = 91
_MED_WIN = 11
_AHEAD = 2

NORMAL, ECTOPIC, LONG, SHORT, MISSED, EXTRA = 0, 1, 2, 3, 4, 5
KIND_NAMES = {
    NORMAL: "normal",
    ECTOPIC: "ectopic",
    LONG: "long",
    SHORT: "short",
    MISSED: "missed",
    EXTRA: "extra",
}


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def _quartile_dev(values: list[float]) -> float:
    """(Q3 − Q1) / 2 with numpy's default linear interpolation between order statistics."""
    return _quartile_dev_sorted(sorted(values))


def _quartile_dev_sorted(v: list[float]) -> float:
    n = len(v)

    def q(p: float) -> float:
        pos = (n - 1) * p
        i = int(pos)
        f = pos - i
        return v[i] if i + 1 >= n else v[i] + f * (v[i + 1] - v[i])

    return (q(0.75) - q(0.25)) / 2.0


def _abs_drr_mrr(rr: list[float], med: list[float], k: int) -> tuple[float, float]:
    """|dRR| and |mRR| of interval k (mRR doubled when negative, as in the paper)."""
    d = rr[k] - rr[k - 1] if k >= 1 else 0.0
    m = rr[k] - med[k]
    return abs(d), abs(2.0 * m if m < 0 else m)


def _classify(
    rr: list[float], med: list[float], j: int, thresholds: tuple[float, float] | None = None
) -> int:
    """Decision rules of Lipponen & Tarvainen (2019) for interval ``j`` of ``rr`` (ms); ``med[k]`` is the
    median of the 11 intervals ending at ``k`` (the paper centres it; ours must not look ahead).

    Thresholds: ``α = 5.2`` times the quartile deviation of |dRR| and |mRR| over the intervals
    ``j − 88 … j + 2`` (causal version of the paper's centred 91-beat window). Plain Python on short
    lists: cheaper than numpy for 91 values, once per beat. ``thresholds`` (th1, th2) may be given when the
    caller keeps the window sorted (:class:`IbiCorrector`); they must equal what is computed here.
    """
    lo = max(0, j + _AHEAD + 1 - _QD_WIN)
    hi = j + _AHEAD + 1
    if hi - lo < 4:
        return NORMAL

    def drr(k: int) -> float:
        return rr[k] - rr[k - 1] if k >= 1 else 0.0

    def mrr(k: int) -> float:
        m = rr[k] - med[k]
        return 2.0 * m if m < 0 else m

    if thresholds is None:
        th1 = _ALPHA * _quartile_dev([abs(drr(k)) for k in range(lo, hi)])
        th2 = _ALPHA * _quartile_dev([abs(mrr(k)) for k in range(lo, hi)])
    else:
        th1, th2 = thresholds
    if not (th1 > 0 and th2 > 0):
        return NORMAL
    mrr_j = mrr(j)
    d = drr(j) / th1
    mrrs = mrr_j / th2
    if abs(d) <= 1 and abs(mrrs) <= 3:
        return NORMAL
    prev = drr(j - 1) / th1 if j > lo else 0.0
    nxt1 = drr(j + 1) / th1
    nxt2 = drr(j + 2) / th1
    s12 = max(prev, nxt1) if d > 0 else min(prev, nxt1)
    if (d > 1 and s12 < -_C1 * d - _C2) or (d < -1 and s12 > -_C1 * d + _C2):
        return ECTOPIC
    s22 = min(nxt1, nxt2) if d >= 0 else max(nxt1, nxt2)
    long_ = (d > 1 and s22 < -1) or (abs(mrrs) > 3 and mrr_j > 0)
    short_ = (d < -1 and s22 > 1) or (abs(mrrs) > 3 and mrr_j < 0)
    medj = med[j]
    if short_ and abs(rr[j] + rr[j + 1] - medj) < th2:
        return EXTRA
    if long_ and abs(rr[j] / 2.0 - medj) < th2:
        return MISSED
    if long_:
        return LONG
    if short_:
        return SHORT
    return NORMAL


def lipponen_classify(rr_ms: object) -> np.ndarray:
    """Classify every interval of ``rr_ms`` that has two successors (the last two get NORMAL), without
    correcting: NORMAL, ECTOPIC, LONG, SHORT, MISSED or EXTRA per interval (see :func:`_classify`)."""
    rr = np.asarray(rr_ms, dtype=np.float64).tolist()
    med = [_median(rr[max(0, k - _MED_WIN + 1) : k + 1]) for k in range(len(rr))]
    return np.array(
        [_classify(rr, med, j) if j + _AHEAD < len(rr) else NORMAL for j in range(len(rr))], dtype=np.int64
    )


class IbiCorrector:
    """Causal IBI artefact handling: push raw beat times (s), get corrected final beats with a flag each.

    Interval j (beat j to j+1) is judged once interval j+2 exists. Corrections: EXTRA — beat j+1 is dropped;
    MISSED — a beat is inserted in the middle of interval j; ECTOPIC, LONG, SHORT — beat j+1 is moved to the
    middle of beats j and j+2. The kind of each output beat names the correction of the interval ending
    there (``KIND_NAMES``).

    The work is done by the Cython kernel ``_ibi.IbiKernel``; :class:`IbiCorrectorReference` is its plain
    Python twin (the same numbers, tested on adversarial beat sequences).
    """

    def __init__(self, keep: int = _QD_WIN + 8) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int | np.integer) or keep < _QD_WIN:
            raise DspError(f"keep must be an integer >= {_QD_WIN} beats, got {keep!r}")
        self.keep = int(keep)
        self._kernel = _ibi.IbiKernel(self.keep)

    def reset(self) -> None:
        self._kernel.reset()

    @property
    def n_corrected(self) -> int:
        """Intervals corrected since the last reset."""
        return int(self._kernel.n_corrected)

    @property
    def _raw(self) -> range:
        """Stand-in of the reference's kept beat list: only its length (beats held) is meaningful."""
        return range(self._kernel.n_kept)

    @property
    def state_nbytes(self) -> int:
        return int(self._kernel.state_nbytes)

    def push(self, beats_s: object) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(beat_times_s, kind)`` of beats that became final (the very first beat: NORMAL).
        ``beats_s``: finite, increasing raw beat times (s)."""
        return self._kernel.push(real_1d(beats_s, "beat times"))  # DspError on a non-finite time


class IbiCorrectorReference:
    """Plain Python twin of :class:`IbiCorrector` (the reference the Cython kernel is tested against)."""

    def __init__(self, keep: int = _QD_WIN + 8) -> None:
        self.keep = keep
        self.reset()

    def reset(self) -> None:
        self._raw: list[float] = []  # raw beat times (s) still needed
        self._rr: list[float] = []  # rr[k] = raw[k+1] - raw[k] in ms
        self._med: list[float] = []  # med[k] once rr[k+2] exists
        self._next = 0  # interval to judge next
        self._started = False
        self.n_corrected = 0
        # the threshold window [wlo, whi) of |dRR| and |mRR| values, kept sorted (rebuilt after a correction)
        self._sd: list[float] = []
        self._sm: list[float] = []
        self._wlo = self._whi = 0
        self._dirty = True

    def _thresholds(self, j: int) -> tuple[float, float]:
        lo = max(0, j + _AHEAD + 1 - _QD_WIN)
        hi = j + _AHEAD + 1
        rr, med = self._rr, self._med
        if self._dirty or lo < self._wlo or hi < self._whi or lo >= self._whi:
            vals = [_abs_drr_mrr(rr, med, k) for k in range(lo, hi)]
            self._sd = sorted(v[0] for v in vals)
            self._sm = sorted(v[1] for v in vals)
            self._wlo, self._whi, self._dirty = lo, hi, False
        while self._whi < hi:
            d, m = _abs_drr_mrr(rr, med, self._whi)
            bisect.insort(self._sd, d)
            bisect.insort(self._sm, m)
            self._whi += 1
        while self._wlo < lo:
            d, m = _abs_drr_mrr(rr, med, self._wlo)
            del self._sd[bisect.bisect_left(self._sd, d)]
            del self._sm[bisect.bisect_left(self._sm, m)]
            self._wlo += 1
        return _ALPHA * _quartile_dev_sorted(self._sd), _ALPHA * _quartile_dev_sorted(self._sm)

    def _extend_intervals(self) -> None:
        while len(self._rr) < len(self._raw) - 1:
            k = len(self._rr)
            self._rr.append((self._raw[k + 1] - self._raw[k]) * 1000.0)
        while len(self._med) < len(self._rr):
            k = len(self._med)
            self._med.append(_median(self._rr[max(0, k - _MED_WIN + 1) : k + 1]))

    def _set_beat(self, i: int, t: float) -> None:
        """Move raw beat i and update the two intervals around it (their medians are recomputed lazily)."""
        self._raw[i] = t
        for k in (i - 1, i):
            if 0 <= k < len(self._rr):
                self._rr[k] = (self._raw[k + 1] - self._raw[k]) * 1000.0
        for k in range(max(0, i - 1), min(len(self._med), i + _MED_WIN)):
            self._med[k] = _median(self._rr[max(0, k - _MED_WIN + 1) : k + 1])

    def push(self, beats_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(beat_times_s, kind)`` of beats that became final (the very first beat: NORMAL)."""
        if not len(beats_s):  # every judgeable interval was judged at the end of the previous push
            return np.empty(0, dtype=np.float64), np.empty(0, dtype=np.int64)
        self._raw.extend(float(b) for b in beats_s)
        out_t: list[float] = []
        out_k: list[int] = []
        if not self._started and self._raw:
            self._started = True
            out_t.append(self._raw[0])
            out_k.append(NORMAL)
        self._extend_intervals()
        while self._next + _AHEAD < len(self._rr):
            j = self._next
            kind = _classify(self._rr, self._med, j, self._thresholds(j) if j + _AHEAD + 1 >= 4 else None)
            raw = self._raw
            if kind == NORMAL:
                out_t.append(raw[j + 1])
                self._next += 1
            elif kind == EXTRA:  # beat j+1 is spurious: merge intervals j and j+1
                del raw[j + 1]
                self._rr[j] = (raw[j + 1] - raw[j]) * 1000.0
                del self._rr[j + 1]
                del self._med[j:]
                self._extend_intervals()
                out_t.append(raw[j + 1])
                self._next += 1
            elif kind == MISSED:  # a beat was missed inside interval j
                out_t.append(0.5 * (raw[j] + raw[j + 1]))
                out_k.append(MISSED)
                out_t.append(raw[j + 1])
                self._next += 1
            else:  # ectopic, long, short: move beat j+1 to the middle of its neighbours
                self._set_beat(j + 1, 0.5 * (raw[j] + raw[j + 2]))
                out_t.append(raw[j + 1])
                self._next += 1
            out_k.append(kind)
            self.n_corrected += kind != NORMAL
            if kind != NORMAL:
                self._dirty = True
            drop = max(0, self._next - self.keep)
            if drop:
                del self._raw[:drop]
                del self._rr[:drop]
                del self._med[:drop]
                self._next -= drop
                self._wlo -= drop
                self._whi -= drop
                if self._wlo < 1:  # |dRR| of the new first interval is no longer known
                    self._dirty = True
            if self._next + _AHEAD >= len(self._rr):
                self._extend_intervals()
        return np.asarray(out_t, dtype=np.float64), np.asarray(out_k, dtype=np.int64)


@dataclass
class PpgFeatures:
    """Output of one push: raw beats (fractional sample index), final corrected beats (s after the first
    sample) with IBIs, and HR and IBI on the 4 Hz grid (``index`` k: ``k / 4`` s after the first sample, or
    UTC ``k * 250 ms`` when the stream was given ``t0_ns``)."""

    raw_beats: np.ndarray
    beat_s: np.ndarray
    ibi_ms: np.ndarray
    ibi_kind: np.ndarray
    ibi_valid: np.ndarray
    index: np.ndarray
    hr_bpm: np.ndarray
    ibi_grid_ms: np.ndarray
    extra: dict[str, float] = field(default_factory=dict)
    #: live heart rate (bpm) on the 4 Hz grid, causal with no look-ahead (``PpgStream(live=True)`` only)
    live_index: np.ndarray = field(default_factory=lambda: _EMPTY_I)
    live_hr_bpm: np.ndarray = field(default_factory=lambda: _EMPTY_F)
    #: beats judged by the quality index in this push (fractional sample index), their template correlation
    #: and whether they are good (``PpgStream(sqi=True)`` only; a beat is judged half an interval after it)
    sqi_beats: np.ndarray = field(default_factory=lambda: _EMPTY_F)
    sqi_corr: np.ndarray = field(default_factory=lambda: _EMPTY_F)
    sqi_ok: np.ndarray = field(default_factory=lambda: _EMPTY_B)

    @property
    def time_s(self) -> np.ndarray:
        return self.index / FEATURE_RATE_HZ


class PpgStream:
    """Streaming PPG pipeline; ``push(counts) -> PpgFeatures`` (see the module docstring)."""

    def __init__(
        self,
        rate_hz: float,
        band_hz: tuple[float, float] = (0.5, 8.0),
        order: int = 2,
        t0_ns: int | None = None,
        live: bool = False,
        sqi: bool = True,
        sqi_window_s: float = 10.0,
        sqi_min_corr: float = ORPHANIDOU_MIN_CORR,
    ) -> None:
        if not (np.isfinite(rate_hz) and rate_hz > 2 * band_hz[1]):
            raise DspError(f"PPG rate_hz={rate_hz!r} must exceed twice the band-pass top {band_hz[1]} Hz")
        self.rate_hz = float(rate_hz)
        self._bp = SosFilter(butter_sos(order, band_hz, rate_hz, "bandpass"), init="first")
        self._det = _ppg.ElgendiDetector(self.rate_hz)
        self._ibi = IbiCorrector()
        self._t0_ns = t0_ns
        self.clock = GridClock(t0_ns)
        self.live = bool(live)
        self._sqi = BeatSqiStream(self.rate_hz, sqi_window_s, sqi_min_corr) if sqi else None
        self.reset()

    def reset(self) -> None:
        self._timeline = BlockTimeline(self.rate_hz)
        self._bp.reset()
        self._det.reset()
        self._ibi.reset()
        self._n = 0
        self._k_next = self.clock.first_index  # next grid index to emit
        self._last_beat_s: float | None = None
        self._last_hr = np.nan
        self._last_ibi = np.nan
        self._live = LiveHr(self.rate_hz, self.clock) if self.live else None
        if self._sqi is not None:
            self._sqi.reset()
        self._decided: list[int] = []  # detector decisions of the beats not yet judged by the SQI (live)
        self._held_t: list[float] = []  # final beats (s) held until every detected beat up to them is judged
        self._held_k: list[int] = []
        self._bad_s: list[float] = []  # flagged detected beats (s) at or after the newest emitted final beat
        self._good_s: list[float] = []  # good detected beats (s), likewise
        self._last_verified = False  # the newest emitted final beat lies at a good detected beat

    @property
    def state_nbytes(self) -> int:
        live = self._live.state_nbytes if self._live is not None else 0
        sqi = self._sqi.state_nbytes + 8 * (len(self._held_t) + len(self._bad_s)) if self._sqi is not None else 0
        return int(self._bp.state_nbytes + self._det.state_nbytes + 8 * (len(self._ibi._raw) + 16) + live + sqi)

    def push_block(self, block: object) -> PpgFeatures:
        """Push a ``SampleBlock`` of raw counts: lost samples become NaN (``CONTACT_LOST`` blocks too), and —
        if the stream was made without ``t0_ns`` — the first block's ``t0_ns`` puts HR on the UTC grid."""
        if self._n == 0 and self._t0_ns is None:
            self.clock = GridClock(int(block.t0_ns))  # type: ignore[attr-defined]
            self._k_next = self.clock.first_index
            if self._live is not None:
                self._live = LiveHr(self.rate_hz, self.clock)
        values, contact = self._timeline.convert(block)
        values = np.where(contact, values, np.nan)
        return self.push(values)

    def push(self, counts: object) -> PpgFeatures:
        x = counts
        if type(x) is not np.ndarray or x.dtype != np.float64 or x.ndim != 1:
            x = np.asarray(counts)
            if x.ndim != 1 or x.dtype.kind not in "biuf":
                raise DspError(f"ppg counts must be a 1-D real array, got shape {x.shape} dtype {x.dtype}")
        y = self._bp.process(x)
        self._n += len(y)
        sqi = self._sqi
        if self._live is None:
            raw = self._det.push(y)
            decided = None
        else:
            raw, decided = self._det.push_decided(y)
        if sqi is None:
            q_b, q_c, q_ok = _EMPTY_F, _EMPTY_F, _EMPTY_B
            if decided is not None:
                live_k, live_hr = self._live.push(raw, decided, self._n)  # type: ignore[union-attr]
            else:
                live_k, live_hr = _EMPTY_I, _EMPTY_F
            beat_s, kind = self._ibi.push(raw / self.rate_hz)
            quality = np.ones(len(beat_s), dtype=np.uint8)
        else:
            q_b, q_c, q_ok, q_ready = sqi.push(y, raw)
            if decided is not None:
                # a judged beat is known live once both the detector and the SQI have decided it
                self._decided += decided.tolist()
                dec = np.asarray(self._decided[: len(q_b)], dtype=np.int64)
                del self._decided[: len(q_b)]
                live_k, live_hr = self._live.push(  # type: ignore[union-attr]
                    q_b, np.maximum(np.maximum.accumulate(dec) if len(dec) else dec, q_ready), self._n, q_ok)
            else:
                live_k, live_hr = _EMPTY_I, _EMPTY_F
            if len(q_b):
                self._bad_s += (q_b[~q_ok] / self.rate_hz).tolist()
                self._good_s += (q_b[q_ok] / self.rate_hz).tolist()
            beat_s, kind, quality = self._release(*self._ibi.push(raw / self.rate_hz), sqi.first_pending)
        # intervals ending at each final beat, and HR / IBI on the grid up to the newest one
        if not len(beat_s):
            return PpgFeatures(raw, beat_s, _EMPTY_F, kind, _EMPTY_B, _EMPTY_I, _EMPTY_F, _EMPTY_F,
                               live_index=live_k, live_hr_bpm=live_hr, sqi_beats=q_b, sqi_corr=q_c, sqi_ok=q_ok)
        clock = self.clock
        lb = self._last_beat_s
        ibi, valid, k, hr, ibi_g, self._last_hr, self._last_ibi = _ppg.beat_grid(
            beat_s, math.nan if lb is None else lb, self._last_hr, self._last_ibi, clock.offset_s,
            clock.first_index, self._k_next, IBI_MIN_MS, IBI_MAX_MS, quality)
        self._k_next += len(k)
        self._last_beat_s = float(beat_s[-1])
        return PpgFeatures(raw, beat_s, ibi, kind, valid, k, hr, ibi_g, live_index=live_k, live_hr_bpm=live_hr,
                           sqi_beats=q_b, sqi_corr=q_c, sqi_ok=q_ok)

    def _release(
        self, beat_s: np.ndarray, kind: np.ndarray, first_pending: float | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hold the corrector's final beats until every detected beat up to them has been judged (the oldest
        beat still pending in the SQI is ``first_pending``, a sample index); return the released beats, their
        kinds and each interval's quality: 1 only if both its beats lie within ``SQI_TOL_S`` of a good detected
        beat (a beat the corrector inserted or moved further is not verified) and no flagged detected beat lies
        in ``[previous beat, beat]`` widened by ``SQI_TOL_S`` on both sides."""
        tol = SQI_TOL_S
        if len(beat_s):
            self._held_t += beat_s.tolist()
            self._held_k += kind.tolist()
        limit = math.inf if first_pending is None else first_pending / self.rate_hz - tol
        m = bisect.bisect_left(self._held_t, limit)
        if m == 0:
            return _EMPTY_F, np.empty(0, dtype=kind.dtype), np.empty(0, dtype=np.uint8)
        t = np.asarray(self._held_t[:m], dtype=np.float64)
        kd = np.asarray(self._held_k[:m], dtype=kind.dtype)
        del self._held_t[:m], self._held_k[:m]
        bad = np.asarray(self._bad_s, dtype=np.float64)
        prev = np.concatenate(([-math.inf if self._last_beat_s is None else self._last_beat_s], t[:-1]))
        j = np.searchsorted(bad, prev - tol, side="left")
        hit = (j < len(bad)) & (bad[np.minimum(j, max(len(bad) - 1, 0))] <= t + tol) if len(bad) else \
            np.zeros(m, bool)
        good = np.asarray(self._good_s, dtype=np.float64)
        if len(good):
            g = np.clip(np.searchsorted(good, t), 1, max(len(good) - 1, 1))
            near = np.minimum(np.abs(good[g - 1] - t), np.abs(good[np.minimum(g, len(good) - 1)] - t))
            verified = near <= tol
        else:
            verified = np.zeros(m, bool)
        ends = np.concatenate(([self._last_verified], verified))
        self._last_verified = bool(verified[-1])
        # keep only the flags the next interval (from the newest released beat) can still reach
        self._bad_s = [b for b in self._bad_s if b >= t[-1] - tol]
        self._good_s = [b for b in self._good_s if b >= t[-1] - tol]
        return t, kd, (~hit & ends[:-1] & ends[1:]).astype(np.uint8)

    def _grid_reference(self, beat_s: np.ndarray, quality: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """Numpy twin of the kernel ``_ppg.beat_grid`` (what :meth:`push` does with its final beats):
        ``(ibi_ms, valid, grid_index, hr_bpm, ibi_grid_ms)``; HR and IBI on grid points up to the newest final
        beat, linear between beats; NaN before the first interval and inside invalid intervals. Updates
        the stream's grid state as :meth:`push` does."""
        prev = np.concatenate(([self._last_beat_s if self._last_beat_s is not None else np.nan], beat_s))
        ibi = np.diff(prev) * 1000.0
        valid = (ibi >= IBI_MIN_MS) & (ibi <= IBI_MAX_MS)
        if quality is not None:
            valid &= np.asarray(quality) != 0
        if not len(beat_s):
            return ibi, valid, np.empty(0, dtype=np.int64), np.empty(0), np.empty(0)
        t_b = prev
        with np.errstate(invalid="ignore"):
            hr_b = np.concatenate(([self._last_hr], np.where(valid, 60000.0 / ibi, np.nan)))
        ibi_b = np.concatenate(([self._last_ibi], np.where(valid, ibi, np.nan)))
        k_end = self.clock.last_index_at_or_before(float(beat_s[-1])) + 1
        k = np.arange(self._k_next, max(k_end, self._k_next), dtype=np.int64)
        tk = self.clock.rel_s(k)
        seg = np.searchsorted(t_b, tk, side="left")  # t_b[seg-1] < tk <= t_b[seg]
        hr = np.full(len(k), np.nan)
        ig = np.full(len(k), np.nan)
        ok = (seg >= 1) & (seg < len(t_b))
        s = seg[ok]
        if len(s):
            t0, t1 = t_b[s - 1], t_b[s]
            w = (tk[ok] - t0) / (t1 - t0)
            # the interval (t0, t1] must itself be valid: its value is hr_b[s]
            bad = ~np.isfinite(hr_b[s]) | ~np.isfinite(t0)
            h = hr_b[s - 1] + w * (hr_b[s] - hr_b[s - 1])
            h = np.where(np.isfinite(hr_b[s - 1]), h, hr_b[s])
            i2 = ibi_b[s - 1] + w * (ibi_b[s] - ibi_b[s - 1])
            i2 = np.where(np.isfinite(ibi_b[s - 1]), i2, ibi_b[s])
            hr[ok] = np.where(bad, np.nan, h)
            ig[ok] = np.where(bad, np.nan, i2)
        self._k_next = max(k_end, self._k_next)
        self._last_hr = float(hr_b[-1])
        self._last_ibi = float(ibi_b[-1])
        self._last_beat_s = float(beat_s[-1])
        return ibi, valid, k, hr, ig


class LiveHrReference:
    """Plain-Python twin of :class:`LiveHr` (the same rules, operation by operation): the reference its
    Cython kernel ``_ppg.LiveHrKernel`` is tested against."""

    HOLD_S = 3.0
    DELAY_S = 1.0
    HISTORY = _MED_WIN
    MIN_HISTORY = 3
    MAX_REL_DEV = 0.2
    MAX_REJECTS = 3

    def __init__(self, rate_hz: float, clock: GridClock) -> None:
        self.rate_hz = float(rate_hz)
        self.clock = clock
        self._k_next = clock.first_index
        self._prev_beat = math.nan  # newest beat (fractional sample index), accepted or not
        self._prev_ok = True  # its beat quality
        self._hist: list[float] = []  # accepted IBIs (ms), newest last
        self._rejects = 0
        self._known: list[tuple[float, float]] = []
        self._pending: list[tuple[int, float, float]] = []  # (deciding sample, beat, hr) not yet known

    def _accept(self, ibi_ms: float) -> bool:
        if not IBI_MIN_MS <= ibi_ms <= IBI_MAX_MS:
            return False
        h = self._hist
        if len(h) >= self.MIN_HISTORY:
            med = _median(h)
            if abs(ibi_ms - med) > self.MAX_REL_DEV * med:
                self._rejects += 1
                if self._rejects >= self.MAX_REJECTS:
                    h.clear()
                    self._rejects = 0
                return False
        self._rejects = 0
        h.append(ibi_ms)
        if len(h) > self.HISTORY:
            del h[0]
        return True

    def push(
        self, beats: np.ndarray, decided: np.ndarray, n_done: int, ok: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Beats (fractional sample indices) with the samples that decided them, their quality (``ok``; False:
        the intervals ending and starting at the beat are not used) and the number of samples pushed so far;
        returns ``(grid_index, hr_bpm)`` for every grid point whose time has been reached."""
        oks = [True] * len(beats) if ok is None else [bool(v) for v in np.asarray(ok).tolist()]
        for b, d, q in zip(beats.tolist(), decided.tolist(), oks, strict=True):
            ibi = (b - self._prev_beat) * 1000.0 / self.rate_hz
            self._prev_beat = b
            both = self._prev_ok and q
            self._prev_ok = q
            if ibi == ibi and both and self._accept(ibi):
                self._pending.append((d, b, 60000.0 / ibi))
        clock, rate = self.clock, self.rate_hz
        delay = self.DELAY_S * rate
        hold = self.HOLD_S * rate
        k = self._k_next
        ks: list[int] = []
        out: list[float] = []
        pend = self._pending
        known = self._known  # accepted beats decided so far: (beat position, hr), newest last, a few kept
        while True:
            pos = (clock.offset_s + (k - clock.first_index) / FEATURE_RATE_HZ) * rate  # sample position of t_k
            last = math.floor(pos + 1e-9)
            if last >= n_done:  # the sample at t_k has not arrived yet
                break
            while pend and pend[0][0] <= last:
                _, b, h = pend.pop(0)
                known.append((b, h))
                if len(known) > 8:
                    del known[0]
            tau = pos - delay
            v = math.nan
            if known and tau >= known[0][0]:
                i = len(known) - 1
                while known[i][0] > tau:
                    i -= 1
                b0, h0 = known[i]
                if i + 1 < len(known):
                    b1, h1 = known[i + 1]
                    if b1 - b0 <= hold:
                        v = h0 + (tau - b0) / (b1 - b0) * (h1 - h0)
                elif tau - b0 <= hold:
                    v = h0
            ks.append(k)
            out.append(v)
            k += 1
        self._k_next = k
        return np.array(ks, dtype=np.int64), np.array(out, dtype=np.float64)


class LiveHr:
    """Live heart rate on the 4 Hz grid: causal, with no look-ahead, for synchrony that must keep up with the
    room (issue #5: a window's metric at the broker within 200 ms of its last sample).

    Grid point k (time ``t_k``) gets the heart rate ``60000 / IBI`` of the newest *accepted* interval among
    the beats the detector had decided by the sample at ``t_k`` (zero-order hold), and is emitted as soon
    as that sample has been pushed. The Lipponen–Tarvainen correction needs two later beats, so it cannot be
    used here; instead an interval is accepted if it lies within the hard limits (300–2000 ms) and, once
    ``MIN_HISTORY`` intervals have been accepted, within ``MAX_REL_DEV`` (20 %) of the median of the last
    ``HISTORY`` (11, the Lipponen–Tarvainen median window) accepted intervals — an extra or a missed beat
    changes the interval by ~50 % and is held over. After ``MAX_REJECTS`` (3) rejections in a row the
    history restarts (a real change of rate is followed). A point whose held value was decided more than
    ``HOLD_S`` (3 s) earlier is NaN (no beat: contact loss, flat signal).

    The value trails the true instantaneous rate by the detector's decision delay (about ``w2 / 2`` plus the
    rest of the pulse, ≈ 0.5 s) and half an interval on average; therapist and client trail alike, so the
    synchrony lag is not biased. The corrected, interpolated series (``PpgFeatures.hr_bpm``) stays the
    reference for offline analysis and HRV. Results do not depend on how the samples are chunked."""

    HOLD_S = LiveHrReference.HOLD_S
    DELAY_S = LiveHrReference.DELAY_S
    HISTORY = LiveHrReference.HISTORY
    MIN_HISTORY = LiveHrReference.MIN_HISTORY
    MAX_REL_DEV = LiveHrReference.MAX_REL_DEV
    MAX_REJECTS = LiveHrReference.MAX_REJECTS

    def __init__(self, rate_hz: float, clock: GridClock) -> None:
        self.rate_hz = float(rate_hz)
        self.clock = clock
        self._kernel = _ppg.LiveHrKernel(
            self.rate_hz, float(clock.offset_s), int(clock.first_index), self.DELAY_S, self.HOLD_S,
            self.HISTORY, self.MIN_HISTORY, self.MAX_REL_DEV, self.MAX_REJECTS, IBI_MIN_MS, IBI_MAX_MS,
        )

    @property
    def state_nbytes(self) -> int:
        return int(self._kernel.state_nbytes)

    def push(
        self, beats: np.ndarray, decided: np.ndarray, n_done: int, ok: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Beats (fractional sample indices, float64) with the samples that decided them (int64), their
        quality (``ok``, bool; default all good: a flagged beat's two intervals are not used), and the number
        of samples pushed so far; returns ``(grid_index, hr_bpm)`` for every grid point whose time has been
        reached."""
        q = np.ones(len(beats), dtype=np.uint8) if ok is None else np.ascontiguousarray(ok, dtype=np.uint8)
        return self._kernel.push(beats, decided, n_done, q)


def elgendi_reference(
    y: np.ndarray,
    rate_hz: float,
    w1_s: float = 0.111,
    w2_s: float = 0.667,
    beta: float = 0.02,
    block_s: float = 1.0,
    n_blocks: int = 10,
    min_delay_s: float = 0.3,
    max_block_s: float = 1.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy twin of the Cython detector ``_ppg.ElgendiDetector`` on a whole band-passed record:
    ``(beats, decided)`` — refined beat positions (fractional sample indices) and the index of the sample
    whose arrival decided each. The same rules and the same arithmetic order (moving sums added in index
    order, block sums accumulated sample by sample), so the same beats; the kernel is tested against it."""
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    h1 = max(1, int(w1_s * rate_hz + 0.5) // 2)
    h2 = max(h1 + 1, int(w2_s * rate_hz + 0.5) // 2)
    block_len = max(1, int(block_s * rate_hz + 0.5))
    n_blocks = max(1, n_blocks)
    max_block = max(2 * h1 + 1, int(max_block_s * rate_hz + 0.5))
    min_delay = int(min_delay_s * rate_hz + 0.5)
    finite = np.isfinite(y)
    with np.errstate(invalid="ignore"):
        z = np.where(finite & (y > 0.0), y * y, 0.0)
    # the rolling level after each sample: the mean so far until a block is complete, then the median of
    # the means of the last n_blocks complete blocks
    level = np.empty(n)
    means: list[float] = []
    lv = 0.0
    for b0 in range(0, n, block_len):
        c = np.cumsum(z[b0 : b0 + block_len])  # sequential sums, as the kernel adds them
        if not means:
            part = c / np.arange(1, c.size + 1)
            level[b0 : b0 + c.size] = part
            lv = float(part[-1])
        else:
            level[b0 : b0 + c.size] = lv
        if c.size == block_len:
            means.append(float(c[-1]) / block_len)
            lv = _median(means[-n_blocks:])
            level[b0 + block_len - 1] = lv
    # centred moving sums, each added in index order from the window's first sample (as the kernel's ring)
    m = np.arange(h2, n - h2)
    sum1 = np.zeros(m.size)
    for j in range(-h1, h1 + 1):
        sum1 = sum1 + z[m + j]
    sum2 = np.zeros(m.size)
    for j in range(-h2, h2 + 1):
        sum2 = sum2 + z[m + j]
    ma_peak = sum1 / (2 * h1 + 1)
    thr = sum2 / (2 * h2 + 1) + beta * level[m + h2] if m.size else np.zeros(0)
    above = (ma_peak > thr) & (ma_peak > 0.0)
    beats: list[float] = []
    decided: list[int] = []
    in_block, start, bad, last = False, 0, False, -1e300
    for i, mm in enumerate(m.tolist()):
        ab = bool(above[i])
        if not finite[mm] and in_block:
            bad = True
        if ab and not in_block:
            in_block, start, bad = True, mm, not finite[mm]
        elif in_block and (not ab or mm - start >= max_block):
            in_block = False
            if not ab and not bad and mm - start >= 2 * h1 + 1:
                seg = y[start:mm]
                pk = start + int(np.argmax(seg))  # the first maximum (no NaN inside a good block)
                delta = 0.0
                if pk - 1 >= 0:
                    ym, yp, yn = y[pk - 1], y[pk], y[pk + 1]
                    den = ym - 2.0 * yp + yn
                    if np.isfinite(den) and den < 0.0:
                        delta = 0.5 * (ym - yn) / den
                        if abs(delta) > 0.5:
                            delta = 0.0
                if pk + delta - last >= min_delay:
                    beats.append(pk + delta)
                    decided.append(mm + h2)
                    last = pk + delta
    return np.array(beats, dtype=np.float64), np.array(decided, dtype=np.int64)


def ppg_features(counts: object, rate_hz: float, **kwargs: object) -> PpgFeatures:
    """Batch form of :class:`PpgStream` (identical numbers)."""
    return PpgStream(rate_hz, **kwargs).push(counts)  # type: ignore[arg-type]
