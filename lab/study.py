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

Standardised effects are β · SD(x) / SD(y). Outputs: ``sessions.csv``, ``windows.csv``, ``epochs.csv``,
``models.csv`` (Parquet copies when pyarrow is installed), PNG figures and ``study.html``.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
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
    "StudyError",
    "StudyResult",
    "StudyTables",
    "fit_models",
    "record_from_arrays",
    "run_study",
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


@dataclass
class Primary:
    """The primary test: the within-dyad slope of client synchrony on therapist regulation (t test with
    between-within df); the between-dyad slope and the joint χ²(2) Wald test are reported beside it."""

    outcome: str
    p_value: float
    within: Term
    between: Term
    chi2: float
    chi2_p_value: float
    n_obs: int
    n_groups: int

    @property
    def detected(self) -> bool:
        """p < 0.05 for the within-dyad slope, in either direction."""
        return math.isfinite(self.p_value) and self.p_value < 0.05


@dataclass
class StudyModels:
    channel: str
    terms: list[Term]
    primary: Primary | None
    contrast: dict
    notes: list[str] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([t.__dict__ for t in self.terms])


def _split(df: pd.DataFrame, col: str, group: str, name: str) -> None:
    """Person-mean centring: ``name_b`` = group mean − grand mean, ``name_w`` = value − group mean."""
    gm = df.groupby(group)[col].transform("mean")
    df[f"{name}_b"] = gm - df[col].mean()
    df[f"{name}_w"] = df[col] - gm


def _fit(df: pd.DataFrame, y: str, xs: list[str], group: str = "dyad", vc: dict | None = None):
    """MixedLM (REML, random intercept per ``group``); falls back to OLS with cluster-robust SEs when the
    grouping cannot carry a random effect (fewer than 3 groups or one observation per group)."""
    import statsmodels.formula.api as smf
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    d = df.dropna(subset=[y, *xs])
    n_groups = d[group].nunique()
    formula = f"{y} ~ " + " + ".join(xs)
    if len(d) < len(xs) + 3:
        raise StudyError(f"{formula}: {len(d)} complete rows are too few")
    if n_groups >= 3 and len(d) > n_groups:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", UserWarning)
            try:
                res = smf.mixedlm(formula, d, groups=d[group], vc_formula=vc).fit(reml=True)
                if np.all(np.isfinite(res.bse[xs])):
                    return res, d, "MixedLM"
            except (np.linalg.LinAlgError, ValueError) as exc:
                logger.info("MixedLM %s failed (%s); OLS with cluster-robust SEs", formula, exc)
    res = smf.ols(formula, d).fit(cov_type="cluster", cov_kwds={"groups": pd.factorize(d[group])[0]}) \
        if n_groups >= 2 else smf.ols(formula, d).fit()
    return res, d, "OLS (cluster-robust)" if n_groups >= 2 else "OLS"


def _df(term: str, xs: list[str], n_obs: int, n_groups: int, method: str) -> int:
    """Between-within degrees of freedom (as SAS DDFM=BETWITHIN): a dyad-level term (``*_b``, ``rsa_bd``) has
    ``n_groups − (dyad-level terms) − 1``, any other ``n_obs − n_groups − (other terms)``; an OLS fit
    ``n_obs − terms − 1``. Wald z tests with few dyads are too liberal; t with these df is not."""
    between = [x for x in xs if x.endswith("_b") or x == "rsa_bd"]
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
        p = float(2 * stats.t.sf(abs(b / se), df)) if se > 0 else math.nan
        out.append(Term(model, y, x, b, se, b - q * se, b + q * se, p, b * sx / sy if sy > 0 else math.nan, n_obs,
                        n_groups, method, note=f"t({df})"))
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


def fit_models(tables: StudyTables, channel: str = "eda", *, primary_only: bool = False) -> StudyModels:
    """The study's models (module docstring) on ``channel``; ``primary_only`` fits just the primary test."""
    s = tables.sessions.copy()
    notes: list[str] = []
    need = ["t_rsa_level", "t_rsa_instability", f"{channel}_therapist_led"]
    missing = [c for c in need if c not in s.columns]
    if missing:
        raise StudyError(f"the sessions lack {', '.join(missing)} (no {channel} synchrony or no therapist RSA)")
    ok = s["t_rsa_level"].notna() & s["t_rsa_instability"].notna()
    if ok.sum() < 6:
        raise StudyError(f"only {int(ok.sum())} sessions have therapist RSA epochs; the models need at least 6")
    s = s[ok].copy()

    def z(col: str) -> pd.Series:
        sd = s[col].std(ddof=1)
        return (s[col] - s[col].mean()) / sd if sd > 0 else s[col] * 0.0

    s["t_regulation"] = (z("t_rsa_level") - z("t_rsa_instability")) / 2
    _split(s, "t_regulation", "dyad", "reg")
    terms: list[Term] = []
    y0 = f"{channel}_therapist_led"
    res, d, method = _fit(s, y0, ["reg_w", "reg_b"])
    chi2, p = _joint_wald(res, ["reg_w", "reg_b"])
    tt = _terms(res, d, y0, ["reg_w", "reg_b"], "a: regulation (within/between dyad)", method)
    terms += tt
    primary = Primary(y0, tt[0].p_value, tt[0], tt[1], chi2, p, int(len(d)), int(d["dyad"].nunique()))
    contrast: dict = {}
    if primary_only:
        return StudyModels(channel, terms, primary, contrast, notes)
    for out in OUTCOMES[1:]:
        y = f"{channel}_{out}"
        if y not in s.columns or s[y].notna().sum() < 6:
            notes.append(f"model (a) for {OUTCOME_LABELS[out]}: not enough sessions with a value")
            continue
        try:
            res, d, method = _fit(s, y, ["reg_w", "reg_b"])
            terms += _terms(res, d, y, ["reg_w", "reg_b"], "a: regulation (within/between dyad)", method)
        except StudyError as exc:
            notes.append(str(exc))
    _split(s, "t_rsa_level", "dyad", "level")
    _split(s, "t_rsa_instability", "dyad", "instab")
    xs = ["level_w", "level_b", "instab_w", "instab_b"]
    try:
        res, d, method = _fit(s, y0, xs)
        terms += _terms(res, d, y0, xs, "a: RSA level and instability (within/between dyad)", method)
    except StudyError as exc:
        notes.append(str(exc))
    # epoch level: therapist RSA within session, between sessions (within dyad), between dyads
    e = tables.epochs.copy()
    ye = f"{channel}_therapist_led"
    if len(e) and "t_rsa" in e.columns and ye in e.columns:
        e = e.dropna(subset=["t_rsa", ye])
        if len(e) > 20:
            sm = e.groupby("session")["t_rsa"].transform("mean")
            dm = e.groupby("dyad")["t_rsa"].transform("mean")
            e["rsa_ws"] = e["t_rsa"] - sm
            e["rsa_bs"] = sm - dm
            e["rsa_bd"] = dm - e["t_rsa"].mean()
            xs = ["rsa_ws", "rsa_bs", "rsa_bd"]
            try:
                res, d, method = _fit(e, ye, xs, vc={"session": "0 + C(session)"})
                terms += _terms(res, d, ye, xs, "a: epoch-level therapist RSA (within session / between "
                                "sessions / between dyads)", method)
            except StudyError as exc:
                notes.append(str(exc))
    # (b) lagged coupling on epochs, each person centred on the session mean
    e = tables.epochs.copy()
    if len(e) and {"t_rsa", "c_rsa"} <= set(e.columns):
        e = e.sort_values(["session", "epoch"])
        for p_ in ("t", "c"):
            e[f"{p_}_w"] = e[f"{p_}_rsa"] - e.groupby("session")[f"{p_}_rsa"].transform("mean")
            prev = e.groupby("session")[f"{p_}_w"].shift(1)
            consecutive = e.groupby("session")["epoch"].diff() == 1
            e[f"{p_}_lag"] = prev.where(consecutive)
        for y, own, other, label in (("c_w", "c_lag", "t_lag", "b: RSA_C(t) ~ RSA_C(t−1) + RSA_T(t−1)"),
                                     ("t_w", "t_lag", "c_lag", "b: RSA_T(t) ~ RSA_T(t−1) + RSA_C(t−1)")):
            try:
                res, d, method = _fit(e, y, [own, other])
                terms += _terms(res, d, y, [own, other], label, method)
            except StudyError as exc:
                notes.append(str(exc))
    # (c) therapist-led vs client-led
    tl, cl = f"{channel}_therapist_led", f"{channel}_client_led"
    if cl in s.columns:
        pair = s.dropna(subset=[tl, cl])
        long = pd.concat([pair[["dyad", "session"]].assign(z=pair[tl], therapist_side=1.0),
                          pair[["dyad", "session"]].assign(z=pair[cl], therapist_side=0.0)])
        try:
            res, d, method = _fit(long, "z", ["therapist_side"], vc={"session": "0 + C(session)"})
            terms += _terms(res, d, "z", ["therapist_side"], "c: therapist-led − client-led", method)
        except StudyError as exc:
            notes.append(str(exc))
        diff = (pair[tl] - pair[cl]).to_numpy()
        n = len(diff)
        if n >= 3:
            dz = float(diff.mean() / diff.std(ddof=1)) if diff.std(ddof=1) > 0 else math.nan
            se = math.sqrt(1 / n + dz * dz / (2 * n)) if math.isfinite(dz) else math.nan
            contrast = {"n_sessions": n, "mean_diff": float(diff.mean()), "d_z": dz,
                        "d_z_ci_low": dz - 1.96 * se, "d_z_ci_high": dz + 1.96 * se,
                        "share_therapist_stronger": float(np.mean(diff > 0))}
        s["lead_diff"] = s[tl] - s[cl]
        try:
            res, d, method = _fit(s, "lead_diff", ["reg_w", "reg_b"])
            terms += _terms(res, d, "lead_diff", ["reg_w", "reg_b"],
                            "c: regulation → (therapist-led − client-led)", method)
        except StudyError as exc:
            notes.append(str(exc))
    return StudyModels(channel, terms, primary, contrast, notes)


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


@dataclass
class StudyResult:
    tables: StudyTables
    models: StudyModels
    out_dir: Path
    html_path: Path
    files: list[Path]
    skipped: list[str]

    @property
    def n_sessions(self) -> int:
        return len(self.tables.sessions)

    @property
    def n_dyads(self) -> int:
        return int(self.tables.sessions["dyad"].nunique())

    def headline(self) -> list[str]:
        p = self.models.primary
        lines = []
        if p is not None:
            lines.append(f"primary: {p.outcome} ~ therapist regulation within dyads: p = {p.p_value:.3g} "
                         f"({p.n_obs} sessions, {p.n_groups} dyads; joint within+between chi2(2) = {p.chi2:.2f}, "
                         f"p = {p.chi2_p_value:.3g})")
            for t in (p.within, p.between):
                if t is not None:
                    lines.append(f"  {t.term}: {t.coef:+.3f} [{t.ci_low:+.3f}, {t.ci_high:+.3f}], p = {t.p_value:.3g}")
        lines += [f"skipped: {s}" for s in self.skipped]
        return lines


def run_study(sources: list[Path], out_dir: Path, *, channel: str = "eda", n_surrogates: int = 200, seed: int = 0,
              progress: bool = False) -> StudyResult:
    """Analyse every session of the sources and write tables, models, figures and ``study.html``."""
    from tqdm import tqdm

    found = iter_sessions(sources)
    if not found:
        raise StudyError(f"no sessions found in {', '.join(map(str, sources))}")
    records: list[SessionRecord] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for kind, path, session in tqdm(found, desc="study", unit="session", disable=not progress):
        try:
            data: SessionData = (load_from_db(path, session, with_raw=True) if kind == "db"  # type: ignore[arg-type]
                                 else load_from_folder(path, with_raw=True))
            if data.session in seen:
                skipped.append(f"{data.session} ({path}): already read from another source")
                continue
            seen.add(data.session)
            an = analyse_session(data, None, n_surrogates=n_surrogates, seed=seed)
            records.append(session_record(an))
        except AnalysisError as exc:
            skipped.append(f"{session or path}: {exc}")
            logger.warning("study: session %s skipped: %s", session or path, exc)
    tables = tables_from_records(records)
    models = fit_models(tables, channel)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = write_tables(tables, models, out_dir)
    html_path = out_dir / "study.html"
    html_path.write_text(render_study(tables, models, skipped), encoding="utf-8")
    files.append(html_path)
    return StudyResult(tables, models, out_dir, html_path, files, skipped)


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
        ax1.set_xlabel("therapist RSA level (ln ms²)")
        ax2.set_xlabel("therapist RSA instability (SD of epochs)")
        ax1.set_ylabel(f"{ch.upper()} therapist-led z (session mean)")
        if s["dyad"].nunique() <= 15:
            ax1.legend(fontsize=6, ncol=2)
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
        fig.suptitle("Client synchrony against therapist regulation, one point per session (colour: dyad)",
                     fontsize=10)
        figs.append(("sessions", to_data_uri(fig)))
    terms = [t for t in models.terms if math.isfinite(t.ci_low)]
    if terms:
        fig = Figure(figsize=(10, 0.32 * len(terms) + 1.2))
        ax = fig.subplots()
        yy = np.arange(len(terms))[::-1]
        for yi, t in zip(yy, terms, strict=True):
            col = "#1e7d32" if t.p_value < 0.05 else "#555"
            ax.plot([t.ci_low, t.ci_high], [yi, yi], color=col)
            ax.plot([t.coef], [yi], "o", color=col)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_yticks(yy, [f"{t.model.split(':')[0]}: {t.outcome} · {t.term}" for t in terms], fontsize=7)
        ax.set_xlabel("coefficient with 95 % CI (green: p < 0.05)")
        figs.append(("coefficients", to_data_uri(fig)))
    cl = f"{ch}_client_led"
    if cl in s.columns:
        fig = Figure(figsize=(5, 3.6))
        ax = fig.subplots()
        for _, r in s.iterrows():
            ax.plot([0, 1], [r[y], r[cl]], "-", color="#999", lw=0.7)
        ax.plot(np.zeros(len(s)), s[y], "o", color="#1f5fa8", ms=4)
        ax.plot(np.ones(len(s)), s[cl], "o", color="#c0392b", ms=4)
        ax.set_xticks([0, 1], ["therapist-led", "client-led"])
        ax.set_ylabel("session mean z")
        ax.set_title("Prinz-style contrast, one line per session", fontsize=9)
        figs.append(("contrast", to_data_uri(fig)))
    return figs


def render_study(tables: StudyTables, models: StudyModels, skipped: list[str]) -> str:
    from .report import CSS

    s = tables.sessions
    p = models.primary
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>dyadsync study</title>"
             f"<style>{CSS}</style></head><body><h1>Study: therapist regulation and client synchrony</h1>",
             f"<p>{len(s)} sessions of {s['dyad'].nunique()} dyads; synchrony channel <b>{_e(models.channel)}</b>. "
             "Regulation = (z(RSA level) − z(RSA instability)) / 2 over the study; within = the session's deviation "
             "from its dyad's mean, between = the dyad's mean. Mixed models with a random intercept per dyad "
             "(statsmodels MixedLM, REML).</p>"]
    if p is not None:
        verdict = "support" if p.detected and p.within.coef > 0 else (
            "contradict" if p.detected else "do not support")
        parts.append(f"<h2>Answer</h2><p>Primary test: {_e(p.outcome)} ~ therapist regulation, within dyads "
                     f"(a session in which this therapist is more regulated than usual): <b>p = {_f(p.p_value)}"
                     f"</b>. The data <b>{verdict}</b> the hypothesis that client synchrony is stronger when the "
                     f"therapist is regulated. Joint test of the within- and between-dyad slopes: χ²(2) = "
                     f"{_f(p.chi2, 2)}, p = {_f(p.chi2_p_value)}.</p><ul>")
        for t in (p.within, p.between):
            parts.append(f"<li>{_e(t.term)}: β = {_f(t.coef)} per SD of regulation, 95 % CI "
                         f"[{_f(t.ci_low)}, {_f(t.ci_high)}], p = {_f(t.p_value)}, standardised {_f(t.std_effect, 2)}"
                         "</li>")
        parts.append("</ul>")
    if models.contrast:
        c = models.contrast
        parts.append(f"<p>Therapist-led vs client-led (Prinz-style): mean difference {_f(c['mean_diff'])} z over "
                     f"{c['n_sessions']} sessions, Cohen's d_z = {_f(c['d_z'], 2)} [{_f(c['d_z_ci_low'], 2)}, "
                     f"{_f(c['d_z_ci_high'], 2)}]; therapist-led stronger in {c['share_therapist_stronger']:.0%} "
                     "of sessions.</p>")
    for name, uri in _figures(tables, models):
        parts.append(f"<img src='{uri}' alt='{_e(name)}'>")
    parts.append("<h2>Models</h2><table><tr><th class='l'>model</th><th class='l'>outcome</th><th class='l'>term</th>"
                 "<th>β</th><th>95 % CI</th><th>p</th><th>standardised</th><th>n</th><th>dyads</th>"
                 "<th class='l'>method</th></tr>")
    for t in models.terms:
        sig = " class='sig'" if t.p_value < 0.05 else ""
        parts.append(f"<tr><td class='l'>{_e(t.model)}</td><td class='l'>{_e(t.outcome)}</td>"
                     f"<td class='l'>{_e(t.term)}</td><td>{_f(t.coef)}</td><td>[{_f(t.ci_low)}, {_f(t.ci_high)}]</td>"
                     f"<td{sig}>{_f(t.p_value)}</td><td>{_f(t.std_effect, 2)}</td><td>{t.n_obs}</td>"
                     f"<td>{t.n_groups}</td><td class='l'>{_e(t.method)}</td></tr>")
    parts.append("</table><p class='note'>Terms: reg_w / reg_b regulation within / between dyads; level_*, "
                 "instab_* RSA level and instability; rsa_ws / rsa_bs / rsa_bd epoch RSA within session / between "
                 "sessions / between dyads; c_lag, t_lag the previous epoch's session-centred RSA of the client / "
                 "therapist; therapist_side the therapist-led minus client-led difference.</p>")
    if models.notes or skipped:
        parts.append("<div class='warn'><b>Notes</b><ul>" + "".join(
            f"<li>{_e(n)}</li>" for n in [*models.notes, *(f'skipped {x}' for x in skipped)]) + "</ul></div>")
    cols = [c for c in ("session", "dyad", "order", "t_rsa_level", "t_rsa_instability", "c_rsa_level",
                        f"{models.channel}_therapist_led", f"{models.channel}_client_led",
                        f"{models.channel}_inphase_z", f"{models.channel}_inphase_effect") if c in s.columns]
    parts.append("<h2>Sessions</h2><table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr>")
    for _, r in s[cols].iterrows():
        parts.append("<tr>" + "".join(
            f"<td>{_cell(r[c])}</td>" for c in cols)
            + "</tr>")
    parts.append(f"</table><p class='note'>Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}; tables in "
                 "sessions.csv, windows.csv, epochs.csv, models.csv.</p></body></html>")
    return "\n".join(parts)

