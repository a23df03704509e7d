"""The hub database passes Debian 12's ``sqlite3`` integrity check; ``dyadsync hub check`` explains a file.

Debian 12's SQLite 3.40.1 (the one Raspberry Pi OS's Python and ``sqlite3`` use) reports false
"NULL value in <table>.<column>" lines from ``PRAGMA integrity_check`` on WITHOUT ROWID tables, which the
hub database used until layout version 2. These tests run the system's ``/usr/bin/sqlite3`` on real files.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys

import pytest

from broker import store, wire
from dyadsync.cli import main as cli_main

from .helpers import T0_NS, make_blocks, start_cmd

SQLITE3 = shutil.which("sqlite3", path="/usr/bin")
needs_cli = pytest.mark.skipif(SQLITE3 is None, reason="/usr/bin/sqlite3 is missing (apt-get install sqlite3)")

# The version-1 layout (WITHOUT ROWID tables), as files written before layout version 2 hold it.
V1_SCHEMA = """
PRAGMA journal_mode=WAL;
CREATE TABLE sessions(session TEXT PRIMARY KEY, room TEXT NOT NULL, started_ns INTEGER, stopped_ns INTEGER,
    therapist_code TEXT, client_code TEXT, updated_ns INTEGER NOT NULL, created_ns INTEGER);
CREATE INDEX sessions_updated ON sessions(updated_ns);
CREATE TABLE units(room TEXT NOT NULL, unit TEXT NOT NULL, first_seen_ns INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL, last_state TEXT, version TEXT, last_session TEXT, dropped_json TEXT,
    PRIMARY KEY(room, unit)) WITHOUT ROWID;
CREATE TABLE blocks(unit TEXT NOT NULL, kind TEXT NOT NULL, stream TEXT NOT NULL, session TEXT NOT NULL,
    seq INTEGER NOT NULL, t0_ns INTEGER NOT NULL, rate_hz REAL NOT NULL, flags INTEGER NOT NULL, n INTEGER NOT NULL,
    data BLOB NOT NULL, received_ns INTEGER NOT NULL, room TEXT NOT NULL DEFAULT '',
    PRIMARY KEY(session, room, unit, kind, stream, seq)) WITHOUT ROWID;
CREATE TABLE metrics(unit TEXT NOT NULL, name TEXT NOT NULL, session TEXT NOT NULL, seq INTEGER NOT NULL,
    window_start_ns INTEGER NOT NULL, window_end_ns INTEGER NOT NULL, values_json TEXT NOT NULL,
    received_ns INTEGER NOT NULL, room TEXT NOT NULL DEFAULT '',
    PRIMARY KEY(session, room, unit, name, seq)) WITHOUT ROWID;
CREATE TABLE commands(cmd_id TEXT NOT NULL, cmd TEXT NOT NULL, session TEXT NOT NULL, label TEXT,
    time_ns INTEGER NOT NULL, payload TEXT NOT NULL, received_ns INTEGER NOT NULL, room TEXT NOT NULL DEFAULT '',
    PRIMARY KEY(room, cmd_id));
CREATE VIEW markers AS SELECT room, session, cmd_id, label, time_ns FROM commands WHERE cmd='marker';
CREATE TABLE status(unit TEXT NOT NULL, time_ns INTEGER NOT NULL, state TEXT NOT NULL, session TEXT,
    payload TEXT NOT NULL, received_ns INTEGER NOT NULL, room TEXT NOT NULL DEFAULT '',
    PRIMARY KEY(room, unit, time_ns, state)) WITHOUT ROWID;
CREATE TABLE acks(unit TEXT NOT NULL, cmd_id TEXT NOT NULL, ok INTEGER NOT NULL, error TEXT,
    time_ns INTEGER NOT NULL, room TEXT NOT NULL DEFAULT '', PRIMARY KEY(room, unit, cmd_id)) WITHOUT ROWID;
CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE rejects(received_ns INTEGER NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL, payload_head BLOB);
"""


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dyadsync", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def hub_check(capsys, caplog):
    """``dyadsync hub check ARGS`` through the CLI's own ``main`` (in process: seconds saved per call)."""

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        caplog.clear()
        rc = cli_main(["hub", "check", *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, out, err + caplog.text)

    return run


def _system_check(path) -> str:
    return subprocess.run([SQLITE3, str(path), "PRAGMA integrity_check"], capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()


def _fill(con: sqlite3.Connection, skip: frozenset[int] = frozenset()) -> None:
    """One session as the recorder stores it: blocks (minus ``skip``), a metric, status, ack, counters."""
    cmd = start_cmd("s1", "T01", "C07")
    store.insert_command(con, "room-a", cmd, cmd.encode(), T0_NS)
    blocks = [b for b in make_blocks("client/eda", 32.0, 10, 64) if b.seq not in skip]
    for b in blocks:
        store.insert_block(con, "unit-a", "raw", b, "s1", T0_NS, "room-a")
    m = wire.Metric("s1", 0, "sync_eda", T0_NS, T0_NS + 30 * 10**9, {"r0": 0.5})
    store.insert_metric(con, "unit-a", m, T0_NS, "room-a")
    st = wire.Status(unit="unit-a", state="recording", time_ns=T0_NS, session="s1", dropped={"outbox_raw": 3})
    store.insert_status(con, "unit-a", st, st.encode(), T0_NS, "room-a")
    store.touch_unit(con, "room-a", "unit-a", T0_NS, st)
    store.insert_ack(con, wire.Ack(id="s1-start", unit="unit-a", ok=True, time_ns=T0_NS), "room-a")
    store.add_counters(con, {"stored_raw": len(blocks), "stored_metric": 1, "duplicate": 2, "malformed": 1})
    con.commit()


def _dump(path) -> dict[str, list]:
    con = sqlite3.connect(path)
    try:
        return {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in ("sessions", "units", "blocks", "metrics", "commands", "status", "acks", "counters")}
    finally:
        con.close()


@needs_cli
def test_demo_database_passes_debian_sqlite3_and_hub_check(tmp_path):
    out = _cli("demo", "--minutes", "1", "--speed", "300", "--broker", "auto", "--quiet", "--data-dir", str(tmp_path))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    db = tmp_path / "hub.sqlite"
    version = subprocess.run([SQLITE3, "--version"], capture_output=True, text=True).stdout.split()[0]
    assert _system_check(db) == "ok", f"sqlite3 {version}"
    check = _cli("hub", "check", "--db", str(db))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "Integrity: intact." in check.stdout and "Result: intact and complete" in check.stdout, check.stdout
    con = store.connect(db, readonly=True)
    n = con.execute("SELECT COUNT(*) FROM blocks WHERE kind='raw' AND stream='client/ppg'").fetchone()[0]
    con.close()
    assert n > 30  # a 1-minute session in 1-s raw blocks; the real unit's count depends on where stop falls
    assert f"raw client/ppg: {n} blocks (seq 0-{n - 1})" in check.stdout


@needs_cli
def test_version_1_file_is_converted_keeping_every_row(tmp_path, hub_check):
    db = tmp_path / "hub.sqlite"
    con = sqlite3.connect(db)
    con.executescript(V1_SCHEMA)
    _fill(con)
    con.close()
    before = _dump(db)
    reported = _system_check(db)
    if sqlite3.sqlite_version.startswith("3.40."):
        assert "NULL value in blocks." in reported  # the misreport this layout change avoids
    check = hub_check("--db", str(db))
    if reported != "ok":
        assert check.returncode == 0 and "wrongly reports missing values" in check.stdout, check.stdout
        assert "--migrate" in check.stdout
    migrated = hub_check("--db", str(db), "--migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "converting acks, blocks, metrics, status, units" in migrated.stderr
    assert "Integrity: intact." in migrated.stdout
    assert _system_check(db) == "ok"
    assert _dump(db) == before
    con = store.connect(db)  # idempotent storing still holds on (session, room, unit, kind, stream, seq)
    assert store.old_layout_tables(con) == []
    assert con.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    b = make_blocks("client/eda", 32.0, 1, 64)[0]
    assert store.insert_block(con, "unit-a", "raw", b, "s1", T0_NS, "room-a") is False
    assert store.insert_block(con, "unit-a", "raw", b, "s2", T0_NS, "room-a") is True
    store.touch_unit(con, "room-a", "unit-a", T0_NS + 1)  # the upsert on (room, unit) still finds its key
    assert con.execute("SELECT COUNT(*), MAX(last_seen_ns) FROM units").fetchone() == (1, T0_NS + 1)
    con.close()


def test_check_describes_gaps_and_exit_status(tmp_path, hub_check):
    db = tmp_path / "hub.sqlite"
    con = store.connect(db)
    _fill(con, skip=frozenset({3, 4, 7}))
    con.close()
    out = hub_check("--db", str(db))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "unit-a raw client/eda: 7 blocks (seq 0-9), 448 samples at 32 Hz" in out.stdout
    assert "3 blocks missing (seq 3-4, 7)" in out.stdout
    assert "Unit unit-a (room room-a) reported in its last status: 3 raw messages dropped from its outbox" \
        in out.stdout
    assert "2 redelivered copies recognised" in out.stdout and "1 malformed message and" in out.stdout
    assert "Result: intact; 3 blocks or metric windows missing in 1 stream" in out.stdout
    assert hub_check("--db", str(db), "--strict").returncode == 1
    report = json.loads(hub_check("--db", str(db), "--json").stdout)
    assert report["incomplete"] and not report["damaged"]
    assert [s["gap_ranges"] for s in report["streams"] if s["kind"] == "raw"] == [[[3, 4], [7, 7]]]


def test_check_finds_duplicates_and_a_count_mismatch(tmp_path, hub_check):
    """A file whose blocks table lost its UNIQUE key (hand-made here) holds a block twice; and rows the
    recorder counted are missing."""
    db = tmp_path / "hub.sqlite"
    con = store.connect(db)
    _fill(con)
    con.executescript("""
        CREATE TABLE b2 AS SELECT * FROM blocks; DROP TABLE blocks; ALTER TABLE b2 RENAME TO blocks;
        INSERT INTO blocks SELECT * FROM blocks WHERE seq = 5;
        DELETE FROM metrics;
    """)
    con.close()
    out = hub_check("--db", str(db))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 stored twice" in out.stdout
    assert "Result: DAMAGED - 1 duplicate rows in unit-a raw client/eda (session s1)" in out.stdout
    assert "the recorder counted 1 stored metric messages but the database holds 0" in out.stdout


def test_check_reports_a_damaged_file(tmp_path, hub_check):
    db = tmp_path / "hub.sqlite"
    con = store.connect(db)
    _fill(con)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (root,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name='sqlite_autoindex_blocks_1'").fetchone()
    page = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    with open(db, "r+b") as f:  # scribble over the unique index of the blocks (not the schema page)
        f.seek((root - 1) * page + 8)
        f.write(b"\xff" * 64)
    out = hub_check("--db", str(db))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Integrity: DAMAGED." in out.stdout and "SQLite's integrity check reports damage" in out.stdout


def test_not_a_hub_database_is_a_clear_error(tmp_path, hub_check):
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE x(a)").connection.close()
    out = hub_check("--db", str(other))
    assert out.returncode == 2 and "not a dyadsync hub database" in out.stderr
    out = hub_check("--db", str(tmp_path / "missing.sqlite"))
    assert out.returncode == 2 and "no such file" in out.stderr
    (tmp_path / "text.sqlite").write_text("hello")
    out = hub_check("--db", str(tmp_path / "text.sqlite"))
    assert out.returncode == 2 and "dyadsync: error:" in out.stderr
