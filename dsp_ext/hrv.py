"""Heart-rate variability per 30-s epoch: RMSSD, RSA (Porges–Bohrer) and HF-HRV, causally.

Epoch e covers the 4 Hz grid points ``[e * 120, (e + 1) * 120)`` (30 s), so every person's epochs line up on
the shared grid.

* **RMSSD** (ms): root mean square of successive differences of the valid corrected IBIs whose beat falls in
  the epoch (both intervals of a difference must be valid).
* **RSA** (ln ms², Porges & Bohrer 1990; Lewis et al. 2012): the IBI series sampled every 500 ms (every
  other point of the 4 Hz grid, Porges' adult sampling), minus its 21-point moving cubic polynomial
  (Savitzky–Golay, centred: 10 samples = 5 s latency; at 2 Hz this trend keeps only < ≈0.13 Hz, just under
  the band), band-passed 0.12–0.40 Hz (causal 2nd-order Butterworth), and the natural log of the variance
  of that band-passed series within the epoch. (A 21-point cubic at 4 Hz would cut at ≈0.25 Hz and remove
  half of a typical respiratory rhythm.)
* **HF-HRV** (ln ms²): power of the same detrended series in 0.15–0.40 Hz from the epoch's Hann-windowed
  periodogram.

An epoch with more than half of its grid points invalid gives NaN (never 0).

The per-sample part (2 Hz series, detrend, band-pass, epoch bookkeeping) runs in the Cython kernel
``_hrv.RsaKernel``; :func:`rsa_front_reference` is its numpy twin. The per-epoch statistics are numpy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from . import _hrv
from .errors import DspError
from .filters import butter_sos
from .grid import FEATURE_RATE_HZ, GridClock

logger = logging.getLogger(__name__)

__all__ = [
    "HrvEpoch",
    "HrvStream",
    "hf_power_ln_ms2",
    "hrv_epochs",
    "rmssd_ms",
    "rsa_front_reference",
    "savgol_detrend_coeffs",
]

SG_POINTS = 21
SG_ORDER = 3
RSA_RATE_HZ = 2.0
_STEP = int(FEATURE_RATE_HZ / RSA_RATE_HZ)


def rmssd_ms(ibi_ms: object, valid: object | None = None) -> float:
    """RMSSD (ms) of successive valid intervals; NaN with fewer than two differences."""
    x = np.asarray(ibi_ms, dtype=np.float64)
    ok = np.isfinite(x) if valid is None else (np.asarray(valid, dtype=bool) & np.isfinite(x))
    d = np.diff(x)
    pair = ok[1:] & ok[:-1]
    if pair.sum() < 2:
        return float("nan")
    return float(np.sqrt(np.mean(d[pair] ** 2)))


def savgol_detrend_coeffs(points: int = SG_POINTS, order: int = SG_ORDER) -> np.ndarray:
    """Weights w such that ``trend[k] = Σ w[i] · x[k − h + i]`` is the centred moving cubic fit (h = points//2)."""
    h = points // 2
    t = np.arange(-h, h + 1, dtype=np.float64)
    a = np.vander(t, order + 1, increasing=True)  # columns 1, t, t², t³
    # value of the least-squares polynomial at t = 0: first row of the pseudo-inverse
    return np.linalg.pinv(a)[0]


def _hf_setup(n: int, band_hz: tuple[float, float]) -> tuple[np.ndarray, float, np.ndarray, float]:
    """Hann window, periodogram scale, band selection and bin width for epochs of ``n`` 2 Hz samples."""
    w = np.hanning(n)
    f = np.fft.rfftfreq(n, 1.0 / RSA_RATE_HZ)
    sel = (f >= band_hz[0]) & (f <= band_hz[1])
    return w, float(RSA_RATE_HZ * np.sum(w**2)), sel, float(f[1] - f[0]) if n > 1 else float("nan")


def hf_power_ln_ms2(
    resid_ms: np.ndarray,
    band_hz: tuple[float, float] = (0.15, 0.40),
    _setup: tuple[np.ndarray, float, np.ndarray, float] | None = None,
) -> float:
    """ln of the power (ms²) in ``band_hz`` of a detrended 2 Hz IBI epoch (Hann-windowed periodogram).
    ``_setup``: :func:`_hf_setup` of this length and band, when the caller keeps it."""
    x = np.asarray(resid_ms, dtype=np.float64)
    fin = np.isfinite(x)
    if 2 * fin.sum() < len(x) or len(x) < 8:
        return float("nan")
    x = np.where(fin, x, 0.0)
    x = x - x[fin].mean() * fin
    w, scale, sel, df = _setup if _setup is not None else _hf_setup(len(x), band_hz)
    spec = np.abs(np.fft.rfft(x * w)) ** 2 / scale
    spec[1:-1] *= 2.0  # one-sided
    p = float(spec[sel].sum() * df)
    return float(np.log(p)) if p > 0 else float("nan")


@dataclass(frozen=True)
class HrvEpoch:
    """One 30-s epoch of one person: grid start index, RMSSD (ms), RSA and HF-HRV (ln ms²), beats in the epoch
    and how many of them end an invalid interval (a beat flagged by the beat-quality index or the IBI
    correction, or an interval out of range: left out of RMSSD and the IBI series)."""

    epoch: int
    start_index: int
    rmssd_ms: float
    rsa_ln_ms2: float
    hf_ln_ms2: float
    n_beats: int
    n_invalid: int = 0

    @property
    def start_s(self) -> float:
        return self.start_index / FEATURE_RATE_HZ


class HrvStream:
    """Streaming per-epoch HRV from a PPG stream's output.

    ``push(beat_s, ibi_ms, ibi_valid, grid_index, ibi_grid_ms) -> list[HrvEpoch]`` takes the fields of
    :class:`dsp_ext.ppg.PpgFeatures` (or :meth:`push_features` takes the object) and returns the epochs
    completed. An epoch completes once the IBI series is ``SG_POINTS // 2`` samples (5 s) past its end.
    Epoch e covers grid indices ``[e * 120, (e + 1) * 120)`` of whatever grid the PPG stream used; give the
    same ``t0_ns`` as to :class:`dsp_ext.ppg.PpgStream` so that beats are assigned to epochs by UTC time (with
    the UTC grid both people's epochs coincide). The first grid index may be any value; the part of the first
    epoch before it counts as invalid.
    """

    def __init__(
        self,
        epoch_s: float = 30.0,
        rsa_band_hz: tuple[float, float] = (0.12, 0.40),
        hf_band_hz: tuple[float, float] = (0.15, 0.40),
        t0_ns: int | None = None,
    ) -> None:
        n = epoch_s * RSA_RATE_HZ
        if not (np.isfinite(n) and n >= 16 and abs(n - round(n)) < 1e-9):
            raise DspError(f"epoch_s={epoch_s!r} must be a whole number of 0.5-s samples, at least 8 s")
        self.epoch_n = int(round(n))  # samples of the 2 Hz series per epoch
        self.hf_band_hz = hf_band_hz
        self._hf = _hf_setup(self.epoch_n, hf_band_hz)
        self._w = savgol_detrend_coeffs()
        self._sos = butter_sos(2, rsa_band_hz, RSA_RATE_HZ, "bandpass")
        self._kernel = _hrv.RsaKernel(self.epoch_n, self._w, self._sos)
        self.clock = GridClock(t0_ns)
        self.reset()

    def reset(self) -> None:
        self._kernel.reset()
        # beats not yet in a closed epoch
        self._bt: list[float] = []  # beat time (s)
        self._bi: list[float] = []  # IBI ending there (ms)
        self._bv: list[bool] = []  # IBI valid

    @property
    def state_nbytes(self) -> int:
        return int(self._kernel.state_nbytes + 17 * len(self._bt) + 256)

    def push_features(self, f: object) -> list[HrvEpoch]:
        return self.push(f.beat_s, f.ibi_ms, f.ibi_valid, f.index, f.ibi_grid_ms)  # type: ignore[attr-defined]

    def push(
        self,
        beat_s: np.ndarray,
        ibi_ms: np.ndarray,
        ibi_valid: np.ndarray,
        grid_index: np.ndarray,
        ibi_grid_ms: np.ndarray,
    ) -> list[HrvEpoch]:
        gi = grid_index
        if type(gi) is not np.ndarray or gi.dtype != np.int64 or not gi.flags.c_contiguous:
            gi = np.ascontiguousarray(grid_index, dtype=np.int64)
        g = ibi_grid_ms
        if type(g) is not np.ndarray or g.dtype != np.float64 or not g.flags.c_contiguous:
            g = np.ascontiguousarray(ibi_grid_ms, dtype=np.float64)
        if gi.ndim != 1 or g.ndim != 1:
            raise DspError(f"grid_index {gi.shape} and ibi_grid_ms {g.shape} must be 1-D")
        # detrend, band-pass and epoch bookkeeping in the kernel (DspError if the grid jumps)
        done = self._kernel.push(gi, g)
        if self._kernel.has_grid:  # beats before the first grid point have no epoch
            self._add_beats(beat_s, ibi_ms, ibi_valid)
        return [self._close(e, resid, band) for e, resid, band in done] if done else []

    def _add_beats(self, beat_s: object, ibi_ms: object, ibi_valid: object) -> None:
        n = len(beat_s)  # type: ignore[arg-type]
        if len(ibi_ms) != n or len(ibi_valid) != n:  # type: ignore[arg-type]
            raise DspError("beat_s, ibi_ms and ibi_valid differ in length")
        if n:
            self._bt += np.asarray(beat_s, dtype=np.float64).tolist()
            self._bi += np.asarray(ibi_ms, dtype=np.float64).tolist()
            self._bv += np.asarray(ibi_valid, dtype=bool).tolist()

    def _close(self, e: int, resid: np.ndarray, band: np.ndarray) -> HrvEpoch:
        start_k = e * self.epoch_n
        end_s = float(self.clock.rel_s((start_k + self.epoch_n) * _STEP))
        fin = np.isfinite(band)
        rsa = (
            float(np.log(np.var(band[fin]))) if 2 * fin.sum() >= len(band) and fin.sum() > 1 else float("nan")
        )
        hf = hf_power_ln_ms2(resid, self.hf_band_hz, self._hf)
        t = np.array(self._bt, dtype=np.float64)
        mine = t < end_s
        later = t >= end_s  # a NaN beat time belongs to no epoch
        n_mine = int(mine.sum())
        valid = np.array(self._bv, dtype=bool)[mine]
        rm = rmssd_ms(np.array(self._bi, dtype=np.float64)[mine], valid) if n_mine else float("nan")
        if n_mine or not later.all():
            keep = later.tolist()
            self._bt = [v for v, k in zip(self._bt, keep, strict=True) if k]
            self._bi = [v for v, k in zip(self._bi, keep, strict=True) if k]
            self._bv = [v for v, k in zip(self._bv, keep, strict=True) if k]
        return HrvEpoch(e, start_k * _STEP, rm, rsa, hf, n_mine, int(n_mine - valid.sum()))


def rsa_front_reference(
    series_2hz: object, first_m: int, epoch_n: int, w: np.ndarray, sos: np.ndarray
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Plain numpy twin of the kernel ``_hrv.RsaKernel`` on a whole 2 Hz IBI series whose first value has
    2 Hz index ``first_m``: the complete epochs ``(epoch, resid, band)`` (residual from the centred moving
    cubic with weights ``w``, centred on the middle sample; band-pass ``sos`` with zero-order hold; the
    first epoch NaN up to the first residual)."""
    from .filters import sosfilt_reference

    x = np.asarray(series_2hz, dtype=np.float64)
    h = len(w) // 2
    epoch = first_m // epoch_n
    n_out = len(x) - 2 * h
    if n_out <= 0:
        return []
    centre = x[h : h + n_out]
    acc = np.zeros(n_out)
    with np.errstate(invalid="ignore"):
        for i in range(len(w)):
            acc = acc + w[i] * (x[i : i + n_out] - centre)
    resid = np.concatenate((np.full(first_m + h - epoch * epoch_n, np.nan), -acc))
    band = sosfilt_reference(sos, resid)
    n_ep = len(resid) // epoch_n
    return [
        (epoch + e, resid[e * epoch_n : (e + 1) * epoch_n], band[e * epoch_n : (e + 1) * epoch_n])
        for e in range(n_ep)
    ]


def hrv_epochs(ppg_features: object, **kwargs: object) -> list[HrvEpoch]:
    """Batch form: all complete epochs of one :class:`dsp_ext.ppg.PpgFeatures` (identical to streaming)."""
    return HrvStream(**kwargs).push_features(ppg_features)  # type: ignore[arg-type]
