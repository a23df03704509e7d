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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .errors import DspError
from .filters import SosFilter, butter_sos
from .grid import FEATURE_RATE_HZ, GridClock

logger = logging.getLogger(__name__)

__all__ = ["HrvEpoch", "HrvStream", "hf_power_ln_ms2", "hrv_epochs", "rmssd_ms", "savgol_detrend_coeffs"]

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


def hf_power_ln_ms2(resid_ms: np.ndarray, band_hz: tuple[float, float] = (0.15, 0.40)) -> float:
    """ln of the power (ms²) in ``band_hz`` of a detrended 2 Hz IBI epoch (Hann-windowed periodogram)."""
    x = np.asarray(resid_ms, dtype=np.float64)
    fin = np.isfinite(x)
    if 2 * fin.sum() < len(x) or len(x) < 8:
        return float("nan")
    x = np.where(fin, x, 0.0)
    x = x - x[fin].mean() * fin
    w = np.hanning(len(x))
    spec = np.abs(np.fft.rfft(x * w)) ** 2 / (RSA_RATE_HZ * np.sum(w**2))
    spec[1:-1] *= 2.0  # one-sided
    f = np.fft.rfftfreq(len(x), 1.0 / RSA_RATE_HZ)
    sel = (f >= band_hz[0]) & (f <= band_hz[1])
    p = float(spec[sel].sum() * (f[1] - f[0]))
    return float(np.log(p)) if p > 0 else float("nan")


@dataclass(frozen=True)
class HrvEpoch:
    """One 30-s epoch of one person: grid start index, RMSSD (ms), RSA and HF-HRV (ln ms²), beats used."""

    epoch: int
    start_index: int
    rmssd_ms: float
    rsa_ln_ms2: float
    hf_ln_ms2: float
    n_beats: int

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
        self._w = savgol_detrend_coeffs()
        self._w_rev = self._w[::-1]  # a view, as before (same summation order in np.convolve)
        self._h = SG_POINTS // 2
        self._bp = SosFilter(butter_sos(2, rsa_band_hz, RSA_RATE_HZ, "bandpass"))
        self.clock = GridClock(t0_ns)
        self.reset()

    def reset(self) -> None:
        self._bp.reset()
        self._grid_tail = np.empty(0)  # last 2h values of the 2 Hz IBI series (for the centred detrend)
        self._k_next: int | None = None  # next 4 Hz grid index expected (set by the first push)
        self._m_next = 0  # next 2 Hz index (= grid index // 2) expected
        self._resid: list[float] = []  # detrended values of the current epoch
        self._band: list[float] = []  # band-passed values of the current epoch
        self._epoch = 0
        self._started = False
        self._beats: list[tuple[float, float, bool]] = []  # (beat_s, ibi_ms, valid) not yet in a closed epoch

    @property
    def state_nbytes(self) -> int:
        return int(
            8 * (len(self._grid_tail) + len(self._resid) + len(self._band) + 3 * len(self._beats)) + 256
        )

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
        if type(grid_index) is not np.ndarray or grid_index.dtype != np.int64:
            grid_index = np.asarray(grid_index, dtype=np.int64)
        g = ibi_grid_ms
        if type(g) is not np.ndarray or g.dtype != np.float64:
            g = np.asarray(ibi_grid_ms, dtype=np.float64)
        if len(grid_index) != len(g):
            raise DspError(f"grid_index ({len(grid_index)}) and ibi_grid_ms ({len(g)}) differ in length")
        if not len(grid_index):
            # no new grid point: nothing to detrend; the beats wait for their epoch
            if self._k_next is not None:
                self._add_beats(beat_s, ibi_ms, ibi_valid)
            return []
        if self._k_next is None:
            self._k_next = int(grid_index[0])
            self._m_next = -(-self._k_next // _STEP)
            self._epoch = self._m_next // self.epoch_n
        if len(grid_index) and grid_index[0] != self._k_next:
            raise DspError(
                f"IBI grid jumps from index {self._k_next} to {grid_index[0]}: feed every point once"
            )
        even = (grid_index % _STEP) == 0
        g = g[even]  # the 2 Hz series: every other grid point
        first_new_m = self._m_next
        if len(g):
            first_new_m = int(grid_index[even][0]) // _STEP
        self._k_next += len(grid_index)
        self._m_next = first_new_m + len(g)
        self._add_beats(beat_s, ibi_ms, ibi_valid)
        # centred 21-point cubic detrend: residual for index k needs k + h
        buf = np.concatenate((self._grid_tail, g))
        first = self._m_next - len(buf)  # 2 Hz index of buf[0]
        out: list[HrvEpoch] = []
        if len(buf) >= SG_POINTS:
            trend = np.convolve(buf, self._w_rev, mode="valid")  # trend of buf[h : len-h]
            resid = buf[self._h : len(buf) - self._h] - trend
            k0 = first + self._h  # 2 Hz index of resid[0]
            # before the first centred fit (and before the first sample) there is nothing: invalid
            if not self._started:
                e_start = self._epoch * self.epoch_n
                resid = np.concatenate((np.full(k0 - e_start, np.nan), resid))
                k0 = e_start
                self._started = True
            band = self._bp.process(resid)
            out = self._collect(k0, resid, band)
            self._grid_tail = buf[len(buf) - 2 * self._h :]
        else:
            self._grid_tail = buf
        return out

    def _add_beats(self, beat_s: object, ibi_ms: object, ibi_valid: object) -> None:
        if len(beat_s):  # type: ignore[arg-type]
            self._beats.extend(
                zip(
                    np.asarray(beat_s, float).tolist(),
                    np.asarray(ibi_ms, float).tolist(),
                    np.asarray(ibi_valid, bool).tolist(),
                    strict=True,
                )
            )
        elif len(ibi_ms) or len(ibi_valid):  # type: ignore[arg-type]
            raise DspError("beat_s, ibi_ms and ibi_valid differ in length")

    def _collect(self, k0: int, resid: np.ndarray, band: np.ndarray) -> list[HrvEpoch]:
        out: list[HrvEpoch] = []
        pos = 0
        while pos < len(resid):
            end_k = (self._epoch + 1) * self.epoch_n
            take = min(len(resid) - pos, end_k - (k0 + pos))
            self._resid.extend(resid[pos : pos + take].tolist())
            self._band.extend(band[pos : pos + take].tolist())
            pos += take
            if k0 + pos == end_k:
                out.append(self._close())
        return out

    def _close(self) -> HrvEpoch:
        e = self._epoch
        start_k = e * self.epoch_n
        end_s = float(self.clock.rel_s((start_k + self.epoch_n) * _STEP))
        band = np.asarray(self._band)
        fin = np.isfinite(band)
        rsa = (
            float(np.log(np.var(band[fin]))) if 2 * fin.sum() >= len(band) and fin.sum() > 1 else float("nan")
        )
        hf = hf_power_ln_ms2(np.asarray(self._resid), self.hf_band_hz)
        mine = [(t, i, v) for t, i, v in self._beats if t < end_s]
        self._beats = [b for b in self._beats if b[0] >= end_s]
        ibi = np.array([i for _, i, _ in mine])
        valid = np.array([v for _, _, v in mine], dtype=bool)
        rm = rmssd_ms(ibi, valid) if len(ibi) else float("nan")
        self._resid, self._band = [], []
        self._epoch += 1
        return HrvEpoch(e, start_k * _STEP, rm, rsa, hf, len(mine))


def hrv_epochs(ppg_features: object, **kwargs: object) -> list[HrvEpoch]:
    """Batch form: all complete epochs of one :class:`dsp_ext.ppg.PpgFeatures` (identical to streaming)."""
    return HrvStream(**kwargs).push_features(ppg_features)  # type: ignore[arg-type]
