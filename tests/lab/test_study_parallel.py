"""`dyadsync study` in worker processes with a per-session cache (issue 18 item 4)."""

from __future__ import annotations

import pandas as pd
import pytest

from lab.study import StudyError, run_study

from .simstudy import write_hub_db


def test_parallel_study_equals_serial_and_reuses_its_cache(tmp_path):
    db = tmp_path / "hub.sqlite"
    write_hub_db(db, seed=3, effect=0.5, n_dyads=2, n_sessions=2, duration_s=150.0)
    serial = run_study([db], tmp_path / "serial", n_surrogates=20, jobs=1)
    par = run_study([db], tmp_path / "par", n_surrogates=20, jobs=2)
    assert par.n_cached == 0 and serial.n_sessions == par.n_sessions == 4
    pd.testing.assert_frame_equal(serial.tables.sessions, par.tables.sessions)
    pd.testing.assert_frame_equal(serial.tables.windows, par.tables.windows)
    # one new session in a second database: only that one is analysed, the rest come from the cache
    db2 = tmp_path / "hub2.sqlite"
    write_hub_db(db2, seed=4, effect=0.5, n_dyads=1, n_sessions=1, duration_s=150.0, first_dyad=7)
    again = run_study([db, db2], tmp_path / "par", n_surrogates=20, jobs=2)
    assert again.n_sessions == 5 and again.n_cached == 4
    old = again.tables.sessions[again.tables.sessions["session"].isin(par.tables.sessions["session"])]
    pd.testing.assert_frame_equal(old.reset_index(drop=True), par.tables.sessions.reset_index(drop=True))
    # other parameters are another key: nothing reused
    assert run_study([db], tmp_path / "par", n_surrogates=0, jobs=1).n_cached == 0


def test_study_preconditions_fail_before_the_work(tmp_path):
    db = tmp_path / "hub.sqlite"
    write_hub_db(db, seed=3, effect=0.5, n_dyads=1, n_sessions=1, duration_s=150.0)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StudyError, match="cannot write to the output folder"):
        run_study([db], blocker / "out", n_surrogates=0)
    with pytest.raises(StudyError, match="channel"):
        run_study([db], tmp_path / "o", channel="ppg")
    with pytest.raises(StudyError, match="n_surrogates"):
        run_study([db], tmp_path / "o", n_surrogates=-1)
    assert not (tmp_path / "o").exists()
