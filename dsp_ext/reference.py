"""Plain numpy reference twins of the dsp_ext kernels.

These are written for clarity, not speed: one window and one lag at a time, the textbook two-pass
formulas. The Cython kernels must agree with them to 1e-9 (tests/dsp_ext).
"""

from __future__ import annotations

import numpy as np

from ._sync_types import R_CLIP, SyncParams, WccResult


def corr_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of the pairs where both values are finite, as in ARCHITECTURE §4.

    NaN when more than half of the ``len(x)`` pairs are invalid, when fewer than two pairs are valid, or when
    either side is constant over the valid pairs.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    n_valid = int(ok.sum())
    if 2 * n_valid < len(x) or n_valid < 2:
        return float("nan")
    xs, ys = x[ok], y[ok]
    if xs.max() == xs.min() or ys.max() == ys.min():
        return float("nan")
    xc = xs - xs.mean()
    yc = ys - ys.mean()
    r = float(np.sum(xc * yc) / np.sqrt(np.sum(xc * xc) * np.sum(yc * yc)))
    return min(1.0, max(-1.0, r))


def fisher_z_reference(r: np.ndarray) -> np.ndarray:
    """Fisher z of r clipped to ±0.999 (NaN stays NaN)."""
    return np.arctanh(np.clip(r, -R_CLIP, R_CLIP))


def _mean_max_reference(z: np.ndarray) -> tuple[float, float]:
    """Mean and max of the finite entries; NaN if more than half are missing (or none given)."""
    fin = z[np.isfinite(z)]
    if len(z) == 0 or 2 * len(fin) < len(z):
        return float("nan"), float("nan")
    return float(fin.mean()), float(fin.max())


def peak_reference(profile: np.ndarray, lag: int, half: int, sign: int, min_r: float = 0.0) -> int | None:
    """Boker et al. (2002) peak picking on one r(τ) profile; returns the column index or None.

    Search outward from τ = 0 (distance 0, 1, 2, …) for the nearest lag that is a local extremum:
    ``sign=+1`` looks for an in-phase peak (r > 0 and r >= every r within ``half`` lags on both sides),
    ``sign=-1`` for an anti-phase peak (r < 0 and r <= all of them). Every neighbour must exist and be
    finite, so lags closer than ``half`` to the ends of the profile are never peaks. When both +d and −d
    qualify, the more extreme r wins; an exact tie goes to +d (therapist leads). A peak must also reach
    ``min_r`` in height (sign·r >= min_r; 0 = Boker's rule).
    """
    p = sign * np.asarray(profile, dtype=np.float64)
    n = len(p)

    def is_peak(c: int) -> bool:
        if c - half < 0 or c + half >= n:
            return False
        nb = p[c - half : c + half + 1]
        if not np.all(np.isfinite(nb)):
            return False
        return bool(p[c] > 0 and p[c] >= min_r and p[c] >= nb.max())

    for d in range(0, lag + 1):
        cands = [c for c in ((lag + d, lag - d) if d else (lag,)) if is_peak(c)]
        if cands:
            return max(cands, key=lambda c: (p[c], c))
    return None


def window_values_reference(prof: np.ndarray, params: SyncParams) -> dict[str, float]:
    """The per-window scalars (``WINDOW_VALUE_NAMES``) of one r(τ) profile (columns τ = −lag … +lag)."""
    lag = params.lag
    z = fisher_z_reference(prof)
    out = {"r0": float(prof[lag])}
    out["therapist_led"], out["therapist_led_max"] = _mean_max_reference(z[lag + 1 :])
    out["client_led"], out["client_led_max"] = _mean_max_reference(z[:lag])
    for sign, pre in ((1, "inphase"), (-1, "antiphase")):
        c = peak_reference(prof, lag, params.peak_window // 2, sign, params.peak_min_r)
        found = c is not None
        out[pre + "_r"] = float(prof[c]) if found else float("nan")
        out[pre + "_z"] = float(z[c]) if found else float("nan")
        out[pre + "_lag_s"] = (c - lag) / params.rate_hz if found else float("nan")
    # the global maximum: over the finite r, the lag nearest τ = 0 on ties (+τ first); the leader rule
    fin = [k for k in range(len(prof)) if np.isfinite(prof[k])]
    if not fin:
        out.update(max_r=float("nan"), max_z=float("nan"), max_lag_s=float("nan"), leader=float("nan"))
        return out
    top = max(prof[k] for k in fin)
    best = min((k for k in fin if prof[k] == top), key=lambda k: (abs(k - lag), -k))
    out["max_r"] = float(top)
    out["max_z"] = float(z[best])
    out["max_lag_s"] = (best - lag) / params.rate_hz
    out["leader"] = float(np.sign(best - lag)) if top >= params.leader_min_r else 0.0
    return out


def wcc_reference(therapist: np.ndarray, client: np.ndarray, params: SyncParams | None = None) -> WccResult:
    """Windowed cross-correlation, one window and one lag at a time (the transparent twin of ``wcc``).

    ``r(τ) = corr(T[t .. t+w), C[t+τ .. t+τ+w))``; τ > 0 means the therapist leads. Window starts are
    ``t = lag + k * inc``.
    """
    params = params or SyncParams()
    t_arr = np.asarray(therapist, dtype=np.float64)
    c_arr = np.asarray(client, dtype=np.float64)
    n = min(len(t_arr), len(c_arr))
    w, inc, lag = params.win, params.inc, params.lag
    nw = params.n_windows(n)
    res = WccResult.empty(params, nw)
    for k in range(nw):
        t = lag + k * inc
        res.window_start[k] = t
        x = t_arr[t : t + w]
        prof = np.array([corr_reference(x, c_arr[t + tau : t + tau + w]) for tau in range(-lag, lag + 1)])
        res.r[k] = prof
        for name, value in window_values_reference(prof, params).items():
            getattr(res, name)[k] = value
    return res
