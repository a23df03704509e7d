"""Session statistics of synchrony and regulation (ARCHITECTURE §4).

* :func:`session_summary`: mean and SD of the in-phase / anti-phase peak z and peak lag over a session's
  windows (Moulder et al. 2018), plus mean leading-side z.
* :func:`leadership_asymmetry`: per epoch of ``epoch_windows`` windows (default 10), mean therapist-led z
  minus mean client-led z (> 0: the therapist leads).
* :func:`single_session_index`: Marci et al. (2007): slopes of each series over ``slope_s`` (5 s), Pearson r of
  the slopes in running ``corr_s`` windows (15 s), ``SSI = ln(Σ r⁺ / |Σ r⁻|)``.
* :func:`surrogate_test` / :func:`surrogate_tests`: significance of session statistics against surrogates —
  mirrored circular shifts of the client series by at least 2·lag (default; calibrated in docs/dsp.md),
  plain circular shifts, segment shuffling of the client, or pseudo-dyads (the therapist with clients from
  other sessions) — with one-sided permutation p-values and effect sizes; several statistics share one
  pass per surrogate, and shifted surrogates share their cross sums (``_wcc.rotation_null``).
* :func:`ar1_inertia` and :func:`lagged_coupling`: intrapersonal inertia of RSA epochs and the interpersonal
  lagged coupling ``RSA_C(t) ~ RSA_C(t−1) + RSA_T(t−1)`` and its mirror (Goren et al. 2024), ordinary least
  squares with classical standard errors (plain numpy).

Signs are kept everywhere: nothing here takes an absolute value of a correlation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import _wcc
from ._sync_types import WINDOW_VALUE_NAMES, SyncParams, WccResult
from .errors import DspError
from .synchrony import _as_series, wcc

logger = logging.getLogger(__name__)

__all__ = [
    "CouplingResult",
    "LeadershipEpochs",
    "OlsResult",
    "SessionSummary",
    "SurrogateResult",
    "ar1_inertia",
    "default_threads",
    "lagged_coupling",
    "leadership_asymmetry",
    "ols",
    "session_statistic",
    "session_summary",
    "single_session_index",
    "surrogate_test",
    "surrogate_tests",
]


def _nan_mean_sd(x: np.ndarray) -> tuple[float, float, int]:
    f = x[np.isfinite(x)]
    if len(f) == 0:
        return float("nan"), float("nan"), 0
    sd = float(f.std(ddof=1)) if len(f) > 1 else float("nan")
    return float(f.mean()), sd, int(len(f))


@dataclass(frozen=True)
class SessionSummary:
    """Session-level synchrony (Moulder et al. 2018): mean/SD over windows with a peak, NaN windows skipped."""

    n_windows: int
    n_inphase: int
    n_antiphase: int
    inphase_z_mean: float
    inphase_z_sd: float
    inphase_lag_s_mean: float
    inphase_lag_s_sd: float
    antiphase_z_mean: float
    antiphase_z_sd: float
    antiphase_lag_s_mean: float
    antiphase_lag_s_sd: float
    r0_z_mean: float
    therapist_led_mean: float
    client_led_mean: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def session_summary(res: WccResult) -> SessionSummary:
    """Mean and SD of the peak z and peak lag (in-phase and anti-phase kept apart) over a session."""
    izm, izs, ni = _nan_mean_sd(res.inphase_z)
    ilm, ils, _ = _nan_mean_sd(res.inphase_lag_s)
    azm, azs, na = _nan_mean_sd(res.antiphase_z)
    alm, als, _ = _nan_mean_sd(res.antiphase_lag_s)
    r0z = np.arctanh(np.clip(res.r0, -0.999, 0.999))
    return SessionSummary(
        n_windows=len(res),
        n_inphase=ni,
        n_antiphase=na,
        inphase_z_mean=izm,
        inphase_z_sd=izs,
        inphase_lag_s_mean=ilm,
        inphase_lag_s_sd=ils,
        antiphase_z_mean=azm,
        antiphase_z_sd=azs,
        antiphase_lag_s_mean=alm,
        antiphase_lag_s_sd=als,
        r0_z_mean=_nan_mean_sd(r0z)[0],
        therapist_led_mean=_nan_mean_sd(res.therapist_led)[0],
        client_led_mean=_nan_mean_sd(res.client_led)[0],
    )


@dataclass(frozen=True)
class LeadershipEpochs:
    """Leadership per epoch: ``asymmetry = therapist_led − client_led`` (mean z; > 0 therapist leads)."""

    epoch_start: np.ndarray  # sample index of the first window of each epoch
    therapist_led: np.ndarray
    client_led: np.ndarray
    asymmetry: np.ndarray

    @property
    def session_asymmetry(self) -> float:
        """Mean asymmetry over epochs with a value (NaN if none)."""
        return _nan_mean_sd(self.asymmetry)[0]


def leadership_asymmetry(res: WccResult, epoch_windows: int = 10) -> LeadershipEpochs:
    """Leadership asymmetry over consecutive epochs of ``epoch_windows`` windows (the last partial epoch is
    dropped). An epoch with more than half of its windows NaN is NaN."""
    if not isinstance(epoch_windows, int) or epoch_windows < 1:
        raise DspError(f"epoch_windows must be a positive integer, got {epoch_windows!r}")
    n_ep = len(res) // epoch_windows
    m = n_ep * epoch_windows

    def ep_mean(x: np.ndarray) -> np.ndarray:
        e = x[:m].reshape(n_ep, epoch_windows)
        fin = np.isfinite(e)
        cnt = fin.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(fin, e, 0.0).sum(axis=1) / cnt
        return np.where(2 * cnt < epoch_windows, np.nan, mean)

    tl, cl = ep_mean(res.therapist_led), ep_mean(res.client_led)
    return LeadershipEpochs(
        epoch_start=res.window_start[:m:epoch_windows].copy(),
        therapist_led=tl,
        client_led=cl,
        asymmetry=tl - cl,
    )


def _slopes(x: np.ndarray, n: int, rate_hz: float) -> np.ndarray:
    """Average slope per second over each run of ``n`` samples: (x[i+n−1] − x[i]) / ((n−1)/rate)."""
    if len(x) < n:
        return np.empty(0)
    return (x[n - 1 :] - x[: len(x) - n + 1]) * (rate_hz / (n - 1))


def single_session_index(
    therapist: object,
    client: object,
    rate_hz: float = 4.0,
    slope_s: float = 5.0,
    corr_s: float = 15.0,
    inc_s: float = 1.0,
) -> float:
    """Single session index of Marci et al. (2007): ``ln(Σ r⁺ / |Σ r⁻|)`` of the Pearson r between the two
    partners' ``slope_s`` slopes in running ``corr_s`` windows stepped by ``inc_s``.

    > 0: more concordant than discordant time. NaN if there are no positive or no negative correlations.
    """
    t = _as_series(therapist, "therapist")
    c = _as_series(client, "client")
    if len(t) != len(c):
        raise DspError(f"therapist and client lengths differ: {len(t)} vs {len(c)} samples")
    n_slope = int(round(slope_s * rate_hz))
    if n_slope < 2:
        raise DspError(f"slope_s={slope_s} must span at least 2 samples at {rate_hz} Hz")
    p = SyncParams(rate_hz=rate_hz, win_s=corr_s, inc_s=inc_s, lag_s=0.0, peak_window=3)
    res = wcc(_slopes(t, n_slope, rate_hz), _slopes(c, n_slope, rate_hz), p)
    r = res.r0[np.isfinite(res.r0)]
    pos, neg = r[r > 0].sum(), r[r < 0].sum()
    if pos <= 0 or neg >= 0:
        return float("nan")
    return float(np.log(pos / abs(neg)))


_STATISTICS = ("inphase_z", "r0", "therapist_led", "client_led", "antiphase_z", "max_z")


def session_statistic(res: WccResult, statistic: str = "inphase_z") -> float:
    """A session's scalar for surrogate testing: the mean over windows of a per-window value.

    ``"inphase_z"``: mean in-phase peak z (Moulder et al. 2018); ``"r0"``: mean Fisher z of r at lag 0;
    ``"therapist_led"``/``"client_led"``: mean leading-side z; ``"antiphase_z"``: mean anti-phase peak z
    (negative: test with ``alternative="less"``); ``"max_z"``: mean z of each window's global maximum.
    """
    if statistic not in _STATISTICS:
        raise DspError(f"unknown statistic {statistic!r}; choose one of {_STATISTICS}")
    x = res.r0 if statistic == "r0" else getattr(res, statistic)
    if statistic == "r0":
        x = np.arctanh(np.clip(x, -0.999, 0.999))
    return _nan_mean_sd(x)[0]


def default_threads() -> int:
    """Threads for the surrogate loop: the CPUs this process may run on, at most 4 (``DYADSYNC_THREADS``
    overrides; ``dyadsync study`` sets 1 in its worker processes)."""
    env = os.environ.get("DYADSYNC_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            logger.warning("DYADSYNC_THREADS=%r is not an integer; using the CPU count", env)
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        ncpu = os.cpu_count() or 1
    return max(1, min(4, ncpu))


def _stand_in(x: np.ndarray) -> np.ndarray:
    """A copy of ``x`` with every non-finite value replaced by the last finite value before it (the first finite
    value for a missing start; 0.0 if none is finite): finite sums that the kernel corrects for the missing
    pairs (``_wcc.rotation_null``)."""
    ok = np.isfinite(x)
    if not ok.any():
        return np.zeros_like(x)
    idx = np.where(ok, np.arange(len(x)), 0)
    np.maximum.accumulate(idx, out=idx)
    z = x[idx]
    first = int(np.argmax(ok))
    z[:first] = x[first]
    return np.ascontiguousarray(z)


def _missing(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the non-finite samples of ``x`` and their running count (length len(x) + 1)."""
    bad = ~np.isfinite(x)
    return np.flatnonzero(bad).astype(np.intp), np.concatenate([[0], np.cumsum(bad)]).astype(np.intp)


def _circular_null(
    t: np.ndarray, c: np.ndarray, shifts: np.ndarray, params: SyncParams, statistics: Sequence[str],
    threads: int | None = None, exact: bool = False,
) -> np.ndarray:
    """:func:`session_statistic` of the WCC of ``t`` with ``np.roll(c, s)[:len(t)]`` for each shift
    (1 <= s < len(c); ``c`` is the client or the mirrored ring, at least as long as ``t``) and each statistic:
    an array (len(shifts), len(statistics)).

    Default: ``_wcc.rotation_null``, which shares the cross sums between shifts that lie close together on the
    ring (the shifts are sorted for it, the results put back in the caller's order) and computes only the
    window values the statistics use; ``exact=True``: ``_wcc.circular_null``, one complete batch WCC pass per
    shift (the reference the fast path is tested against; equal to rounding, 1e-9). Both release the GIL:
    ``threads`` (default :func:`default_threads`) threads each take a contiguous share of the (sorted)
    shifts; every shift's numbers are the same whatever the split."""
    cols = np.array([WINDOW_VALUE_NAMES.index(st) for st in statistics], dtype=np.int64)
    fisher = np.array([st == "r0" for st in statistics], dtype=np.uint8)
    p = params
    k = min(threads or default_threads(), max(1, len(shifts) // 16))
    if exact:
        def run(part: np.ndarray) -> np.ndarray:
            return _wcc.circular_null(
                t, c, part, p.win, p.inc, p.lag, p.peak_window // 2, p.rate_hz, cols, fisher, p.peak_min_r,
                p.leader_min_r,
            )
        parts = np.array_split(shifts, k)
    else:
        n, nr = len(t), len(c)
        ringx = np.concatenate([c, c[:n]])
        offsets = (nr - np.asarray(shifts, dtype=np.int64)).astype(np.int64)
        order = np.argsort(offsets, kind="stable")
        offsets = np.ascontiguousarray(offsets[order])
        empty_i, empty_d = np.empty(0, dtype=np.intp), np.empty(0)
        if np.isfinite(t).all() and np.isfinite(ringx).all():
            tq, ringz, mt, lt, pt, lc, pc = t, ringx, empty_d, empty_i, empty_i, empty_i, empty_i
        else:
            tq, ringz = _stand_in(t), _stand_in(ringx)
            mt = np.isfinite(t).astype(np.float64)
            lt, pt = _missing(t)
            lc, pc = _missing(ringx)

        def run(part: np.ndarray) -> np.ndarray:
            null, n_exact = _wcc.rotation_null(
                t, tq, ringx, ringz, nr, part, p.win, p.inc, p.lag, p.peak_window // 2, p.rate_hz, cols, fisher,
                p.peak_min_r, p.leader_min_r, mt, lt, pt, lc, pc,
            )
            if n_exact:
                logger.debug("%d of %d rotations recomputed exactly (peak decisions within the margin)",
                             n_exact, len(part))
            return null
        parts = np.array_split(offsets, k)
    if k <= 1:
        out = run(parts[0])
    else:
        with ThreadPoolExecutor(max_workers=k, thread_name_prefix="surrogates") as pool:
            out = np.vstack(list(pool.map(run, parts)))
    if exact:
        return out
    res = np.empty_like(out)
    res[order] = out
    return res


@dataclass(frozen=True)
class SurrogateResult:
    """Outcome of a surrogate test.

    ``effect_size`` = (observed − null_mean) / null_sd, the observed value in SDs of the null.
    ``p_value``: for ``method="mirror"`` the studentized rotation p-value (:func:`surrogate_tests`), with
    ``null_mean``/``null_sd`` over the rotations more than 2·lag from the observed one; otherwise
    (1 + #{null ≥ observed}) / (1 + n_valid) (``alternative="greater"``; ≤ for "less").
    ``null``: the statistic of every surrogate (for "mirror": rotations 1 … n in ring order).
    """

    p_value: float
    effect_size: float
    observed: float
    null_mean: float
    null_sd: float
    n: int
    method: str
    statistic: str
    null: np.ndarray


def _segments(c: np.ndarray, rng: np.random.Generator, seg: int) -> np.ndarray:
    n_seg = -(-len(c) // seg)
    order = rng.permutation(n_seg)
    while n_seg > 1 and np.all(order == np.arange(n_seg)):
        order = rng.permutation(n_seg)
    return np.concatenate([c[k * seg : (k + 1) * seg] for k in order])


SURROGATE_METHODS = ("mirror", "circular", "segment", "pseudo")


def _draw_shifts(rng: np.random.Generator, n_shifts: int, ring: int, min_shift: int) -> np.ndarray:
    return np.array(
        [int(rng.integers(min_shift, ring - min_shift + 1)) for _ in range(n_shifts)], dtype=np.int64
    )


def surrogate_tests(
    therapist: object,
    client: object,
    params: SyncParams | None = None,
    tests: Sequence[tuple[str, str]] = (("inphase_z", "greater"),),
    n: int = 1000,
    method: str = "mirror",
    seed: int | np.random.Generator | None = None,
    partners: Sequence[object] | None = None,
    segment_s: float | None = None,
    threads: int | None = None,
    _exact: bool = False,
) -> dict[str, SurrogateResult]:
    """Several session statistics tested against the SAME ``n`` surrogate dyads, each surrogate's WCC computed
    once: ``tests`` is a sequence of ``(statistic, alternative)``; returns ``{statistic: SurrogateResult}``.

    Every result equals :func:`surrogate_test` of that statistic with the same ``seed`` (the draw does not
    depend on the statistics asked for). ``method``:

    * ``"mirror"`` (default; calibrated in docs/dsp.md "Calibration"): a studentized rotation test on a
      mirrored ring. The client series followed by its time reversal makes a ring of 2·len samples without a
      jump (the even extension of the discrete cosine transform; Gaussian linear processes are
      time-reversible, Weiss 1975). The statistic is computed for ``n + 1`` rotations evenly spaced around
      the ring, rotation 0 being the observed pair. Each rotation j gets a score
      ``z_j = (T_j − mean) / SD`` against the rotations more than 2·lag away from it (its own neighbours,
      which share its alignments, are left out); the p-value is the share of rotations whose score is at
      least the observed one's, ``#{j: z_j ≥ z_0} / (n + 1)``, so the observed pair is ranked exactly as
      every rotation is (a randomization test over the rotation group). No random draw: ``seed`` is unused.
      Why not the classic scheme: (1) a plain circular shift joins the series' end to its start, and for
      strongly autocorrelated series (EDA, HR) that jump sits inside many windows of every surrogate and
      never in the observed pair; (2) comparing the observed value only with shifts of at least 2·lag leaves
      out exactly its own neighbours, which resemble it — when the observed value is high by chance its
      neighbours are high too and are removed from the comparison. With few independent shifts (short,
      slow series) both make the test reject far too often under the null.
    * ``"circular"``: the classic scheme: the client circularly shifted by a random [2·lag, len − 2·lag]
      samples, p = (1 + #{null ≥ observed}) / (1 + n) (anti-conservative for short or strongly
      autocorrelated series; kept for comparison).
    * ``"segment"``: the client cut into segments of ``segment_s`` (default: the window length) and shuffled.
    * ``"pseudo"``: the therapist paired with client series of other sessions (``partners``, drawn with
      replacement, cut or used from a random offset when longer).

    ``threads``: threads of the compiled surrogate loop ("mirror" and "circular"; default
    :func:`default_threads`); the numbers do not depend on it.

    Cost ("mirror" and "circular"): rotations close together on the ring share their cross sums, and each
    surrogate computes only the window values its statistics use (``_wcc.rotation_null``; docs/dsp.md
    "Reports, surrogates and studies"); the statistics equal one exact WCC pass per surrogate to rounding
    (1e-9; ``_exact=True`` runs that reference path, kept for tests and the benchmark).
    """
    params = params or SyncParams()
    t = _as_series(therapist, "therapist")
    c = _as_series(client, "client")
    if len(t) != len(c):
        raise DspError(f"therapist and client lengths differ: {len(t)} vs {len(c)} samples")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise DspError(f"n must be a positive integer, got {n!r}")
    tests = tuple(tests)
    if not tests:
        raise DspError("tests must name at least one (statistic, alternative)")
    for stat, alt in tests:
        if stat not in _STATISTICS:
            raise DspError(f"unknown statistic {stat!r}; choose one of {_STATISTICS}")
        if alt not in ("greater", "less"):
            raise DspError(f"alternative must be 'greater' or 'less', got {alt!r}")
    if params.n_windows(len(t)) == 0:
        raise DspError(f"series of {len(t)} samples hold no complete window for {params}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    stats = tuple(stat for stat, _ in tests)
    res = wcc(t, c, params)
    observed = [session_statistic(res, stat) for stat in stats]
    min_shift = max(2 * params.lag, 1)
    seg = params.win if segment_s is None else int(round(segment_s * params.rate_hz))
    pool: list[np.ndarray] = []
    if method in ("circular", "mirror"):
        if len(c) < 2 * min_shift + 1:
            raise DspError(
                f"series of {len(c)} samples too short for circular shifts of >= {min_shift} samples"
            )
    elif method == "segment":
        if seg < 1 or len(c) < 2 * seg:
            raise DspError(f"segment of {seg} samples needs a series of at least {2 * seg} samples")
    elif method == "pseudo":
        if not partners:
            raise DspError("method='pseudo' needs partners: client series from other sessions")
        pool = [_as_series(p, f"partners[{i}]") for i, p in enumerate(partners)]
        for i, p in enumerate(pool):
            if params.n_windows(min(len(p), len(t))) == 0:
                raise DspError(f"partners[{i}] ({len(p)} samples) holds no complete window")
    else:
        raise DspError(f"unknown surrogate method {method!r}; choose one of {SURROGATE_METHODS}")
    if method == "mirror":
        ring = np.concatenate([c, c[::-1]])
        n_rot = min(n + 1, len(ring))
        rot = np.unique(np.round(np.arange(n_rot) * (len(ring) / n_rot)).astype(np.int64))
        values = np.vstack([np.array(observed)[None, :],
                            _circular_null(t, ring, rot[1:], params, stats, threads, _exact)])
        return {
            stat: _rotation_result(values[:, q], rot, len(ring), min_shift, alt, method, stat)
            for q, (stat, alt) in enumerate(tests)
        }
    if method == "circular":
        # shifts drawn in order, then every surrogate in the kernel without the GIL, one WCC pass per shift
        shifts = _draw_shifts(rng, n, len(c), min_shift)
        null = _circular_null(t, c, shifts, params, stats, threads, _exact)
    else:
        null = np.empty((n, len(stats)))
    for k in range(n if method not in ("circular", "mirror") else 0):
        tt = t
        if method == "segment":
            cs = _segments(c, rng, seg)
        else:
            p = pool[int(rng.integers(len(pool)))]
            if len(p) >= len(t):
                off = int(rng.integers(0, len(p) - len(t) + 1))
                cs = p[off : off + len(t)]
            else:
                cs, tt = p, t[: len(p)]
        r = wcc(tt, cs, params)
        null[k] = [session_statistic(r, stat) for stat in stats]
    return {
        stat: _result(observed[q], np.ascontiguousarray(null[:, q]), alt, n, method, stat)
        for q, (stat, alt) in enumerate(tests)
    }


def _far_moments(values: np.ndarray, fin: np.ndarray, rot: np.ndarray, ring: int,
                 min_shift: int) -> tuple[np.ndarray, np.ndarray]:
    """For each rotation j, the mean and variance (ddof 1) of the finite ``values`` at rotations more than
    ``min_shift`` samples from it around the ring. O(m·w) for m rotations with w neighbours each side: the sums
    over every finite value, corrected by the few near rotations — two-pass (about the overall mean), so no
    E[x²] − E[x]² cancellation; variances clamped at 0, NaN below 2 values."""
    m = len(values)
    v = np.where(fin, values, 0.0)
    gaps = np.diff(np.append(rot, rot[0] + ring))
    w = int(min_shift // max(int(gaps.min()), 1)) + 1
    if 2 * w + 1 >= m:  # few rotations: every pair directly
        d = np.abs(rot[:, None] - rot[None, :])
        far = (np.minimum(d, ring - d) > min_shift) & fin[None, :]
        cnt = far.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mu = (far * v[None, :]).sum(axis=1) / cnt
            var = (far * (v[None, :] - mu[:, None]) ** 2).sum(axis=1) / (cnt - 1)
        return mu, var
    n_all = int(fin.sum())
    mbar = v.sum() / n_all
    ss = float(np.sum(np.where(fin, values - mbar, 0.0) ** 2))
    # near[j, o]: rotation (j + o − w) mod m lies within min_shift of rotation j (j itself included)
    idx = (np.arange(m)[:, None] + np.arange(-w, w + 1)[None, :]) % m
    d = np.abs(rot[idx] - rot[:, None])
    near = (np.minimum(d, ring - d) <= min_shift) & fin[idx]
    cnt = n_all - near.sum(axis=1)
    vn = np.where(near, v[idx], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = (v.sum() - vn.sum(axis=1)) / cnt
        dn = np.where(near, v[idx] - mu[:, None], 0.0)
        far_ss = ss + n_all * (mbar - mu) ** 2 - np.sum(dn * dn, axis=1)
        var = np.where(cnt > 1, np.maximum(far_ss, 0.0) / (cnt - 1), np.nan)
    return mu, var


def _rotation_result(values: np.ndarray, rot: np.ndarray, ring: int, min_shift: int, alternative: str,
                     method: str, statistic: str) -> SurrogateResult:
    """The studentized rotation test of ``surrogate_tests(method="mirror")``: ``values[j]`` is the statistic at
    rotation ``rot[j]`` of a ring of ``ring`` samples (``rot[0] == 0``: the observed pair)."""
    observed = float(values[0])
    null = np.ascontiguousarray(values[1:])
    m = len(values)
    fin = np.isfinite(values)
    if not fin[0] or fin.sum() < 3:
        logger.warning("surrogate test without a finite observed value or null (observed=%s)", observed)
        return SurrogateResult(float("nan"), float("nan"), observed, float("nan"), float("nan"), m - 1, method,
                               statistic, null)
    mu, var = _far_moments(values, fin, rot, ring, min_shift)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (values - mu) / np.sqrt(var)
    if alternative == "less":
        z = -z
    ok = np.isfinite(z)
    if not ok[0]:
        return SurrogateResult(float("nan"), float("nan"), observed, float(mu[0]), float("nan"), m - 1, method,
                               statistic, null)
    p = float(np.sum(z[ok] >= z[0]) / ok.sum())
    z0 = float(z[0]) if alternative == "greater" else float(-z[0])
    return SurrogateResult(
        p_value=p, effect_size=z0, observed=observed, null_mean=float(mu[0]), null_sd=float(np.sqrt(var[0])),
        n=m - 1, method=method, statistic=statistic, null=null,
    )


def _result(observed: float, null: np.ndarray, alternative: str, n: int, method: str, statistic: str) -> SurrogateResult:
    valid = null[np.isfinite(null)]
    if len(valid) == 0 or not np.isfinite(observed):
        logger.warning("surrogate test without a finite observed value or null (observed=%s)", observed)
        return SurrogateResult(
            float("nan"), float("nan"), observed, float("nan"), float("nan"), n, method, statistic, null
        )
    hits = np.sum(valid >= observed) if alternative == "greater" else np.sum(valid <= observed)
    mu = float(valid.mean())
    sd = float(valid.std(ddof=1)) if len(valid) > 1 else float("nan")
    eff = (observed - mu) / sd if sd > 0 else float("nan")
    return SurrogateResult(
        p_value=float((1 + hits) / (1 + len(valid))),
        effect_size=float(eff),
        observed=float(observed),
        null_mean=mu,
        null_sd=sd,
        n=n,
        method=method,
        statistic=statistic,
        null=null,
    )


def surrogate_test(
    therapist: object,
    client: object,
    params: SyncParams | None = None,
    n: int = 1000,
    method: str = "mirror",
    seed: int | np.random.Generator | None = None,
    statistic: str = "inphase_z",
    alternative: str = "greater",
    partners: Sequence[object] | None = None,
    segment_s: float | None = None,
    threads: int | None = None,
) -> SurrogateResult:
    """Test a dyad's session statistic against ``n`` surrogate dyads that keep each series' own dynamics
    (methods and their calibration: :func:`surrogate_tests`). ``seed`` makes the draw reproducible."""
    if statistic not in _STATISTICS:
        raise DspError(f"unknown statistic {statistic!r}; choose one of {_STATISTICS}")
    return surrogate_tests(
        therapist, client, params, ((statistic, alternative),), n=n, method=method, seed=seed,
        partners=partners, segment_s=segment_s, threads=threads,
    )[statistic]


@dataclass(frozen=True)
class OlsResult:
    """Ordinary least squares fit: coefficients with classical standard errors, t values and n."""

    names: tuple[str, ...]
    coef: np.ndarray
    se: np.ndarray
    n: int
    resid_sd: float

    @property
    def t(self) -> np.ndarray:
        return self.coef / self.se

    def __getitem__(self, name: str) -> tuple[float, float]:
        """``(coefficient, standard error)`` of a named term."""
        i = self.names.index(name)
        return float(self.coef[i]), float(self.se[i])


def ols(y: np.ndarray, x: np.ndarray, names: Sequence[str]) -> OlsResult:
    """OLS of ``y`` on the columns of ``x`` (include a column of ones for an intercept); rows with a NaN are
    dropped. Standard errors from σ̂²(XᵀX)⁻¹ with σ̂² = RSS / (n − p)."""
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 1 or len(y) != x.shape[0] or x.shape[1] != len(names):
        raise DspError(f"ols: shapes y {y.shape}, x {x.shape} and {len(names)} names do not match")
    ok = np.isfinite(y) & np.all(np.isfinite(x), axis=1)
    y, x = y[ok], x[ok]
    n, p = x.shape
    if n <= p:
        raise DspError(f"ols: {n} complete rows are too few for {p} coefficients")
    q, r = np.linalg.qr(x)
    if np.min(np.abs(np.diag(r))) <= 1e-12 * np.max(np.abs(np.diag(r))):
        raise DspError("ols: the regressors are collinear (e.g. a constant series)")
    beta = np.linalg.solve(r, q.T @ y)
    resid = y - x @ beta
    s2 = float(resid @ resid) / (n - p)
    rinv = np.linalg.inv(r)
    se = np.sqrt(s2 * np.sum(rinv * rinv, axis=1))
    return OlsResult(tuple(names), beta, se, n, float(np.sqrt(s2)))


def ar1_inertia(epochs: object) -> OlsResult:
    """Intrapersonal regulation: AR(1) inertia of one person's RSA epochs, ``y(t) = a + b·y(t−1)``.

    Terms ``"intercept"`` and ``"inertia"`` (= b). NaN epochs drop the pairs that touch them.
    """
    y = _as_series(epochs, "epochs")
    if len(y) < 4:
        raise DspError(f"ar1_inertia needs at least 4 epochs, got {len(y)}")
    x = np.column_stack([np.ones(len(y) - 1), y[:-1]])
    return ols(y[1:], x, ("intercept", "inertia"))


@dataclass(frozen=True)
class CouplingResult:
    """Lagged coupling of two people's epoch series.

    ``client``: RSA_C(t) ~ 1 + RSA_C(t−1) + RSA_T(t−1), terms ``intercept``, ``self`` (C→C inertia),
    ``partner`` (T→C). ``therapist``: the mirror, RSA_T(t) ~ 1 + RSA_T(t−1) + RSA_C(t−1).
    """

    client: OlsResult
    therapist: OlsResult


def lagged_coupling(client_epochs: object, therapist_epochs: object) -> CouplingResult:
    """Interpersonal regulation (Goren et al. 2024): each person's epoch value on their own and the partner's
    previous epoch, with standard errors."""
    c = _as_series(client_epochs, "client_epochs")
    t = _as_series(therapist_epochs, "therapist_epochs")
    if len(c) != len(t):
        raise DspError(f"client and therapist epoch counts differ: {len(c)} vs {len(t)}")
    if len(c) < 5:
        raise DspError(f"lagged_coupling needs at least 5 epochs, got {len(c)}")
    one = np.ones(len(c) - 1)
    names = ("intercept", "self", "partner")
    return CouplingResult(
        client=ols(c[1:], np.column_stack([one, c[:-1], t[:-1]]), names),
        therapist=ols(t[1:], np.column_stack([one, t[:-1], c[:-1]]), names),
    )
