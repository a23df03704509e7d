"""Analysis of one session: synchrony per channel, session indices with surrogate tests, HRV per person.

Synchrony (ARCHITECTURE §4) is recomputed from the stored 4 Hz feature streams with
:func:`dsp_ext.synchrony.wcc` — the same kernel the unit streams with — so that the lag × time map (the
r(τ) profiles, which the live metrics do not carry) is available; with the unit's parameters the per-window
numbers equal the live ``sync_<signal>`` metrics, and :class:`LiveCheck` says how closely (compared window
by window on ``window_start_ns``). Session indices come from :mod:`dsp_ext.stats`.

RSA and RMSSD per 30-s epoch and person (Porges & Bohrer 1990) come from :mod:`dsp_ext.hrv`: from the
raw PPG through :mod:`dsp_ext.ppg` when the raw stream is stored, else RSA from the 4 Hz heart-rate
feature (IBI = 60000 / HR) and RMSSD from the unit's live ``regulation`` metric when present.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from core.vocab import GRID_NS, ROLES
from dsp_ext.stats import (
    CouplingResult,
    LeadershipEpochs,
    OlsResult,
    SessionSummary,
    SurrogateResult,
    ar1_inertia,
    lagged_coupling,
    leadership_asymmetry,
    session_summary,
    single_session_index,
    surrogate_tests,
)
from dsp_ext.synchrony import (
    METRIC_VALUE_NAMES,
    POOLED_VALUE_NAMES,
    WINDOW_VALUE_NAMES,
    Leadership,
    SyncParams,
    WccResult,
    session_leadership,
    wcc,
)

from .source import IncompleteSession, SessionData, aligned_features, aligned_lost

logger = logging.getLogger(__name__)

SIGNALS = ("eda", "hr")
#: (statistic, alternative) tested against surrogates for every channel.
SURROGATE_STATS = (("inphase_z", "greater"), ("therapist_led", "greater"), ("client_led", "greater"),
                   ("antiphase_z", "less"))
EPOCH_S = 30.0


@dataclass
class LiveCheck:
    """Recomputed windows against the metrics the unit published live for the same session."""

    metric: str
    n_live: int
    n_compared: int
    max_abs_diff: float
    comparable: bool
    note: str


@dataclass
class ChannelSync:
    signal: str
    t0_ns: int
    therapist: np.ndarray
    client: np.ndarray
    res: WccResult
    summary: SessionSummary
    leadership: LeadershipEpochs
    ssi: float
    surrogates: dict[str, SurrogateResult]
    live: LiveCheck | None
    lead: Leadership | None = None  # who leads: dsp_ext.synchrony's one rule, on the session's mean profile

    @property
    def window_t_ns(self) -> np.ndarray:
        """UTC of each window's first therapist sample."""
        return self.t0_ns + self.res.window_start * GRID_NS


@dataclass
class PersonHrv:
    role: str
    epoch_t_ns: np.ndarray
    rsa_ln_ms2: np.ndarray
    rmssd_ms: np.ndarray
    source: str
    inertia: OlsResult | None = None


@dataclass
class SessionAnalysis:
    data: SessionData
    params: SyncParams
    channels: dict[str, ChannelSync]
    hrv: dict[str, PersonHrv]
    coupling: CouplingResult | None
    notes: list[str] = field(default_factory=list)
    n_surrogates: int = 0
    artefacts: dict[str, dict[str, int]] = field(default_factory=dict)

    def index_rows(self) -> list[dict]:
        """The session-index table: one row per (channel, index) with value, p-value and effect size."""
        rows: list[dict] = []

        def add(channel: str, name: str, value: float, p: float = math.nan, eff: float = math.nan,
                note: str = "") -> None:
            rows.append({"channel": channel, "index": name, "value": value if isinstance(value, int) else float(value), "p_value": float(p),
                         "effect_size": float(eff), "note": note})

        for sig, ch in self.channels.items():
            s = ch.summary
            sur = ch.surrogates
            add(sig, "windows", s.n_windows)
            add(sig, "in-phase peak z, mean", s.inphase_z_mean, *_pe(sur.get("inphase_z")),
                note=f"SD {s.inphase_z_sd:.3f}, {s.n_inphase} windows with a peak")
            add(sig, "in-phase peak lag (s), mean", s.inphase_lag_s_mean, note=f"SD {s.inphase_lag_s_sd:.2f} s")
            add(sig, "anti-phase peak z, mean", s.antiphase_z_mean, *_pe(sur.get("antiphase_z")),
                note=f"SD {s.antiphase_z_sd:.3f}, {s.n_antiphase} windows; tested for < null")
            add(sig, "anti-phase peak lag (s), mean", s.antiphase_lag_s_mean, note=f"SD {s.antiphase_lag_s_sd:.2f} s")
            add(sig, "therapist-led z, mean", s.therapist_led_mean, *_pe(sur.get("therapist_led")))
            add(sig, "client-led z, mean", s.client_led_mean, *_pe(sur.get("client_led")))
            add(sig, "leadership asymmetry (T−C z)", ch.leadership.session_asymmetry,
                note=f"{len(ch.leadership.asymmetry)} epochs of 10 windows")
            if ch.lead is not None:
                ld = ch.lead
                add(sig, "leader lag (s; > 0 therapist leads)", ld.lag_s,
                    note=f"leader: {ld.verdict} (global maximum of the mean profile, r {ld.max_r:.2f}); windows "
                         f"T {ld.therapist_share:.0%} / C {ld.client_share:.0%} / none {ld.none_share:.0%} "
                         f"(each window's leader over the last {ch.res.params.leader_span_s:g} s of windows)")
            add(sig, "zero-lag z, mean", s.r0_z_mean)
            add(sig, "single session index (Marci 2007)", ch.ssi)
        for role, h in self.hrv.items():
            fin = h.rsa_ln_ms2[np.isfinite(h.rsa_ln_ms2)]
            add(role, "RSA (ln ms²), mean", fin.mean() if len(fin) else math.nan,
                note=f"SD {fin.std(ddof=1) if len(fin) > 1 else math.nan:.3f} over {len(fin)} epochs; {h.source}")
            rm = h.rmssd_ms[np.isfinite(h.rmssd_ms)]
            add(role, "RMSSD (ms), mean", rm.mean() if len(rm) else math.nan)
            if h.inertia is not None:
                b, se = h.inertia["inertia"]
                add(role, "RSA inertia AR(1)", b, note=f"SE {se:.3f}")
        if self.coupling is not None:
            for who, fit in (("client", self.coupling.client), ("therapist", self.coupling.therapist)):
                for term, label in (("self", "self"), ("partner", "partner")):
                    b, se = fit[term]
                    src = who if term == "self" else ("therapist" if who == "client" else "client")
                    add("coupling", f"RSA {src}(t−1) → {who}(t) [{label}]", b, note=f"SE {se:.3f}, n {fit.n}")
        return rows


def _pe(s: SurrogateResult | None) -> tuple[float, float]:
    return (s.p_value, s.effect_size) if s is not None else (math.nan, math.nan)


def live_check(data: SessionData, signal: str, t0_ns: int, res: WccResult, same_params: bool,
               lost: np.ndarray | None = None) -> LiveCheck | None:
    """Compare recomputed windows with the unit's live ``sync_<signal>`` metrics (matched on window start).

    Windows that touch a sample lost between the unit and the hub (``lost``) are not compared: the unit saw
    data the store does not hold. They are counted in the note."""
    name = f"sync_{signal}"
    rows = data.metrics.get(name, [])
    if not rows:
        return None
    if not same_params:
        return LiveCheck(name, len(rows), 0, math.nan, False,
                         "not compared: synchrony recomputed with parameters other than the unit's")
    p = res.params
    ns_per = 1e9 / p.rate_hz
    index = {int(s): i for i, s in enumerate(res.window_start)}
    worst, n = 0.0, 0
    unmatched = touched = 0
    for m in rows:
        pos = (m.window_start_ns - t0_ns) / ns_per
        i = index.get(int(round(pos))) if abs(pos - round(pos)) < 1e-6 else None
        if i is None:
            unmatched += 1
            continue
        s0 = int(res.window_start[i])
        if lost is not None and lost[max(s0 - p.lag, 0) : s0 + p.win + p.lag].any():
            touched += 1
            continue
        n += 1
        # the pooled leadership values also depend on the leader_windows - 1 windows before this one
        pool0 = max(s0 - (p.leader_windows - 1) * p.inc - p.lag, 0)
        pooled_ok = lost is None or not lost[pool0 : s0 + p.win + p.lag].any()
        for key in METRIC_VALUE_NAMES if pooled_ok else WINDOW_VALUE_NAMES:
            if key in POOLED_VALUE_NAMES and key not in m.values:
                continue  # a unit from before the pooled values (wire contract v1 is additive)
            a, b = m.values.get(key, math.nan), float(getattr(res, key)[i])
            if math.isnan(a) and math.isnan(b):
                continue
            worst = max(worst, abs(a - b) if not (math.isnan(a) or math.isnan(b)) else math.inf)
    note = f"{n} of {len(rows)} live windows compared"
    if touched:
        note += f"; {touched} windows touch samples lost in transit and cannot be reproduced"
    if unmatched:
        note += f"; {unmatched} live windows have no recomputed window (lost feature samples at the ends?)"
    return LiveCheck(name, len(rows), n, worst if n else math.nan, True, note)


def _infer_live_params(data: SessionData, signal: str, default: SyncParams) -> SyncParams:
    """The unit's window length and step from its live metrics (lag is not carried: the default is assumed)."""
    rows = data.metrics.get(f"sync_{signal}", [])
    if len(rows) < 2:
        return default
    win_s = (rows[0].window_end_ns - rows[0].window_start_ns) / 1e9
    steps = [(b.window_start_ns - a.window_start_ns) / (b.seq - a.seq) / 1e9
             for a, b in zip(rows, rows[1:], strict=False) if b.seq > a.seq]
    inc_s = float(np.median(steps)) if steps else default.inc_s
    try:
        return SyncParams(rate_hz=default.rate_hz, win_s=round(win_s * 4) / 4, inc_s=round(inc_s * 4) / 4,
                          lag_s=default.lag_s, peak_window=default.peak_window)
    except ValueError:
        return default


def _held(vals: np.ndarray) -> np.ndarray:
    """Lost samples replaced by the last value before them (the session mean at the very start)."""
    bad = ~np.isfinite(vals)
    if not bad.any():
        return vals
    idx = np.where(~bad, np.arange(len(vals)), 0)
    np.maximum.accumulate(idx, out=idx)
    filled = vals[idx]
    filled[~np.isfinite(filled)] = np.nanmean(vals) if (~bad).any() else 0.0
    return filled


def _ppg_features(data: SessionData, role: str, cache: dict | None):
    """:func:`dsp_ext.ppg.ppg_features` of the person's raw PPG (lost samples held), or None without one;
    ``cache`` (one analysis's dict) keeps it for the next caller: the artefact count and the HRV epochs use the
    same beats, and a 50-min PPG at 100 Hz takes about 0.3 s of CPU."""
    raw = data.raw(f"{role}/ppg")
    if raw is None or not np.isfinite(raw.values).any():
        return None
    if cache is not None and role in cache:
        return cache[role]
    from dsp_ext import ppg

    feats = ppg.ppg_features(_held(raw.values), raw.rate_hz)
    if cache is not None:
        cache[role] = feats
    return feats


def artefacts(data: SessionData, ppg_cache: dict | None = None) -> dict[str, dict[str, int]]:
    """Per person: artefacts the DSP finds in the raw signals.

    PPG (:mod:`dsp_ext.ppg`, Lipponen & Tarvainen 2019 correction): beats, beats flagged by the beat-quality
    index (:mod:`dsp_ext.sqi`, template correlation after Orphanidou et al. 2015), intervals outside
    300–2000 ms, and corrected beats by kind (ectopic, long, short, missed, extra). EDA (:mod:`dsp_ext.eda`): raw samples
    judged invalid (out of range, too steep, contact lost per the block flags, lost) and invalid 4 Hz bins."""
    from core.vocab import BlockFlags

    out: dict[str, dict[str, int]] = {}
    for role in ROLES:
        a: dict[str, int] = {}
        f = _ppg_features(data, role, ppg_cache)
        if f is not None:
            from dsp_ext import ppg

            a["beats"] = int(len(f.beat_s))
            # beats the beat-quality index (template correlation, dsp_ext.sqi) flagged: out of HR, RMSSD and RSA
            a["beats_low_quality"] = int(np.sum(~np.asarray(f.sqi_ok, dtype=bool)))
            a["ibi_out_of_range"] = int(np.sum(~f.ibi_valid))
            for code, name in ppg.KIND_NAMES.items():
                if code != ppg.NORMAL:
                    a[f"beats_{name}"] = int(np.sum(f.ibi_kind == code))
        eda_raw = data.raw(f"{role}/eda")
        if eda_raw is not None:
            try:
                from dsp_ext import eda
            except ImportError:
                eda = None  # type: ignore[assignment]
            if eda is not None:
                contact_ok = ((eda_raw.flags & BlockFlags.CONTACT_LOST) == 0) & ~eda_raw.lost
                f = eda.eda_features(eda_raw.values, eda_raw.rate_hz, contact=contact_ok)
                a["eda_invalid_raw"] = int(f.n_invalid_raw)
                a["eda_invalid_bins"] = int(np.sum(~np.asarray(f.valid, dtype=bool)))
        if a:
            out[role] = a
    return out


def _hrv_from_raw(data: SessionData, role: str, ppg_cache: dict | None = None) -> PersonHrv | None:
    # lost samples: hold the last value so the filter does not see NaN (beats there are rejected as artefacts)
    feats = _ppg_features(data, role, ppg_cache)
    if feats is None:
        return None
    from dsp_ext import hrv

    raw = data.raw(f"{role}/ppg")
    epochs = hrv.hrv_epochs(feats, epoch_s=EPOCH_S)
    t = raw.t0_ns + np.array([int(e.start_s * 1e9) for e in epochs], dtype=np.int64)
    return PersonHrv(role, t, np.array([e.rsa_ln_ms2 for e in epochs]), np.array([e.rmssd_ms for e in epochs]),
                     "raw PPG via dsp_ext.ppg and dsp_ext.hrv")


def _hrv_from_hr(data: SessionData, role: str) -> PersonHrv | None:
    hr = data.feature(f"{role}/hr")
    if hr is None:
        return None
    from dsp_ext import hrv

    with np.errstate(divide="ignore", invalid="ignore"):
        ibi = np.where(hr.values > 0, 60000.0 / hr.values, np.nan)
    k = np.arange(len(ibi), dtype=np.int64)
    stream = hrv.HrvStream(epoch_s=EPOCH_S)
    empty = np.empty(0)
    epochs = stream.push(empty, empty, np.empty(0, dtype=bool), k, ibi)
    t = hr.t0_ns + np.array([int(e.start_s * 1e9) for e in epochs], dtype=np.int64)
    rmssd = np.full(len(epochs), np.nan)
    live = data.metrics.get("regulation", [])
    if live:
        by_start = {m.window_start_ns: m.values.get(f"{role}_rmssd_ms", math.nan) for m in live}
        rmssd = np.array([by_start.get(int(tt), math.nan) for tt in t])
    return PersonHrv(role, t, np.array([e.rsa_ln_ms2 for e in epochs]), rmssd,
                     "4 Hz heart rate via dsp_ext.hrv" + ("; RMSSD from the unit's live metric" if live else ""))


def person_hrv(data: SessionData, role: str, notes: list[str], ppg_cache: dict | None = None) -> PersonHrv | None:
    try:
        import dsp_ext.hrv  # noqa: F401
    except ImportError as exc:
        msg = f"RSA not available: dsp_ext.hrv is not installed ({exc})"
        if msg not in notes:
            notes.append(msg)
        return None
    h = _hrv_from_raw(data, role, ppg_cache) or _hrv_from_hr(data, role)
    if h is None:
        notes.append(f"RSA not available for the {role}: no PPG or heart-rate stream stored")
        return None
    if len(h.rsa_ln_ms2) >= 4 and np.isfinite(h.rsa_ln_ms2).sum() >= 4:
        try:
            h.inertia = ar1_inertia(h.rsa_ln_ms2)
        except ValueError as exc:
            notes.append(f"RSA inertia of the {role} not estimated: {exc}")
    return h


def analyse_session(
    data: SessionData,
    params: SyncParams | None = None,
    *,
    n_surrogates: int = 1000,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> SessionAnalysis:
    """Synchrony of every channel with both people's features, its session indices and surrogate tests,
    and each person's RSA/RMSSD epochs with inertia and lagged coupling.

    ``params=None`` uses the unit's parameters (window and step read from the live metrics, defaults
    otherwise) and then checks the recomputed windows against the live ones. ``progress`` is called with a
    label after every step (the CLI advances a progress bar with it)."""
    step = progress or (lambda label: None)
    notes: list[str] = []
    channels: dict[str, ChannelSync] = {}
    for sig in SIGNALS:
        try:
            t0, t, c = aligned_features(data, sig)
        except IncompleteSession as exc:
            notes.append(str(exc))
            step(f"{sig}: skipped")
            continue
        p = params if params is not None else _infer_live_params(data, sig, SyncParams())
        same = params is None or p == _infer_live_params(data, sig, SyncParams())
        if p.n_windows(len(t)) == 0:
            notes.append(f"{sig}: {len(t) / p.rate_hz:.0f} s of features hold no complete {p.win_s:g}-s window "
                         f"with ±{p.lag_s:g}-s lags")
            step(f"{sig}: too short")
            continue
        res = wcc(t, c, p)
        step(f"{sig}: synchrony")
        surr: dict[str, SurrogateResult] = {}
        if n_surrogates > 0:
            # every statistic from the same surrogates, one WCC pass each (dsp_ext.stats.surrogate_tests)
            try:
                surr = surrogate_tests(t, c, p, SURROGATE_STATS, n=n_surrogates, seed=seed)
            except ValueError as exc:
                notes.append(f"{sig}: surrogate tests not possible: {exc}")
            step(f"{sig}: surrogates")
        try:
            ssi = single_session_index(t, c, rate_hz=p.rate_hz)
        except ValueError as exc:
            notes.append(f"{sig}: single session index not computed: {exc}")
            ssi = math.nan
        channels[sig] = ChannelSync(sig, t0, t, c, res, session_summary(res), leadership_asymmetry(res), ssi, surr,
                                    live_check(data, sig, t0, res, same, aligned_lost(data, sig)),
                                    session_leadership(res))
    if not channels:
        raise IncompleteSession(f"session {data.session}: nothing to analyse; " + "; ".join(notes))
    hrv: dict[str, PersonHrv] = {}
    ppg_cache: dict = {}  # each person's beats, for the HRV epochs and the artefact count
    for role in ROLES:
        h = person_hrv(data, role, notes, ppg_cache)
        if h is not None:
            hrv[role] = h
        step(f"{role}: RSA and RMSSD")
    coupling = None
    if len(hrv) == 2:
        n = min(len(hrv["client"].rsa_ln_ms2), len(hrv["therapist"].rsa_ln_ms2))
        if n >= 5:
            try:
                coupling = lagged_coupling(hrv["client"].rsa_ln_ms2[:n], hrv["therapist"].rsa_ln_ms2[:n])
            except ValueError as exc:
                notes.append(f"lagged RSA coupling not estimated: {exc}")
        else:
            notes.append(f"lagged RSA coupling needs at least 5 epochs of 30 s; the session has {n}")
    try:
        arte = artefacts(data, ppg_cache)
    except ValueError as exc:
        notes.append(f"artefact detection failed: {exc}")
        arte = {}
    step("artefacts")
    return SessionAnalysis(data, params or SyncParams(), channels, hrv, coupling, notes, n_surrogates, arte)


def n_steps(n_surrogates: int) -> int:
    """Number of progress steps :func:`analyse_session` reports."""
    per_channel = 1 + (1 if n_surrogates > 0 else 0)
    return len(SIGNALS) * per_channel + len(ROLES) + 1
