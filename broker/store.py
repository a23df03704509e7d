"""The hub's SQLite store: schema, idempotent inserts and read helpers.

Idempotency keys: sample blocks on (unit, kind, stream, session, seq); metrics on (unit, name, session,
seq). A redelivered message changes nothing; a missing seq stays visible as a gap (see :func:`gaps`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .wire import Ack, Command, Metric, Status

SCHEMA_SQL = """
PRAGMA journal_mode=WAL;
CREATE TABLE IF NOT EXISTS sessions(
    session TEXT PRIMARY KEY, room TEXT NOT NULL, started_ns INTEGER, stopped_ns INTEGER,
    therapist_code TEXT, client_code TEXT, updated_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS blocks(
    unit TEXT NOT NULL, kind TEXT NOT NULL, stream TEXT NOT NULL, session TEXT NOT NULL, seq INTEGER NOT NULL,
    t0_ns INTEGER NOT NULL, rate_hz REAL NOT NULL, flags INTEGER NOT NULL, n INTEGER NOT NULL,
    data BLOB NOT NULL, received_ns INTEGER NOT NULL,
    PRIMARY KEY(unit, kind, stream, session, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metrics(
    unit TEXT NOT NULL, name TEXT NOT NULL, session TEXT NOT NULL, seq INTEGER NOT NULL,
    window_start_ns INTEGER NOT NULL, window_end_ns INTEGER NOT NULL, values_json TEXT NOT NULL,
    received_ns INTEGER NOT NULL,
    PRIMARY KEY(unit, name, session, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS commands(
    cmd_id TEXT PRIMARY KEY, cmd TEXT NOT NULL, session TEXT NOT NULL, label TEXT, time_ns INTEGER NOT NULL,
    payload TEXT NOT NULL, received_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS status(
    unit TEXT NOT NULL, time_ns INTEGER NOT NULL, state TEXT NOT NULL, session TEXT, payload TEXT NOT NULL,
    received_ns INTEGER NOT NULL, PRIMARY KEY(unit, time_ns, state)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS acks(
    unit TEXT NOT NULL, cmd_id TEXT NOT NULL, ok INTEGER NOT NULL, error TEXT, time_ns INTEGER NOT NULL,
    PRIMARY KEY(unit, cmd_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rejects(
    received_ns INTEGER NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL, payload_head BLOB);
"""


def connect(path: Path | str, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the hub database (creating the schema unless ``readonly``)."""
    if readonly:
        con = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, check_same_thread=False)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(path), check_same_thread=False)
        con.executescript(SCHEMA_SQL)
        con.execute("PRAGMA synchronous=NORMAL")
    con.execute("PRAGMA busy_timeout=10000")
    return con


def now_ns() -> int:
    return time.time_ns()


def insert_block(con: sqlite3.Connection, unit: str, kind: str, block, session: str, received_ns: int) -> bool:
    """Insert a sample block; False if it was already stored (a redelivery)."""
    cur = con.execute(
        "INSERT OR IGNORE INTO blocks VALUES(?,?,?,?,?,?,?,?,?,?,?)",
        (unit, kind, block.stream, session, block.seq, block.t0_ns, block.rate_hz, block.flags, block.n,
         block.values.astype("<f4").tobytes(), received_ns),
    )
    return cur.rowcount == 1


def insert_metric(con: sqlite3.Connection, unit: str, m: Metric, received_ns: int) -> bool:
    values = {k: (None if not np.isfinite(v) else v) for k, v in m.values.items()}
    cur = con.execute(
        "INSERT OR IGNORE INTO metrics VALUES(?,?,?,?,?,?,?,?)",
        (unit, m.name, m.session, m.seq, m.window_start_ns, m.window_end_ns, json.dumps(values), received_ns),
    )
    return cur.rowcount == 1


def insert_command(con: sqlite3.Connection, room: str, c: Command, payload: bytes, received_ns: int) -> bool:
    cur = con.execute(
        "INSERT OR IGNORE INTO commands VALUES(?,?,?,?,?,?,?)",
        (c.id, c.cmd, c.session, c.label, c.time_ns, payload.decode(), received_ns),
    )
    if cur.rowcount != 1:
        return False
    if c.cmd == "start":
        con.execute(
            "INSERT INTO sessions(session, room, started_ns, therapist_code, client_code, updated_ns) "
            "VALUES(?,?,?,?,?,?) ON CONFLICT(session) DO UPDATE SET started_ns=excluded.started_ns, "
            "therapist_code=excluded.therapist_code, client_code=excluded.client_code, updated_ns=excluded.updated_ns",
            (c.session, room, c.time_ns, c.participants["therapist"], c.participants["client"], received_ns),
        )
    elif c.cmd == "stop":
        con.execute(
            "INSERT INTO sessions(session, room, stopped_ns, updated_ns) VALUES(?,?,?,?) "
            "ON CONFLICT(session) DO UPDATE SET stopped_ns=excluded.stopped_ns, updated_ns=excluded.updated_ns",
            (c.session, room, c.time_ns, received_ns),
        )
    return True


def insert_status(con: sqlite3.Connection, unit: str, s: Status, payload: bytes, received_ns: int) -> bool:
    cur = con.execute(
        "INSERT OR IGNORE INTO status VALUES(?,?,?,?,?,?)",
        (unit, s.time_ns, s.state, s.session, payload.decode(), received_ns),
    )
    return cur.rowcount == 1


def insert_ack(con: sqlite3.Connection, a: Ack) -> bool:
    cur = con.execute("INSERT OR IGNORE INTO acks VALUES(?,?,?,?,?)", (a.unit, a.id, int(a.ok), a.error, a.time_ns))
    return cur.rowcount == 1


def add_counters(con: sqlite3.Connection, counts: dict[str, int]) -> None:
    con.executemany(
        "INSERT INTO counters VALUES(?,?) ON CONFLICT(name) DO UPDATE SET value=value+excluded.value",
        [(k, v) for k, v in counts.items() if v],
    )


def insert_reject(con: sqlite3.Connection, topic: str, reason: str, payload: bytes, received_ns: int) -> None:
    con.execute("INSERT INTO rejects VALUES(?,?,?,?)", (received_ns, topic[:300], reason[:500], payload[:64]))


# ------------------------------------------------------------------------------------------- reading
def counters(con: sqlite3.Connection) -> dict[str, int]:
    return dict(con.execute("SELECT name, value FROM counters"))


def stored_counts(con: sqlite3.Connection, unit: str | None = None, session: str | None = None) -> dict[str, int]:
    """Number of stored raw blocks, feature blocks and metrics (optionally for one unit / session)."""
    where, args = [], []
    if unit is not None:
        where.append("unit=?")
        args.append(unit)
    if session is not None:
        where.append("session=?")
        args.append(session)
    w = (" WHERE " + " AND ".join(where)) if where else ""
    out = {"raw": 0, "feat": 0}
    for kind, n in con.execute(f"SELECT kind, COUNT(*) FROM blocks{w} GROUP BY kind", args):
        out[kind] = n
    out["metric"] = con.execute(f"SELECT COUNT(*) FROM metrics{w}", args).fetchone()[0]
    return out


@dataclass(frozen=True)
class Gap:
    unit: str
    kind: str
    stream: str
    session: str
    after_seq: int
    missing: int


def gaps(con: sqlite3.Connection, session: str | None = None) -> list[Gap]:
    """Missing sequence numbers between stored blocks of each (unit, kind, stream, session)."""
    sql = (
        "SELECT unit, kind, stream, session, seq, "
        "LEAD(seq) OVER (PARTITION BY unit, kind, stream, session ORDER BY seq) AS nxt FROM blocks"
        + (" WHERE session=?" if session else "")
    )
    rows = con.execute(f"SELECT * FROM ({sql}) WHERE nxt IS NOT NULL AND nxt > seq + 1", (session,) if session else ())
    return [Gap(u, k, s, ss, seq, nxt - seq - 1) for u, k, s, ss, seq, nxt in rows]


def read_stream(con: sqlite3.Connection, session: str, stream: str, kind: str = "feat",
                unit: str | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Concatenate a stored stream: (t_ns int64, values float32, rate_hz). Gaps are left as gaps in t_ns."""
    sql = "SELECT t0_ns, rate_hz, data FROM blocks WHERE session=? AND stream=? AND kind=?"
    args: list[object] = [session, stream, kind]
    if unit is not None:
        sql += " AND unit=?"
        args.append(unit)
    ts, vs, rate = [], [], float("nan")
    for t0, rate, data in con.execute(sql + " ORDER BY seq", args):
        v = np.frombuffer(data, dtype="<f4")
        ts.append(t0 + np.round(np.arange(v.size) * (1e9 / rate)).astype(np.int64))
        vs.append(v)
    if not vs:
        return np.empty(0, np.int64), np.empty(0, np.float32), rate
    return np.concatenate(ts), np.concatenate(vs), rate


def read_metrics(con: sqlite3.Connection, session: str, name: str, unit: str | None = None) -> Iterable[tuple]:
    sql = "SELECT seq, window_start_ns, window_end_ns, values_json FROM metrics WHERE session=? AND name=?"
    args: list[object] = [session, name]
    if unit is not None:
        sql += " AND unit=?"
        args.append(unit)
    for seq, ws, we, vj in con.execute(sql + " ORDER BY seq", args):
        yield seq, ws, we, {k: (float("nan") if v is None else v) for k, v in json.loads(vj).items()}
