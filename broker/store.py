"""The hub's SQLite store: schema, idempotent inserts and read helpers.

Idempotency keys: sample blocks on (unit, kind, stream, session, seq); metrics on (unit, name, session,
seq). A redelivered message changes nothing; a missing seq stays visible as a gap (see :func:`gaps`).

Session records follow the units (ARCHITECTURE §1). Every command seen on the room's ``cmd`` topic goes
into ``command_log`` as *pending*; it is decided by the units' acknowledgements (:func:`decide_command`):

- the first ``ok`` acknowledgement accepts it: it is copied into ``commands`` (the record: a start sets the
  session's codes and start time, a stop its end, a marker is a marker) — unless a hub rule rejects it;
- acknowledgements that are all NACKs make it *refused* (with the units' reasons); a later ``ok`` from
  another unit still accepts it;
- hub rules (*rejected*, final): a start whose codes differ from the session's recorded codes; a marker
  whose time is more than ``marker_tolerance_ns`` (default 10 s) away from the hub's clock. The reference
  is the earliest of the hub's arrival time of the command and the times in the accepting units'
  acknowledgements (units take their time from the hub with chrony), so a recorder catching up on a backlog
  after a restart still judges a marker by when the units saw it.

A session's codes, start time and stop time are written once and never changed. Refused and rejected
commands are *bad commands* (:func:`command_counts`), never counted as lost samples.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BrokerError
from .wire import Ack, Command, Metric, Status

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
"""``PRAGMA user_version`` of the current layout. 2: plain rowid tables with UNIQUE keys (version 1, until
2026-12, used WITHOUT ROWID tables, which Debian 12's SQLite 3.40.1 - the one Raspberry Pi OS's Python and
``sqlite3`` use - misreports in ``PRAGMA integrity_check`` as "NULL value in <table>.<column>")."""

SCHEMA_SQL = """
PRAGMA journal_mode=WAL;
CREATE TABLE IF NOT EXISTS sessions(
    session TEXT PRIMARY KEY, room TEXT NOT NULL, started_ns INTEGER, stopped_ns INTEGER,
    therapist_code TEXT, client_code TEXT, updated_ns INTEGER NOT NULL, created_ns INTEGER);
CREATE INDEX IF NOT EXISTS sessions_updated ON sessions(updated_ns);
CREATE TABLE IF NOT EXISTS units(
    room TEXT NOT NULL, unit TEXT NOT NULL, first_seen_ns INTEGER NOT NULL, last_seen_ns INTEGER NOT NULL,
    last_state TEXT, version TEXT, last_session TEXT, dropped_json TEXT,
    UNIQUE(room, unit));
CREATE TABLE IF NOT EXISTS blocks(
    unit TEXT NOT NULL, kind TEXT NOT NULL, stream TEXT NOT NULL, session TEXT NOT NULL, seq INTEGER NOT NULL,
    t0_ns INTEGER NOT NULL, rate_hz REAL NOT NULL, flags INTEGER NOT NULL, n INTEGER NOT NULL,
    data BLOB NOT NULL, received_ns INTEGER NOT NULL, room TEXT NOT NULL DEFAULT '',
    UNIQUE(session, room, unit, kind, stream, seq));
CREATE TABLE IF NOT EXISTS metrics(
    unit TEXT NOT NULL, name TEXT NOT NULL, session TEXT NOT NULL, seq INTEGER NOT NULL,
    window_start_ns INTEGER NOT NULL, window_end_ns INTEGER NOT NULL, values_json TEXT NOT NULL,
    received_ns INTEGER NOT NULL, room TEXT NOT NULL DEFAULT '',
    UNIQUE(session, room, unit, name, seq));
CREATE TABLE IF NOT EXISTS commands(
    cmd_id TEXT NOT NULL, cmd TEXT NOT NULL, session TEXT NOT NULL, label TEXT, time_ns INTEGER NOT NULL,
    payload TEXT NOT NULL, received_ns INTEGER NOT NULL, room TEXT NOT NULL DEFAULT '',
    PRIMARY KEY(room, cmd_id));
CREATE TABLE IF NOT EXISTS command_log(
    room TEXT NOT NULL, cmd_id TEXT NOT NULL, cmd TEXT NOT NULL, session TEXT NOT NULL, label TEXT,
    time_ns INTEGER NOT NULL, payload TEXT NOT NULL, received_ns INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', reason TEXT, decided_ns INTEGER,
    UNIQUE(room, cmd_id));
CREATE INDEX IF NOT EXISTS command_log_session ON command_log(session);
CREATE VIEW IF NOT EXISTS markers AS
    SELECT room, session, cmd_id, label, time_ns FROM commands WHERE cmd='marker';
CREATE TABLE IF NOT EXISTS status(
    unit TEXT NOT NULL, time_ns INTEGER NOT NULL, state TEXT NOT NULL, session TEXT, payload TEXT NOT NULL,
    received_ns INTEGER NOT NULL, room TEXT NOT NULL DEFAULT '',
    UNIQUE(room, unit, time_ns, state));
CREATE TABLE IF NOT EXISTS acks(
    unit TEXT NOT NULL, cmd_id TEXT NOT NULL, ok INTEGER NOT NULL, error TEXT, time_ns INTEGER NOT NULL,
    room TEXT NOT NULL DEFAULT '',
    UNIQUE(room, unit, cmd_id));
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rejects(
    received_ns INTEGER NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL, payload_head BLOB);
"""

KEYS = {
    "units": ("room", "unit"),
    "blocks": ("session", "room", "unit", "kind", "stream", "seq"),
    "metrics": ("session", "room", "unit", "name", "seq"),
    "status": ("room", "unit", "time_ns", "state"),
    "acks": ("room", "unit", "cmd_id"),
}
"""The idempotency key of each table that version 1 kept WITHOUT ROWID (now a UNIQUE constraint)."""


class StoreError(BrokerError):
    """The hub database cannot be opened, migrated or read as a hub database."""


def _table_sql(con: sqlite3.Connection) -> dict[str, str]:
    return {name: sql or "" for name, sql in con.execute("SELECT name, sql FROM sqlite_master WHERE type='table'")}


def old_layout_tables(con: sqlite3.Connection) -> list[str]:
    """Tables still in the version-1 layout (WITHOUT ROWID), which SQLite 3.40.x misreports."""
    sql = _table_sql(con)
    return sorted(t for t in KEYS if "WITHOUT ROWID" in sql.get(t, "").upper())


def _table_ddl(table: str) -> str:
    start = SCHEMA_SQL.index(f"CREATE TABLE IF NOT EXISTS {table}(")
    return SCHEMA_SQL[start : SCHEMA_SQL.index(";", start) + 1]


def migrate(con: sqlite3.Connection) -> list[str]:
    """Convert version-1 tables to the current layout in one transaction (every row kept, keys unique as
    before); returns the tables converted. Safe to run again; a failure leaves the file as it was."""
    old = old_layout_tables(con)
    if not old:
        return []
    logger.warning("hub database: converting %s to the layout SQLite 3.40 checks correctly (once; keeps every "
                   "row)", ", ".join(old))
    fresh = sqlite3.connect(":memory:")
    try:
        fresh.executescript(SCHEMA_SQL)
        info = {t: [(r[1], bool(r[3]) and r[4] is None) for r in fresh.execute(f"PRAGMA table_info({t})")]
                for t in old}
    finally:
        fresh.close()
    steps = ["BEGIN IMMEDIATE;"]
    for t in old:
        cols = {r[1] for r in con.execute(f"PRAGMA table_info({t})")}
        lacking = [c for c, required in info[t] if required and c not in cols]
        if lacking:
            raise StoreError(f"hub database: table {t} lacks the required columns {lacking}; it is not a dyadsync "
                             "hub database this version can convert (the file is unchanged)")
        keep = ", ".join(c for c, _ in info[t] if c in cols)
        steps += [f"ALTER TABLE {t} RENAME TO {t}_v1;", _table_ddl(t),
                  f"INSERT INTO {t}({keep}) SELECT {keep} FROM {t}_v1;", f"DROP TABLE {t}_v1;"]
    steps += [f"PRAGMA user_version={SCHEMA_VERSION};", "COMMIT;"]
    try:
        con.executescript("\n".join(steps))
    except sqlite3.DatabaseError as exc:
        if con.in_transaction:
            con.rollback()
        raise StoreError(f"hub database: converting {', '.join(old)} failed, the file is unchanged: {exc}") from exc
    return old


def connect(path: Path | str, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the hub database (creating the schema, or converting a version-1 file, unless ``readonly``)."""
    if readonly:
        con = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, check_same_thread=False)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(path), check_same_thread=False)
        con.execute("PRAGMA busy_timeout=10000")
        migrate(con)
        con.executescript(SCHEMA_SQL)
        if con.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        con.execute("PRAGMA synchronous=NORMAL")
    con.execute("PRAGMA busy_timeout=10000")
    return con


def now_ns() -> int:
    return time.time_ns()


def insert_block(con: sqlite3.Connection, unit: str, kind: str, block, session: str, received_ns: int,
                 room: str = "") -> bool:
    """Insert a sample block; False if it was already stored (a redelivery)."""
    cur = con.execute(
        "INSERT OR IGNORE INTO blocks(unit, kind, stream, session, seq, t0_ns, rate_hz, flags, n, data, "
        "received_ns, room) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
        (unit, kind, block.stream, session, block.seq, block.t0_ns, block.rate_hz, block.flags, block.n,
         block.values.astype("<f4").tobytes(), received_ns, room),
    )
    return cur.rowcount == 1


def insert_metric(con: sqlite3.Connection, unit: str, m: Metric, received_ns: int, room: str = "") -> bool:
    values = {k: (None if not np.isfinite(v) else v) for k, v in m.values.items()}
    cur = con.execute(
        "INSERT OR IGNORE INTO metrics(unit, name, session, seq, window_start_ns, window_end_ns, values_json, "
        "received_ns, room) VALUES(?,?,?,?,?,?,?,?,?)",
        (unit, m.name, m.session, m.seq, m.window_start_ns, m.window_end_ns, json.dumps(values), received_ns, room),
    )
    return cur.rowcount == 1


MARKER_TOLERANCE_NS = 10 * 1_000_000_000
"""A marker more than this far from the hub's clock (see the module doc) is rejected."""

COMMAND_STATES = ("pending", "accepted", "refused", "rejected")


def session_conflict(con: sqlite3.Connection, c: Command) -> str | None:
    """Why the start ``c`` contradicts the recorded session (other codes), or None."""
    if c.cmd != "start":
        return None
    row = con.execute("SELECT therapist_code, client_code FROM sessions WHERE session=?", (c.session,)).fetchone()
    if row is None or row == (None, None):
        return None
    want = (c.participants.get("therapist"), c.participants.get("client"))
    if tuple(row) == want:
        return None
    return (f"session {c.session!r} is recorded with therapist {row[0]!r}, client {row[1]!r}; a start with "
            f"therapist {want[0]!r}, client {want[1]!r} is not recorded")


def insert_command(con: sqlite3.Connection, room: str, c: Command, payload: bytes, received_ns: int) -> bool:
    """Record an *accepted* command: ``start`` sets the session's codes and start time, ``stop`` its end time,
    ``marker`` adds a marker. Values already recorded are never overwritten; a start whose codes contradict
    the recorded ones is not recorded (False, see :func:`session_conflict`). False for a repeated command."""
    if session_conflict(con, c) is not None:
        return False
    cur = con.execute(
        "INSERT OR IGNORE INTO commands(cmd_id, cmd, session, label, time_ns, payload, received_ns, room) "
        "VALUES(?,?,?,?,?,?,?,?)",
        (c.id, c.cmd, c.session, c.label, c.time_ns, payload.decode(), received_ns, room),
    )
    if cur.rowcount != 1:
        return False
    if c.cmd == "start":
        con.execute(
            "INSERT INTO sessions(session, room, started_ns, therapist_code, client_code, updated_ns, created_ns) "
            "VALUES(?,?,?,?,?,?,?) ON CONFLICT(session) DO UPDATE SET "
            "started_ns=COALESCE(sessions.started_ns, excluded.started_ns), "
            "therapist_code=COALESCE(sessions.therapist_code, excluded.therapist_code), "
            "client_code=COALESCE(sessions.client_code, excluded.client_code), "
            "updated_ns=MAX(sessions.updated_ns, excluded.updated_ns)",
            (c.session, room, c.time_ns, c.participants["therapist"], c.participants["client"], received_ns,
             received_ns),
        )
    elif c.cmd == "stop":
        con.execute(
            "INSERT INTO sessions(session, room, stopped_ns, updated_ns, created_ns) VALUES(?,?,?,?,?) "
            "ON CONFLICT(session) DO UPDATE SET stopped_ns=COALESCE(sessions.stopped_ns, excluded.stopped_ns), "
            "updated_ns=MAX(sessions.updated_ns, excluded.updated_ns)",
            (c.session, room, c.time_ns, received_ns, received_ns),
        )
    else:
        touch_session(con, room, c.session, received_ns)
    return True


def log_command(con: sqlite3.Connection, room: str, c: Command, payload: bytes, received_ns: int, *,
                marker_tolerance_ns: int = MARKER_TOLERANCE_NS) -> tuple[bool, str | None]:
    """A command seen on the room's ``cmd`` topic: logged as pending, then decided by the acknowledgements
    already stored (they may arrive first). Returns (new, state it moved to or None)."""
    cur = con.execute(
        "INSERT OR IGNORE INTO command_log(room, cmd_id, cmd, session, label, time_ns, payload, received_ns) "
        "VALUES(?,?,?,?,?,?,?,?)",
        (room, c.id, c.cmd, c.session, c.label, c.time_ns, payload.decode(), received_ns),
    )
    if cur.rowcount != 1:
        return False, None
    return True, decide_command(con, room, c.id, received_ns, marker_tolerance_ns=marker_tolerance_ns)


def decide_command(con: sqlite3.Connection, room: str, cmd_id: str, now: int, *,
                   marker_tolerance_ns: int = MARKER_TOLERANCE_NS) -> str | None:
    """Apply the rules of the module doc to a logged command; returns its new state if it changed."""
    row = con.execute("SELECT payload, received_ns, state FROM command_log WHERE room=? AND cmd_id=?",
                      (room, cmd_id)).fetchone()
    if row is None or row[2] in ("accepted", "rejected"):
        return None
    payload, received_ns, state = row
    acks = con.execute("SELECT unit, ok, error, time_ns FROM acks WHERE room=? AND cmd_id=? ORDER BY unit",
                       (room, cmd_id)).fetchall()
    oks = [a for a in acks if a[1]]
    if not acks:
        return None
    c = Command.decode(payload.encode())
    reason: str | None = None
    if not oks:
        new_state = "refused"
        reason = "; ".join(f"{u}: {err or 'refused'}" for u, _, err, _ in acks)
    elif c.cmd == "marker" and abs(c.time_ns - (ref := min([received_ns] + [a[3] for a in oks]))) > marker_tolerance_ns:
        new_state = "rejected"
        reason = (f"marker time is {(c.time_ns - ref) / 1e9:+.1f} s from the hub's clock (allowed: "
                  f"±{marker_tolerance_ns / 1e9:g} s)")
    elif (conflict := session_conflict(con, c)) is not None:
        new_state, reason = "rejected", conflict
    else:
        new_state = "accepted"
        insert_command(con, room, c, payload.encode(), received_ns)
    con.execute("UPDATE command_log SET state=?, reason=?, decided_ns=? WHERE room=? AND cmd_id=?",
                (new_state, reason, now, room, cmd_id))
    return new_state if new_state != state else None


def command_state(con: sqlite3.Connection, room: str, cmd_id: str) -> tuple[str, str | None] | None:
    """(state, reason) of a logged command, or None if it was never seen."""
    row = con.execute("SELECT state, reason FROM command_log WHERE room=? AND cmd_id=?", (room, cmd_id)).fetchone()
    return (row[0], row[1]) if row else None


def command_counts(con: sqlite3.Connection, session: str | None = None) -> dict[str, int]:
    """Commands by state (pending, accepted, refused, rejected), for one session or all; ``bad`` is refused +
    rejected (+ undecodable commands, counted hub-wide as ``bad_commands``, when ``session`` is None)."""
    sql = "SELECT state, COUNT(*) FROM command_log" + (" WHERE session=?" if session else "") + " GROUP BY state"
    out = dict.fromkeys(COMMAND_STATES, 0)
    out.update(dict(con.execute(sql, (session,) if session else ())))
    out["bad"] = out["refused"] + out["rejected"]
    if session is None:
        out["bad"] += counters(con).get("bad_commands", 0)
    return out


def command_log(con: sqlite3.Connection, session: str | None = None, *, limit: int = 1000) -> list[dict]:
    """The logged commands (newest last) with their state and the reason of a refusal or rejection."""
    cols = ("room", "cmd_id", "cmd", "session", "label", "time_ns", "received_ns", "state", "reason")
    sql = f"SELECT {', '.join(cols)} FROM command_log" + (" WHERE session=?" if session else "")
    sql += " ORDER BY received_ns DESC, cmd_id LIMIT ?"
    rows = con.execute(sql, ((session,) if session else ()) + (limit,)).fetchall()
    return [dict(zip(cols, r, strict=True)) for r in reversed(rows)]


def touch_session(con: sqlite3.Connection, room: str, session: str, now: int) -> None:
    """Mark ``session`` as changed at ``now`` (creating it when data arrives before its start command)."""
    con.execute(
        "INSERT INTO sessions(session, room, updated_ns, created_ns) VALUES(?,?,?,?) "
        "ON CONFLICT(session) DO UPDATE SET updated_ns=MAX(updated_ns, excluded.updated_ns)",
        (session, room, now, now),
    )


def touch_unit(con: sqlite3.Connection, room: str, unit: str, now: int, status: Status | None = None) -> None:
    con.execute(
        "INSERT INTO units(room, unit, first_seen_ns, last_seen_ns) VALUES(?,?,?,?) "
        "ON CONFLICT(room, unit) DO UPDATE SET last_seen_ns=MAX(last_seen_ns, excluded.last_seen_ns)",
        (room, unit, now, now),
    )
    if status is not None:
        con.execute(
            "UPDATE units SET last_state=?, version=?, last_session=COALESCE(?, last_session), dropped_json=? "
            "WHERE room=? AND unit=?",
            (status.state, status.version, status.session, json.dumps(status.dropped, sort_keys=True), room, unit),
        )


def insert_status(con: sqlite3.Connection, unit: str, s: Status, payload: bytes, received_ns: int,
                  room: str = "") -> bool:
    cur = con.execute(
        "INSERT OR IGNORE INTO status(unit, time_ns, state, session, payload, received_ns, room) "
        "VALUES(?,?,?,?,?,?,?)",
        (unit, s.time_ns, s.state, s.session, payload.decode(), received_ns, room),
    )
    return cur.rowcount == 1


def insert_ack(con: sqlite3.Connection, a: Ack, room: str = "") -> bool:
    cur = con.execute("INSERT OR IGNORE INTO acks(unit, cmd_id, ok, error, time_ns, room) VALUES(?,?,?,?,?,?)",
                      (a.unit, a.id, int(a.ok), a.error, a.time_ns, room))
    return cur.rowcount == 1


def log_ack(con: sqlite3.Connection, a: Ack, room: str, received_ns: int, *,
            marker_tolerance_ns: int = MARKER_TOLERANCE_NS) -> tuple[bool, str | None]:
    """Store a unit's acknowledgement and decide its command; returns (new, the command's new state or None)."""
    if not insert_ack(con, a, room):
        return False, None
    return True, decide_command(con, room, a.id, received_ns, marker_tolerance_ns=marker_tolerance_ns)


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
    room: str = ""


def gaps(con: sqlite3.Connection, session: str | None = None) -> list[Gap]:
    """Missing sequence numbers between stored blocks of each (unit, kind, stream, session)."""
    sql = (
        "SELECT unit, kind, stream, session, seq, "
        "LEAD(seq) OVER (PARTITION BY session, room, unit, kind, stream ORDER BY seq) AS nxt, room FROM blocks"
        + (" WHERE session=?" if session else "")
    )
    rows = con.execute(f"SELECT * FROM ({sql}) WHERE nxt IS NOT NULL AND nxt > seq + 1", (session,) if session else ())
    return [Gap(u, k, s, ss, seq, nxt - seq - 1, r) for u, k, s, ss, seq, nxt, r in rows]


def read_stream(con: sqlite3.Connection, session: str, stream: str, kind: str = "feat",
                unit: str | None = None, room: str | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Concatenate a stored stream: (t_ns int64, values float32, rate_hz). Gaps are left as gaps in t_ns."""
    sql = "SELECT t0_ns, rate_hz, data FROM blocks WHERE session=? AND stream=? AND kind=?"
    args: list[object] = [session, stream, kind]
    if unit is not None:
        sql += " AND unit=?"
        args.append(unit)
    if room is not None:
        sql += " AND room=?"
        args.append(room)
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


# ------------------------------------------------------------------------------------ session views
NOT_LOSSES = frozenset({"bad_commands"})
"""Keys of a unit status's ``dropped`` map that count something other than lost data."""


SESSION_COLUMNS = ("session", "room", "started_ns", "stopped_ns", "therapist_code", "client_code", "updated_ns",
                   "created_ns")


def list_sessions(con: sqlite3.Connection, *, since_ns: int | None = None, limit: int = 100,
                  offset: int = 0) -> list[dict]:
    """Sessions ordered by (updated_ns, session); ``since_ns`` keeps those changed strictly after it."""
    sql = f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions"
    args: list[object] = []
    if since_ns is not None:
        sql += " WHERE updated_ns > ?"
        args.append(since_ns)
    sql += " ORDER BY updated_ns, session LIMIT ? OFFSET ?"
    args += [limit, offset]
    return [dict(zip(SESSION_COLUMNS, row, strict=True)) for row in con.execute(sql, args)]


def count_sessions(con: sqlite3.Connection, since_ns: int | None = None) -> int:
    if since_ns is None:
        return con.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    return con.execute("SELECT COUNT(*) FROM sessions WHERE updated_ns > ?", (since_ns,)).fetchone()[0]


def get_session(con: sqlite3.Connection, session: str) -> dict | None:
    row = con.execute(f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions WHERE session=?", (session,)).fetchone()
    return dict(zip(SESSION_COLUMNS, row, strict=True)) if row else None


def session_markers(con: sqlite3.Connection, session: str) -> list[dict]:
    """The recorded (accepted) markers of ``session``, in time order."""
    return [{"id": i, "label": lab, "time_ns": t} for i, lab, t in con.execute(
        "SELECT cmd_id, label, time_ns FROM markers WHERE session=? ORDER BY time_ns", (session,))]


@dataclass(frozen=True)
class StreamInfo:
    room: str
    unit: str
    kind: str
    stream: str
    rate_hz: float
    blocks: int
    samples: int
    first_seq: int
    last_seq: int
    t_start_ns: int
    t_end_ns: int
    flagged_blocks: int

    @property
    def missing_blocks(self) -> int:
        """Blocks missing between the first and the last stored one (holes in seq)."""
        return self.last_seq - self.first_seq + 1 - self.blocks


def session_streams(con: sqlite3.Connection, session: str) -> list[StreamInfo]:
    rows = con.execute(
        "SELECT room, unit, kind, stream, MIN(rate_hz), COUNT(*), SUM(n), MIN(seq), MAX(seq), MIN(t0_ns), "
        "MAX(t0_ns + CAST(ROUND((n - 1) * 1e9 / rate_hz) AS INTEGER)), SUM(flags != 0) "
        "FROM blocks WHERE session=? GROUP BY room, unit, kind, stream ORDER BY kind, unit, stream",
        (session,),
    )
    return [StreamInfo(*r) for r in rows]


def session_summary(con: sqlite3.Connection, session: str, include_hub: bool = True) -> dict | None:
    """Metadata and quality of one session: streams with gaps and losses, metrics, markers, unit status.

    ``include_hub`` adds the hub-wide malformed/unauthorized/duplicate counters (these are not per session
    and change without the session changing, so exported files leave them out)."""
    meta = get_session(con, session)
    if meta is None:
        return None
    gap_list = gaps(con, session)
    streams = []
    for st in session_streams(con, session):
        g = [x for x in gap_list if (x.room, x.unit, x.kind, x.stream) == (st.room, st.unit, st.kind, st.stream)]
        streams.append({
            "room": st.room, "unit": st.unit, "kind": st.kind, "stream": st.stream, "rate_hz": st.rate_hz,
            "blocks": st.blocks, "samples": st.samples, "first_seq": st.first_seq, "last_seq": st.last_seq,
            "t_start_ns": st.t_start_ns, "t_end_ns": st.t_end_ns, "flagged_blocks": st.flagged_blocks,
            "gaps": len(g), "missing_blocks": st.missing_blocks,
        })
    metric_rows = con.execute(
        "SELECT unit, name, COUNT(*), MIN(seq), MAX(seq) FROM metrics WHERE session=? GROUP BY unit, name "
        "ORDER BY unit, name", (session,))
    metrics = [{"unit": u, "name": n, "count": c, "missing": (hi - lo + 1 - c)} for u, n, c, lo, hi in metric_rows]
    markers = session_markers(con, session)
    units = {}
    for unit, dropped_json, state in con.execute(
        "SELECT s.unit, s.payload, s.state FROM status s WHERE s.session=? ORDER BY s.time_ns", (session,)
    ):
        try:
            dropped = json.loads(dropped_json).get("dropped", {})
        except (ValueError, AttributeError):
            dropped = {}
        units[unit] = {"last_state": state, "dropped_reported": dropped}
    status_changes = con.execute("SELECT COUNT(*) FROM status WHERE session=?", (session,)).fetchone()[0]
    hub = counters(con) if include_hub else {}
    cmds = command_counts(con, session)
    refused = [{"id": r["cmd_id"], "cmd": r["cmd"], "state": r["state"], "reason": r["reason"]}
               for r in command_log(con, session) if r["state"] in ("refused", "rejected")]
    out = {
        **meta,
        "streams": streams,
        "metrics": metrics,
        "markers": markers,
        "refused_commands": refused,
        "units": units,
        "quality": {
            "gaps": len(gap_list),
            "missing_blocks": sum(s["missing_blocks"] for s in streams),
            "missing_metrics": sum(m["missing"] for m in metrics),
            # the units' loss counters only: a refused command is a bad command, not a lost sample
            "unit_reported_dropped": sum(v for u in units.values() for k, v in u["dropped_reported"].items()
                                         if k not in NOT_LOSSES),
            "bad_commands": cmds["bad"],
            "flagged_blocks": sum(s["flagged_blocks"] for s in streams),
            "status_changes": status_changes,
        },
    }
    if include_hub:
        out["quality"].update({"hub_malformed": hub.get("malformed", 0),
                               "hub_unauthorized": hub.get("unauthorized", 0),
                               "hub_duplicates": hub.get("duplicate", 0),
                               "hub_bad_commands": command_counts(con)["bad"]})
    return out


# ------------------------------------------------------------------------------------------- checking
@dataclass
class StreamAccount:
    """One stored stream (raw or feature blocks, or a metric series) of one unit in one session."""

    room: str
    unit: str
    session: str
    kind: str  # raw, feat or metric
    stream: str  # "<role>/<signal>", or the metric name
    count: int
    first_seq: int
    last_seq: int
    missing: int  # sequence numbers absent between first_seq and last_seq
    gap_ranges: list[tuple[int, int]]  # (first missing, last missing), at most MAX_LISTED
    duplicates: int  # rows sharing a sequence number (impossible while the UNIQUE key holds)
    overlaps: int = 0  # blocks whose samples start before the previous block's samples end
    samples: int = 0
    rate_hz: float = 0.0
    t_start_ns: int = 0
    t_end_ns: int = 0


@dataclass
class HubCheck:
    """What :func:`check_database` found; ``damaged`` and ``incomplete`` sum it up."""

    path: str
    sqlite_version: str
    layout_version: int
    old_layout: list[str]
    integrity: list[str]  # PRAGMA integrity_check lines ("ok" alone when intact)
    nulls: dict[str, int]  # "table.column" -> rows with NULL in a NOT NULL column (counted directly)
    sessions: list[dict]
    streams: list[StreamAccount]
    counters: dict[str, int]
    table_rows: dict[str, int]  # raw, feat, metric rows
    rejects: int
    unit_reports: dict[str, dict[str, int]]  # "room/unit" -> dropped counts from its last status
    problems: list[str] = field(default_factory=list)  # the reasons for ``damaged``, in words

    @property
    def integrity_ok(self) -> bool:
        return self.integrity == ["ok"]

    @property
    def false_null_reports(self) -> bool:
        """integrity_check complains only of NULLs that a direct count does not find, in old-layout tables:
        the SQLite 3.40.x misreport, not damage."""
        return (not self.integrity_ok and bool(self.old_layout) and not any(self.nulls.values())
                and all(line.startswith("NULL value in ") and line[14:].split(".")[0] in self.old_layout
                        for line in self.integrity))

    unreadable: str = ""  # the error that stopped reading part way (a damaged file)

    @property
    def damaged(self) -> bool:
        return bool(self.problems)

    @property
    def incomplete(self) -> bool:
        return any(s.missing for s in self.streams)


MAX_LISTED = 20


def _not_null_columns(con: sqlite3.Connection) -> dict[str, list[str]]:
    out = {}
    for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"):
        out[table] = [r[1] for r in con.execute(f"PRAGMA table_info({table})") if r[3]]
    return out


def _accounts(con: sqlite3.Connection) -> list[StreamAccount]:
    accounts: dict[tuple, StreamAccount] = {}
    for room, unit, session, kind, stream, cnt, distinct, lo, hi, samples, rate, t0, t1 in con.execute(
        "SELECT room, unit, session, kind, stream, COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq), SUM(n), "
        "MIN(rate_hz), MIN(t0_ns), MAX(t0_ns + CAST(ROUND(n * 1e9 / rate_hz) AS INTEGER)) FROM blocks "
        "GROUP BY session, room, unit, kind, stream ORDER BY session, room, unit, kind, stream"
    ):
        accounts[(session, room, unit, kind, stream)] = StreamAccount(
            room, unit, session, kind, stream, cnt, lo, hi, hi - lo + 1 - distinct, [], cnt - distinct,
            samples=samples or 0, rate_hz=rate, t_start_ns=t0, t_end_ns=t1)
    for room, unit, session, name, cnt, distinct, lo, hi in con.execute(
        "SELECT room, unit, session, name, COUNT(*), COUNT(DISTINCT seq), MIN(seq), MAX(seq) FROM metrics "
        "GROUP BY session, room, unit, name ORDER BY session, room, unit, name"
    ):
        accounts[(session, room, unit, "metric", name)] = StreamAccount(
            room, unit, session, "metric", name, cnt, lo, hi, hi - lo + 1 - distinct, [], cnt - distinct)
    gap_sql = (
        "SELECT session, room, unit, {kind}, {name}, seq, nxt FROM (SELECT *, LEAD(seq) OVER (PARTITION BY "
        "session, room, unit, {kind}, {name} ORDER BY seq) AS nxt FROM {table}) WHERE nxt > seq + 1 "
        "ORDER BY session, room, unit, {kind}, {name}, seq"
    )
    for sql in (gap_sql.format(kind="kind", name="stream", table="blocks"),
                gap_sql.format(kind="'metric'", name="name", table="metrics")):
        for session, room, unit, kind, name, seq, nxt in con.execute(sql):
            acc = accounts[(session, room, unit, kind, name)]
            if len(acc.gap_ranges) < MAX_LISTED:
                acc.gap_ranges.append((seq + 1, nxt - 1))
    for session, room, unit, kind, stream, n in con.execute(
        "SELECT session, room, unit, kind, stream, COUNT(*) FROM (SELECT session, room, unit, kind, stream, t0_ns, "
        "LAG(t0_ns + CAST(ROUND((n - 0.5) * 1e9 / rate_hz) AS INTEGER)) OVER (PARTITION BY session, room, unit, "
        "kind, stream ORDER BY seq) AS prev_end FROM blocks) WHERE t0_ns < prev_end "
        "GROUP BY session, room, unit, kind, stream"
    ):
        accounts[(session, room, unit, kind, stream)].overlaps = n
    return list(accounts.values())


def check_database(path: Path | str) -> HubCheck:
    """Check a hub database file without changing it: SQLite's own ``PRAGMA integrity_check``, a direct
    count of NULLs in required columns, and the accounting of every stream (stored blocks, missing and
    duplicate sequence numbers, overlapping blocks), of the recorder's counters against the stored rows,
    and of what the units reported dropping. Raises :class:`StoreError` if the file is not a hub database."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    try:
        con = connect(path, readonly=True)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: cannot open as SQLite: {exc}") from exc
    unreadable = ""
    try:
        tables = _table_sql(con)
        missing = [t for t in ("sessions", "blocks", "metrics", "counters") if t not in tables]
        if missing:
            raise StoreError(f"{path}: not a dyadsync hub database (no table {', '.join(missing)})")
        report = HubCheck(
            path=str(path), sqlite_version=sqlite3.sqlite_version,
            layout_version=con.execute("PRAGMA user_version").fetchone()[0], old_layout=old_layout_tables(con),
            integrity=[], nulls={}, sessions=[], streams=[], counters={}, table_rows={"raw": 0, "feat": 0, "metric": 0},
            rejects=0, unit_reports={})
    except sqlite3.DatabaseError as exc:
        con.close()
        raise StoreError(f"{path}: cannot read as SQLite: {exc}") from exc
    try:
        report.integrity = [r[0] for r in con.execute("PRAGMA integrity_check(100)").fetchall()]
    except sqlite3.DatabaseError as exc:  # some damage stops the check itself
        report.integrity = [f"the integrity check itself failed: {exc}"]
    try:  # a damaged file may fail part way: what was read is kept and the failure is reported
        for table, cols in _not_null_columns(con).items():
            for col in cols:
                report.nulls[f"{table}.{col}"] = con.execute(
                    f'SELECT COUNT(*) FROM "{table}" WHERE "{col}" IS NULL').fetchone()[0]
        report.sessions = [dict(zip(SESSION_COLUMNS, r, strict=True)) for r in con.execute(
            f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions ORDER BY created_ns, session")]
        report.counters = counters(con)
        report.table_rows.update(con.execute("SELECT kind, COUNT(*) FROM blocks GROUP BY kind"))
        report.table_rows["metric"] = con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
        if "rejects" in tables:
            report.rejects = con.execute("SELECT COUNT(*) FROM rejects").fetchone()[0]
        if "units" in tables:
            for room, unit, dropped_json in con.execute("SELECT room, unit, dropped_json FROM units ORDER BY room, unit"):
                try:
                    dropped = json.loads(dropped_json or "{}")
                except ValueError:
                    dropped = {}
                report.unit_reports[f"{room}/{unit}"] = {k: v for k, v in dropped.items() if isinstance(v, int) and v}
        report.streams = _accounts(con)
    except sqlite3.DatabaseError as exc:
        unreadable = str(exc)
    finally:
        con.close()
    if unreadable:
        report.unreadable = unreadable
        report.problems.append(f"reading the data failed part way ({unreadable})")
    if not report.integrity_ok and not report.false_null_reports:
        report.problems.append("SQLite's integrity check reports damage")
    for col, n in report.nulls.items():
        if n:
            report.problems.append(f"{n} rows have no value in the required column {col}")
    for s in report.streams:
        if s.duplicates:
            report.problems.append(f"{s.duplicates} duplicate rows in {s.unit} {s.kind} {s.stream} (session {s.session})")
    for kind in ("raw", "feat", "metric"):
        counted = report.counters.get(f"stored_{kind}")
        if not unreadable and counted is not None and counted != report.table_rows[kind]:
            report.problems.append(f"the recorder counted {counted} stored {kind} messages but the database holds "
                                   f"{report.table_rows[kind]}")
    return report


# ------------------------------------------------------------------------------ reads for scoring and tools
def status_history(con: sqlite3.Connection, unit: str, *, since_ns: int | None = None, online: bool | None = None,
                   newest_first: bool = False, limit: int | None = None) -> list[tuple[int, str, dict]]:
    """A unit's stored statuses as (time_ns, state, decoded payload), oldest first (``newest_first``: the
    reverse). ``online`` True keeps only statuses other than ``offline``, False only ``offline`` ones."""
    sql = "SELECT time_ns, state, payload FROM status WHERE unit=?"
    args: list = [unit]
    if since_ns is not None:
        sql += " AND time_ns>=?"
        args.append(int(since_ns))
    if online is True:
        sql += " AND state!='offline'"
    elif online is False:
        sql += " AND state='offline'"
    sql += " ORDER BY time_ns" + (" DESC" if newest_first else "")
    if limit is not None:
        sql += " LIMIT ?"
        args.append(int(limit))
    return [(int(t), s, json.loads(p)) for t, s, p in con.execute(sql, args)]


def units_drained_since(con: sqlite3.Connection, since_ns: int) -> set[str]:
    """Units whose ``offline`` status since ``since_ns`` says their outbox was empty (a clean stop)."""
    return {u for (u,) in con.execute(
        "SELECT DISTINCT unit FROM status WHERE state='offline' AND json_extract(payload, '$.buffer_depth')=0 "
        "AND time_ns >= ?", (int(since_ns),))}


def block_seqs(con: sqlite3.Connection, session: str, unit: str, kind: str, stream: str) -> list[tuple[int, int]]:
    """(seq, t0_ns) of a stream's stored blocks, in seq order."""
    return [(int(s), int(t)) for s, t in con.execute(
        "SELECT seq, t0_ns FROM blocks WHERE session=? AND unit=? AND kind=? AND stream=? ORDER BY seq",
        (session, unit, kind, stream))]


def metric_seqs(con: sqlite3.Connection, session: str, unit: str, name: str) -> list[tuple[int, int]]:
    """(seq, window_start_ns) of a metric's stored windows, in seq order."""
    return [(int(s), int(w)) for s, w in con.execute(
        "SELECT seq, window_start_ns FROM metrics WHERE session=? AND unit=? AND name=? ORDER BY seq",
        (session, unit, name))]


# ------------------------------------------------------------------------------ export reading (lab formats)
def iter_stream_blocks(con: sqlite3.Connection, session: str, room: str, unit: str, kind: str,
                       stream: str) -> Iterable[tuple[int, float, int, bytes]]:
    """``(t0_ns, rate_hz, flags, float32 data)`` of one stored stream, in seq order (for exports)."""
    yield from con.execute(
        "SELECT t0_ns, rate_hz, flags, data FROM blocks WHERE session=? AND room=? AND unit=? AND kind=? AND stream=? "
        "ORDER BY seq", (session, room, unit, kind, stream))


def metric_value_keys(con: sqlite3.Connection, session: str) -> list[str]:
    """Every value key used by the session's metrics, sorted."""
    keys: set[str] = set()
    for (vj,) in con.execute("SELECT values_json FROM metrics WHERE session=?", (session,)):
        keys.update(json.loads(vj))
    return sorted(keys)


def iter_session_metrics(con: sqlite3.Connection, session: str) -> Iterable[tuple[str, str, str, int, int, int, dict]]:
    """``(room, unit, name, seq, window_start_ns, window_end_ns, values)`` of every metric of the session, ordered
    by room, unit, name, seq; a NaN value is None (as stored)."""
    for room, unit, name, seq, ws, we, vj in con.execute(
        "SELECT room, unit, name, seq, window_start_ns, window_end_ns, values_json FROM metrics WHERE session=? "
        "ORDER BY room, unit, name, seq", (session,)):
        yield room, unit, name, seq, ws, we, json.loads(vj)


def iter_session_status(con: sqlite3.Connection, session: str) -> Iterable[tuple[str, str, int, str]]:
    """``(room, unit, time_ns, state)`` of every status message of the session, in time order."""
    yield from con.execute(
        "SELECT room, unit, time_ns, state FROM status WHERE session=? ORDER BY time_ns, unit", (session,))


# ------------------------------------------------------------------------------ reads for the lab's analysis
def check_is_hub_database(con: sqlite3.Connection) -> None:
    """Raise :class:`sqlite3.DatabaseError` unless ``con`` holds a dyadsync hub schema."""
    con.execute("SELECT session FROM sessions LIMIT 1").fetchall()
    con.execute("SELECT seq FROM blocks LIMIT 1").fetchall()


def session_ids(con: sqlite3.Connection, *, by_start: bool = True, limit: int | None = None) -> list[str]:
    """Stored session ids, oldest first (``by_start``) or by id."""
    order = "COALESCE(started_ns, created_ns), session" if by_start else "session"
    sql = f"SELECT session FROM sessions ORDER BY {order}" + (" LIMIT ?" if limit is not None else "")
    return [s for (s,) in con.execute(sql, () if limit is None else (int(limit),))]


def session_block_keys(con: sqlite3.Connection, session: str) -> list[tuple[str, str, str]]:
    """``(unit, kind, stream)`` of every stored stream of the session, ordered by kind, stream, unit."""
    return [tuple(r) for r in con.execute(
        "SELECT DISTINCT unit, kind, stream FROM blocks WHERE session=? ORDER BY kind, stream, unit", (session,))]


def block_rows(con: sqlite3.Connection, session: str, unit: str, kind: str,
               stream: str) -> list[tuple[int, int, float, int, int, bytes]]:
    """``(seq, t0_ns, rate_hz, flags, n, float32 data)`` of one stored stream, in seq order."""
    return con.execute(
        "SELECT seq, t0_ns, rate_hz, flags, n, data FROM blocks WHERE session=? AND unit=? AND kind=? "
        "AND stream=? ORDER BY seq", (session, unit, kind, stream)).fetchall()


def session_status_payloads(con: sqlite3.Connection, session: str) -> list[tuple[int, str, str, dict | None]]:
    """``(time_ns, unit, state, decoded payload or None)`` of the session's statuses, in time order."""
    out = []
    for t, u, s, p in con.execute(
            "SELECT time_ns, unit, state, payload FROM status WHERE session=? ORDER BY time_ns", (session,)):
        try:
            obj = json.loads(p)
        except ValueError:
            obj = None
        out.append((int(t), u, s, obj if isinstance(obj, dict) else None))
    return out
