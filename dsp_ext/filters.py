"""Causal IIR filters in second-order sections with persistent state: streaming == batch for any chunking.

Designs (Butterworth) are computed once at set-up with scipy; the per-sample work is the Cython kernel
``_sosfilt.sosfilt_hold``. Non-finite input samples give NaN output while the filter is fed the last finite
input (zero-order hold), so one bad sample cannot poison the state for ever.
"""

from __future__ import annotations

import numpy as np

from . import _sosfilt
from .errors import DspError

__all__ = ["SosFilter", "butter_sos", "sosfilt", "sosfilt_reference"]


def butter_sos(
    order: int, cutoff_hz: float | tuple[float, float], rate_hz: float, btype: str = "low"
) -> np.ndarray:
    """Butterworth design as an (n_sections, 6) float64 C-contiguous SOS array (scipy, called once)."""
    from scipy import signal

    if not rate_hz > 0:
        raise DspError(f"rate_hz must be > 0, got {rate_hz!r}")
    nyq = rate_hz / 2.0
    cuts = np.atleast_1d(np.asarray(cutoff_hz, dtype=np.float64))
    if np.any(cuts <= 0) or np.any(cuts >= nyq):
        raise DspError(f"cut-off {cutoff_hz} Hz must lie in (0, {nyq}) Hz at rate {rate_hz} Hz")
    sos = signal.butter(order, cuts if len(cuts) > 1 else cuts[0], btype=btype, fs=rate_hz, output="sos")
    return np.ascontiguousarray(sos, dtype=np.float64)


def _check_sos(sos: object) -> np.ndarray:
    s = np.ascontiguousarray(sos, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != 6 or s.shape[0] < 1:
        raise DspError(f"sos must have shape (n_sections, 6), got {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s[:, 3] != 1.0):
        raise DspError("sos must be finite with a0 == 1 in every section")
    return s


class SosFilter:
    """A causal SOS filter that keeps its state between :meth:`process` calls.

    ``init="zero"`` starts from rest; ``init="first"`` starts in the steady state of the first finite
    input (no start-up transient for signals with an offset such as skin conductance).
    """

    def __init__(self, sos: object, init: str = "zero") -> None:
        self.sos = _check_sos(sos)
        if init not in ("zero", "first"):
            raise DspError(f"init must be 'zero' or 'first', got {init!r}")
        self.init = init
        self._zi_unit: np.ndarray | None = None
        if init == "first":
            from scipy import signal

            self._zi_unit = np.ascontiguousarray(signal.sosfilt_zi(self.sos), dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        """Back to the initial state."""
        self.zi = np.zeros((self.sos.shape[0], 2))
        self._hold = np.array([np.nan])
        self._started = self.init == "zero"

    @property
    def state_nbytes(self) -> int:
        return int(self.zi.nbytes + self._hold.nbytes)

    def process(self, x: object) -> np.ndarray:
        """Filter the next chunk; returns a new float64 array of the same length (the input is not changed)."""
        a = np.asarray(x)
        if a.ndim != 1 or a.dtype.kind not in "biuf":
            raise DspError(f"filter input must be a 1-D real array, got shape {a.shape} dtype {a.dtype}")
        a = np.ascontiguousarray(a, dtype=np.float64)
        out = np.empty_like(a)
        if not self._started:
            fin = np.flatnonzero(np.isfinite(a))
            if len(fin) == 0:
                out[:] = np.nan
                return out
            self.zi[:] = self._zi_unit * a[fin[0]]
            self._started = True
        _sosfilt.sosfilt_hold(self.sos, self.zi, a, out, self._hold)
        return out


def sosfilt(sos: object, x: object, init: str = "zero") -> np.ndarray:
    """Batch causal filtering; equals :class:`SosFilter` fed the same samples in any chunks."""
    return SosFilter(sos, init=init).process(x)


def sosfilt_reference(sos: np.ndarray, x: np.ndarray, zi: np.ndarray | None = None) -> np.ndarray:
    """Plain Python twin of the kernel (direct form II transposed, zero-order hold on non-finite input)."""
    sos = np.asarray(sos, dtype=np.float64)
    z = np.zeros((len(sos), 2)) if zi is None else np.array(zi, dtype=np.float64)
    out = np.empty(len(x))
    last = np.nan
    for i, v in enumerate(np.asarray(x, dtype=np.float64)):
        finite = np.isfinite(v)
        if finite:
            last = v
        elif not np.isfinite(last):
            out[i] = np.nan
            continue
        u = v if finite else last
        for s, (b0, b1, b2, _a0, a1, a2) in enumerate(sos):
            y = b0 * u + z[s, 0]
            z[s, 0] = b1 * u - a1 * y + z[s, 1]
            z[s, 1] = b2 * u - a2 * y
            u = y
        out[i] = u if finite else np.nan
    return out
