"""The shared 4 Hz feature grid.

Without a start time, grid point k lies ``k / 4`` s after a stream's first sample. Given the UTC time of
the first sample (``t0_ns``, after clock mapping), grid point k is the UTC instant ``k * 250 ms`` — the grid
of ARCHITECTURE §3 that both participants share — and the first point emitted is the first at or after
``t0_ns``. :class:`GridClock` does this bookkeeping.

:class:`GridResampler` turns a stream at ``rate_hz`` into values on that grid by linear interpolation
between the two raw samples around each grid time, causally (a grid point is emitted as soon as the raw
sample at or after its time has arrived) and identically for any chunking. Interpolating across a NaN gives
NaN, so invalid raw samples make the grid points next to them invalid.
"""

from __future__ import annotations

import math

import numpy as np

from core.vocab import FEATURE_RATE_HZ, GRID_NS

from .errors import DspError

__all__ = ["FEATURE_RATE_HZ", "GRID_NS", "GridClock", "GridResampler"]


class GridClock:
    """Maps grid indices to seconds after a stream's first sample (``rel_s``) and back.

    ``t0_ns=None``: index 0 is the first sample. Otherwise index k is UTC ``k * 250 ms`` and
    ``first_index`` is the first grid point at or after ``t0_ns``.
    """

    def __init__(self, t0_ns: int | None = None) -> None:
        if t0_ns is None:
            self.first_index = 0
            self.offset_s = 0.0
        else:
            if not isinstance(t0_ns, int | np.integer) or t0_ns < 0:
                raise DspError(f"t0_ns must be a non-negative integer of UTC nanoseconds, got {t0_ns!r}")
            self.first_index = int(-(-int(t0_ns) // GRID_NS))
            self.offset_s = (self.first_index * GRID_NS - int(t0_ns)) / 1e9

    def rel_s(self, k: np.ndarray) -> np.ndarray:
        """Seconds after the first sample of grid points ``k``."""
        return self.offset_s + (np.asarray(k) - self.first_index) / FEATURE_RATE_HZ

    def last_index_at_or_before(self, rel_s: float) -> int:
        """The last grid index whose time is ≤ ``rel_s`` (``first_index - 1`` if none)."""
        return self.first_index + int(np.floor((rel_s - self.offset_s) * FEATURE_RATE_HZ + 1e-9))


class GridResampler:
    """Streaming linear interpolation of a ``rate_hz`` series onto the 4 Hz grid (see the module doc)."""

    def __init__(self, rate_hz: float, out_hz: float = FEATURE_RATE_HZ, t0_ns: int | None = None) -> None:
        if not (np.isfinite(rate_hz) and rate_hz > 0 and np.isfinite(out_hz) and out_hz > 0):
            raise DspError(f"rates must be finite and > 0, got rate_hz={rate_hz!r} out_hz={out_hz!r}")
        if t0_ns is not None and out_hz != FEATURE_RATE_HZ:
            raise DspError("t0_ns aligns to the 4 Hz UTC grid; use out_hz=4")
        self.rate_hz = float(rate_hz)
        self.out_hz = float(out_hz)
        self.clock = GridClock(t0_ns)
        self._step = self.rate_hz / self.out_hz
        self._off = self.clock.offset_s * self.rate_hz  # raw position of the first grid point
        self.reset()

    def reset(self) -> None:
        self.n_in = 0  # raw samples received
        self.j_next = 0  # next grid point to emit, counted from the first
        self._last = np.nan  # raw sample n_in - 1

    def push(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed raw samples; returns ``(grid_index, values)`` for every grid point completed."""
        if type(x) is not np.ndarray or x.dtype != np.float64:
            x = np.asarray(x, dtype=np.float64)
        n_old = self.n_in
        base = n_old - 1  # raw index of the sample before x (self._last)
        self.n_in += len(x)
        last_idx = self.n_in - 1
        if last_idx < 0:
            return np.empty(0, dtype=np.int64), np.empty(0)
        # grid point j (raw position off + j*step) is complete when ceil(position) <= last_idx
        off, step, j_next = self._off, self._step, self.j_next
        j_end = max(math.floor((last_idx - off) / step + 1e-9) + 1, j_next)
        n_out = j_end - j_next
        if n_out <= 16:  # the streaming case (a few points per push): scalar arithmetic, same operations
            last = self._last
            xs = x.tolist() if n_out else []
            nx = len(xs)
            vals = []
            for j in range(j_next, j_end):
                pos = off + j * step
                i0 = math.floor(pos + 1e-9)
                frac = pos - i0
                r = i0 - n_old
                v0 = last if r < 0 else xs[r]
                if frac < 1e-9:
                    vals.append(v0)
                else:
                    v1 = xs[min(r + 1, nx - 1)]
                    vals.append(v0 + frac * (v1 - v0))
            first = j_next + self.clock.first_index
            idx = np.arange(first, first + n_out, dtype=np.int64)
            out = np.array(vals, dtype=np.float64)
        else:
            buf = np.concatenate(([self._last], x))
            j = np.arange(j_next, j_end, dtype=np.int64)
            pos = off + j * step
            i0 = np.floor(pos + 1e-9).astype(np.int64)
            frac = pos - i0
            frac[frac < 1e-9] = 0.0
            j0 = i0 - base
            v0 = buf[j0]
            v1 = buf[np.minimum(j0 + 1, len(buf) - 1)]
            out = np.where(frac == 0.0, v0, v0 + frac * (v1 - v0))
            idx = j + self.clock.first_index
        self.j_next = j_end
        if len(x):
            self._last = float(x[-1])
        return idx, out
