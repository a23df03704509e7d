"""The shared 4 Hz feature grid: grid point k lies at ``k / out_hz`` seconds after a stream's first sample.

:class:`GridResampler` turns a stream at ``rate_hz`` into values on that grid by linear interpolation
between the two raw samples around each grid time, causally (a grid point is emitted as soon as the raw
sample at or after its time has arrived) and identically for any chunking. Interpolating across a NaN gives
NaN, so invalid raw samples make the grid points next to them invalid.
"""

from __future__ import annotations

import numpy as np

from .errors import DspError

FEATURE_RATE_HZ = 4.0

__all__ = ["FEATURE_RATE_HZ", "GridResampler"]


class GridResampler:
    """Streaming linear interpolation of a ``rate_hz`` series onto the ``out_hz`` grid."""

    def __init__(self, rate_hz: float, out_hz: float = FEATURE_RATE_HZ) -> None:
        if not (np.isfinite(rate_hz) and rate_hz > 0 and np.isfinite(out_hz) and out_hz > 0):
            raise DspError(f"rates must be finite and > 0, got rate_hz={rate_hz!r} out_hz={out_hz!r}")
        self.rate_hz = float(rate_hz)
        self.out_hz = float(out_hz)
        self._step = self.rate_hz / self.out_hz
        self.reset()

    def reset(self) -> None:
        self.n_in = 0  # raw samples received
        self.k_next = 0  # next grid index to emit
        self._last = np.nan  # raw sample n_in - 1

    def push(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed raw samples; returns ``(grid_index, values)`` for every grid point completed."""
        x = np.asarray(x, dtype=np.float64)
        base = self.n_in - 1  # raw index of buf[0]
        buf = np.concatenate(([self._last], x))
        self.n_in += len(x)
        last_idx = self.n_in - 1
        if last_idx < 0:
            return np.empty(0, dtype=np.int64), np.empty(0)
        # grid point k is complete when ceil(k * step) <= last_idx
        k_end = int(np.floor(last_idx / self._step + 1e-9)) + 1
        k = np.arange(self.k_next, max(k_end, self.k_next), dtype=np.int64)
        pos = k * self._step
        i0 = np.floor(pos + 1e-9).astype(np.int64)
        frac = pos - i0
        frac[frac < 1e-9] = 0.0
        j0 = i0 - base
        v0 = buf[j0]
        exact = frac == 0.0
        j1 = np.minimum(j0 + 1, len(buf) - 1)
        v1 = buf[j1]
        vals = np.where(exact, v0, v0 + frac * (v1 - v0))
        self.k_next = max(k_end, self.k_next)
        if len(x):
            self._last = float(x[-1])
        return k, vals
