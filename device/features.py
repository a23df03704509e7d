"""Per-person feature extraction onto the shared 4 Hz UTC grid (ARCHITECTURE §3).

Grid bin ``k`` covers UTC ``[k * 250 ms, (k + 1) * 250 ms)``; a bin is emitted once raw data reach its
end, so features are causal and their latency is one bin. Two channels per person:

* ``eda`` (µS): mean of the raw samples in the bin (a boxcar low-pass and decimation); NaN when fewer
  than half of the bin's samples are valid.
* ``hr`` (bpm): from inter-beat intervals. Beats are systolic peaks of the band-passed (0.5-5 Hz) PPG,
  at least 0.3 s apart and confirmed 0.2 s after the peak; an IBI outside 300-2000 ms is an artefact.
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
from scipy import signal as sps

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


class HrExtractor:
    """Raw PPG (counts) blocks -> (grid index, bpm) pairs, and beats in :attr:`beats`."""

    channel = "hr"
    CONFIRM_S = 0.2
    MIN_DIST_S = 0.3
    HOLD_S = 3.0

    def __init__(self, rate_hz: float) -> None:
        self.rate_hz = rate_hz
        self.sos = sps.butter(2, [0.5, 5.0], btype="bandpass", fs=rate_hz, output="sos")
        self.zi: np.ndarray | None = None
        self.buf_t = np.empty(0, np.int64)
        self.buf_v = np.empty(0, np.float64)
        self.keep = int(3.0 * rate_hz)
        self.last_beat_ns: int | None = None
        self.last_valid: tuple[int, float] | None = None  # (beat t_ns, ibi ms)
        self.beats: list[Beat] = []
        self.k_next: int | None = None

    def push(self, block: SampleBlock) -> list[tuple[int, float]]:
        x = block.values.astype(np.float64)
        t = block.times_ns()
        bad = ~np.isfinite(x)
        if bad.any():  # hold the last good value through invalid samples (flagged by the block)
            x = x.copy()
            good = np.flatnonzero(~bad)
            x[bad] = x[good[-1]] if good.size else (self.buf_v[-1] if self.buf_v.size else 0.0)
        if self.zi is None:
            self.zi = sps.sosfilt_zi(self.sos) * x[0]
        y, self.zi = sps.sosfilt(self.sos, x, zi=self.zi)
        self.buf_t = np.concatenate([self.buf_t, t])[-self.keep:]
        self.buf_v = np.concatenate([self.buf_v, y])[-self.keep:]
        self._detect()
        return self._emit(int(t[-1]) + round(1e9 / self.rate_hz))

    def _detect(self) -> None:
        n = self.buf_v.size
        if n < int(self.rate_hz):
            return
        spread = float(np.percentile(self.buf_v, 95) - np.percentile(self.buf_v, 5))
        if spread <= 0:
            return
        peaks, _ = sps.find_peaks(self.buf_v, distance=max(1, int(self.MIN_DIST_S * self.rate_hz)),
                                  prominence=0.3 * spread)
        confirm_ns = self.buf_t[-1] - int(self.CONFIRM_S * 1e9)
        for p in peaks:
            tp = int(self.buf_t[p])
            if tp > confirm_ns:
                break
            if self.last_beat_ns is not None and tp <= self.last_beat_ns + int(self.MIN_DIST_S * 1e9):
                continue
            if self.last_beat_ns is not None:
                ibi = (tp - self.last_beat_ns) / 1e6
                artifact = not 300.0 <= ibi <= 2000.0
                self.beats.append(Beat(tp, ibi, artifact))
                if not artifact:
                    self.last_valid = (tp, ibi)
            self.last_beat_ns = tp

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
