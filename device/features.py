"""Adapters from raw sample blocks to the dsp_ext streams, on the shared 4 Hz UTC grid (ARCHITECTURE §3).

Grid bin ``k`` covers UTC ``[k * 250 ms, (k + 1) * 250 ms)``. The unit measures with exactly the code the
lab recomputes with: ``dsp_ext.eda.EdaStream`` for ``eda`` (µS) and ``dsp_ext.ppg.PpgStream`` with
``dsp_ext.hrv.HrvStream`` for ``hr`` (bpm), beats and regulation epochs. There is no second DSP here: a
missing compiled kernel is an ImportError when the unit starts, never a silent switch to other code.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from core.vocab import FEATURE_RATE_HZ, GRID_NS, BlockFlags, samples_between
from dsp_ext.eda import EdaStream
from dsp_ext.hrv import HrvStream
from dsp_ext.ppg import PpgStream
from firmware_bridge.block import SampleBlock

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class Beat:
    t_ns: int
    ibi_ms: float
    artifact: bool


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
            missing = samples_between(self.next_ns, block.t0_ns, self.rate_hz)
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
        super().__init__(rate_hz, lambda: EdaStream(rate_hz), origin_bin, 1)

    def push(self, block: SampleBlock) -> list[tuple[int, float]]:
        x, k0 = self._feed(block)
        contact = None
        if block.flags & BlockFlags.CONTACT_LOST:
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
    Regulation epochs come from ``dsp_ext.hrv.HrvStream`` (RMSSD, RSA after Porges-Bohrer, HF-HRV). The stream is anchored on an epoch boundary, so its
    epochs are the session's."""

    channel = "hr"

    def __init__(self, rate_hz: float, origin_bin: int = 0, epoch_bins: int = 120, hr_grid: str = "live") -> None:
        if hr_grid not in ("live", "corrected"):
            raise ValueError(f"hr_grid must be 'live' or 'corrected', got {hr_grid!r}")
        self.live = hr_grid == "live"
        super().__init__(rate_hz, lambda: PpgStream(rate_hz, live=self.live), origin_bin, epoch_bins)
        self.epoch_bins = epoch_bins
        self.beats: list[Beat] = []
        self._restarted()

    def _restarted(self) -> None:
        self._hrv = HrvStream(epoch_s=self.epoch_bins / FEATURE_RATE_HZ)
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
        for ep in self._hrv.push_features(f):
            e = (k0 + ep.start_index - origin) // self.epoch_bins
            self._ready.append((e, {"rmssd_ms": ep.rmssd_ms, "rsa_ln_ms2": ep.rsa_ln_ms2,
                                    "hf_ln_ms2": ep.hf_ln_ms2, "n_beats": float(ep.n_beats),
                                    "n_invalid_beats": float(ep.n_invalid)}))
        return out

    def take_beats(self) -> list[Beat]:
        beats, self.beats = self.beats, []
        return beats

    def take_epochs(self) -> list[tuple[int, dict[str, float]]]:
        ready, self._ready = self._ready, []
        return ready


def make_extractor(signal: str, rate_hz: float, origin_bin: int = 0, epoch_bins: int = 120,
                   hr_grid: str = "live") -> DspEdaExtractor | DspPpgExtractor:
    """The feature extractor for a raw signal (``eda`` -> eda channel, ``ppg`` -> hr channel).

    ``hr_grid``: ``live`` or ``corrected`` heart rate (see :class:`DspPpgExtractor`)."""
    if signal == "eda":
        return DspEdaExtractor(rate_hz, origin_bin)
    if signal == "ppg":
        return DspPpgExtractor(rate_hz, origin_bin, epoch_bins, hr_grid)
    raise ValueError(f"no feature extractor for signal {signal!r}")
