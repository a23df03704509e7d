"""Windowed cross-correlation synchrony (Boker et al. 2002) between therapist and client, batch and streaming.

Definitions (ARCHITECTURE §4): ``r(τ) = corr(T[t .. t+w), C[t+τ .. t+τ+w))``; **τ > 0 means the therapist
leads** (the client follows τ later). This is rMEA's ``s1_lead`` side with s1 = therapist. Boker's CRAN
``wcc`` correlates ``x[t]`` with ``y[t-τ]``, so its τ is our −τ.

Per window: ``r0``; the profile ``r`` over τ = −lag … +lag (one sample apart); Fisher z of r clipped to
±0.999; ``therapist_led`` / ``client_led`` = mean z over τ ∈ (0, lag] / [−lag, 0) and their maxima
(``*_max``; NaN if more than half of those lags are NaN); Boker peak picking outward from τ = 0 for the
nearest in-phase peak (local maximum with r > 0) and anti-phase peak (local minimum with r < 0) that dominates
a neighbourhood of ``peak_window`` lags and reaches ``peak_min_r`` in height, with r, z and lag in seconds; the
profile's global maximum ``max_r`` (its ``max_z`` and ``max_lag_s``, the lag nearest τ = 0 on ties, +τ first);
``leader`` (+1 therapist, −1 client, 0 none: :func:`leader` on this window alone). Who leads — dyadsync's one
rule — is ``pooled_leader`` with ``pooled_r`` / ``pooled_lag_s``: :func:`leader` on the mean Fisher-z profile of
the trailing ``SyncParams.leader_windows`` windows (:class:`LeaderPool`). Pairs with a non-finite value are
dropped; a lag with more than half of its ``win`` pairs invalid, or a constant side, gives NaN (never 0).

Window k starts at therapist sample ``lag + k * inc`` and is complete once both series reach sample
``lag + k * inc + win + lag - 1``; :class:`StreamingWcc` emits it exactly then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from . import _wcc
from ._sync_types import (
    METRIC_VALUE_NAMES,
    POOLED_VALUE_NAMES,
    R_CLIP,
    WINDOW_VALUE_NAMES,
    SyncParams,
    WccResult,
)
from .errors import DspError

logger = logging.getLogger(__name__)

__all__ = [
    "METRIC_VALUE_NAMES",
    "POOLED_VALUE_NAMES",
    "R_CLIP",
    "WINDOW_VALUE_NAMES",
    "LeaderPool",
    "Leadership",
    "StreamingWcc",
    "SyncParams",
    "WccResult",
    "fisher_z",
    "leader",
    "pooled_leader",
    "session_leadership",
    "wcc",
]


def fisher_z(r: np.ndarray) -> np.ndarray:
    """Fisher z = atanh(r) with r clipped to ±0.999; NaN stays NaN."""
    return np.arctanh(np.clip(np.asarray(r, dtype=np.float64), -R_CLIP, R_CLIP))


def _as_series(x: object, name: str) -> np.ndarray:
    """Validate one input series and return it as a C-contiguous float64 array (the caller's own array when it
    already is one: the kernels only read it)."""
    if type(x) is np.ndarray and x.dtype == np.float64 and x.ndim == 1 and x.flags.c_contiguous:
        return x
    try:
        a = np.asarray(x)
    except Exception as exc:  # pragma: no cover - numpy raises many kinds
        raise DspError(f"{name}: cannot be read as an array ({exc})") from exc
    if a.ndim != 1:
        raise DspError(f"{name}: expected a 1-D series, got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise DspError(f"{name}: expected real numbers, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float64)


def wcc(therapist: object, client: object, params: SyncParams | None = None) -> WccResult:
    """Offline windowed cross-correlation of two equally long series on the same grid (``params.rate_hz``).

    Returns one row per complete window (see the module docstring). Raises :class:`DspError` if the
    inputs are not 1-D real series of equal length. The inputs are never modified.
    """
    params = params or SyncParams()
    if not isinstance(params, SyncParams):
        raise DspError(f"params must be a SyncParams, got {type(params).__name__}")
    t = _as_series(therapist, "therapist")
    c = _as_series(client, "client")
    if len(t) != len(c):
        raise DspError(f"therapist and client lengths differ: {len(t)} vs {len(c)} samples")
    starts, prof, vals = _wcc.wcc_batch(
        t, c, params.win, params.inc, params.lag, params.peak_window // 2, params.rate_hz,
        params.peak_min_r, params.leader_min_r,
    )
    cols = np.ascontiguousarray(vals.T)  # one copy; each named field is a row view of it
    return WccResult(
        params=params,
        window_start=starts,
        lags_s=params.lags / params.rate_hz,
        r=prof,
        **{name: cols[j] for j, name in enumerate(WINDOW_VALUE_NAMES)},
    )


def leader(max_r: object, max_lag_s: object, min_r: float = SyncParams.leader_min_r) -> np.ndarray:
    """Who leads in each window: the ONE rule of dyadsync (docs/dsp.md "Who leads").

    The sign of the lag of the window's global maximum of r(τ) over all lags −lag … +lag (``max_r`` at
    ``max_lag_s``, from :func:`wcc` / :class:`StreamingWcc`): ``+1`` the therapist leads (τ > 0), ``−1`` the
    client leads, ``0`` no leader (the maximum is below ``min_r`` or lies at τ = 0), NaN where the window has
    no finite r. Boker's nearest local peak is not used for this: at lags of 3 s and more it often stops at
    a small near-zero bump (validated in ``tools/validate_leader.py``). This equals the kernels' ``leader``
    value for ``SyncParams.leader_min_r == min_r``.
    """
    r = np.asarray(max_r, dtype=np.float64)
    lag = np.asarray(max_lag_s, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        named = (r >= min_r) & (lag != 0.0)
    out = np.where(named, np.sign(lag), 0.0)
    return np.where(np.isfinite(r), out, np.nan)


def _profile_maximum(mz: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise global maximum of mean-z profiles ``mz`` (rows × lags, NaN = lag left out): its r (tanh of the
    mean z) and its column, the column nearest τ = 0 on an exact tie (+τ first); NaN / −1 for an all-NaN row."""
    mr = np.tanh(mz)
    n_lags = mr.shape[1]
    order = np.array(sorted(range(n_lags), key=lambda k: (abs(k - lag), -k)), dtype=np.int64)
    ok = np.isfinite(mr)
    any_ok = ok.any(axis=1)
    with np.errstate(invalid="ignore"):
        top = np.where(any_ok, np.max(np.where(ok, mr, -np.inf), axis=1), np.nan)
        col = order[np.argmax(mr[:, order] == top[:, None], axis=1)]
    return top, np.where(any_ok, col, -1)


class LeaderPool:
    """The ONE "who leads" rule over time (docs/dsp.md "Who leads"), causal and chunk-independent.

    Each window's r(τ) profile is turned into Fisher z (r clipped to ±0.999); the window's *pooled profile* is
    the mean z per lag over the trailing ``params.leader_windows`` windows, this one included (fewer at the
    start of a session; a lag is left out where fewer than half of the pooled windows have a finite r). On it,
    ``pooled_r`` = tanh of the largest mean z, ``pooled_lag_s`` its lag (nearest τ = 0 on a tie, +τ first) and
    ``pooled_leader`` = :func:`leader` of those two: +1 therapist, −1 client, 0 none (below
    ``params.leader_min_r`` or at τ = 0), NaN if no lag is left. Pooling Fisher z before taking the maximum
    is the averaging of correlation profiles that the session-level call also uses; leadership therefore has a
    stated temporal resolution of ``leader_span_s`` (validated in ``tools/validate_leader.py``).

    :meth:`push` takes profiles in window order, in blocks of any size; each window's sums are accumulated
    oldest window first, element by element, so the numbers do not depend on how the windows were split
    (the unit's stream and the offline :func:`wcc` give bit-identical values). State: the last
    ``leader_windows − 1`` profiles.
    """

    def __init__(self, params: SyncParams) -> None:
        if not isinstance(params, SyncParams):
            raise DspError(f"params must be a SyncParams, got {type(params).__name__}")
        self.params = params
        self.reset()

    def reset(self) -> None:
        """Forget every window (a new session)."""
        self._z = np.full((self.params.leader_windows - 1, self.params.n_lags), np.nan)  # the last k − 1 windows' z
        self._seen = 0  # windows pushed so far

    def push(self, profiles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(pooled_r, pooled_lag_s, pooled_leader)`` for each row of ``profiles`` (windows × lags, in order)."""
        p = self.params
        prof = np.asarray(profiles, dtype=np.float64)
        if prof.ndim != 2 or prof.shape[1] != p.n_lags:
            raise DspError(f"profiles: expected shape (windows, {p.n_lags}), got {prof.shape}")
        m, k = prof.shape[0], p.leader_windows
        zall = np.concatenate([self._z, fisher_z(prof)])  # before the first window: NaN rows, never counted
        fin = np.isfinite(zall)
        zz = np.where(fin, zall, 0.0)
        oo = fin.astype(np.float64)
        acc = np.zeros((m, p.n_lags))
        cnt = np.zeros((m, p.n_lags))
        for j in range(k):  # oldest first: the same additions, in the same order, however the rows were split
            acc += zz[j : j + m]
            cnt += oo[j : j + m]
        present = np.minimum(self._seen + 1 + np.arange(m), k)[:, None]  # windows in each pool so far
        with np.errstate(invalid="ignore", divide="ignore"):
            mz = np.where((cnt > 0) & (2 * cnt >= present), acc / cnt, np.nan)
        top, col = _profile_maximum(mz, p.lag)
        lag_s = np.where(col >= 0, (col - p.lag) / p.rate_hz, np.nan)
        self._z = zall[len(zall) - (k - 1) :].copy()
        self._seen += m
        return top, lag_s, leader(top, lag_s, p.leader_min_r)

    @property
    def state_nbytes(self) -> int:
        """Bytes of state held: the last ``leader_windows − 1`` z profiles."""
        return int(self._z.nbytes)


def pooled_leader(res: WccResult) -> dict[str, np.ndarray]:
    """``pooled_r``, ``pooled_lag_s``, ``pooled_leader`` of every window of ``res`` (:class:`LeaderPool`)."""
    return {name: getattr(res, name) for name in POOLED_VALUE_NAMES}


@dataclass(frozen=True)
class Leadership:
    """Session-level leadership: the rule of :func:`leader` at the resolution of the whole session.

    ``verdict`` / ``lag_s`` / ``max_r``: the rule applied to the session's mean profile (the mean over windows
    of Fisher z at each lag, back-transformed to r; a lag with more than half of its windows NaN is left out):
    ``"therapist"`` (lag > 0), ``"client"`` (lag < 0) or ``"none"`` (maximum below ``leader_min_r`` or at
    τ = 0) — :class:`LeaderPool` with every window of the session in the pool. ``therapist_share`` /
    ``client_share`` / ``none_share``: fractions of the windows with a finite ``pooled_leader`` (the rule at
    ``SyncParams.leader_span_s``) that name each side or none; ``n_windows``: their number.
    """

    verdict: str
    lag_s: float
    max_r: float
    therapist_share: float
    client_share: float
    none_share: float
    n_windows: int

    def as_dict(self) -> dict[str, float | str | int]:
        return dict(self.__dict__)


def session_leadership(res: WccResult) -> Leadership:
    """:class:`Leadership` of a session's windows (the rule of :func:`leader`, ``res.params.leader_min_r``)."""
    lv = np.asarray(res.pooled_leader, dtype=np.float64)
    fin = np.isfinite(lv)
    n = int(fin.sum())
    shares = [float(np.sum(sel) / n) if n else float("nan") for sel in (lv[fin] > 0, lv[fin] < 0, lv[fin] == 0)]
    z = fisher_z(res.r)
    ok = np.isfinite(z)
    cnt = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mz = np.where(ok, z, 0.0).sum(axis=0) / cnt
    mz = np.where(2 * cnt >= len(res), mz, np.nan) if len(res) else np.full(res.params.n_lags, np.nan)
    verdict, lag_s, top = "none", float("nan"), float("nan")
    if np.isfinite(mz).any():
        tops, cols = _profile_maximum(mz[None, :], res.params.lag)
        top = float(tops[0])
        lag_s = (int(cols[0]) - res.params.lag) / res.params.rate_hz
        call = float(leader(top, lag_s, res.params.leader_min_r))
        verdict = "therapist" if call > 0 else ("client" if call < 0 else "none")
    return Leadership(verdict, lag_s, top, shares[0], shares[1], shares[2], n)


class StreamingWcc:
    """Causal windowed cross-correlation: push samples of both series as they arrive, get finished windows.

    ``push(therapist_chunk, client_chunk)`` accepts chunks of any lengths (the two sides may arrive
    unevenly, e.g. from a partner unit) and returns ``[(window_start, values), ...]`` for every window
    completed by them, in order; ``values`` has the keys of :data:`WINDOW_VALUE_NAMES`. The numbers equal
    :func:`wcc` on the concatenated series, the pooled leadership values (:class:`LeaderPool`) included. Work per new sample is O(lags); state is bounded
    (:attr:`state_nbytes`) as long as both sides keep arriving — samples of one side are kept until the
    other side catches up, so a partner that is gone should be fed NaN rather than nothing. ``last_profiles``
    holds the r(τ) profiles of the windows returned by the last push. Window values may be NaN; a JSON
    encoder must map them (e.g. to null).
    """

    def __init__(self, params: SyncParams | None = None) -> None:
        self.params = params or SyncParams()
        if not isinstance(self.params, SyncParams):
            raise DspError(f"params must be a SyncParams, got {type(self.params).__name__}")
        p = self.params
        self._eng = _wcc.WccEngine(p.win, p.inc, p.lag, p.peak_window // 2, p.rate_hz, p.peak_min_r, p.leader_min_r)
        self._pool = LeaderPool(p)
        self.last_profiles = np.empty((0, p.n_lags))

    def push(self, therapist_chunk: object, client_chunk: object) -> list[tuple[int, dict[str, float]]]:
        t = _as_series(therapist_chunk, "therapist_chunk")
        c = _as_series(client_chunk, "client_chunk")
        starts, prof, vals = self._eng.push(t, c)
        self.last_profiles = prof
        if not len(starts):
            return []
        # the kernel's rows hold exactly the WINDOW_VALUE_NAMES values, one row per start; then the pooled ones
        pooled = np.column_stack(self._pool.push(prof)).tolist()
        return [
            (s, dict(zip(METRIC_VALUE_NAMES, row + pr)))  # noqa: B905
            for s, row, pr in zip(starts.tolist(), vals.tolist(), pooled)  # noqa: B905
        ]

    def reset(self) -> None:
        """Forget every sample; the next push starts a new session at sample index 0."""
        self._eng.reset()
        self._pool.reset()
        self.last_profiles = np.empty((0, self.params.n_lags))

    @property
    def n_samples(self) -> tuple[int, int]:
        """Samples received so far (therapist, client)."""
        return self._eng.n_samples

    @property
    def state_nbytes(self) -> int:
        """Bytes of state held (sample buffers at their capacity and per-lag co-moments: two blocks of samples
        plus the lags, or the largest chunk pushed if that was longer; the leader pool's last profiles)."""
        return int(self._eng.state_nbytes) + self._pool.state_nbytes
