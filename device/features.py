"""Per-person feature extraction onto the shared 4 Hz UTC grid (ARCHITECTURE §3).

Grid bin ``k`` covers UTC ``[k * 250 ms, (k + 1) * 250 ms)``; a bin is emitted once raw data reach its
end, so features are causal and their latency is one bin. Two channels per person:

* ``eda`` (µS): mean of the raw samples in the bin (a boxcar low-pass and decimation); NaN when fewer
  than half of the bin's samples are valid.
* ``hr`` (bpm): from inter-beat intervals. Beats are systolic peaks of the band-passed (0.5-5 Hz) PPG,
  at least 0.3 s apart; an IBI outside 300-2000 ms is an artefact.
  The bin value is 60000 / the last valid IBI if that beat is at most 3 s old, else NaN.

When :mod:`dsp_ext` provides streaming EDA/PPG processors (``dsp_ext.eda.EdaStream``,
``dsp_ext.ppg.PpgStream``) they are used instead by :func:`make_extractor`; the fallbacks here keep
the unit working without them and are deliberately plain.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from firmware_bridge.block import SampleBlock

logger = logging.getLogger(__name__)

GRID_NS = 250_000_000  # 4 Hz
FEATURE_RATE_HZ = 4.0


@dataclass(frozen=True)
class Beat:
    t_ns: int
    ibi_ms: float
    artifact: bool


class _Binner:
    """Accumulates samples into grid bins; returns finished bins as (k, mean, valid_fraction)."""

    def __init__(self, rate_hz: float) -> None:
        self.rate_hz = rate_hz
        self.expected = rate_hz * GRID_NS / 1e9
        self.k: int | None = None
        self.sum = 0.0
        self.n = 0

    def push(self, t_ns: np.ndarray, v: np.ndarray) -> list[tuple[int, float]]:
        out: list[tuple[int, float]] = []
        ks = t_ns // GRID_NS
        for k in np.unique(ks):
            k = int(k)
            sel = v[ks == k]
            if self.k is None:
                self.k = k
            if k < self.k:  # late samples of a finished bin: ignored
                continue
            if k > self.k:
                out.append((self.k, self._value()))
                out.extend((j, math.nan) for j in range(self.k + 1, k))
                self.k, self.sum, self.n = k, 0.0, 0
            ok = sel[np.isfinite(sel)]
            self.sum += float(ok.sum())
            self.n += int(ok.size)
        return out

    def _value(self) -> float:
        return self.sum / self.n if self.n >= 0.5 * self.expected and self.n > 0 else math.nan


class EdaExtractor:
    """Raw EDA (µS) blocks -> (grid index, µS) pairs."""

    channel = "eda"

    def __init__(self, rate_hz: float) -> None:
        self._bins = _Binner(rate_hz)

    def push(self, block: SampleBlock) -> list[tuple[int, float]]:
        return self._bins.push(block.times_ns(), block.values.astype(np.float64))


def _biquad(kind: str, f0_hz: float, fs_hz: float, q: float = 1 / math.sqrt(2)) -> tuple[float, ...]:
    """RBJ audio-EQ-cookbook biquad (Bristow-Johnson), normalised: (b0, b1, b2, a1, a2)."""
    w0 = 2 * math.pi * f0_hz / fs_hz
    c, alpha = math.cos(w0), math.sin(w0) / (2 * q)
    if kind == "highpass":
        b = ((1 + c) / 2, -(1 + c), (1 + c) / 2)
    else:
        b = ((1 - c) / 2, 1 - c, (1 - c) / 2)
    a0 = 1 + alpha
    return b[0] / a0, b[1] / a0, b[2] / a0, -2 * c / a0, (1 - alpha) / a0


class _Biquad:
    """Direct form II transposed, started in the steady state of its first input (no start-up transient)."""

    def __init__(self, coeffs: tuple[float, ...]) -> None:
        self.b0, self.b1, self.b2, self.a1, self.a2 = coeffs
        self.z1: float | None = None
        self.z2 = 0.0

    def step(self, x: float) -> float:
        if self.z1 is None:
            yss = x * (self.b0 + self.b1 + self.b2) / (1 + self.a1 + self.a2)
            self.z1 = (self.b1 + self.b2) * x - (self.a1 + self.a2) * yss
            self.z2 = self.b2 * x - self.a2 * yss
        y = self.b0 * x + self.z1
        self.z1 = self.b1 * x - self.a1 * y + self.z2
        self.z2 = self.b2 * x - self.a2 * y
        return y


class IbiEpochs:
    """Per-epoch RMSSD from beats when ``dsp_ext.hrv`` is not used: epoch e covers grid bins
    ``origin + e * epoch_bins ...``; an epoch closes when the HR grid has passed its end."""

    def __init__(self, origin_bin: int, epoch_bins: int) -> None:
        self.origin = origin_bin
        self.epoch_bins = epoch_bins
        self.ibis: dict[int, list[float]] = {}
        self.next_epoch = 0

    def add(self, beat: Beat) -> None:
        e = (beat.t_ns // GRID_NS - self.origin) // self.epoch_bins
        if e >= self.next_epoch and not beat.artifact:
            self.ibis.setdefault(e, []).append(beat.ibi_ms)

    def close_until(self, k_next: int | None) -> list[tuple[int, dict[str, float]]]:
        if k_next is None:
            return []
        out = []
        while self.origin + (self.next_epoch + 1) * self.epoch_bins <= k_next:
            ibis = self.ibis.pop(self.next_epoch, [])
            out.append((self.next_epoch, {"rmssd_ms": rmssd_ms(ibis),
                                          "mean_ibi_ms": float(np.mean(ibis)) if ibis else math.nan,
                                          "n_beats": float(len(ibis))}))
            self.next_epoch += 1
        return out


class HrExtractor:
    """Raw PPG (counts) blocks -> (grid index, bpm) pairs, and beats in :attr:`beats`.

    Fallback detector: 0.5 Hz high-pass and 5 Hz low-pass biquads, then a local maximum above 40 % of a
    decaying amplitude envelope (half-life 2 s), at least 0.3 s after the previous beat; confirmed one
    sample after the peak.
    """

    channel = "hr"
    MIN_DIST_S = 0.3
    HOLD_S = 3.0

    def __init__(self, rate_hz: float, origin_bin: int = 0, epoch_bins: int = 120) -> None:
        self.epochs = IbiEpochs(origin_bin, epoch_bins)
        self.rate_hz = rate_hz
        self.hp = _Biquad(_biquad("highpass", 0.5, rate_hz))
        self.lp = _Biquad(_biquad("lowpass", min(5.0, 0.45 * rate_hz), rate_hz))
        self.decay = 0.5 ** (1.0 / (2.0 * rate_hz))
        self.env = 0.0
        self.y1 = self.y2 = 0.0
        self.t1 = 0
        self.last_good = 0.0
        self.last_beat_ns: int | None = None
        self.last_valid: tuple[int, float] | None = None  # (beat t_ns, ibi ms)
        self.beats: list[Beat] = []
        self.k_next: int | None = None

    def push(self, block: SampleBlock) -> list[tuple[int, float]]:
        t = block.times_ns().tolist()
        min_dist_ns = int(self.MIN_DIST_S * 1e9)
        hp, lp, decay = self.hp, self.lp, self.decay
        for ti, x in zip(t, block.values.tolist(), strict=True):
            if x != x:  # invalid sample: hold the last good value
                x = self.last_good
            self.last_good = x
            y = lp.step(hp.step(x))
            self.env = max(abs(y), self.env * decay)
            if self.y1 > self.y2 and self.y1 >= y and self.y1 > 0.4 * self.env:
                tp = self.t1
                if self.last_beat_ns is None or tp - self.last_beat_ns >= min_dist_ns:
                    if self.last_beat_ns is not None:
                        ibi = (tp - self.last_beat_ns) / 1e6
                        artifact = not 300.0 <= ibi <= 2000.0
                        self.epochs.add(Beat(tp, ibi, artifact))
                        self.beats.append(Beat(tp, ibi, artifact))
                        if not artifact:
                            self.last_valid = (tp, ibi)
                    self.last_beat_ns = tp
            self.y2, self.y1, self.t1 = self.y1, y, ti
        return self._emit(t[-1] + round(1e9 / self.rate_hz))

    def _emit(self, data_end_ns: int) -> list[tuple[int, float]]:
        k_end = data_end_ns // GRID_NS  # bins < k_end are complete
        if self.k_next is None:
            self.k_next = k_end
            return []
        out = []
        for k in range(self.k_next, k_end):
            bin_end = (k + 1) * GRID_NS
            lv = self.last_valid
            ok = lv is not None and lv[0] <= bin_end and bin_end - lv[0] <= self.HOLD_S * 1e9
            out.append((k, 60000.0 / lv[1] if ok else math.nan))
        self.k_next = max(self.k_next, k_end)
        return out

    def take_beats(self) -> list[Beat]:
        beats, self.beats = self.beats, []
        return beats

    def take_epochs(self) -> list[tuple[int, dict[str, float]]]:
        """Regulation epochs completed so far: (epoch index since the origin, values)."""
        return self.epochs.close_until(self.k_next)


class _Anchored:
    """Adapter base for dsp_ext streams, whose grid index k means ``k / 4`` s after the stream's first
    sample: the first sample's UTC time anchors it to the shared grid (to the nearest bin, an error below
    half a raw sample). Raw gaps up to ``MAX_FILL_S`` are filled with NaN samples so the stream stays
    contiguous; a longer gap (or a time jump backwards) restarts the stream at a new anchor.

    A gap of at most ``BRIDGE_S`` between two finite samples is bridged by linear interpolation instead
    (``bridged_samples`` counts them). The dsp_ext streams treat a NaN as an artefact and invalidate the
    features for their settling guard after it (0.5 s for EDA), so one missed ADC scan a second — common
    when a Python thread polls an ADS1115 under load — would invalidate half of the 4 Hz EDA grid. A
    missing sample is not an artefact: over 0.25 s skin conductance (3 Hz low-pass, responses rising over
    >= 0.5 s) is as good as linear. Only the feature path is bridged; the raw stream keeps its gap, counted.
    """

    MAX_FILL_S = 3600.0
    BRIDGE_S = 0.0  # raw gaps up to this long are interpolated (per extractor; 0: always NaN)

    def __init__(self, rate_hz: float, factory, origin_bin: int | None = None, align_bins: int = 1) -> None:
        self.rate_hz = rate_hz
        self._factory = factory
        self.stream = factory()
        self.origin_bin = origin_bin
        self.align_bins = align_bins
        self.anchor_ns: int | None = None
        self.next_ns: int | None = None
        self.k_next: int | None = None
        self._last = math.nan  # the previous block's last raw value
        self.bridged_samples = 0

    def _feed(self, block: SampleBlock) -> tuple[np.ndarray, int]:
        """Values to push (with NaN gap filling) and the anchor bin; restarts the stream if needed."""
        x = block.values.astype(np.float64)
        period = 1e9 / self.rate_hz
        if self.next_ns is not None:
            missing = round((block.t0_ns - self.next_ns) / period)
            if missing < 0 or missing > self.MAX_FILL_S * self.rate_hz:
                self.stream = self._factory()
                self.anchor_ns = None
                self._restarted()
            elif missing > 0:
                if missing <= self.BRIDGE_S * self.rate_hz and x.size and math.isfinite(self._last) \
                        and math.isfinite(x[0]):
                    fill = self._last + (x[0] - self._last) * (np.arange(1, missing + 1) / (missing + 1))
                    self.bridged_samples += missing
                else:
                    fill = np.full(missing, np.nan)
                x = np.concatenate([fill, x])
        if block.n:
            self._last = float(block.values[-1])
        if self.anchor_ns is None:
            if self.origin_bin is None:
                self.anchor_ns = block.t0_ns
            else:  # start exactly on a grid (epoch) boundary at or before the first sample: pad with NaN
                b = block.t0_ns // GRID_NS
                anchor_bin = self.origin_bin + ((b - self.origin_bin) // self.align_bins) * self.align_bins
                pad = round((block.t0_ns - anchor_bin * GRID_NS) / period)
                x = np.concatenate([np.full(pad, np.nan), x])
                self.anchor_ns = anchor_bin * GRID_NS
        self.next_ns = block.t0_ns + round(block.n * period)
        return x, round(self.anchor_ns / GRID_NS)

    def _restarted(self) -> None:
        """Hook: the stream was restarted after a time jump."""


class DspEdaExtractor(_Anchored):
    """``dsp_ext.eda.EdaStream`` (artefact rejection, 3 Hz low-pass, grid interpolation) on the UTC grid."""

    channel = "eda"
    BRIDGE_S = 0.25  # at most 8 samples at 32 Hz (see _Anchored)

    def __init__(self, rate_hz: float, origin_bin: int | None = None) -> None:
        from dsp_ext.eda import EdaStream

        super().__init__(rate_hz, lambda: EdaStream(rate_hz), origin_bin, 1)

    def push(self, block: SampleBlock) -> list[tuple[int, float]]:
        x, k0 = self._feed(block)
        contact = None
        if block.flags & 0x2:  # CONTACT_LOST
            contact = np.zeros(x.size, dtype=bool)
        f = self.stream.push(x, contact)
        out = [(k0 + int(k), float(v)) for k, v in zip(f.index.tolist(), f.eda_us.tolist(), strict=True)]
        if out:
            self.k_next = out[-1][0] + 1
        return out


class DspPpgExtractor(_Anchored):
    """``dsp_ext.ppg.PpgStream`` (Elgendi peaks, Lipponen-Tarvainen IBI correction) on the UTC grid.

    ``hr_grid="live"`` (default): the HR feature is ``dsp_ext.ppg.LiveHr`` — causal, no look-ahead, a grid
    point is out as soon as its raw sample is in (an estimate with a constant 1 s delay). ``"corrected"``:
    HR interpolated between Lipponen-Tarvainen corrected beats, final about two beats after the grid time.
    Beats and regulation epochs always come from the corrected beats.
    Regulation epochs come from ``dsp_ext.hrv.HrvStream`` (RMSSD, RSA after Porges-Bohrer, HF-HRV) when it
    is installed, else from the beats (RMSSD only). The stream is anchored on an epoch boundary, so its
    epochs are the session's."""

    channel = "hr"

    def __init__(self, rate_hz: float, origin_bin: int = 0, epoch_bins: int = 120, hr_grid: str = "live") -> None:
        from dsp_ext.ppg import PpgStream

        if hr_grid not in ("live", "corrected"):
            raise ValueError(f"hr_grid must be 'live' or 'corrected', got {hr_grid!r}")
        self.live = hr_grid == "live"
        super().__init__(rate_hz, lambda: PpgStream(rate_hz, live=self.live), origin_bin, epoch_bins)
        self.epoch_bins = epoch_bins
        self.beats: list[Beat] = []
        self._hrv_cls = None
        if _dsp_available("dsp_ext.hrv"):
            from dsp_ext.hrv import HrvStream

            self._hrv_cls = HrvStream
        self._restarted()

    def _restarted(self) -> None:
        self._hrv = self._hrv_cls(epoch_s=self.epoch_bins / FEATURE_RATE_HZ) if self._hrv_cls else None
        self._ibi_epochs: IbiEpochs | None = None
        self._k_corr: int | None = None
        self._ready: list[tuple[int, dict[str, float]]] = []

    def push(self, block: SampleBlock) -> list[tuple[int, float]]:
        x, k0 = self._feed(block)
        f = self.stream.push(x)
        anchor = self.anchor_ns
        assert anchor is not None
        for t_s, ibi, ok in zip(f.beat_s.tolist(), f.ibi_ms.tolist(), f.ibi_valid.tolist(), strict=True):
            if ibi == ibi:  # the first beat has no interval
                self.beats.append(Beat(anchor + round(t_s * 1e9), float(ibi), not ok))
        idx, hr = (f.live_index, f.live_hr_bpm) if self.live else (f.index, f.hr_bpm)
        out = [(k0 + int(k), float(v)) for k, v in zip(idx.tolist(), hr.tolist(), strict=True)]
        if out:
            self.k_next = out[-1][0] + 1
        origin = self.origin_bin or 0
        if self._hrv is not None:
            for ep in self._hrv.push_features(f):
                e = (k0 + ep.start_index - origin) // self.epoch_bins
                self._ready.append((e, {"rmssd_ms": ep.rmssd_ms, "rsa_ln_ms2": ep.rsa_ln_ms2,
                                        "hf_ln_ms2": ep.hf_ln_ms2, "n_beats": float(ep.n_beats)}))
        else:
            if self._ibi_epochs is None:
                self._ibi_epochs = IbiEpochs(k0, self.epoch_bins)
                self._ibi_epochs.origin = k0
            for b in self.beats:
                self._ibi_epochs.add(b)
            k_corr = k0 + int(f.index[-1]) + 1 if len(f.index) else None  # beats are final up to here
            if k_corr is not None:
                self._k_corr = k_corr
            for e, vals in self._ibi_epochs.close_until(self._k_corr):
                self._ready.append(((k0 - origin) // self.epoch_bins + e, vals))
        return out

    def take_beats(self) -> list[Beat]:
        beats, self.beats = self.beats, []
        return beats

    def take_epochs(self) -> list[tuple[int, dict[str, float]]]:
        ready, self._ready = self._ready, []
        return ready


def _dsp_available(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def make_extractor(signal: str, rate_hz: float, method: str = "auto", origin_bin: int = 0,
                   epoch_bins: int = 120, hr_grid: str = "live") -> Any:
    """The feature extractor for a raw signal (``eda`` -> eda channel, ``ppg`` -> hr channel).

    ``method``: ``dsp_ext`` (the project's DSP streams), ``fast`` (the plain fallbacks above, one bin of
    latency) or ``auto`` (dsp_ext when it is installed). ``hr_grid`` (dsp_ext only): ``live`` or
    ``corrected`` heart rate (see :class:`DspPpgExtractor`)."""
    use_dsp = method == "dsp_ext" or (method == "auto" and _dsp_available(f"dsp_ext.{signal}"))
    if signal == "eda":
        return DspEdaExtractor(rate_hz, origin_bin) if use_dsp else EdaExtractor(rate_hz)
    if signal == "ppg":
        return DspPpgExtractor(rate_hz, origin_bin, epoch_bins, hr_grid) if use_dsp else \
            HrExtractor(rate_hz, origin_bin, epoch_bins)
    raise ValueError(f"no feature extractor for signal {signal!r}")


def rmssd_ms(ibis_ms: list[float]) -> float:
    """Root mean square of successive IBI differences (ms); NaN with fewer than 3 IBIs."""
    if len(ibis_ms) < 3:
        return math.nan
    d = np.diff(np.asarray(ibis_ms, dtype=np.float64))
    return float(np.sqrt(np.mean(d * d)))
