"""``dyadsync study``: does therapist autonomic regulation go with stronger, therapist-led client synchrony?

All sessions found in the sources (hub databases, pulled folders) are analysed like ``dyadsync report``
does (:func:`lab.analysis.compute.analyse_session`) and reduced to three tables:

* **sessions** — one row per session: dyad (therapist code + client code), order within the dyad,
  per channel the mean therapist-led / client-led z, in-phase and anti-phase peak z, the surrogate effect
  sizes, and each person's RSA level (mean of 30-s epochs, ln ms²), RSA instability (SD of the epochs),
  RMSSD and AR(1) inertia;
* **windows** — one row per synchrony window and channel, with the RSA epoch it falls in;
* **epochs** — one row per 30-s epoch: both people's RSA and RMSSD and the mean window synchrony.

Models (statsmodels ``MixedLM``, REML, random intercept per dyad; Wald z tests and 95 % CIs):

(a) **regulation → synchrony** (the lab's hypothesis): outcome ∈ {therapist-led z, in-phase peak z,
    surrogate effect size of the in-phase z} ~ therapist regulation, split by person-mean centring into
    a within-dyad part (this session's deviation from the dyad's mean) and a between-dyad part (the dyad's
    mean, grand-mean centred). Regulation = ``(z(RSA level) − z(RSA instability)) / 2`` standardised over
    the study (high, stable RSA = regulated). The **primary test** is the within-dyad slope on therapist-led
    z of the chosen channel (t test with between-within df: Wald z tests are too liberal with few dyads);
    the between-dyad slope and the joint χ²(2) test of both are reported beside it. Secondary: level and instability as
    separate predictors, and an epoch-level model (30-s epochs; therapist RSA split within session /
    between sessions within dyad / between dyads; variance component for session).
(b) **lagged RSA coupling** (Goren et al. 2024): ``RSA_C(t) ~ RSA_C(t−1) + RSA_T(t−1)`` and the mirror
    ``RSA_T(t) ~ RSA_T(t−1) + RSA_C(t−1)`` on 30-s epochs, each person's series centred on its session
    mean, random intercept per dyad.
(c) **therapist-led vs client-led** (Prinz et al. 2021): session means of the two sides, paired
    (``z ~ side``, random intercept per dyad) with Cohen's d_z, and whether regulation predicts the
    difference (therapist-led − client-led).

Before the long per-session work, :func:`design_check` says from the participant codes alone which effects the
design can estimate (dyads, sessions per dyad); :func:`check_data` repeats the check on the analysed sessions
(sessions with ≥ 2 therapist RSA epochs and synchrony, variance of regulation within and between dyads,
epochs for the secondary models). Only estimable terms are fitted; a verdict on the hypothesis
(:class:`Verdict`) is given only when the within-dyad slope is estimable over ≥ 3 dyads — otherwise "not
estimable with these data", never "not supported". Warnings raised while fitting are kept
(:class:`FitWarning`) and listed on the page, not printed.

Standardised effects are β · SD(x) / SD(y). Outputs: ``sessions.csv``, ``windows.csv``, ``epochs.csv``,
``models.csv`` (Parquet copies when pyarrow is installed), PNG figures and ``study.html``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import html
import logging
import math
import multiprocessing
import os
import pickle
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from dsp_ext.synchrony import WccResult

from .analysis.compute import SessionAnalysis, analyse_session
from .analysis.source import (
    AnalysisError,
    SessionData,
    SourceError,
    db_sessions,
    find_session_dirs,
    load_from_db,
    load_from_folder,
)

logger = logging.getLogger(__name__)

__all__ = [
    "Estimability",
    "StudyError",
    "StudyResult",
    "StudyTables",
    "Verdict",
    "check_data",
    "check_design",
    "default_jobs",
    "design_check",
    "fit_models",
    "record_from_arrays",
    "run_study",
    "session_key",
    "session_record",
    "tables_from_records",
]

OUTCOMES = ("therapist_led", "inphase_z", "inphase_effect")
OUTCOME_LABELS = {"therapist_led": "therapist-led z", "inphase_z": "in-phase peak z",
                  "inphase_effect": "surrogate effect size (in-phase z)"}
EPOCH_S = 30.0


class StudyError(AnalysisError):
    """The study cannot be analysed (no sessions, too few dyads for a model, unreadable source)."""


# --------------------------------------------------------------------------------------------- records
@dataclass
class SessionRecord:
    session: dict
    windows: list[dict]
    epochs: list[dict]


def _mean_sd(x: np.ndarray) -> tuple[float, float]:
    f = np.asarray(x, dtype=float)
    f = f[np.isfinite(f)]
    return (float(f.mean()) if len(f) else math.nan, float(f.std(ddof=1)) if len(f) > 1 else math.nan)


def record_from_arrays(
    session: str,
    therapist_code: str,
    client_code: str,
    started_ns: int | None,
    channels: dict[str, tuple[WccResult, dict[str, float]]],
    rsa: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> SessionRecord:
    """One session's rows from its synchrony results and RSA epochs.

    ``channels``: signal -> (WccResult, {"inphase_effect": surrogate effect size, ...}); window starts are
    relative to the first feature sample. ``rsa``: role -> (epoch start in s from the same origin, RSA ln ms²,
    RMSSD ms)."""
    row: dict = {"session": session, "dyad": f"{therapist_code}-{client_code}", "therapist": therapist_code,
                 "client": client_code, "started_ns": started_ns}
    windows: list[dict] = []
    ep_start = None
    for role, (starts, r, rm) in rsa.items():
        p = "t" if role == "therapist" else "c"
        row[f"{p}_rsa_level"], row[f"{p}_rsa_instability"] = _mean_sd(r)
        row[f"{p}_rmssd"] = _mean_sd(rm)[0]
        row[f"{p}_rsa_epochs"] = int(np.isfinite(r).sum())
        ep_start = np.asarray(starts, dtype=float) if ep_start is None else ep_start
    for sig, (res, extra) in channels.items():
        for key in ("therapist_led", "client_led", "inphase_z", "antiphase_z", "inphase_lag_s"):
            row[f"{sig}_{key}"] = _mean_sd(getattr(res, key))[0]
        row[f"{sig}_windows"] = len(res)
        for k, v in extra.items():
            row[f"{sig}_{k}"] = float(v)
        t_s = res.window_start_s
        centre = t_s + res.params.win_s / 2
        epoch = np.floor(centre / EPOCH_S).astype(int)
        for i in range(len(res)):
            windows.append({"session": session, "dyad": row["dyad"], "channel": sig, "window": i,
                            "start_s": float(t_s[i]), "epoch": int(epoch[i]),
                            **{k: float(getattr(res, k)[i]) for k in (
                                "r0", "therapist_led", "client_led", "inphase_z", "inphase_lag_s", "antiphase_z",
                                "antiphase_lag_s")}})
    epochs: list[dict] = []
    if ep_start is not None:
        t = rsa.get("therapist")
        c = rsa.get("client")
        n = min(len(x[1]) for x in rsa.values())
        for e in range(n):
            er: dict = {"session": session, "dyad": row["dyad"], "epoch": int(round(ep_start[e] / EPOCH_S)),
                        "start_s": float(ep_start[e])}
            if t is not None:
                er["t_rsa"], er["t_rmssd"] = float(t[1][e]), float(t[2][e])
            if c is not None:
                er["c_rsa"], er["c_rmssd"] = float(c[1][e]), float(c[2][e])
            epochs.append(er)
    return SessionRecord(row, windows, epochs)


def session_record(an: SessionAnalysis) -> SessionRecord:
    """Rows of an analysed session (synchrony of every channel; RSA epochs on the feature grid's origin)."""
    d = an.data
    chans: dict[str, tuple[WccResult, dict[str, float]]] = {}
    origin = None
    for sig, ch in an.channels.items():
        extra = {f"{stat.replace('_z', '')}_effect" if stat.endswith("_z") else f"{stat}_effect": s.effect_size
                 for stat, s in ch.surrogates.items()}
        extra |= {f"{stat}_p": s.p_value for stat, s in ch.surrogates.items()}
        extra["ssi"] = ch.ssi
        chans[sig] = (ch.res, extra)
        origin = ch.t0_ns if origin is None else origin
    rsa = {}
    for role, h in an.hrv.items():
        base = origin if origin is not None else (int(h.epoch_t_ns[0]) if len(h.epoch_t_ns) else 0)
        rsa[role] = ((h.epoch_t_ns - base) / 1e9, h.rsa_ln_ms2, h.rmssd_ms)
    return record_from_arrays(d.session, d.therapist_code or "?", d.client_code or "?", d.started_ns, chans, rsa)


@dataclass
class StudyTables:
    sessions: pd.DataFrame
    windows: pd.DataFrame
    epochs: pd.DataFrame


def tables_from_records(records: Iterable[SessionRecord]) -> StudyTables:
    records = list(records)
    if not records:
        raise StudyError("no sessions to analyse")
    sessions = pd.DataFrame([r.session for r in records])
    sessions["order"] = (sessions.sort_values(["dyad", "started_ns", "session"], na_position="last")
                         .groupby("dyad").cumcount())
    windows = pd.DataFrame([w for r in records for w in r.windows])
    epochs = pd.DataFrame([e for r in records for e in r.epochs])
    if len(windows) and len(epochs):
        agg = windows.groupby(["session", "channel", "epoch"])[["therapist_led", "client_led", "inphase_z"]].mean()
        wide = agg.unstack("channel")
        wide.columns = [f"{ch}_{k}" for k, ch in wide.columns]
        epochs = epochs.merge(wide.reset_index(), on=["session", "epoch"], how="left")
    return StudyTables(sessions, windows, epochs)


# ------------------------------------------------------------------------------- what the data can estimate
#: A verdict on the hypothesis needs the within-dyad slope and at least this many dyads (a random intercept
#: per dyad; with fewer, the slope describes those dyads only).
MIN_DYADS_VERDICT = 3
#: The between-dyad slope compares dyads: a t test with dyads − 2 degrees of freedom ≥ MIN_DF.
MIN_DYADS_BETWEEN = 5
#: Fewest degrees of freedom for a t test we report as a test (t(2)'s 97.5 % quantile is 4.3: CIs are vast).
MIN_DF = 3
#: RSA instability is the SD of a session's 30-s RSA epochs: at least two are needed.
MIN_RSA_EPOCHS = 2
#: Secondary models: epochs with therapist RSA and synchrony (epoch level), consecutive epoch pairs (coupling).
MIN_EPOCHS = 20
#: A predictor whose SD is below this (in SD units of the study's regulation score) does not vary.
VARIANCE_TOL = 1e-6


@dataclass
class Effect:
    """Whether one effect can be estimated from the data, and why not / what more data it would need."""

    key: str
    label: str
    estimable: bool
    have: str
    why: str = ""
    needs: str = ""


@dataclass
class Estimability:
    """What the data can estimate. ``stage`` "design": from the participant codes alone (before the long
    per-session analysis); "data": with the analysed sessions' RSA epochs, synchrony and predictor variance."""

    stage: str
    n_sessions: int
    n_dyads: int
    sessions_per_dyad: dict[str, int]
    effects: dict[str, Effect]
    verdict_possible: bool
    verdict_why: str
    verdict_needs: str = ""
    facts: list[str] = field(default_factory=list)

    def estimable(self, key: str) -> bool:
        e = self.effects.get(key)
        return bool(e and e.estimable)

    def lines(self) -> list[str]:
        """The check in words, one line each (the CLI prints them)."""
        per = sorted(self.sessions_per_dyad.values())
        spread = (f"{per[0]}" if per[0] == per[-1] else f"{per[0]}–{per[-1]}") if per else "0"
        out = [f"{'design' if self.stage == 'design' else 'data'} check: {self.n_sessions} sessions of "
               f"{self.n_dyads} dyad{'s' if self.n_dyads != 1 else ''} ({spread} sessions per dyad)", *self.facts]
        for e in self.effects.values():
            if e.estimable:
                out.append(f"  estimable: {e.label} ({e.have})")
            else:
                out.append(f"  NOT estimable: {e.label}: {e.why}" + (f" Needed: {e.needs}" if e.needs else ""))
        out.append(("  a verdict on the hypothesis is possible: " if self.verdict_possible
                    else "  no verdict on the hypothesis is possible: ") + self.verdict_why
                   + (f" Needed: {self.verdict_needs}" if self.verdict_needs else ""))
        return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def assess(per_dyad: dict[str, int], *, stage: str = "design", sd_within: float | None = None,
           sd_between: float | None = None, facts: list[str] | None = None) -> Estimability:
    """Which parts of model (a) the design can estimate: ``per_dyad`` = usable sessions per dyad; the SDs of
    the person-mean-centred regulation (within / between dyads) when known (stage "data")."""
    n = int(sum(per_dyad.values()))
    n_d = len(per_dyad)
    repeated = sum(1 for k in per_dyad.values() if k >= 2)
    df_w = n - n_d - 1
    effects: dict[str, Effect] = {}
    w_have = f"{_plural(repeated, 'dyad')} with 2 or more sessions, {max(df_w, 0)} df"
    if n == 0:
        w = Effect("within", "within-dyad effect of therapist regulation", False, "no usable sessions",
                   "no session has both therapist RSA and synchrony.",
                   "sessions with at least 60 s of clean heart data and both people's features.")
    elif repeated == 0:
        w = Effect("within", "within-dyad effect of therapist regulation", False, w_have,
                   "every dyad has a single session, so no dyad is seen at two levels of therapist regulation.",
                   "at least 2 sessions in each dyad.")
    elif df_w < MIN_DF:
        more = MIN_DF - df_w
        w = Effect("within", "within-dyad effect of therapist regulation", False, w_have,
                   f"{n} sessions in {_plural(n_d, 'dyad')} leave {max(df_w, 0)} degrees of freedom for the "
                   f"within-dyad slope; a t test needs at least {MIN_DF}.",
                   f"at least {_plural(more, 'more session')} in dyads already recorded.")
    elif sd_within is not None and not sd_within > VARIANCE_TOL:
        w = Effect("within", "within-dyad effect of therapist regulation", False, w_have,
                   "therapist regulation does not vary between the sessions of a dyad.",
                   "sessions in which the therapist's RSA level or stability differs.")
    else:
        w = Effect("within", "within-dyad effect of therapist regulation", True,
                   w_have + (f", SD of within-dyad regulation {sd_within:.2f}" if sd_within is not None else ""))
    effects["within"] = w
    b_have = f"{_plural(n_d, 'dyad')}, {max(n_d - 2, 0)} df"
    if n_d < 2:
        b = Effect("between", "between-dyad effect of therapist regulation", False, b_have,
                   "with one dyad there is nothing to compare: its mean regulation is a single value.",
                   f"at least {MIN_DYADS_BETWEEN} dyads (more than 10 for a useful interval); "
                   f"add {MIN_DYADS_BETWEEN - n_d} or more.")
    elif n_d < MIN_DYADS_BETWEEN:
        b = Effect("between", "between-dyad effect of therapist regulation", False, b_have,
                   f"a between-dyad slope compares dyads with each other; {_plural(n_d, 'dyad')} leave "
                   f"{n_d - 2} degrees of freedom, a t test needs at least {MIN_DF}.",
                   f"at least {MIN_DYADS_BETWEEN} dyads (more than 10 for a useful interval); "
                   f"add {MIN_DYADS_BETWEEN - n_d} or more.")
    elif sd_between is not None and not sd_between > VARIANCE_TOL:
        b = Effect("between", "between-dyad effect of therapist regulation", False, b_have,
                   "the dyads' mean therapist regulation is the same in every dyad.",
                   "dyads whose therapists differ in RSA level or stability.")
    else:
        b = Effect("between", "between-dyad effect of therapist regulation", True,
                   b_have + (f", SD of dyad means {sd_between:.2f}" if sd_between is not None else ""))
    effects["between"] = b
    needs = ""
    if not w.estimable:
        possible, why, needs = False, "the within-dyad effect (the primary test) cannot be estimated.", w.needs
    elif n_d < MIN_DYADS_VERDICT:
        possible = False
        why = (f"the within-dyad slope can be computed, but with {_plural(n_d, 'dyad')} it describes "
               f"{'this dyad' if n_d == 1 else 'these dyads'} only; a claim about therapists and clients in "
               f"general needs at least {MIN_DYADS_VERDICT} dyads (a random intercept per dyad).")
        needs = f"{MIN_DYADS_VERDICT - n_d} or more further dyads with at least 2 sessions each."
    else:
        possible, why = True, (f"the primary test (within-dyad slope) has {df_w} df over "
                               f"{_plural(n_d, 'dyad')}.")
    return Estimability(stage, n, n_d, dict(per_dyad), effects, possible, why, needs, list(facts or []))


def check_design(dyads: Iterable[str]) -> Estimability:
    """The design check from the dyad code of every session (cheap: before any synchrony or RSA is computed)."""
    per: dict[str, int] = {}
    for d in dyads:
        per[d] = per.get(d, 0) + 1
    return assess(per, stage="design")


def _regulation(s: pd.DataFrame) -> pd.DataFrame:
    """Sessions usable for model (a), with the study-standardised regulation and its within/between split."""
    s = s.copy()

    def z(col: str) -> pd.Series:
        sd = s[col].std(ddof=1)
        return (s[col] - s[col].mean()) / sd if len(s) > 1 and sd > 0 else s[col] * 0.0

    s["t_regulation"] = (z("t_rsa_level") - z("t_rsa_instability")) / 2
    _split(s, "t_regulation", "dyad", "reg")
    return s


def check_data(tables: StudyTables, channel: str = "eda") -> tuple[Estimability, pd.DataFrame]:
    """The check on analysed sessions: sessions with therapist RSA (≥ 2 epochs) and the channel's synchrony,
    the variance of regulation within and between dyads, and the secondary models' data. Returns the check
    and the usable sessions (with ``t_regulation``, ``reg_w``, ``reg_b``)."""
    s = tables.sessions
    facts: list[str] = []
    y = f"{channel}_therapist_led"
    has_rsa = (s["t_rsa_epochs"] >= MIN_RSA_EPOCHS) if "t_rsa_epochs" in s.columns else pd.Series(False, s.index)
    if "t_rsa_level" in s.columns:
        has_rsa &= s["t_rsa_level"].notna() & s["t_rsa_instability"].notna()
    has_y = s[y].notna() if y in s.columns else pd.Series(False, s.index)
    no_rsa, no_y = int((~has_rsa).sum()), int((~has_y).sum())
    if no_rsa:
        facts.append(f"  {_plural(no_rsa, 'session')} without therapist RSA in at least {MIN_RSA_EPOCHS} 30-s "
                     "epochs (RSA instability needs two): left out of the models")
    if no_y:
        facts.append(f"  {_plural(no_y, 'session')} without {channel.upper()} synchrony: left out of the models")
    if "t_rsa_epochs" in s.columns and has_rsa.any():
        ep = s.loc[has_rsa, "t_rsa_epochs"]
        facts.append(f"  therapist RSA epochs per session: median {ep.median():g} (range {ep.min():g}–{ep.max():g})")
    use = _regulation(s[has_rsa & has_y]) if (has_rsa & has_y).any() else s.iloc[0:0].assign(reg_w=[], reg_b=[])
    per = use.groupby("dyad").size().to_dict() if len(use) else {}
    sd_w = float(use["reg_w"].std(ddof=1)) if len(use) > 1 else 0.0
    sd_b = float(use.groupby("dyad")["reg_b"].first().std(ddof=1)) if len(per) > 1 else 0.0
    est = assess(per, stage="data", sd_within=sd_w, sd_between=sd_b, facts=facts)
    # secondary models
    e = tables.epochs
    ye = f"{channel}_therapist_led"
    n_ep = int(e.dropna(subset=["t_rsa", ye]).shape[0]) if len(e) and {"t_rsa", ye} <= set(e.columns) else 0
    est.effects["epoch"] = Effect(
        "epoch", "epoch-level effect of therapist RSA within sessions", n_ep > MIN_EPOCHS,
        f"{_plural(n_ep, 'epoch')} with therapist RSA and synchrony",
        "" if n_ep > MIN_EPOCHS else f"{n_ep} epochs are too few (more than {MIN_EPOCHS} needed).",
        "" if n_ep > MIN_EPOCHS else "longer sessions or more of them (a 30-s epoch each).")
    pairs = 0
    if len(e) and {"t_rsa", "c_rsa"} <= set(e.columns):
        ok = e.dropna(subset=["t_rsa", "c_rsa"]).sort_values(["session", "epoch"])
        pairs = int((ok.groupby("session")["epoch"].diff() == 1).sum())
    est.effects["coupling"] = Effect(
        "coupling", "lagged RSA coupling between therapist and client", pairs > MIN_EPOCHS,
        f"{_plural(pairs, 'pair')} of consecutive epochs with both people's RSA",
        "" if pairs > MIN_EPOCHS else f"{pairs} pairs of consecutive epochs are too few (more than {MIN_EPOCHS}).",
        "" if pairs > MIN_EPOCHS else "longer sessions with both people's heart data.")
    cl = f"{channel}_client_led"
    n_c = int(s.dropna(subset=[y, cl]).shape[0]) if {y, cl} <= set(s.columns) else 0
    est.effects["contrast"] = Effect(
        "contrast", "therapist-led against client-led synchrony", n_c >= MIN_DF,
        f"{_plural(n_c, 'session')} with both sides",
        "" if n_c >= MIN_DF else f"{n_c} sessions are too few.", "" if n_c >= MIN_DF else f"at least {MIN_DF} sessions.")
    return est, use


# ---------------------------------------------------------------------------------------------- models
@dataclass
class Term:
    model: str
    outcome: str
    term: str
    coef: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float
    std_effect: float
    n_obs: int
    n_groups: int
    method: str
    note: str = ""
    std_ci_low: float = math.nan
    std_ci_high: float = math.nan


@dataclass
class Primary:
    """The primary test: the within-dyad slope of client synchrony on therapist regulation (t test with
    between-within df); the between-dyad slope (when estimable) and the joint χ²(2) Wald test beside it."""

    outcome: str
    p_value: float
    within: Term
    between: Term | None
    chi2: float
    chi2_p_value: float
    n_obs: int
    n_groups: int

    @property
    def detected(self) -> bool:
        """p < 0.05 for the within-dyad slope, in either direction."""
        return math.isfinite(self.p_value) and self.p_value < 0.05


@dataclass
class Verdict:
    """The answer to the hypothesis: ``supports`` / ``contradicts`` (p < 0.05 for the within-dyad slope, by its
    sign), ``no_claim`` (estimable, interval includes 0) or ``not_estimable`` (no verdict is possible)."""

    kind: str
    text: str

    @property
    def claim(self) -> bool:
        return self.kind in ("supports", "contradicts")


@dataclass
class FitWarning:
    model: str
    category: str
    message: str
    count: int = 1


@dataclass
class StudyModels:
    channel: str
    terms: list[Term]
    primary: Primary | None
    contrast: dict
    notes: list[str] = field(default_factory=list)
    estimability: Estimability | None = None
    verdict: Verdict | None = None
    warnings: list[FitWarning] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        cols = [f.name for f in fields(Term)]
        return pd.DataFrame([t.__dict__ for t in self.terms], columns=cols)


def _split(df: pd.DataFrame, col: str, group: str, name: str) -> None:
    """Person-mean centring: ``name_b`` = group mean − grand mean, ``name_w`` = value − group mean."""
    gm = df.groupby(group)[col].transform("mean")
    df[f"{name}_b"] = gm - df[col].mean()
    df[f"{name}_w"] = df[col] - gm


class _Fitter:
    """Fits the models and keeps every warning statsmodels/numpy raise (reported on the page, not printed)."""

    def __init__(self) -> None:
        self.warnings: list[FitWarning] = []

    def _keep(self, model: str, caught: list) -> None:
        for w in caught:
            msg = " ".join(str(w.message).split())
            cat = w.category.__name__
            for k in self.warnings:
                if k.model == model and k.category == cat and k.message == msg:
                    k.count += 1
                    break
            else:
                self.warnings.append(FitWarning(model, cat, msg))

    def fit(self, df: pd.DataFrame, y: str, xs: list[str], model: str, group: str = "dyad", vc: dict | None = None):
        """MixedLM (REML, random intercept per ``group``) with 3 or more groups; with fewer, OLS with a fixed
        effect per group (the within-group slope); OLS with group-clustered SEs when the mixed model fails."""
        import statsmodels.formula.api as smf

        d = df.dropna(subset=[y, *xs])
        n_groups = d[group].nunique()
        formula = f"{y} ~ " + " + ".join(xs)
        if len(d) < len(xs) + 3:
            raise StudyError(f"{model}: {len(d)} complete rows are too few for {formula}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                res, method = None, ""
                if n_groups >= 3 and len(d) > n_groups:
                    try:
                        res = smf.mixedlm(formula, d, groups=d[group], vc_formula=vc).fit(reml=True)
                        method = "MixedLM"
                        if not np.all(np.isfinite(res.bse[xs])):
                            warnings.warn("MixedLM gave no finite standard errors; refitted as OLS with "
                                          "dyad-clustered SEs", RuntimeWarning, stacklevel=1)
                            res = None
                    except (np.linalg.LinAlgError, ValueError) as exc:
                        warnings.warn(f"MixedLM failed ({exc}); refitted as OLS with dyad-clustered SEs",
                                      RuntimeWarning, stacklevel=1)
                        res = None
                    if res is None:
                        res = smf.ols(formula, d).fit(cov_type="cluster",
                                                      cov_kwds={"groups": pd.factorize(d[group])[0]})
                        method = "OLS (cluster-robust)"
                elif n_groups >= 2:
                    res = smf.ols(f"{formula} + C({group})", d).fit()
                    method = f"OLS, fixed effect per {group}"
                else:
                    res = smf.ols(formula, d).fit()
                    method = "OLS (one dyad)"
            finally:
                self._keep(model, caught)
        return res, d, method


def _df(term: str, xs: list[str], n_obs: int, n_groups: int, method: str) -> int:
    """Between-within degrees of freedom (as SAS DDFM=BETWITHIN): a dyad-level term (``*_b``, ``rsa_bd``) has
    ``n_groups − (dyad-level terms) − 1``, any other ``n_obs − n_groups − (other terms)``; an OLS fit with a
    fixed effect per dyad ``n_obs − terms − n_groups``; other OLS fits ``n_obs − terms − 1``. Wald z tests
    with few dyads are too liberal; t with these df is not."""
    between = [x for x in xs if x.endswith("_b") or x == "rsa_bd"]
    if method.startswith("OLS, fixed") or method == "OLS (one dyad)":
        return max(n_obs - len(xs) - n_groups, 1)
    if not method.startswith("MixedLM"):
        return max(n_obs - len(xs) - 1, 1)
    if term in between:
        return max(n_groups - len(between) - 1, 1)
    return max(n_obs - n_groups - (len(xs) - len(between)), 1)


def _terms(res, d: pd.DataFrame, y: str, xs: list[str], model: str, method: str, group: str = "dyad") -> list[Term]:
    from scipy import stats

    out = []
    sy = float(d[y].std(ddof=1))
    n_obs, n_groups = int(len(d)), int(d[group].nunique())
    for x in xs:
        sx = float(d[x].std(ddof=1))
        b, se = float(res.params[x]), float(res.bse[x])
        df = _df(x, xs, n_obs, n_groups, method)
        q = float(stats.t.ppf(0.975, df))
        ok = math.isfinite(se) and se > 0
        p = float(2 * stats.t.sf(abs(b / se), df)) if ok else math.nan
        lo, hi = (b - q * se, b + q * se) if ok else (math.nan, math.nan)
        k = sx / sy if sy > 0 else math.nan
        out.append(Term(model, y, x, b, se, lo, hi, p, b * k, n_obs, n_groups, method, note=f"t({df})",
                        std_ci_low=lo * k, std_ci_high=hi * k))
    return out


def _joint_wald(res, xs: list[str]) -> tuple[float, float]:
    from scipy import stats

    names = list(res.params.index)
    idx = [names.index(x) for x in xs]
    b = np.asarray(res.params)[idx]
    cov = np.asarray(res.cov_params())[np.ix_(idx, idx)]
    try:
        chi2 = float(b @ np.linalg.solve(cov, b))
    except np.linalg.LinAlgError:
        return math.nan, math.nan
    return chi2, float(stats.chi2.sf(chi2, len(xs)))


def _verdict(est: Estimability, primary: Primary | None, channel: str) -> Verdict:
    if not est.verdict_possible or primary is None:
        text = f"Not estimable with these data: {est.verdict_why}"
        if est.verdict_needs:
            text += f" Needed: {est.verdict_needs}"
        return Verdict("not_estimable", text + " No verdict on the hypothesis either way.")
    t = primary.within
    if not (math.isfinite(t.ci_low) and math.isfinite(t.ci_high)):
        return Verdict("not_estimable", "Not estimable with these data: the model could not estimate the "
                       "uncertainty of the within-dyad slope (see the fitting warnings). No verdict either way.")
    nums = (f"β = {t.coef:+.3f} z per SD of therapist regulation, 95 % CI [{t.ci_low:+.3f}, {t.ci_high:+.3f}], "
            f"{t.note}, p = {t.p_value:.3g}; standardised {t.std_effect:+.2f}")
    what = f"{channel.upper()} therapist-led synchrony"
    if primary.detected and t.coef > 0:
        return Verdict("supports", f"The data support the hypothesis: within dyads, {what} is higher in sessions "
                       f"in which the therapist is more regulated than usual ({nums}).")
    if primary.detected:
        return Verdict("contradicts", f"The data go against the hypothesis: within dyads, {what} is lower in "
                       f"sessions in which the therapist is more regulated than usual ({nums}).")
    return Verdict("no_claim", f"No claim either way: the within-dyad effect is estimable, but its interval "
                   f"includes zero ({nums}). Effects anywhere in the interval are compatible with these data; "
                   "this is not evidence that there is no effect. A CI about half as wide needs roughly four "
                   "times as many sessions.")


def fit_models(tables: StudyTables, channel: str = "eda", *, primary_only: bool = False) -> StudyModels:
    """The study's models (module docstring) on ``channel``, each with only the terms the data can estimate
    (:func:`check_data`); ``primary_only`` fits just the primary model. Never raises for a design that is too
    small: the result's ``estimability`` and ``verdict`` say what could not be estimated and why."""
    s = tables.sessions
    notes: list[str] = []
    need = [f"{channel}_therapist_led"]
    missing = [c for c in need if c not in s.columns]
    if missing:
        raise StudyError(f"the sessions lack {', '.join(missing)} (no {channel} synchrony in any session)")
    est, s = check_data(tables, channel)
    fitter = _Fitter()
    terms: list[Term] = []
    w_ok, b_ok = est.estimable("within"), est.estimable("between")
    reg = [x for x, ok in (("reg_w", w_ok), ("reg_b", b_ok)) if ok]
    y0 = f"{channel}_therapist_led"
    primary = None
    contrast: dict = {}
    label_a = "a: regulation (within/between dyad)"
    if reg:
        try:
            res, d, method = fitter.fit(s, y0, reg, label_a)
            tt = _terms(res, d, y0, reg, label_a, method)
            terms += tt
            if w_ok:
                chi2, p = _joint_wald(res, reg) if len(reg) == 2 else (math.nan, math.nan)
                primary = Primary(y0, tt[0].p_value, tt[0], tt[1] if b_ok else None, chi2, p, int(len(d)),
                                  int(d["dyad"].nunique()))
        except StudyError as exc:
            notes.append(str(exc))
    verdict = _verdict(est, primary, channel)
    if primary_only:
        return StudyModels(channel, terms, primary, contrast, notes, est, verdict, fitter.warnings)
    if reg:
        for out in OUTCOMES[1:]:
            y = f"{channel}_{out}"
            if y not in s.columns or s[y].notna().sum() < len(reg) + 3:
                notes.append(f"model (a) for {OUTCOME_LABELS[out]}: not enough sessions with a value")
                continue
            try:
                res, d, method = fitter.fit(s, y, reg, label_a)
                terms += _terms(res, d, y, reg, label_a, method)
            except StudyError as exc:
                notes.append(str(exc))
        _split(s, "t_rsa_level", "dyad", "level")
        _split(s, "t_rsa_instability", "dyad", "instab")
        xs = [f"{v}_{p}" for v in ("level", "instab") for p, ok in (("w", w_ok), ("b", b_ok)) if ok]
        label = "a: RSA level and instability (within/between dyad)"
        try:
            res, d, method = fitter.fit(s, y0, xs, label)
            terms += _terms(res, d, y0, xs, label, method)
        except StudyError as exc:
            notes.append(str(exc))
    # epoch level: therapist RSA within session, between sessions (within dyad), between dyads
    e = tables.epochs.copy()
    if est.estimable("epoch"):
        e = e[e["session"].isin(s["session"])].dropna(subset=["t_rsa", y0])
        sm = e.groupby("session")["t_rsa"].transform("mean")
        dm = e.groupby("dyad")["t_rsa"].transform("mean")
        e["rsa_ws"] = e["t_rsa"] - sm
        e["rsa_bs"] = sm - dm
        e["rsa_bd"] = dm - e["t_rsa"].mean()
        xs = ["rsa_ws"] + (["rsa_bs"] if w_ok else []) + (["rsa_bd"] if b_ok else [])
        label = "a: epoch-level therapist RSA (within session / between sessions / between dyads)"
        try:
            res, d, method = fitter.fit(e, y0, xs, label, vc={"session": "0 + C(session)"})
            terms += _terms(res, d, y0, xs, label, method)
        except StudyError as exc:
            notes.append(str(exc))
    # (b) lagged coupling on epochs, each person centred on the session mean
    e = tables.epochs.copy()
    if est.estimable("coupling"):
        e = e.sort_values(["session", "epoch"])
        for p_ in ("t", "c"):
            e[f"{p_}_w"] = e[f"{p_}_rsa"] - e.groupby("session")[f"{p_}_rsa"].transform("mean")
            prev = e.groupby("session")[f"{p_}_w"].shift(1)
            consecutive = e.groupby("session")["epoch"].diff() == 1
            e[f"{p_}_lag"] = prev.where(consecutive)
        for y, own, other, label in (("c_w", "c_lag", "t_lag", "b: RSA_C(t) ~ RSA_C(t−1) + RSA_T(t−1)"),
                                     ("t_w", "t_lag", "c_lag", "b: RSA_T(t) ~ RSA_T(t−1) + RSA_C(t−1)")):
            try:
                res, d, method = fitter.fit(e, y, [own, other], label)
                terms += _terms(res, d, y, [own, other], label, method)
            except StudyError as exc:
                notes.append(str(exc))
    # (c) therapist-led vs client-led
    tl, cl = f"{channel}_therapist_led", f"{channel}_client_led"
    full = tables.sessions
    if cl in full.columns and est.estimable("contrast"):
        pair = full.dropna(subset=[tl, cl])
        long = pd.concat([pair[["dyad", "session"]].assign(z=pair[tl], therapist_side=1.0),
                          pair[["dyad", "session"]].assign(z=pair[cl], therapist_side=0.0)])
        label = "c: therapist-led − client-led"
        try:
            res, d, method = fitter.fit(long, "z", ["therapist_side"], label, vc={"session": "0 + C(session)"})
            terms += _terms(res, d, "z", ["therapist_side"], label, method)
        except StudyError as exc:
            notes.append(str(exc))
        diff = (pair[tl] - pair[cl]).to_numpy()
        n = len(diff)
        sd = float(diff.std(ddof=1)) if n > 1 else math.nan
        dz = float(diff.mean() / sd) if sd > 0 else math.nan
        se = math.sqrt(1 / n + dz * dz / (2 * n)) if math.isfinite(dz) else math.nan
        contrast = {"n_sessions": n, "mean_diff": float(diff.mean()), "d_z": dz,
                    "d_z_ci_low": dz - 1.96 * se, "d_z_ci_high": dz + 1.96 * se,
                    "share_therapist_stronger": float(np.mean(diff > 0))}
        if reg and cl in s.columns:
            s["lead_diff"] = s[tl] - s[cl]
            label = "c: regulation → (therapist-led − client-led)"
            try:
                res, d, method = fitter.fit(s, "lead_diff", reg, label)
                terms += _terms(res, d, "lead_diff", reg, label, method)
            except StudyError as exc:
                notes.append(str(exc))
    return StudyModels(channel, terms, primary, contrast, notes, est, verdict, fitter.warnings)


# -------------------------------------------------------------------------------------------- sources
def iter_sessions(sources: list[Path]) -> list[tuple[str, Path, str | None]]:
    """(kind, path, session) for every session in the sources: hub databases and pulled folders."""
    found: list[tuple[str, Path, str | None]] = []
    for src in sources:
        if not src.exists():
            raise SourceError(f"{src} does not exist")
        if src.is_file():
            found += [("db", src, s) for s in db_sessions(src)]
            continue
        for d in find_session_dirs(src):
            found.append(("dir", d, None))
        for db in sorted(src.rglob("*.sqlite")):
            found += [("db", db, s) for s in db_sessions(db)]
    return found


def _load(kind: str, path: Path, session: str | None, with_raw: bool) -> SessionData:
    return (load_from_db(path, session, with_raw=with_raw) if kind == "db"  # type: ignore[arg-type]
            else load_from_folder(path, with_raw=with_raw))


def design_check(sources: list[Path]) -> tuple[Estimability, list[str]]:
    """The design check (:func:`check_design`) from the sources' session metadata and 4 Hz features only —
    seconds, before the per-session synchrony and surrogate work. Returns the check and the sessions skipped
    (unreadable or found twice)."""
    found = iter_sessions(sources)
    if not found:
        raise StudyError(f"no sessions found in {', '.join(map(str, sources))}")
    dyads: dict[str, str] = {}
    skipped: list[str] = []
    for kind, path, session in found:
        try:
            data = _load(kind, path, session, with_raw=False)
        except AnalysisError as exc:
            skipped.append(f"{session or path}: {exc}")
            continue
        if data.session in dyads:
            skipped.append(f"{data.session} ({path}): already read from another source")
            continue
        dyads[data.session] = data.dyad
    return check_design(dyads.values()), skipped


@dataclass
class StudyResult:
    tables: StudyTables
    models: StudyModels
    out_dir: Path
    html_path: Path
    files: list[Path]
    skipped: list[str]
    design: Estimability | None = None
    n_cached: int = 0  # sessions whose record came from the output folder's cache

    @property
    def n_sessions(self) -> int:
        return len(self.tables.sessions)

    @property
    def n_dyads(self) -> int:
        return int(self.tables.sessions["dyad"].nunique())

    def headline(self) -> list[str]:
        """The answer in words for the terminal: the data check, the verdict, the primary test's numbers,
        how many warnings the model fitting raised, sessions skipped."""
        m = self.models
        lines = list(m.estimability.lines()) if m.estimability else []
        if m.verdict is not None:
            lines.append(f"answer: {m.verdict.text}")
        p = m.primary
        if p is not None:
            scope = "" if m.verdict and m.verdict.kind != "not_estimable" else " (description only, not a test)"
            lines.append(f"primary: {p.outcome} ~ therapist regulation within dyads{scope}: "
                         f"{_plural(p.n_obs, 'session')}, {_plural(p.n_groups, 'dyad')}")
            for t in (p.within, p.between):
                if t is not None:
                    lines.append(f"  {t.term} ({TERM_SHORT.get(t.term, t.term)}): {t.coef:+.3f} "
                                 f"[{t.ci_low:+.3f}, {t.ci_high:+.3f}] z per SD, {t.note}, p = {t.p_value:.3g}")
            if math.isfinite(p.chi2):
                lines.append(f"  joint within + between: chi2(2) = {p.chi2:.2f}, p = {p.chi2_p_value:.3g}")
        if m.warnings:
            n = sum(w.count for w in m.warnings)
            kinds = ", ".join(sorted({w.category for w in m.warnings}))
            lines.append(f"model fitting raised {n} warning{'s' if n != 1 else ''} ({kinds}): listed on the page")
        lines += [f"skipped: {s}" for s in self.skipped]
        return lines


#: Bump when a session record's contents or their computation change: older cache entries are then ignored.
CACHE_VERSION = "1"


def default_jobs() -> int:
    """Worker processes for :func:`run_study`: ``DYADSYNC_JOBS`` if set, else the CPUs this process may use."""
    env = os.environ.get("DYADSYNC_JOBS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            logger.warning("DYADSYNC_JOBS=%r is not an integer; using the CPU count", env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def session_key(data: SessionData, n_surrogates: int, seed: int) -> str:
    """Cache key of one session's record: SHA-256 of its data (every stream, metric, marker and the metadata;
    not where it was read from) and of the analysis parameters."""
    h = hashlib.sha256()
    h.update(pickle.dumps((CACHE_VERSION, n_surrogates, seed), protocol=4))
    h.update(pickle.dumps(dataclasses.replace(data, origin=""), protocol=4))
    return h.hexdigest()


def _worker_init() -> None:
    # the worker processes already use every core: one thread each for the surrogate loop
    os.environ["DYADSYNC_THREADS"] = "1"


def _analyse_one(kind: str, path: Path, session: str | None, n_surrogates: int, seed: int,
                 cache_dir: Path) -> tuple[str | None, SessionRecord | None, str | None, bool]:
    """One session for :func:`run_study` (runs in a worker process): (session id, record, why skipped,
    whether the record came from the cache). A record is cached as ``<cache_dir>/<session>-<key>.pkl``."""
    try:
        data = _load(kind, path, session, with_raw=True)
    except AnalysisError as exc:
        return None, None, f"{session or path}: {exc}", False
    key = session_key(data, n_surrogates, seed)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in data.session)
    entry = cache_dir / f"{safe}-{key[:20]}.pkl"
    if entry.exists():
        try:
            with entry.open("rb") as f:
                cached_key, rec = pickle.load(f)
            if cached_key == key:
                return data.session, rec, None, True
        except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            logger.warning("study: cache entry %s unreadable (%s); analysing again", entry, exc)
    try:
        rec = session_record(analyse_session(data, None, n_surrogates=n_surrogates, seed=seed))
    except AnalysisError as exc:
        return data.session, None, f"{session or path}: {exc}", False
    tmp = entry.with_suffix(f".{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            pickle.dump((key, rec), f, protocol=4)
        tmp.replace(entry)  # atomic: a crash never leaves half an entry
    except OSError as exc:
        logger.warning("study: could not cache %s: %s", data.session, exc)
    return data.session, rec, None, False


def _check_out_dir(out_dir: Path) -> Path:
    """The output folder and its cache folder, created and proven writable before the long work."""
    cache_dir = out_dir / "cache"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        probe = cache_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StudyError(f"cannot write to the output folder {out_dir}: {exc}") from exc
    return cache_dir


def run_study(sources: list[Path], out_dir: Path, *, channel: str = "eda", n_surrogates: int = 200, seed: int = 0,
              progress: bool = False, announce: Callable[[str], None] | None = None,
              jobs: int | None = None) -> StudyResult:
    """Check the design, analyse every session of the sources and write tables, models, figures and
    ``study.html``. ``announce`` receives the design check's lines before the per-session work starts.

    Preconditions are checked before the per-session work: the channel, the surrogate count, the output
    folder (writable) and the design. Sessions are analysed in ``jobs`` worker processes (default
    :func:`default_jobs`; 1 = in this process) with a progress bar; each session's record is cached in
    ``out_dir/cache`` keyed by :func:`session_key` (its data and the parameters), so a re-run analyses only
    new or changed sessions. Records do not depend on ``jobs`` or on the cache."""
    from tqdm import tqdm

    if channel not in ("eda", "hr"):
        raise StudyError(f"unknown channel {channel!r}; choose 'eda' or 'hr'")
    if not isinstance(n_surrogates, int) or isinstance(n_surrogates, bool) or n_surrogates < 0:
        raise StudyError(f"n_surrogates must be a non-negative integer, got {n_surrogates!r}")
    design, _ = design_check(sources)
    for line in design.lines():
        (announce or logger.info)(line)
    cache_dir = _check_out_dir(out_dir)
    found = iter_sessions(sources)
    jobs = default_jobs() if jobs is None else max(1, int(jobs))
    results: list[tuple[str | None, SessionRecord | None, str | None, bool] | None] = [None] * len(found)
    bar = tqdm(total=len(found), desc="study", unit="session", disable=not progress)
    try:
        if jobs == 1 or len(found) <= 1:
            for k, (kind, path, session) in enumerate(found):
                results[k] = _analyse_one(kind, path, session, n_surrogates, seed, cache_dir)
                bar.update(1)
        else:
            ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
            with ProcessPoolExecutor(max_workers=min(jobs, len(found)), mp_context=ctx,
                                     initializer=_worker_init) as pool:
                futs = {pool.submit(_analyse_one, kind, path, session, n_surrogates, seed, cache_dir): k
                        for k, (kind, path, session) in enumerate(found)}
                for fut in as_completed(futs):
                    results[futs[fut]] = fut.result()
                    bar.update(1)
    finally:
        bar.close()
    records: list[SessionRecord] = []
    skipped: list[str] = []
    seen: set[str] = set()
    n_cached = 0
    for (_, path, session), res in zip(found, results, strict=True):
        sid, rec, why, cached = res  # type: ignore[misc]
        if why is not None or rec is None:
            skipped.append(why or f"{session or path}: no record")
            logger.warning("study: session %s skipped: %s", session or path, why)
            continue
        if sid in seen:
            skipped.append(f"{sid} ({path}): already read from another source")
            continue
        seen.add(sid)  # type: ignore[arg-type]
        n_cached += cached
        records.append(rec)
    logger.info("study: %d sessions analysed, %d from the cache in %s", len(records) - n_cached, n_cached,
                cache_dir)
    tables = tables_from_records(records)
    models = fit_models(tables, channel)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = write_tables(tables, models, out_dir)
    html_path = out_dir / "study.html"
    html_path.write_text(render_study(tables, models, skipped), encoding="utf-8")
    files.append(html_path)
    return StudyResult(tables, models, out_dir, html_path, files, skipped, design, n_cached)


def write_tables(tables: StudyTables, models: StudyModels, out_dir: Path) -> list[Path]:
    frames = {"sessions": tables.sessions, "windows": tables.windows, "epochs": tables.epochs,
              "models": models.table()}
    files = []
    try:
        import pyarrow  # noqa: F401

        parquet = True
    except ImportError:
        parquet = False
    for name, df in frames.items():
        p = out_dir / f"{name}.csv"
        df.to_csv(p, index=False)
        files.append(p)
        if parquet:
            q = out_dir / f"{name}.parquet"
            df.to_parquet(q, index=False)
            files.append(q)
    return files


# ------------------------------------------------------------------------------------------------ words
#: Model terms in a few words (forest plot, terminal) and in full with units (the page's legend).
TERM_SHORT = {
    "reg_w": "therapist regulation, within dyad",
    "reg_b": "therapist regulation, between dyads",
    "level_w": "therapist RSA level, within dyad", "level_b": "therapist RSA level, between dyads",
    "instab_w": "therapist RSA instability, within dyad", "instab_b": "therapist RSA instability, between dyads",
    "rsa_ws": "therapist RSA, within session", "rsa_bs": "therapist RSA, between sessions of a dyad",
    "rsa_bd": "therapist RSA, between dyads",
    "c_lag": "client RSA one epoch earlier", "t_lag": "therapist RSA one epoch earlier",
    "therapist_side": "therapist-led side (vs client-led)",
}
TERM_LONG = {
    "reg_w": "therapist regulation in this session minus the mean over the dyad's sessions. Regulation = "
             "(z(RSA level) − z(RSA instability)) / 2, standardised over the study; unit: 1 SD of the study's "
             "regulation scores. Asks: is the client more in sync when this therapist is more regulated than usual?",
    "reg_b": "the dyad's mean regulation minus the study mean (same unit). Asks: are dyads whose therapist is "
             "more regulated on average more in sync? Needs several dyads.",
    "level_w": "therapist RSA level (mean of the session's 30-s RSA epochs, ln ms²), session minus dyad mean",
    "level_b": "therapist RSA level (ln ms²), dyad mean minus study mean",
    "instab_w": "therapist RSA instability (SD of the session's 30-s RSA epochs, ln ms²), session minus dyad mean",
    "instab_b": "therapist RSA instability (ln ms²), dyad mean minus study mean",
    "rsa_ws": "therapist RSA of one 30-s epoch minus the session mean (ln ms²)",
    "rsa_bs": "the session's mean therapist RSA minus the dyad's mean (ln ms²)",
    "rsa_bd": "the dyad's mean therapist RSA minus the study mean (ln ms²)",
    "c_lag": "the client's RSA in the previous 30-s epoch, centred on the session mean (ln ms²)",
    "t_lag": "the therapist's RSA in the previous 30-s epoch, centred on the session mean (ln ms²)",
    "therapist_side": "1 for the therapist-led side, 0 for the client-led side: β is therapist-led − client-led "
                      "(Fisher z)",
}
MODEL_WORDS = {"a": "(a) regulation → synchrony", "b": "(b) lagged RSA coupling (Goren et al. 2024)",
               "c": "(c) therapist-led vs client-led (Prinz et al. 2021)"}


def outcome_words(outcome: str) -> str:
    """An outcome column in words, with its unit."""
    ch, _, key = outcome.partition("_")
    fixed = {"c_w": "client RSA (ln ms², session-centred)", "t_w": "therapist RSA (ln ms², session-centred)",
             "z": "synchrony (session mean Fisher z)",
             "lead_diff": "therapist-led − client-led synchrony (Fisher z)"}
    if outcome in fixed:
        return fixed[outcome]
    words = {"therapist_led": "therapist-led synchrony (mean Fisher z over lags τ > 0)",
             "client_led": "client-led synchrony (mean Fisher z over lags τ < 0)",
             "inphase_z": "in-phase peak synchrony (mean Fisher z)",
             "inphase_effect": "in-phase synchrony against surrogates (effect size, SDs of the null)"}
    return f"{ch.upper()} {words[key]}" if key in words else outcome


def outcome_short(outcome: str) -> str:
    """An outcome in two or three words (forest plot labels)."""
    fixed = {"c_w": "client RSA", "t_w": "therapist RSA", "z": "synchrony z", "lead_diff": "T-led − C-led z"}
    if outcome in fixed:
        return fixed[outcome]
    ch, _, key = outcome.partition("_")
    words = {"therapist_led": "therapist-led z", "client_led": "client-led z", "inphase_z": "in-phase peak z",
             "inphase_effect": "in-phase effect size"}
    return f"{ch.upper()} {words.get(key, key)}"


def model_words(model: str) -> str:
    head, _, rest = model.partition(":")
    return f"{MODEL_WORDS.get(head, head)}: {rest.strip()}" if rest else model


SESSION_COLUMNS = {
    "session": "session", "dyad": "dyad (therapist-client)", "order": "session no. in dyad (0 = first)",
    "t_rsa_level": "therapist RSA level (ln ms²)", "t_rsa_instability": "therapist RSA instability (SD, ln ms²)",
    "t_rsa_epochs": "therapist RSA epochs (30 s)", "c_rsa_level": "client RSA level (ln ms²)",
}


def _session_column(c: str, channel: str) -> str:
    if c in SESSION_COLUMNS:
        return SESSION_COLUMNS[c]
    return outcome_words(c) if c.startswith(f"{channel}_") else c


# ------------------------------------------------------------------------------------------------ HTML
def _e(x: object) -> str:
    return html.escape(str(x))


def _f(x: float, d: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{d}f}" if abs(x) >= 10 ** -(d - 1) or x == 0 \
        else f"{x:.{d}g}"


def _cell(v: object) -> str:
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return _f(float(v))
    return _e(v)


def forest_figure(models: StudyModels):
    """Standardised coefficients (β·SD(x)/SD(y)) with 95 % CIs, one row per term, labelled in words:
    every model's terms are in their own units, so only the standardised scale puts them on one axis."""
    from matplotlib.figure import Figure

    terms = [t for t in models.terms if math.isfinite(t.std_ci_low) and math.isfinite(t.std_ci_high)]
    if not terms:
        return None
    fig = Figure(figsize=(10, 0.34 * len(terms) + 1.6))
    ax = fig.subplots()
    yy = np.arange(len(terms))[::-1]
    labels = []
    for yi, t in zip(yy, terms, strict=True):
        col = "#1e7d32" if t.p_value < 0.05 else "#555"
        ax.plot([t.std_ci_low, t.std_ci_high], [yi, yi], color=col, lw=1.6)
        ax.plot([t.std_effect], [yi], "o", color=col)
        head = t.model.split(":")[0]
        labels.append(f"({head}) {outcome_short(t.outcome)}  ←  {TERM_SHORT.get(t.term, t.term)}")
    ax.axvline(0, color="k", lw=0.6)
    ax.set_yticks(yy, labels, fontsize=8)
    ax.set_xlabel("standardised coefficient β·SD(term)/SD(outcome), with 95 % CI   (0 = no association; "
                  "green: p < 0.05)", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Model terms: outcome ← term. (a) regulation → synchrony, (b) lagged RSA coupling, "
                 "(c) therapist-led vs client-led", fontsize=9)
    return fig


def _figures(tables: StudyTables, models: StudyModels) -> list[tuple[str, str]]:
    from matplotlib.figure import Figure

    from .analysis.plots import to_data_uri

    figs = []
    s = tables.sessions
    ch = models.channel
    y = f"{ch}_therapist_led"
    if {"t_rsa_level", "t_rsa_instability", y} <= set(s.columns):
        fig = Figure(figsize=(10, 3.6))
        ax1, ax2 = fig.subplots(1, 2)
        for dyad, g in s.groupby("dyad"):
            ax1.plot(g["t_rsa_level"], g[y], "o", ms=4, label=dyad)
            ax2.plot(g["t_rsa_instability"], g[y], "o", ms=4)
        ax1.set_xlabel("therapist RSA level (ln ms²)\nhigher = more regulated")
        ax2.set_xlabel("therapist RSA instability (SD of 30-s epochs, ln ms²)\nlower = more regulated")
        ax1.set_ylabel(f"{ch.upper()} therapist-led z\n(session mean Fisher z)")
        if s["dyad"].nunique() <= 15:
            ax1.legend(fontsize=6, ncol=2, title="dyad", title_fontsize=6)
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
        fig.suptitle("Client synchrony against therapist regulation, one point per session (colour: dyad)",
                     fontsize=10)
        figs.append(("sessions against regulation", to_data_uri(fig)))
    fig = forest_figure(models)
    if fig is not None:
        figs.append(("standardised coefficients of every model term", to_data_uri(fig)))
    cl = f"{ch}_client_led"
    if cl in s.columns:
        fig = Figure(figsize=(5, 3.6))
        ax = fig.subplots()
        for _, r in s.iterrows():
            ax.plot([0, 1], [r[y], r[cl]], "-", color="#999", lw=0.7)
        ax.plot(np.zeros(len(s)), s[y], "o", color="#1f5fa8", ms=4)
        ax.plot(np.ones(len(s)), s[cl], "o", color="#c0392b", ms=4)
        ax.set_xticks([0, 1], ["therapist-led\n(τ > 0)", "client-led\n(τ < 0)"])
        ax.set_ylabel(f"{ch.upper()} session mean Fisher z")
        ax.set_title("Prinz-style contrast, one line per session", fontsize=9)
        figs.append(("therapist-led against client-led synchrony", to_data_uri(fig)))
    return figs


VERDICT_CLASS = {"supports": "ok", "contradicts": "bad", "no_claim": "note", "not_estimable": "warn"}


def _estimability_html(est: Estimability) -> str:
    parts = ["<h2>What these data can estimate</h2>",
             f"<p>{est.n_sessions} usable sessions of {_plural(est.n_dyads, 'dyad')} "
             f"({', '.join(f'{_e(d)}: {k}' for d, k in sorted(est.sessions_per_dyad.items())) or 'none'}).</p>"]
    if est.facts:
        parts.append("<ul>" + "".join(f"<li>{_e(f.strip())}</li>" for f in est.facts) + "</ul>")
    parts.append("<table id='estimability'><tr><th class='l'>effect</th><th class='l'>estimable?</th>"
                 "<th class='l'>the data hold</th><th class='l'>why not, and what more data would be needed</th></tr>")
    for e in est.effects.values():
        mark = "<span class='ok'>yes</span>" if e.estimable else "<span class='bad'>not estimable</span>"
        why = "" if e.estimable else f"{_e(e.why)}" + (f" <b>Needed:</b> {_e(e.needs)}" if e.needs else "")
        parts.append(f"<tr id='est-{_e(e.key)}'><td class='l'>{_e(e.label)}</td><td class='l'>{mark}</td>"
                     f"<td class='l'>{_e(e.have)}</td><td class='l'>{why}</td></tr>")
    parts.append("</table>")
    parts.append(f"<p>{'A verdict on the hypothesis is possible' if est.verdict_possible else 'No verdict on the hypothesis is possible'}"
                 f": {_e(est.verdict_why)}" + (f" <b>Needed:</b> {_e(est.verdict_needs)}" if est.verdict_needs else "")
                 + "</p>")
    return "\n".join(parts)


def _term_li(t: Term) -> str:
    return (f"<li><b>{_e(TERM_SHORT.get(t.term, t.term))}</b> (<code>{_e(t.term)}</code>): β = {t.coef:+.3f} z per SD "
            f"of regulation, 95 % CI [{t.ci_low:+.3f}, {t.ci_high:+.3f}], {_e(t.note)}, p = {_f(t.p_value)}, "
            f"standardised {_f(t.std_effect, 2)} ({_e(t.method)})</li>")


def render_study(tables: StudyTables, models: StudyModels, skipped: list[str]) -> str:
    from .report import CSS

    s = tables.sessions
    p = models.primary
    ch = models.channel
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>dyadsync study</title>"
             f"<style>{CSS}.box{{padding:0.6em 0.9em;border-left:5px solid #999;background:#f6f6f6}}"
             ".box.ok{border-color:#1e7d32;background:#eef7ee;color:#222;font-weight:normal}"
             ".box.bad{border-color:#b03a2e;background:#fbeeee;color:#222;font-weight:normal}"
             ".box.warn{border-color:#e67e22;background:#fff4e0}</style></head><body>"
             "<h1>Study: therapist regulation and client synchrony</h1>",
             f"<p>{_plural(len(s), 'session')} of {_plural(s['dyad'].nunique(), 'dyad')}; synchrony channel <b>{_e(ch)}</b>. "
             "Hypothesis: client synchrony (therapist-led, Fisher z) is stronger in sessions in which the therapist "
             "is more regulated (RSA high and stable). Regulation = (z(RSA level) − z(RSA instability)) / 2 over the "
             "study; <i>within dyad</i> = the session's deviation from its dyad's mean, <i>between dyads</i> = the "
             "dyad's mean. Mixed models with a random intercept per dyad (statsmodels MixedLM, REML); only the "
             "terms the data can estimate are fitted.</p>"]
    est = models.estimability
    if est is not None:
        parts.append(_estimability_html(est))
    v = models.verdict
    if v is not None:
        head, sep, rest = v.text.partition(": ")
        body = f"<b>{_e(head)}:</b> {_e(rest)}" if sep else _e(v.text)
        parts.append(f"<h2>Answer</h2><div class='box {VERDICT_CLASS[v.kind]}' id='verdict' data-kind='{v.kind}'>"
                     f"{body}</div>")
    if p is not None:
        scope = ("Primary test" if v is None or v.kind != "not_estimable"
                 else "Description of the dyads seen (not a test of the hypothesis)")
        parts.append(f"<p>{scope}: {_e(outcome_words(p.outcome))} ~ therapist regulation, within dyads, "
                     f"{_plural(p.n_obs, 'session')}, {_plural(p.n_groups, 'dyad')}:</p><ul>" + _term_li(p.within)
                     + (_term_li(p.between) if p.between is not None else
                        "<li><b>therapist regulation, between dyads</b> (<code>reg_b</code>): not estimable with "
                        "these data (see above); not fitted.</li>") + "</ul>")
        if math.isfinite(p.chi2):
            parts.append(f"<p>Joint test of the within- and between-dyad slopes: χ²(2) = {_f(p.chi2, 2)}, "
                         f"p = {_f(p.chi2_p_value)}.</p>")
    if models.contrast:
        c = models.contrast
        parts.append(f"<p>Therapist-led vs client-led (Prinz-style): mean difference {_f(c['mean_diff'])} z over "
                     f"{c['n_sessions']} sessions, Cohen's d_z = {_f(c['d_z'], 2)} [{_f(c['d_z_ci_low'], 2)}, "
                     f"{_f(c['d_z_ci_high'], 2)}]; therapist-led stronger in {c['share_therapist_stronger']:.0%} "
                     "of sessions.</p>")
    for name, uri in _figures(tables, models):
        parts.append(f"<img src='{uri}' alt='{_e(name)}'>")
    parts.append("<h2>Models</h2><p class='note'>β is in the outcome's unit per unit of the term (see the legend "
                 "below); standardised = β·SD(term)/SD(outcome). p and CI from t tests with between-within degrees "
                 "of freedom (shown as t(df)).</p><table id='models'><tr><th class='l'>model</th>"
                 "<th class='l'>outcome (unit)</th><th class='l'>term</th><th>β</th><th>95 % CI</th><th>p</th>"
                 "<th>standardised</th><th>n</th><th>dyads</th><th class='l'>method</th><th>df</th></tr>")
    for t in models.terms:
        sig = " class='sig'" if t.p_value < 0.05 else ""
        parts.append(f"<tr><td class='l'>{_e(model_words(t.model))}</td><td class='l'>{_e(outcome_words(t.outcome))}"
                     f"</td><td class='l'>{_e(TERM_SHORT.get(t.term, t.term))} <code>{_e(t.term)}</code></td>"
                     f"<td>{_f(t.coef)}</td><td>[{_f(t.ci_low)}, {_f(t.ci_high)}]</td><td{sig}>{_f(t.p_value)}</td>"
                     f"<td>{_f(t.std_effect, 2)}</td><td>{t.n_obs}</td><td>{t.n_groups}</td>"
                     f"<td class='l'>{_e(t.method)}</td><td>{_e(t.note)}</td></tr>")
    if est is not None:
        for key, codes in (("within", "reg_w, level_w, instab_w, rsa_bs"), ("between", "reg_b, level_b, instab_b, rsa_bd")):
            e = est.effects[key]
            if not e.estimable:
                parts.append(f"<tr class='notest'><td class='l'>{_e(MODEL_WORDS['a'])}</td><td class='l'>all</td>"
                             f"<td class='l'>{_e(e.label)} <code>{_e(codes)}</code></td><td colspan='8' class='l'>"
                             f"not estimable with these data: {_e(e.why)}</td></tr>")
    parts.append("</table><h3>What the terms mean</h3><table id='legend'><tr><th class='l'>term</th>"
                 "<th class='l'>meaning and unit</th></tr>")
    shown = [k for k in TERM_LONG if any(t.term == k for t in models.terms)] or ["reg_w", "reg_b"]
    for k in shown:
        parts.append(f"<tr><td class='l'><code>{_e(k)}</code></td><td class='l'>{_e(TERM_LONG[k])}</td></tr>")
    parts.append("</table><p class='note'>Model labels: <b>a:</b> (a) therapist regulation → client synchrony "
                 "(the hypothesis); <b>b:</b> (b) lagged RSA coupling between the two people over 30-s epochs; "
                 "<b>c:</b> (c) therapist-led against client-led synchrony. Fisher z: atanh of the windowed "
                 "cross-correlation; τ &gt; 0 means the therapist leads.</p>")
    parts.append("<h2>Model-fitting warnings</h2>")
    if models.warnings:
        parts.append("<p>Warnings raised while fitting (kept here, not printed): a convergence or singularity "
                     "warning means that model's numbers deserve caution.</p><table id='fit-warnings'><tr>"
                     "<th class='l'>model</th><th class='l'>warning</th><th class='l'>message</th><th>times</th></tr>"
                     + "".join(f"<tr><td class='l'>{_e(model_words(w.model))}</td><td class='l'>{_e(w.category)}</td>"
                               f"<td class='l'>{_e(w.message)}</td><td>{w.count}</td></tr>" for w in models.warnings)
                     + "</table>")
    else:
        parts.append("<p id='fit-warnings'>None: every model was fitted without a warning.</p>")
    if models.notes or skipped:
        parts.append("<div class='warn'><b>Notes</b><ul>" + "".join(
            f"<li>{_e(n)}</li>" for n in [*models.notes, *(f'skipped {x}' for x in skipped)]) + "</ul></div>")
    cols = [c for c in ("session", "dyad", "order", "t_rsa_level", "t_rsa_instability", "t_rsa_epochs", "c_rsa_level",
                        f"{ch}_therapist_led", f"{ch}_client_led", f"{ch}_inphase_z", f"{ch}_inphase_effect")
            if c in s.columns]
    parts.append("<h2>Sessions</h2><table><tr>" + "".join(
        f"<th title='{_e(c)}'>{_e(_session_column(c, ch))}</th>" for c in cols) + "</tr>")
    for _, r in s[cols].iterrows():
        parts.append("<tr>" + "".join(f"<td>{_cell(r[c])}</td>" for c in cols) + "</tr>")
    parts.append(f"</table><p class='note'>Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}; tables in "
                 "sessions.csv, windows.csv, epochs.csv, models.csv.</p></body></html>")
    return "\n".join(parts)
