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


class HrExtractor:
    """Raw PPG (counts) blocks -> (grid index, bpm) pairs, and beats in :attr:`beats`.

    Fallback detector: 0.5 Hz high-pass and 5 Hz low-pass biquads, then a local maximum above 40 % of a
    decaying amplitude envelope (half-life 2 s), at least 0.3 s after the previous beat; confirmed one
    sample after the peak.
    """

    channel = "hr"
    MIN_DIST_S = 0.3
    HOLD_S = 3.0

    def __init__(self, rate_hz: float) -> None:
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


def make_extractor(signal: str, rate_hz: float) -> EdaExtractor | HrExtractor:
    """The feature extractor for a raw signal (``eda`` -> eda channel, ``ppg`` -> hr channel)."""
    if signal == "eda":
        return EdaExtractor(rate_hz)
    if signal == "ppg":
        return HrExtractor(rate_hz)
    raise ValueError(f"no feature extractor for signal {signal!r}")


def rmssd_ms(ibis_ms: list[float]) -> float:
    """Root mean square of successive IBI differences (ms); NaN with fewer than 3 IBIs."""
    if len(ibis_ms) < 3:
        return math.nan
    d = np.diff(np.asarray(ibis_ms, dtype=np.float64))
    return float(np.sqrt(np.mean(d * d)))
