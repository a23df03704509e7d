"""A simulated study from the hil dyad simulator: dyads x sessions with known therapist regulation.

Each dyad has its own coupling gain and therapist (RSA level and stability vary around the dyad's own values
from session to session); every session is one :class:`hil.physiology.DyadSimulator` whose whole length is a
therapist-led segment. Features are taken straight from the simulator's truth (noise-free EDA and beat-to-beat
heart rate on the 4 Hz grid, RSA per 30-s epoch) — fast, and what an ideal front end would measure — and go
through the same synchrony kernel (dsp_ext.synchrony.wcc) and study code (lab.study) as recorded sessions.
``regulation_effect`` is the simulator's hypothesis knob (Fisher z of coupling per unit of therapist regulation).
"""

from __future__ import annotations

import numpy as np

from dsp_ext.synchrony import SyncParams, wcc
from hil.physiology import DyadSimulator, Segment, SimConfig
from lab.study import StudyModels, fit_models, record_from_arrays, tables_from_records

PARAMS = SyncParams()


def _epoch_rmssd(truth, role: str) -> np.ndarray:
    beats = truth.beat_times_s[role][1:]
    ibi = truth.ibi_ms[role]
    out = []
    for s in truth.rsa_epoch_start_s:
        x = ibi[(beats >= s) & (beats < s + 30.0)]
        out.append(float(np.sqrt(np.mean(np.diff(x) ** 2))) if len(x) > 2 else np.nan)
    return np.asarray(out)


def simulate_records(seed: int, regulation_effect: float, n_dyads: int, n_sessions: int, duration_s: float,
                     rsa_coupling_t_to_c: float = 0.0):
    rng = np.random.default_rng([seed, int(round(regulation_effect * 1000))])
    records = []
    for d in range(n_dyads):
        level = rng.normal(6.0, 0.5)
        instab = rng.uniform(0.15, 0.45)
        gain = rng.uniform(0.3, 0.6)
        client_rsa = rng.normal(5.5, 0.5)
        for k in range(n_sessions):
            cfg = SimConfig(
                seed=int(rng.integers(2**31 - 1)), duration_s=duration_s, eda_rate_hz=4.0, ppg_rate_hz=20.0,
                schedule=[Segment(0.0, duration_s, "therapist_led", lag_s=2.0, gain=gain, channel="both")],
                regulation_effect=regulation_effect, rsa_coupling_t_to_c=rsa_coupling_t_to_c,
                therapist_rsa_ln_ms2=float(np.clip(level + rng.normal(0.0, 0.6), 3.0, 9.0)),
                therapist_rsa_sd_ln=float(np.clip(instab + rng.normal(0.0, 0.1), 0.05, 0.6)),
                client_rsa_ln_ms2=float(client_rsa))
            tr = DyadSimulator(cfg).truth
            chans = {}
            for sig, series in (("eda", tr.eda_us), ("hr", tr.hr_bpm)):
                chans[sig] = (wcc(series["therapist"], series["client"], PARAMS), {})
            rsa = {role: (tr.rsa_epoch_start_s, tr.rsa_ln_ms2[role], _epoch_rmssd(tr, role))
                   for role in ("therapist", "client")}
            records.append(record_from_arrays(f"s{seed}-d{d}-k{k}", f"T{d:02d}", f"C{d:02d}", k, chans, rsa))
    return records


def simulated_study(seed: int, regulation_effect: float, *, n_dyads: int = 12, n_sessions: int = 4,
                    duration_s: float = 240.0, channel: str = "eda", primary_only: bool = True) -> StudyModels:
    recs = simulate_records(seed, regulation_effect, n_dyads, n_sessions, duration_s)
    return fit_models(tables_from_records(recs), channel, primary_only=primary_only)


def write_hub_db(path, *, seed: int, regulation_effect: float, n_dyads: int, n_sessions: int,
                 duration_s: float = 240.0, room: str = "room-s", unit: str = "unit-s",
                 first_dyad: int = 0) -> list[str]:
    """Store simulated sessions in a real hub SQLite the way the recorder does (start command with participant
    codes, 4 Hz EDA and HR feature blocks of 1 s, stop command). Features from the simulator's truth."""
    from broker import store, wire
    from firmware_bridge.block import SampleBlock

    rng = np.random.default_rng(seed)
    con = store.connect(path)
    sessions = []
    t_ns = 1_780_000_000_000_000_000
    for d in range(first_dyad, first_dyad + n_dyads):
        level, instab, gain = rng.normal(6.0, 0.5), rng.uniform(0.15, 0.45), rng.uniform(0.3, 0.6)
        for k in range(n_sessions):
            cfg = SimConfig(
                seed=int(rng.integers(2**31 - 1)), duration_s=duration_s, eda_rate_hz=4.0, ppg_rate_hz=20.0,
                schedule=[Segment(0.0, duration_s, "therapist_led", lag_s=2.0, gain=gain, channel="both")],
                regulation_effect=regulation_effect,
                therapist_rsa_ln_ms2=float(np.clip(level + rng.normal(0.0, 0.6), 3.0, 9.0)),
                therapist_rsa_sd_ln=float(np.clip(instab + rng.normal(0.0, 0.1), 0.05, 0.6)))
            tr = DyadSimulator(cfg).truth
            session = f"sim-{seed}-d{d}-k{k}"
            sessions.append(session)
            start = wire.Command(id=f"start-{session}", cmd="start", session=session, time_ns=t_ns,
                                 participants={"therapist": f"T{d:02d}", "client": f"C{d:02d}"})
            store.insert_command(con, room, start, start.encode(), t_ns)
            for role in ("therapist", "client"):
                for signal, series in (("eda", tr.eda_us[role]), ("hr", tr.hr_bpm[role])):
                    for j in range(len(series) // 4):
                        b = SampleBlock(f"{role}/{signal}", j, t_ns + j * 1_000_000_000, 4.0,
                                        np.asarray(series[4 * j : 4 * j + 4], dtype=np.float32))
                        store.insert_block(con, unit, "feat", b, session, t_ns, room)
            stop = wire.Command(id=f"stop-{session}", cmd="stop", session=session,
                                time_ns=t_ns + int(duration_s * 1e9))
            store.insert_command(con, room, stop, stop.encode(), t_ns)
            con.commit()
            t_ns += int((duration_s + 3600) * 1e9)
    con.close()
    return sessions


def export_folder(db, session: str, dest) -> None:
    """Write a session's pull-API export files into ``dest/<room>/<session>/`` (the puller's layout)."""
    from broker import export, store

    con = store.connect(db, readonly=True)
    meta = store.get_session(con, session)
    folder = dest / meta["room"] / session
    folder.mkdir(parents=True, exist_ok=True)
    for f in export.session_files(con, session):
        (folder / f.name).write_bytes(b"".join(f.produce()))
    con.close()
