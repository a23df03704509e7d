"""Electrodermal activity: raw skin conductance (µS) in, 4 Hz features with validity out, causally.

Stages (ARCHITECTURE §3, issue #8):

1. artefact flags on the raw samples — outside ``min_us``–``max_us`` (0.05–60 µS), slope above
   ``max_slope_us_s`` (10 µS/s), contact lost (caller's flag) or non-finite — make samples invalid (NaN),
   never zero; grid points within ``guard_s`` after an invalid sample are invalid too (filter settling);
2. a causal 4th-order Butterworth low-pass at 3 Hz (started in its steady state, so no start-up transient);
3. linear interpolation onto the shared 4 Hz grid (:mod:`dsp_ext.grid`; with ``t0_ns`` the UTC grid
   ``k * 250 ms``) → ``eda_us``;
4. tonic = causal 2nd-order Butterworth low-pass at 0.05 Hz of ``eda_us``, started in the steady state of
   the first valid value and started again if an invalid stretch follows within 4 s of that start (an initial
   outlier followed by a slope artefact must not seed it); phasic = ``eda_us − tonic``;
5. skin-conductance responses: an onset where the phasic slope first exceeds ``scr_onset_slope_us_s``
   (0.05 µS/s, so slow tonic drift and the phasic part's recovery never start one), a peak where the phasic slope turns ≤ 0, and the
   trough-to-peak amplitude measured on ``eda_us``; responses of at least ``scr_min_amp_us`` (0.05 µS)
   rising for at most ``scr_max_rise_s`` (5 s) are reported when the peak is passed.

NeuroKit2's ``eda_clean`` filters with the same low-pass but forwards and backwards (zero phase); ours is
causal, so it lags by the filter's group delay (about 0.15 s at the slow frequencies of skin conductance).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from . import _eda, _sosfilt
from ._arrays import real_1d
from ._blocks import BlockTimeline
from .errors import DspError
from .filters import SosFilter, butter_sos, sosfilt_zi
from .grid import FEATURE_RATE_HZ, GridResampler

logger = logging.getLogger(__name__)

__all__ = ["EdaFeatures", "EdaStream", "Scr", "eda_features", "eda_front_reference", "eda_grid_reference"]

_NO_CONTACT = np.empty(0, dtype=np.uint8)


@dataclass(frozen=True)
class Scr:
    """One skin-conductance response: grid indices of onset and peak, and its amplitude in µS."""

    onset_index: int
    peak_index: int
    amplitude_us: float


@dataclass
class EdaFeatures:
    """Features on the 4 Hz grid: ``index`` k is ``k / 4`` s after the first raw sample, or UTC
    ``k * 250 ms`` when the stream was given ``t0_ns``."""

    index: np.ndarray
    eda_us: np.ndarray
    tonic_us: np.ndarray
    phasic_us: np.ndarray
    valid: np.ndarray
    scr: list[Scr] = field(default_factory=list)
    n_invalid_raw: int = 0

    @property
    def time_s(self) -> np.ndarray:
        return self.index / FEATURE_RATE_HZ


class EdaStream:
    """Streaming EDA feature extraction; ``push(eda_us, contact=None) -> EdaFeatures`` (see module doc)."""

    def __init__(
        self,
        rate_hz: float,
        lowpass_hz: float = 3.0,
        tonic_hz: float = 0.05,
        min_us: float = 0.05,
        max_us: float = 60.0,
        max_slope_us_s: float = 10.0,
        guard_s: float = 0.5,
        scr_min_amp_us: float = 0.05,
        scr_onset_slope_us_s: float = 0.05,
        scr_max_rise_s: float = 5.0,
        t0_ns: int | None = None,
    ) -> None:
        if not (np.isfinite(rate_hz) and rate_hz > 2 * lowpass_hz):
            raise DspError(f"EDA rate_hz={rate_hz!r} must exceed twice the low-pass cut-off {lowpass_hz} Hz")
        self.rate_hz = float(rate_hz)
        self.min_us, self.max_us, self.max_slope_us_s = min_us, max_us, max_slope_us_s
        self.guard_n = int(round(guard_s * rate_hz))
        self.scr_min_amp_us = scr_min_amp_us
        self.scr_onset_step_us = scr_onset_slope_us_s / FEATURE_RATE_HZ
        self.scr_max_rise = int(round(scr_max_rise_s * FEATURE_RATE_HZ))
        self._lp = SosFilter(butter_sos(4, lowpass_hz, rate_hz), init="first")
        self._lp_zi_unit = sosfilt_zi(self._lp.sos)
        self._tonic_sos = butter_sos(2, tonic_hz, FEATURE_RATE_HZ)
        self._t0_ns = t0_ns
        self._grid = self._grid_kernel(t0_ns)
        self.reset()

    def _grid_kernel(self, t0_ns: int | None) -> _eda.EdaGridKernel:
        """The grid stage (resampling, tonic/phasic split, SCR state machine) on the grid of ``t0_ns``."""
        clock = GridResampler(self.rate_hz, FEATURE_RATE_HZ, t0_ns=t0_ns)  # validates and places the grid
        return _eda.EdaGridKernel(
            clock._off, clock._step, clock.clock.first_index, self._tonic_sos, sosfilt_zi(self._tonic_sos),
            self.scr_onset_step_us, self.scr_min_amp_us, self.scr_max_rise,
        )

    def reset(self) -> None:
        self._timeline = BlockTimeline(self.rate_hz)
        self._lp.reset()
        self._grid.reset()
        self._n = 0
        # raw-rate state of the kernel: previous raw sample (slope test), raw index of the last invalid
        # sample, samples seen, low-pass started (0/1), last finite low-pass input (zero-order hold)
        self._front = np.array([np.nan, -1e12, 0.0, 0.0, np.nan])

    @property
    def state_nbytes(self) -> int:
        return int(self._lp.state_nbytes + self._grid.state_nbytes + self._front.nbytes)

    def push_block(self, block: object) -> EdaFeatures:
        """Push a ``SampleBlock`` of raw µS: lost samples become NaN, ``CONTACT_LOST`` marks the block
        invalid, and — if the stream was made without ``t0_ns`` — the first block's ``t0_ns`` puts the
        features on the UTC grid."""
        if self._n == 0 and self._t0_ns is None:
            self._grid = self._grid_kernel(int(block.t0_ns))  # type: ignore[attr-defined]
        values, contact = self._timeline.convert(block)
        return self.push(values, contact)

    def push(self, eda_us: object, contact: object | None = None) -> EdaFeatures:
        x = real_1d(eda_us, "eda_us")  # the kernel only reads it
        cont = _NO_CONTACT
        if contact is not None:
            c = np.asarray(contact, dtype=bool)
            if c.shape != x.shape:
                raise DspError(f"contact flags shape {c.shape} differs from samples {x.shape}")
            cont = np.ascontiguousarray(c).view(np.uint8)
        y = np.empty(len(x))
        n_bad = _sosfilt.eda_front(
            x, cont, y, self._lp.sos, self._lp.zi, self._lp_zi_unit, self._front,
            self.min_us, self.max_us, self.max_slope_us_s, self.rate_hz, self.guard_n,
        )
        self._n += len(x)
        k, g, tonic, phasic, valid, scr = self._grid.push(y)
        return EdaFeatures(
            index=k,
            eda_us=g,
            tonic_us=tonic,
            phasic_us=phasic,
            valid=valid,
            scr=[Scr(*e) for e in scr] if scr else [],
            n_invalid_raw=n_bad,
        )


def eda_features(
    eda_us: object, rate_hz: float, contact: object | None = None, **kwargs: float
) -> EdaFeatures:
    """Batch form of :class:`EdaStream` (identical numbers)."""
    return EdaStream(rate_hz, **kwargs).push(eda_us, contact)


def eda_front_reference(
    eda_us: np.ndarray,
    contact: np.ndarray | None,
    sos: np.ndarray,
    rate_hz: float,
    min_us: float = 0.05,
    max_us: float = 60.0,
    max_slope_us_s: float = 10.0,
    guard_n: int = 16,
) -> tuple[np.ndarray, int]:
    """Plain numpy twin of the raw-rate stage (``_sosfilt.eda_front``) for a whole record: artefact flags,
    invalid samples to NaN, the low-pass started in its steady state, NaN within ``guard_n`` samples after
    an invalid sample. Returns ``(low-passed µS, number of invalid samples)``."""
    from .filters import sosfilt_reference

    x = np.array(eda_us, dtype=np.float64)
    n = len(x)
    idx = np.arange(n)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(x) | (x < min_us) | (x > max_us)
        prev = np.concatenate(([np.nan], x[:-1]))
        bad |= np.abs(x - prev) * rate_hz > max_slope_us_s
    if contact is not None:
        bad |= ~np.asarray(contact, dtype=bool)
    x[bad] = np.nan
    fin = np.flatnonzero(np.isfinite(x))
    y = np.full(n, np.nan)
    if len(fin):
        y = sosfilt_reference(sos, x, sosfilt_zi(sos) * x[fin[0]])
    last_bad = np.maximum.accumulate(np.where(bad, idx, -(10**12))) if n else np.empty(0)
    y[idx - last_bad <= guard_n] = np.nan
    return y, int(bad.sum())


def eda_grid_reference(
    y: np.ndarray,
    rate_hz: float,
    tonic_sos: np.ndarray,
    t0_ns: int | None = None,
    scr_onset_step_us: float = 0.05 / FEATURE_RATE_HZ,
    scr_min_amp_us: float = 0.05,
    scr_max_rise: int = 20,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int, float]]]:
    """Plain numpy/Python twin of the grid stage (``_eda.EdaGridKernel``) for a whole record of low-passed
    µS ``y``: grid index and value (:class:`dsp_ext.grid.GridResampler`), tonic (``tonic_sos`` started in the
    steady state of the first finite value, started again on the next finite value if an invalid one comes
    before ``_eda.TONIC_SETTLE`` finite values have followed a start), phasic, validity and the SCR events
    ``(onset_index, peak_index, amplitude_us)``."""
    from .filters import sosfilt_reference

    k, g = GridResampler(rate_hz, FEATURE_RATE_HZ, t0_ns=t0_ns).push(np.asarray(y, dtype=np.float64))
    fin = np.isfinite(g)
    tonic = np.full(len(g), np.nan)
    # (re)start points: the first finite value, and the first finite value after an invalid one that came
    # before TONIC_SETTLE finite values had followed the last start
    i, n = 0, len(g)
    while i < n:
        while i < n and not fin[i]:
            i += 1
        if i == n:
            break
        start, count, j = i, 0, i
        while j < n and (fin[j] or count >= _eda.TONIC_SETTLE):
            count += int(fin[j])
            j += 1
        # [start, j) is filtered from this start; at j (if < n) an invalid value came too early: restart later
        tonic[start:j] = sosfilt_reference(tonic_sos, g[start:j], sosfilt_zi(tonic_sos) * g[start])
        i = j
    phasic = g - tonic
    out: list[tuple[int, int, float]] = []
    g_prev = p_prev = onset_v = math.nan
    g_prev_k = onset_k = -1
    rising = False
    for kk, v, p in zip(k.tolist(), g.tolist(), phasic.tolist(), strict=True):
        if not (math.isfinite(v) and math.isfinite(p) and math.isfinite(g_prev) and math.isfinite(p_prev)):
            rising = False
        elif not rising:
            if p - p_prev > scr_onset_step_us:
                rising, onset_k, onset_v = True, g_prev_k, g_prev
        elif p - p_prev <= 0.0:  # the phasic part turned down: the previous sample was the peak
            rising = False
            amp = g_prev - onset_v
            if amp >= scr_min_amp_us and g_prev_k - onset_k <= scr_max_rise:
                out.append((onset_k, g_prev_k, amp))
        g_prev, p_prev, g_prev_k = v, p, kk
    return k, g, tonic, phasic, np.isfinite(g), out
