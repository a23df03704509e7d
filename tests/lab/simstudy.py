"""Simulated studies for the tests: the generator lives in :mod:`hil.study_sim` (the one ``dyadsync hil study``
uses), so the power figures measured here are those of the study the CLI builds. This module adds the
test-only helpers: a one-call model fit and an export of a stored session as the puller lays it out."""

from __future__ import annotations

from hil.study_sim import simulate_records, write_hub_db
from lab.study import StudyModels, fit_models, tables_from_records

__all__ = ["export_folder", "simulate_records", "simulated_study", "write_hub_db"]


def simulated_study(seed: int, regulation_effect: float, *, n_dyads: int = 12, n_sessions: int = 4,
                    duration_s: float = 300.0, channel: str = "eda", primary_only: bool = True) -> StudyModels:
    recs = simulate_records(seed, regulation_effect, n_dyads, n_sessions, duration_s)
    return fit_models(tables_from_records(recs), channel, primary_only=primary_only)


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
