"""Vectorised numpy engine for the windowed cross-correlation (two-pass per window and lag).

Same interface as the Cython ``_wcc.WccEngine``; used as a second, independent implementation in tests and
in the benchmark ("numpy, vectorised"). Per window it costs O(lags * win), so it is not the streaming kernel.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._sync_types import R_CLIP, WINDOW_VALUE_NAMES


def profiles_np(t_seg: np.ndarray, c_seg: np.ndarray, win: int, inc: int, lag: int, n_win: int) -> np.ndarray:
    """r(τ) profiles of ``n_win`` windows; ``t_seg[0]`` is window 0's first sample, ``c_seg[0]`` is τ = −lag."""
    out = np.full((n_win, 2 * lag + 1), np.nan)
    if n_win == 0:
        return out
    xw = sliding_window_view(t_seg[: (n_win - 1) * inc + win], win)[::inc]
    xf = np.isfinite(xw)
    for j in range(2 * lag + 1):
        yw = sliding_window_view(c_seg[j : j + (n_win - 1) * inc + win], win)[::inc]
        ok = xf & np.isfinite(yw)
        nv = ok.sum(axis=1)
        x = np.where(ok, xw, 0.0)
        y = np.where(ok, yw, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mx = x.sum(axis=1) / nv
            my = y.sum(axis=1) / nv
            xc = np.where(ok, xw - mx[:, None], 0.0)
            yc = np.where(ok, yw - my[:, None], 0.0)
            sxx = (xc * xc).sum(axis=1)
            syy = (yc * yc).sum(axis=1)
            r = (xc * yc).sum(axis=1) / np.sqrt(sxx * syy)
        big = np.finfo(np.float64).max
        const_x = np.where(ok, xw, -big).max(axis=1) == np.where(ok, xw, big).min(axis=1)
        const_y = np.where(ok, yw, -big).max(axis=1) == np.where(ok, yw, big).min(axis=1)
        bad = (2 * nv < win) | (nv < 2) | const_x | const_y
        out[:, j] = np.where(bad, np.nan, np.clip(r, -1.0, 1.0))
    return out


def _mean_max(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fin = np.isfinite(z)
    nf = fin.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(fin, z, 0.0).sum(axis=1) / nf
        mx = np.where(fin, z, -np.inf).max(axis=1) if z.shape[1] else np.full(len(z), np.nan)
    bad = (2 * nf < z.shape[1]) | (z.shape[1] == 0)
    return np.where(bad, np.nan, mean), np.where(bad, np.nan, mx)


def _peaks(prof: np.ndarray, lag: int, half: int, sign: int, min_r: float = 0.0) -> np.ndarray:
    """Column index of the Boker peak of each row, −1 if none (see ``reference.peak_reference``)."""
    p = sign * prof
    n_win, n_l = p.shape
    is_pk = np.zeros_like(p, dtype=bool)
    if n_l >= 2 * half + 1:
        nb = sliding_window_view(p, 2 * half + 1, axis=1)  # (n_win, n_l - 2h, 2h+1)
        centre = p[:, half : n_l - half]
        with np.errstate(invalid="ignore"):
            ok = np.all(np.isfinite(nb), axis=2) & (centre > 0) & (centre >= min_r) & (centre >= nb.max(axis=2))
        is_pk[:, half : n_l - half] = ok
    best = np.full(n_win, -1, dtype=np.int64)
    for d in range(lag + 1):
        todo = best < 0
        if not todo.any():
            break
        cp, cm = lag + d, lag - d
        pos = is_pk[:, cp] & todo
        neg = is_pk[:, cm] & todo if d else np.zeros(n_win, dtype=bool)
        both = pos & neg
        choose_neg = neg & (~pos | (both & (p[:, cm] > p[:, cp])))
        best[pos & ~choose_neg] = cp
        best[choose_neg] = cm
    return best


def _global_max(prof: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Max of the finite r of each row and its column: the one nearest τ = 0 (column ``lag``) on ties, +τ
    before −τ; column −1 where a row has no finite r."""
    n_win = prof.shape[0]
    fin = np.isfinite(prof)
    top = np.where(fin, prof, -np.inf).max(axis=1) if prof.shape[1] else np.full(n_win, -np.inf)
    best = np.full(n_win, -1, dtype=np.int64)
    for d in range(lag + 1):
        for c in (lag + d, lag - d):
            hit = (best < 0) & (prof[:, c] == top)
            best[hit] = c
    return top, best


def window_values_np(
    prof: np.ndarray, lag: int, half: int, rate_hz: float, peak_min_r: float = 0.0, leader_min_r: float = 0.0
) -> np.ndarray:
    """Per-window scalars (columns in :data:`WINDOW_VALUE_NAMES` order) from r(τ) profiles."""
    n_win = prof.shape[0]
    vals = np.full((n_win, len(WINDOW_VALUE_NAMES)), np.nan)
    z = np.arctanh(np.clip(prof, -R_CLIP, R_CLIP))
    vals[:, 0] = prof[:, lag]
    vals[:, 1], vals[:, 3] = _mean_max(z[:, lag + 1 :])
    vals[:, 2], vals[:, 4] = _mean_max(z[:, :lag])
    rows = np.arange(n_win)
    for sign, col in ((1, 5), (-1, 8)):
        b = _peaks(prof, lag, half, sign, peak_min_r)
        has = b >= 0
        vals[has, col] = prof[rows[has], b[has]]
        vals[has, col + 1] = z[rows[has], b[has]]
        vals[has, col + 2] = (b[has] - lag) / rate_hz
    top, best = _global_max(prof, lag)
    has = best >= 0
    vals[has, 11] = top[has]
    vals[has, 12] = z[rows[has], best[has]]
    vals[has, 13] = (best[has] - lag) / rate_hz
    vals[has, 14] = np.where((top[has] >= leader_min_r) & (best[has] != lag), np.sign(best[has] - lag), 0.0)
    return vals


class WccEngine:
    """Buffered streaming engine: keeps the samples still needed and computes windows as they complete."""

    def __init__(
        self, win: int, inc: int, lag: int, half: int, rate_hz: float, peak_min_r: float = 0.0,
        leader_min_r: float = 0.0,
    ) -> None:
        self.win, self.inc, self.lag, self.half, self.rate_hz = win, inc, lag, half, rate_hz
        self.peak_min_r, self.leader_min_r = peak_min_r, leader_min_r
        self.reset()

    def reset(self) -> None:
        self._t = np.empty(0)
        self._c = np.empty(0)
        self._t0 = 0  # absolute index of self._t[0]
        self._c0 = 0
        self._k = 0  # next window
        self._nt = 0
        self._nc = 0

    @property
    def n_samples(self) -> tuple[int, int]:
        return self._nt, self._nc

    @property
    def state_nbytes(self) -> int:
        return int(self._t.nbytes + self._c.nbytes)

    def push(self, t: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w, inc, lag = self.win, self.inc, self.lag
        self._t = np.concatenate([self._t, t])
        self._c = np.concatenate([self._c, c])
        self._nt += len(t)
        self._nc += len(c)
        n = min(self._nt, self._nc)
        span = w + 2 * lag
        n_total = 0 if n < span else (n - span) // inc + 1
        n_new = n_total - self._k
        if n_new <= 0:
            return np.empty(0, dtype=np.int64), np.empty((0, 2 * lag + 1)), np.empty((0, len(WINDOW_VALUE_NAMES)))
        ts = lag + self._k * inc
        t_seg = self._t[ts - self._t0 :]
        c_seg = self._c[ts - lag - self._c0 :]
        prof = profiles_np(t_seg, c_seg, w, inc, lag, n_new)
        starts = ts + inc * np.arange(n_new, dtype=np.int64)
        self._k = n_total
        nxt = lag + self._k * inc
        cut_t = min(nxt, self._t0 + len(self._t))
        self._t = self._t[cut_t - self._t0 :].copy()
        self._t0 = cut_t
        cut_c = min(nxt - lag, self._c0 + len(self._c))
        self._c = self._c[cut_c - self._c0 :].copy()
        self._c0 = cut_c
        return starts, prof, window_values_np(prof, lag, self.half, self.rate_hz, self.peak_min_r, self.leader_min_r)
