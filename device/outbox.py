"""The durable outbox: every outgoing MQTT message is committed to SQLite (WAL) before it is published
and deleted only when the broker has acknowledged it (QoS 1 PUBACK).

A broker's PUBACK is not yet the hub's copy: Mosquitto holds what it has acknowledged but not yet handed
to the recorder in memory and writes it to disk only every ``autosave_interval`` seconds, so a broker
killed (SIGKILL, hub power cut) loses what it acknowledged in its last seconds. The outbox therefore keeps
acknowledged data messages (raw, feat, metric) for ``keep_acked_s`` more seconds, counted from their
PUBACK, as a *resend tail*: the link publishes the tail again after every (re)connect and the hub's
idempotent store drops the copies. Acknowledgements only arrive while connected, so during an outage
nothing leaves the tail: after a reconnect it holds the last ``keep_acked_s`` seconds before the link
went down. Retained messages (status) and command acknowledgements are deleted at their PUBACK (a stale
retained status sent again would overwrite the current one). Tail rows are not queued messages: they
count in neither ``depth`` nor ``bytes_queued`` and are the first to go when the quota is reached.

The same file keeps the unit's small persistent state (``state`` table: the open session, per-stream
sequence counters), written in the *same transaction* as the messages that advance it. So after SIGKILL
or a power cut the counters and the queued messages agree: nothing committed is lost, no sequence number
is reused, and the restarted unit resends every unacknowledged message in its original order.

Disk quota policy (``quota_bytes`` counts queued payload bytes): when a new message does not fit, the
oldest queued **raw** blocks are dropped first, then the oldest **feature** blocks; metrics, commands'
acknowledgements and status are never dropped (they are small). If a new raw or feature block still
does not fit it is not queued. Every dropped message is counted per kind (``dropped`` counters, shown in
the retained status) and the unit reports ``buffering`` while anything is queued but unsent. Dropped
blocks leave a visible sequence gap at the hub.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import DyadsyncError

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox(
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL,
    retain INTEGER NOT NULL, kind TEXT NOT NULL, size INTEGER NOT NULL, created_ns INTEGER NOT NULL,
    acked_ns INTEGER);
CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

EVICTABLE = ("raw", "feat")  # in eviction order
TAIL_KINDS = frozenset({"raw", "feat", "metric"})  # kept for ``keep_acked_s`` after their PUBACK


class OutboxError(DyadsyncError, OSError):
    """The outbox database cannot be opened or written."""


@dataclass(frozen=True)
class OutMsg:
    """A message to queue. ``kind``: raw, feat, metric, status, ack (drives the quota policy)."""

    topic: str
    payload: bytes
    kind: str
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class Queued:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str


class Outbox:
    """Thread-safe SQLite outbox and state store (one connection guarded by a lock)."""

    def __init__(self, path: Path | str, *, quota_bytes: int = 512 * 2**20, synchronous: str = "full",
                 keep_acked_s: float = 30.0) -> None:
        self.path = Path(path)
        self.quota_bytes = int(quota_bytes)
        if keep_acked_s < 0:
            raise ValueError(f"keep_acked_s must be >= 0, got {keep_acked_s}")
        self.keep_acked_ns = int(keep_acked_s * 1e9)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._con = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
            self._con.execute("PRAGMA busy_timeout=10000")
            self._con.executescript(SCHEMA)
            cols = {r[1] for r in self._con.execute("PRAGMA table_info(outbox)")}
            if "acked_ns" not in cols:  # an outbox written before the resend tail existed
                self._con.execute("ALTER TABLE outbox ADD COLUMN acked_ns INTEGER")
            self._con.execute("CREATE INDEX IF NOT EXISTS outbox_acked ON outbox(acked_ns) WHERE acked_ns IS NOT NULL")
            # Deletions need no fsync: a deletion lost in a power cut only means a resend, which the hub
            # deduplicates. A second connection with synchronous=NORMAL keeps them cheap.
            self._del = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._del.execute("PRAGMA synchronous=NORMAL")
            self._del.execute("PRAGMA busy_timeout=10000")
            row = self._con.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox "
                                    "WHERE acked_ns IS NULL").fetchone()
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"outbox {self.path}: cannot open: {exc}") from exc
        self._count, self._bytes = int(row[0]), int(row[1])
        self.listeners: list[Any] = []  # callables invoked (without the lock) after each commit

    # ------------------------------------------------------------------------------------- writing
    def put(self, msgs: Iterable[OutMsg], state: dict[str, Any] | None = None,
            counters: dict[str, int] | None = None) -> list[int]:
        """Queue ``msgs``, update ``state`` keys (JSON values) and add to ``counters`` in one transaction;
        returns the row ids (0 for a message refused by the quota). On a write failure (a full disk) nothing
        of it is stored, :class:`OutboxError` is raised and the caller still holds the messages."""
        msgs = list(msgs)
        now = time.time_ns()
        ids: list[int] = []
        dropped: dict[str, int] = {}
        with self._lock:
            count_before, bytes_before = self._count, self._bytes
            try:
                self._con.execute("BEGIN IMMEDIATE")
                for m in msgs:
                    size = len(m.payload) + len(m.topic)
                    if self._bytes + size > self.quota_bytes:
                        self._evict(self._bytes + size - self.quota_bytes, dropped)
                    if self._bytes + size > self.quota_bytes and m.kind in EVICTABLE:
                        dropped[m.kind] = dropped.get(m.kind, 0) + 1
                        ids.append(0)
                        continue
                    cur = self._con.execute(
                        "INSERT INTO outbox(topic, payload, qos, retain, kind, size, created_ns) VALUES(?,?,?,?,?,?,?)",
                        (m.topic, bytes(m.payload), m.qos, int(m.retain), m.kind, size, now),
                    )
                    ids.append(int(cur.lastrowid))
                    self._count += 1
                    self._bytes += size
                for key, value in (state or {}).items():
                    self._con.execute(
                        "INSERT INTO state VALUES(?,?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                        (key, json.dumps(value)),
                    )
                for kind, n in dropped.items():
                    self._add_counter(f"dropped_{kind}", n)
                for name, n in (counters or {}).items():
                    self._add_counter(name, n)
                self._con.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                self._rollback()
                self._count, self._bytes = count_before, bytes_before  # the transaction left nothing behind
                raise OutboxError(f"outbox {self.path}: write failed: {exc}") from exc
        if dropped:
            logger.warning("outbox quota of %d bytes reached: dropped %s", self.quota_bytes, dropped)
        for listener in self.listeners:
            listener()
        return ids

    def _evict(self, need_bytes: int, dropped: dict[str, int]) -> None:
        # the resend tail first: the broker has acknowledged it, so it frees space without losing anything
        self._con.execute("DELETE FROM outbox WHERE acked_ns IS NOT NULL")
        for kind in EVICTABLE:
            while need_bytes > 0:
                rows = self._con.execute(
                    "SELECT id, size FROM outbox WHERE kind=? AND acked_ns IS NULL ORDER BY id LIMIT 64", (kind,)
                ).fetchall()
                if not rows:
                    break
                take = []
                for rid, size in rows:
                    take.append(rid)
                    need_bytes -= size
                    self._bytes -= size
                    self._count -= 1
                    if need_bytes <= 0:
                        break
                self._con.executemany("DELETE FROM outbox WHERE id=?", [(r,) for r in take])
                dropped[kind] = dropped.get(kind, 0) + len(take)

    def _add_counter(self, name: str, n: int) -> None:
        self._con.execute(
            "INSERT INTO counters VALUES(?,?) ON CONFLICT(name) DO UPDATE SET value=value+excluded.value", (name, n)
        )

    def _rollback(self) -> None:
        try:
            self._con.execute("ROLLBACK")
        except sqlite3.DatabaseError:
            pass

    def set_state(self, **values: Any) -> None:
        self.put([], state=values)

    def acknowledge(self, ids: Iterable[int]) -> int:
        """The broker acknowledged these rows: delete them, or move data rows to the resend tail; the tail's
        rows acknowledged more than ``keep_acked_s`` ago are deleted. Returns how many were still queued
        (a second PUBACK for a row, or the PUBACK of a resent tail row, counts 0 and refreshes its tail time)."""
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        now = time.time_ns()
        with self._lock:
            count_before, bytes_before = self._count, self._bytes
            try:
                self._del.execute("BEGIN IMMEDIATE")
                removed = 0
                for rid in ids:
                    row = self._del.execute("SELECT size, kind, retain, acked_ns FROM outbox WHERE id=?",
                                            (rid,)).fetchone()
                    if row is None:
                        continue
                    size, kind, retain, acked = row
                    if self.keep_acked_ns > 0 and kind in TAIL_KINDS and not retain:
                        self._del.execute("UPDATE outbox SET acked_ns=? WHERE id=?", (now, rid))
                    else:
                        self._del.execute("DELETE FROM outbox WHERE id=?", (rid,))
                    if acked is None:
                        removed += 1
                        self._bytes -= int(size)
                self._count -= removed
                self._del.execute("DELETE FROM outbox WHERE acked_ns IS NOT NULL AND acked_ns < ?",
                                  (now - self.keep_acked_ns,))
                self._del.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                try:
                    self._del.execute("ROLLBACK")
                except sqlite3.DatabaseError:
                    pass
                self._count, self._bytes = count_before, bytes_before
                raise OutboxError(f"outbox {self.path}: acknowledge failed: {exc}") from exc
        return removed

    # ------------------------------------------------------------------------------------- reading
    def pending(self, after_id: int = 0, limit: int = 100) -> list[Queued]:
        """Queued (not yet acknowledged) messages after row ``after_id``, oldest first."""
        with self._lock:
            rows = self._con.execute(
                "SELECT id, topic, payload, qos, retain, kind FROM outbox WHERE id>? AND acked_ns IS NULL "
                "ORDER BY id LIMIT ?", (after_id, limit),
            ).fetchall()
        return [Queued(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def acked_tail(self) -> list[Queued]:
        """The resend tail: acknowledged data messages kept for ``keep_acked_s``, oldest first."""
        with self._lock:
            rows = self._con.execute(
                "SELECT id, topic, payload, qos, retain, kind FROM outbox WHERE acked_ns IS NOT NULL ORDER BY id"
            ).fetchall()
        return [Queued(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def get_state(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._con.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._con.execute("SELECT name, value FROM counters"))

    @property
    def depth(self) -> int:
        return self._count

    @property
    def bytes_queued(self) -> int:
        return self._bytes

    def integrity_check(self) -> str:
        with self._lock:
            return str(self._con.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            try:
                self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.DatabaseError:
                logger.debug("outbox checkpoint at close failed", exc_info=True)
            self._con.close()
            self._del.close()


# ------------------------------------------------------------------------------------------- checking
@dataclass
class QueueAccount:
    """The messages of one stream (or metric, or other kind) held in the outbox."""

    kind: str  # raw, feat, metric, status, ack
    name: str  # stream "<role>/<signal>", metric name, or the topic for other kinds
    session: str
    queued: int = 0  # waiting for the broker's acknowledgement
    tail: int = 0  # acknowledged, kept to resend after a reconnect
    bytes_queued: int = 0
    first_seq: int | None = None  # of the queued messages
    last_seq: int | None = None
    duplicates: int = 0  # the same sequence number held twice (queued or in the tail)


@dataclass
class OutboxCheck:
    """What :func:`check_outbox` found; ``problems`` lists, in words, what makes it ``damaged``."""

    path: str
    sqlite_version: str
    integrity: list[str]
    nulls: dict[str, int]
    accounts: list[QueueAccount]
    counters: dict[str, int]
    session: str | None
    next_seq: dict[str, int]  # the open session's next raw sequence number per stream
    undecodable: int
    problems: list[str] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        return bool(self.problems)

    @property
    def queued(self) -> int:
        return sum(a.queued for a in self.accounts)

    @property
    def bytes_queued(self) -> int:
        return sum(a.bytes_queued for a in self.accounts)

    @property
    def dropped(self) -> dict[str, int]:
        return {k.removeprefix("dropped_"): v for k, v in self.counters.items() if k.startswith("dropped_") and v}


def check_outbox(path: Path | str) -> OutboxCheck:
    """Check a unit's outbox file without changing it: SQLite's ``PRAGMA integrity_check``, a direct count
    of NULLs in required columns, and the accounting of what it holds: per stream the queued and resend-tail
    messages, their sequence numbers, any sequence number held twice or not below the open session's
    counter (it would be reused), payloads that do not decode, and the quota drop counters."""
    from broker import wire  # only here: the outbox itself stores opaque bytes

    path = Path(path)
    if not path.is_file():
        raise OutboxError(f"{path}: no such file")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.DatabaseError as exc:
        raise OutboxError(f"{path}: cannot open as SQLite: {exc}") from exc
    accounts: dict[tuple[str, str, str], QueueAccount] = {}
    seen: dict[tuple[str, str, str], set[int]] = {}
    undecodable = 0
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"outbox", "state", "counters"} <= tables:
            raise OutboxError(f"{path}: not a dyadsync unit outbox (tables outbox, state, counters expected)")
        integrity = [r[0] for r in con.execute("PRAGMA integrity_check(100)")]
        nulls = {}
        for table in ("outbox", "state", "counters"):
            for col in [r[1] for r in con.execute(f"PRAGMA table_info({table})") if r[3]]:
                nulls[f"{table}.{col}"] = con.execute(f"SELECT COUNT(*) FROM {table} WHERE {col} IS NULL").fetchone()[0]
        cols = {r[1] for r in con.execute("PRAGMA table_info(outbox)")}
        acked = "acked_ns" if "acked_ns" in cols else "NULL"
        for topic, payload, kind, size, acked_ns in con.execute(
            f"SELECT topic, payload, kind, size, {acked} FROM outbox ORDER BY id"
        ):
            name, session, seq = topic, "", None
            try:
                if kind in ("raw", "feat"):
                    block, session = wire.decode_block(bytes(payload))
                    name, seq = block.stream, block.seq
                elif kind == "metric":
                    m = wire.Metric.decode(bytes(payload))
                    name, session, seq = m.name, m.session, m.seq
            except (wire.WireError, TypeError):
                undecodable += 1
                continue
            key = (kind, name, session)
            acc = accounts.setdefault(key, QueueAccount(kind, name, session))
            if acked_ns is None:
                acc.queued += 1
                acc.bytes_queued += int(size or 0)
            else:
                acc.tail += 1
            if seq is not None:
                ids = seen.setdefault(key, set())
                if seq in ids:
                    acc.duplicates += 1
                ids.add(seq)
                if acked_ns is None:  # the range of what waits; tail rows were delivered already
                    acc.first_seq = seq if acc.first_seq is None else min(acc.first_seq, seq)
                    acc.last_seq = seq if acc.last_seq is None else max(acc.last_seq, seq)
        state = {}
        for key, value in con.execute("SELECT key, value FROM state"):
            try:
                state[key] = json.loads(value)
            except ValueError:
                undecodable += 1
        counters = dict(con.execute("SELECT name, value FROM counters"))
    except sqlite3.DatabaseError as exc:
        raise OutboxError(f"{path}: cannot read: {exc}") from exc
    finally:
        con.close()
    open_session = state.get("session") if isinstance(state.get("session"), dict) else None
    session_id = None
    next_seq: dict[str, int] = {}
    if open_session:
        info = open_session.get("session")
        session_id = info.get("id") if isinstance(info, dict) else None
        next_seq = {k: v for k, v in (open_session.get("raw_seq") or {}).items() if isinstance(v, int)}
    report = OutboxCheck(str(path), sqlite3.sqlite_version, integrity, nulls,
                         sorted(accounts.values(), key=lambda a: (a.session, a.kind, a.name)), counters,
                         session_id, next_seq, undecodable)
    if integrity != ["ok"]:
        report.problems.append("SQLite's integrity check reports damage")
    report.problems += [f"{n} rows have no value in the required column {col}" for col, n in nulls.items() if n]
    if undecodable:
        report.problems.append(f"{undecodable} stored messages or state values cannot be decoded")
    for a in report.accounts:
        if a.duplicates:
            report.problems.append(f"{a.kind} {a.name} of session {a.session} holds {a.duplicates} sequence "
                                   "numbers twice")
        nxt = next_seq.get(a.name)
        if a.kind == "raw" and a.session == session_id and nxt is not None and a.last_seq is not None \
                and a.last_seq >= nxt:
            report.problems.append(f"raw {a.name}: seq {a.last_seq} is queued but the session's counter is at {nxt}"
                                   " (a sequence number would be used twice)")
    return report
