"""Fixtures of the analysis tests: one real demo session (simulated room, real broker, real hub SQLite) shared
by the module's tests, and copies of it that a test may damage."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory) -> tuple[Path, str]:
    """``dyadsync demo`` run as a child process: 3 simulated minutes at 60x (a loaded machine keeps up) -> (hub.sqlite, session id)."""
    d = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([sys.executable, "-m", "dyadsync", "demo", "--minutes", "3", "--speed", "60",
                           "--seed", "3", "--data-dir", str(d), "--quiet"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    db = d / "hub.sqlite"
    con = sqlite3.connect(db)
    try:
        (session,) = con.execute("SELECT session FROM sessions").fetchone()
    finally:
        con.close()
    return db, session


@pytest.fixture
def demo_copy(demo_db, tmp_path) -> tuple[Path, str]:
    """A private copy of the demo database (WAL checkpointed) that a test may change."""
    db, session = demo_db
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    dst = tmp_path / "hub.sqlite"
    shutil.copy(db, dst)
    return dst, session
