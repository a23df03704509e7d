"""A simulated study with a known answer: N dyads x M sessions, therapist regulation -> client synchrony.

``dyadsync hil study --dyads 12 --sessions 4 --effect 0.5 --out DIR`` writes ``DIR/hub.sqlite`` (a real hub
database, written through :mod:`broker.store` the way the recorder writes it) and ``DIR/truth.json``, then
``dyadsync study DIR/hub.sqlite`` should find the effect it was given (``--analyse`` runs it at once).

The design (Curran & Bauer 2011's within/between split is what the study separates):

* every dyad has its own coupling gain (U(0.3, 0.6); the client follows the therapist 2 s later over the
  whole session) and its own therapist, whose RSA level (dyad mean N(6, 0.5) ln ms²) and epoch-to-epoch
  instability (dyad mean U(0.15, 0.45)) vary from session to session (SD 0.6 and 0.1);
* each session is one :class:`hil.physiology.DyadSimulator`; its ``regulation_effect`` is the known effect:
  the coupling's Fisher z rises by ``effect`` per unit of the therapist's regulation index in that session
  (``hil.physiology``: R = ((level − 6) / 0.7 − (instability − 0.3) / 0.12) / 2). With ``effect = 0``
  synchrony does not depend on regulation and the study must make no claim;
* the 4 Hz features are the simulator's truth (noise-free EDA, beat-to-beat heart rate on the grid) — what an
  ideal front end would measure — stored as 1-s feature blocks; each session starts on its own simulated
  clock (sessions one simulated hour apart) and carries a marker at the start of each truth segment.

The same draws (:func:`study_sessions`) feed :func:`simulate_records` (in-process records for fast power
tests) and :func:`write_hub_db` (the CLI's database), so the power figures in ``docs/analysis.md`` are those
of the study the CLI builds.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the CLI registers this module's parser without loading the simulator
    from hil.physiology import GroundTruth, Segment, SimConfig

__all__ = ["SimSession", "simulate_records", "study_sessions", "write_hub_db"]

ROOM = "sim-room"
UNIT = "sim-unit"
T0_NS = 1_780_000_000_000_000_000  # first session's start on the simulated clock (2026-05-28 UTC)
GAP_S = 3600.0  # simulated time between the starts of consecutive sessions, on top of their length
LEAD_LAG_S = 2.0


@dataclass
class SimSession:
    dyad: int
    index: int  # session number within the dyad, 0-based
    session: str
    therapist: str
    client: str
    config: SimConfig
    truth: GroundTruth


def study_sessions(seed: int, effect: float, n_dyads: int, n_sessions: int, duration_s: float = 300.0, *,
                   first_dyad: int = 0, rsa_coupling_t_to_c: float = 0.0) -> Iterator[SimSession]:
    """The simulated sessions, dyad by dyad (same ``seed`` -> same people, whatever ``effect``)."""
    from hil.physiology import DyadSimulator, Segment, SimConfig

    if n_dyads < 1 or n_sessions < 1:
        raise ValueError("a study needs at least one dyad and one session per dyad")
    rng = np.random.default_rng([seed, first_dyad])
    for d in range(first_dyad, first_dyad + n_dyads):
        level = rng.normal(6.0, 0.5)
        instab = rng.uniform(0.15, 0.45)
        gain = rng.uniform(0.3, 0.6)
        client_rsa = float(np.clip(rng.normal(5.5, 0.5), 3.0, 9.0))
        for k in range(n_sessions):
            cfg = SimConfig(
                seed=int(rng.integers(2**31 - 1)), duration_s=duration_s, eda_rate_hz=4.0, ppg_rate_hz=20.0,
                schedule=[Segment(0.0, duration_s, "therapist_led", lag_s=LEAD_LAG_S, gain=gain, channel="both")],
                regulation_effect=effect, rsa_coupling_t_to_c=rsa_coupling_t_to_c,
                therapist_rsa_ln_ms2=float(np.clip(level + rng.normal(0.0, 0.6), 3.0, 9.0)),
                therapist_rsa_sd_ln=float(np.clip(instab + rng.normal(0.0, 0.1), 0.05, 0.6)),
                client_rsa_ln_ms2=client_rsa)
            yield SimSession(d, k, f"sim-{seed}-d{d:02d}-k{k}", f"T{d:02d}", f"C{d:02d}", cfg,
                             DyadSimulator(cfg).truth)


def _epoch_rmssd(truth: GroundTruth, role: str) -> np.ndarray:
    beats = truth.beat_times_s[role][1:]
    ibi = truth.ibi_ms[role]
    out = []
    for s in truth.rsa_epoch_start_s:
        x = ibi[(beats >= s) & (beats < s + 30.0)]
        out.append(float(np.sqrt(np.mean(np.diff(x) ** 2))) if len(x) > 2 else np.nan)
    return np.asarray(out)


def simulate_records(seed: int, effect: float, n_dyads: int, n_sessions: int, duration_s: float = 300.0, *,
                     rsa_coupling_t_to_c: float = 0.0) -> list:
    """:class:`lab.study.SessionRecord` rows straight from the truth (RSA per epoch from the simulator), for
    power tests that skip the database; synchrony through the same kernel (``dsp_ext.synchrony.wcc``)."""
    from dsp_ext.synchrony import SyncParams, wcc
    from lab.study import record_from_arrays

    params = SyncParams()
    records = []
    for s in study_sessions(seed, effect, n_dyads, n_sessions, duration_s, rsa_coupling_t_to_c=rsa_coupling_t_to_c):
        tr = s.truth
        chans = {sig: (wcc(series["therapist"], series["client"], params), {})
                 for sig, series in (("eda", tr.eda_us), ("hr", tr.hr_bpm))}
        rsa = {role: (tr.rsa_epoch_start_s, tr.rsa_ln_ms2[role], _epoch_rmssd(tr, role))
               for role in ("therapist", "client")}
        records.append(record_from_arrays(s.session, s.therapist, s.client, s.index, chans, rsa))
    return records


def _marker_label(seg: Segment) -> str:
    lag = f", lag {seg.lag_s:g} s" if seg.mode in ("therapist_led", "client_led") else ""
    return f"truth: {seg.mode.replace('_', '-')}{lag}"


def write_hub_db(path: Path | str, *, seed: int, effect: float, n_dyads: int, n_sessions: int,
                 duration_s: float = 300.0, first_dyad: int = 0, room: str = ROOM, unit: str = UNIT,
                 progress: bool = False) -> list[dict]:
    """Store the simulated sessions in a hub SQLite as the recorder would (start command with participant
    codes, a marker per truth segment, 4 Hz EDA and HR feature blocks of 1 s, stop command), all stamped
    on the sessions' own simulated clock. Returns one truth row per session."""
    from tqdm import tqdm

    from broker import store, wire
    from firmware_bridge.block import SampleBlock

    con = store.connect(path)
    rows = []
    t_ns = T0_NS + int(first_dyad * n_sessions * (duration_s + GAP_S) * 1e9)
    try:
        sessions = study_sessions(seed, effect, n_dyads, n_sessions, duration_s, first_dyad=first_dyad)
        for s in tqdm(sessions, total=n_dyads * n_sessions, desc="simulated sessions", unit="session",
                      disable=not progress):
            tr = s.truth
            start = wire.Command(id=f"start-{s.session}", cmd="start", session=s.session, time_ns=t_ns,
                                 participants={"therapist": s.therapist, "client": s.client})
            store.insert_command(con, room, start, start.encode(), t_ns)
            for i, seg in enumerate(s.config.schedule):
                m = wire.Command(id=f"truth-{s.session}-{i}", cmd="marker", session=s.session,
                                 time_ns=t_ns + int(seg.start_s * 1e9), label=_marker_label(seg))
                store.insert_command(con, room, m, m.encode(), m.time_ns)
            for role in ("therapist", "client"):
                for signal, series in (("eda", tr.eda_us[role]), ("hr", tr.hr_bpm[role])):
                    for j in range(len(series) // 4):
                        b = SampleBlock(f"{role}/{signal}", j, t_ns + j * 1_000_000_000, 4.0,
                                        np.asarray(series[4 * j : 4 * j + 4], dtype=np.float32))
                        store.insert_block(con, unit, "feat", b, s.session, b.t0_ns, room)
            stop_ns = t_ns + int(duration_s * 1e9)
            stop = wire.Command(id=f"stop-{s.session}", cmd="stop", session=s.session, time_ns=stop_ns)
            store.insert_command(con, room, stop, stop.encode(), stop_ns)
            con.commit()
            rows.append({"session": s.session, "dyad": f"{s.therapist}-{s.client}", "order": s.index,
                         "started_ns": t_ns, "regulation_index": tr.regulation_index,
                         "therapist_rsa_ln_ms2": s.config.therapist_rsa_ln_ms2,
                         "therapist_rsa_sd_ln": s.config.therapist_rsa_sd_ln,
                         "coupling_gain": s.config.schedule[0].gain,
                         "coupling_gain_used": tr.segments[0].gain_eff})
            t_ns += int((duration_s + GAP_S) * 1e9)
    finally:
        con.close()
    return rows


# ------------------------------------------------------------------------------------------------- CLI
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="simulate N dyads x M sessions with a known regulation effect into a hub database",
        description="Simulate a study with a known answer: --dyads dyads x --sessions sessions, in which client "
                    "synchrony rises by --effect (Fisher z of coupling) per unit of the therapist's regulation "
                    "(RSA high and stable). Writes OUT/hub.sqlite and OUT/truth.json; then run "
                    "`dyadsync study OUT/hub.sqlite --out OUT/study` (or give --analyse).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dyads", type=int, default=12, help="number of dyads (therapist-client pairs)")
    p.add_argument("--sessions", type=int, default=4, help="sessions per dyad")
    p.add_argument("--effect", type=float, default=1.0,
                   help="change of the coupling's Fisher z per unit of therapist regulation (0: no effect)")
    p.add_argument("--minutes", type=float, default=5.0, help="length of each simulated session")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated people")
    p.add_argument("--out", type=Path, required=True, help="folder for hub.sqlite and truth.json (created)")
    p.add_argument("--analyse", action="store_true", help="run `dyadsync study` on the result (into OUT/study)")
    p.add_argument("--surrogates", type=int, default=0, help="with --analyse: surrogates per session")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_study)


def cmd_study(args: argparse.Namespace) -> int:
    import sys

    problems = []
    if args.dyads < 1 or args.sessions < 1:
        problems.append("--dyads and --sessions must be at least 1")
    if not (math.isfinite(args.effect) and -5.0 <= args.effect <= 5.0):
        problems.append("--effect must be a number between -5 and 5")
    if not (math.isfinite(args.minutes) and 1.0 <= args.minutes <= 240.0):
        problems.append("--minutes must be between 1 and 240")
    if args.seed < 0:
        problems.append("--seed must be >= 0")
    out: Path = args.out
    db = out / "hub.sqlite"
    if db.exists():
        problems.append(f"{db} exists already: give a new --out folder (nothing was changed)")
    if problems:
        for msg in problems:
            print(f"dyadsync hil study: {msg}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    duration_s = round(args.minutes * 60.0)
    rows = write_hub_db(db, seed=args.seed, effect=args.effect, n_dyads=args.dyads, n_sessions=args.sessions,
                        duration_s=duration_s, progress=not args.quiet)
    truth = {"effect": args.effect, "effect_meaning": "Fisher z of therapist-led coupling per unit of the "
             "therapist's regulation index (hil.physiology)", "dyads": args.dyads, "sessions_per_dyad":
             args.sessions, "session_s": duration_s, "seed": args.seed, "lead_lag_s": LEAD_LAG_S, "sessions": rows}
    (out / "truth.json").write_text(json.dumps(truth, indent=1), encoding="utf-8")
    print(f"simulated {args.dyads} dyads x {args.sessions} sessions of {duration_s / 60:g} min, effect {args.effect:g} "
          f"(Fisher z of coupling per unit of therapist regulation; 0 = none)")
    print(f"  hub database: {db}\n  truth:        {out / 'truth.json'}")
    if not args.analyse:
        print(f"next: dyadsync study {db} --out {out / 'study'}")
        return 0
    from lab.study import run_study

    result = run_study([db], out / "study", n_surrogates=args.surrogates, progress=not args.quiet,
                       announce=print)
    print(f"study page: {result.html_path}")
    for line in result.headline():
        print(f"  {line}")
    return 0
