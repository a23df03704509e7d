"""Loading one recorded session for analysis, from the hub database or from a pulled folder.

Both sources give the same :class:`SessionData`: the session's metadata (participant codes, start/stop),
every stored stream as a gap-aware series on its own sample grid, the metrics the unit published live
(``sync_eda``, ``sync_hr``, ``regulation``, ...), markers and a quality summary (losses, flagged blocks,
status changes).

* Hub database (``broker.store`` schema): streams are read block by block; a missing ``seq`` leaves NaN
  samples at the place the block should have been (``t0_ns`` keeps the time axis honest).
* Pulled folder: the BIDS dataset ``lab pull`` writes keeps the hub's export of every session verbatim in
  ``DEST/sourcedata/<room>/<session>/`` (:mod:`lab.bids`), and that is what is read here — it holds what the
  BIDS tree holds plus the unit status log and block counts, and a session still running (not yet in the
  BIDS tree) can be read too. Give the dataset root, ``sourcedata/`` or one session folder; an unpacked
  ``archive.tar`` or a folder of the earlier layout ``DEST/<room>/<session>/`` reads the same way. A BIDS
  dataset without ``sourcedata/`` (shared on its own) is read from its tree: physio files and sidecars, the
  events' markers, and the live metrics and the dyads table of ``derivatives/dyadsync/`` (no unit status
  log then); such a session's folder is ``sub-<client>/ses-<session>``. Files of a hub export: the
  BIDS-physio ``*_physio.tsv.gz`` with its JSON sidecar (``StartTimeUTCns``, ``SamplingFrequency``), with
  ``n/a`` rows where blocks were lost, ``metrics.csv`` (full-precision ``repr`` floats) and
  ``session.json``. Values written with 9 significant digits round-trip every float32, so a folder gives
  bit-identical series to the database it was exported from.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import math
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from broker import store
from core.errors import DyadsyncError

logger = logging.getLogger(__name__)



class AnalysisError(DyadsyncError, ValueError):
    """An analysis could not be made from the data given (bad parameters, unusable input)."""


class SessionNotFound(AnalysisError, LookupError):
    """The session is not in the database or folder given; the message lists what is there."""


class IncompleteSession(AnalysisError):
    """The session exists but lacks what the analysis needs (a feature stream, enough samples)."""


class SourceError(AnalysisError, OSError):
    """The database or folder cannot be read (missing, not a hub database, damaged export file)."""


@dataclass
class Series:
    """One stored stream: samples ``values`` at ``t0_ns + i / rate_hz``; NaN where samples were lost.

    ``flags`` is the block flag word of each sample (0 where lost); ``lost`` marks samples of missing blocks.
    """

    stream: str
    kind: str  # "raw" or "feat"
    t0_ns: int
    rate_hz: float
    values: np.ndarray  # float64
    flags: np.ndarray  # int64, per sample
    lost: np.ndarray  # bool, per sample
    unit: str = ""

    @property
    def t_ns(self) -> np.ndarray:
        return self.t0_ns + np.round(np.arange(len(self.values)) * (1e9 / self.rate_hz)).astype(np.int64)

    missing_blocks: int = 0  # holes in seq between the first and last stored block
    blocks: int = 0
    flagged_blocks: int = 0


@dataclass
class MetricRow:
    seq: int
    window_start_ns: int
    window_end_ns: int
    values: dict[str, float]


@dataclass
class SessionData:
    """Everything the analyses need about one session (see the module docstring)."""

    session: str
    room: str
    therapist_code: str | None
    client_code: str | None
    started_ns: int | None
    stopped_ns: int | None
    streams: dict[tuple[str, str], Series]  # (kind, stream) -> series
    metrics: dict[str, list[MetricRow]]
    markers: list[dict]
    quality: dict
    status: list[tuple[int, str, str]] = field(default_factory=list)  # (time_ns, unit, state)
    origin: str = ""

    @property
    def dyad(self) -> str:
        return f"{self.therapist_code or '?'}-{self.client_code or '?'}"

    def feature(self, stream: str) -> Series | None:
        return self.streams.get(("feat", stream))

    def raw(self, stream: str) -> Series | None:
        return self.streams.get(("raw", stream))


# ------------------------------------------------------------------------------------------- database
def _open_db(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise SourceError(f"hub database {path} does not exist")
    try:
        con = store.connect(path, readonly=True)
        store.check_is_hub_database(con)
    except sqlite3.DatabaseError as exc:
        raise SourceError(f"{path} is not a dyadsync hub database ({exc})") from exc
    return con


def db_sessions(path: Path | str) -> list[str]:
    """Session ids stored in a hub database, oldest first."""
    con = _open_db(Path(path))
    try:
        return store.session_ids(con)
    finally:
        con.close()


def _place_each(rows: list[tuple], t0: int, ns_per: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values, flags and lost mask on the stream's sample axis, block by block (a later block overwrites an
    earlier one where they overlap)."""
    end_idx = 0
    placed = []
    for _seq, bt0, _r, flags, _n, data in rows:
        v = np.frombuffer(data, dtype="<f4").astype(np.float64)
        idx = int(round((bt0 - t0) / ns_per))
        placed.append((idx, v, flags))
        end_idx = max(end_idx, idx + len(v))
    values = np.full(end_idx, np.nan)
    fl = np.zeros(end_idx, dtype=np.int64)
    lost = np.ones(end_idx, dtype=bool)
    for idx, v, flags in placed:
        values[idx : idx + len(v)] = v
        fl[idx : idx + len(v)] = flags
        lost[idx : idx + len(v)] = False
    return values, fl, lost


def _place_uniform(rows: list[tuple], t0: int, ns_per: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`_place_each` in a few array operations when every block holds the same number of samples and no
    block overlaps the next (what the recorder stores: 3000 blocks of a 50-min feature stream took ~0.1 s
    one by one); None otherwise. Same arrays."""
    sizes = {len(r[5]) for r in rows}
    if len(sizes) != 1:
        return None
    size = sizes.pop()
    if size == 0 or size % 4:
        return None
    n = size // 4
    idx = np.round((np.array([r[1] for r in rows], dtype=np.int64) - t0) / ns_per).astype(np.int64)
    if len(idx) > 1 and not np.all(np.diff(idx) >= n):
        return None
    if idx[0] < 0:
        return None
    v = np.frombuffer(b"".join(r[5] for r in rows), dtype="<f4").astype(np.float64).reshape(len(rows), n)
    end_idx = int(idx.max()) + n
    pos = (idx[:, None] + np.arange(n)).ravel()
    values = np.full(end_idx, np.nan)
    values[pos] = v.ravel()
    fl = np.zeros(end_idx, dtype=np.int64)
    fl[pos] = np.repeat(np.array([r[3] for r in rows], dtype=np.int64), n)
    lost = np.ones(end_idx, dtype=bool)
    lost[pos] = False
    return values, fl, lost


def _series_from_blocks(stream: str, kind: str, unit: str, rows: list[tuple]) -> Series:
    """rows: (seq, t0_ns, rate_hz, flags, n, data) ordered by seq."""
    rate = float(rows[0][2])
    t0 = int(rows[0][1])
    ns_per = 1e9 / rate
    placed = _place_uniform(rows, t0, ns_per)
    if placed is not None:
        values, fl, lost = placed
    else:
        values, fl, lost = _place_each(rows, t0, ns_per)
    seqs = [r[0] for r in rows]
    s = Series(stream, kind, t0, rate, values, fl, lost, unit)
    s.missing_blocks = seqs[-1] - seqs[0] + 1 - len(seqs)
    s.blocks = len(rows)
    s.flagged_blocks = sum(1 for r in rows if r[3])
    return s


def load_from_db(path: Path | str, session: str, *, with_raw: bool = True) -> SessionData:
    """Read ``session`` from a hub database (read-only). Raises :class:`SessionNotFound` if it is unknown."""
    path = Path(path)
    con = _open_db(path)
    try:
        meta = store.get_session(con, session)
        if meta is None:
            known = store.session_ids(con, by_start=False, limit=20)
            raise SessionNotFound(f"session {session!r} is not in {path}; sessions there: {', '.join(known) or 'none'}")
        room, started, stopped = meta["room"], meta["started_ns"], meta["stopped_ns"]
        tcode, ccode = meta["therapist_code"], meta["client_code"]
        streams: dict[tuple[str, str], Series] = {}
        kinds = ("raw", "feat") if with_raw else ("feat",)
        keys = store.session_block_keys(con, session)
        for unit, kind, stream in keys:
            if kind not in kinds or (kind, stream) in streams:
                continue  # one unit per stream (the first); a second unit's copy is ignored
            rows = store.block_rows(con, session, unit, kind, stream)
            streams[(kind, stream)] = _series_from_blocks(stream, kind, unit, rows)
        metrics: dict[str, list[MetricRow]] = {}
        for _room, _unit, name, seq, ws, we, raw in sorted(store.iter_session_metrics(con, session),
                                                           key=lambda r: (r[2], r[3])):
            vals = {k: (math.nan if v is None else float(v)) for k, v in raw.items()}
            metrics.setdefault(name, []).append(MetricRow(int(seq), int(ws), int(we), vals))
        markers = store.session_markers(con, session)
        rows_status = store.session_status_payloads(con, session)
        status = [(t, u, s) for t, u, s, _ in rows_status]
        dropped = 0
        for *_, payload in rows_status:
            try:
                d = (payload or {}).get("dropped", {}) or {}
                dropped = max(dropped, int(sum(v for k, v in d.items() if k not in store.NOT_LOSSES)))
            except (ValueError, AttributeError, TypeError):
                continue
    finally:
        con.close()
    quality = _quality(streams, metrics, status, dropped)
    return SessionData(session, room, tcode, ccode, started, stopped, streams, metrics, markers, quality, status,
                       origin=f"hub database {path}")


# --------------------------------------------------------------------------------------------- folder
def find_session_dirs(root: Path | str) -> list[Path]:
    """Every pulled session folder under ``root`` (or ``root`` itself): a hub export (``session.json``).

    In a BIDS dataset written by ``lab pull`` these are ``sourcedata/<room>/<session>/``; a session listed in
    the dataset's dyads table but not in ``sourcedata/`` is given as its BIDS folder ``sub-<client>/ses-<s>``."""
    root = Path(root)
    if (root / "session.json").is_file() or _bids_row(root) is not None:
        return [root]
    if (root / "dataset_description.json").is_file():
        found = sorted(p.parent for p in (root / "sourcedata").glob("*/*/session.json"))
        have = set()
        for d in found:
            try:
                meta = json.loads((d / "session.json").read_text())
                have.add((meta.get("room"), meta.get("session")))
            except (OSError, ValueError):
                continue
        for row in _dyads(root):
            if (row["room"], row["dyadsync_session"]) not in have:
                found.append(root / row["client_id"] / row["session_id"])
        return found
    return sorted(p.parent for p in root.rglob("session.json") if not any(
        part.startswith(".") for part in p.relative_to(root).parts))


DYADS = Path("derivatives") / "dyadsync" / "task-therapy_desc-dyads_beh.tsv"


def _tsv_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f, delimiter="\t"))
    except (OSError, csv.Error) as exc:
        raise SourceError(f"{path} cannot be read ({exc})") from exc


def _dyads(root: Path) -> list[dict[str, str]]:
    path = root / DYADS
    return _tsv_rows(path) if path.is_file() else []


def _bids_row(d: Path) -> dict[str, str] | None:
    """The dyads-table row of a BIDS session folder ``<root>/sub-<client>/ses-<s>`` (None if it is not one)."""
    if not (d.name.startswith("ses-") and d.parent.name.startswith("sub-")):
        return None
    for row in _dyads(d.parent.parent):
        if row["client_id"] == d.parent.name and row["session_id"] == d.name:
            return row
    return None


def _session_dir(folder: Path, session: str | None) -> Path:
    if not folder.exists():
        raise SourceError(f"folder {folder} does not exist")
    dirs = find_session_dirs(folder)
    if session is None:
        if len(dirs) != 1:
            raise SessionNotFound(f"{folder} holds {len(dirs)} sessions; name one")
        return dirs[0]
    for d in dirs:
        row = _bids_row(d)
        if row is not None:
            if row["dyadsync_session"] == session:
                return d
            continue
        try:
            meta = json.loads((d / "session.json").read_text())
        except (OSError, ValueError) as exc:
            raise SourceError(f"{d / 'session.json'} cannot be read ({exc})") from exc
        if meta.get("session") == session:
            return d
    names = ", ".join(d.name for d in dirs[:20]) or "none"
    raise SessionNotFound(f"session {session!r} is not in {folder}; sessions there: {names}")


def _physio_series(sidecars: list[Path], with_raw: bool) -> dict[tuple[str, str], Series]:
    streams: dict[tuple[str, str], Series] = {}
    for side in sidecars:
        try:
            sc = json.loads(side.read_text())
        except (OSError, ValueError) as exc:
            raise SourceError(f"{side} cannot be read ({exc})") from exc
        kind = sc.get("Kind", "feat")
        if kind == "raw" and not with_raw:
            continue
        signal = sc.get("Columns", ["?"])[0]
        stream = f"{sc.get('Role', '?')}/{signal}"
        tsv = side.with_name(side.name[: -len(".json")] + ".tsv.gz")
        if not tsv.is_file():
            raise SourceError(f"{tsv} is missing (its sidecar {side.name} is there)")
        if (kind, stream) in streams:
            continue
        values, flags, lost = _read_physio(tsv, sc)
        s = Series(stream, kind, int(sc["StartTimeUTCns"]), float(sc["SamplingFrequency"]), values, flags, lost,
                   sc.get("Unit", ""))
        s.missing_blocks = int(sc.get("MissingBlocks", 0))
        streams[(kind, stream)] = s
    return streams


def _load_from_bids(d: Path, row: dict[str, str], with_raw: bool) -> SessionData:
    """A session from the BIDS tree alone (``d`` = ``<root>/sub-<client>/ses-<s>``)."""
    root, ses = d.parent.parent, row["session_id"]
    subs = (row["therapist_id"], row["client_id"])
    codes = {}
    if (root / "participants.tsv").is_file():
        codes = {r["participant_id"]: r.get("code", "") for r in _tsv_rows(root / "participants.tsv")}

    def code(sub: str) -> str:
        c = codes.get(sub, "")
        return c if c and "," not in c else sub.removeprefix("sub-")

    sidecars = [p for sub in subs for p in sorted((root / sub / ses / "beh").glob("*_physio.json"))]
    streams = _physio_series(sidecars, with_raw)
    metrics: dict[str, list[MetricRow]] = {}
    fixed = {"window_start_s", "window_end_s", "seq", "unit", "window_start_utc_ns", "window_end_utc_ns"}
    for side in sorted((root / "derivatives" / "dyadsync" / row["client_id"] / ses / "beh").glob("*_beh.json")):
        try:
            name = json.loads(side.read_text())["MetricName"]
        except (OSError, ValueError, KeyError) as exc:
            raise SourceError(f"{side} is not a dyadsync metric sidecar ({exc})") from exc
        rows = [MetricRow(int(r["seq"]), int(r["window_start_utc_ns"]), int(r["window_end_utc_ns"]),
                          {k: (math.nan if v in ("", "n/a") else float(v)) for k, v in r.items() if k not in fixed})
                for r in _tsv_rows(side.with_suffix(".tsv"))]
        metrics[name] = sorted(rows, key=lambda r: r.seq)
    markers = []
    for ev in sorted((root / row["client_id"] / ses / "beh").glob("*_events.tsv")):
        markers = [{"id": r["marker_id"], "label": r["value"], "time_ns": int(r["utc_ns"])}
                   for r in _tsv_rows(ev) if r["trial_type"] == "marker"]
    quality = _quality(streams, metrics, [], 0)
    return SessionData(row["dyadsync_session"], row["room"], code(subs[0]), code(subs[1]), int(row["started_ns"]),
                       int(row["stopped_ns"]), streams, metrics, markers, quality, [],
                       origin=f"BIDS dataset {root} ({row['client_id']}/{ses})")


def _read_physio(tsv: Path, sidecar: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vals, flags, lost = [], [], []
    try:
        with gzip.open(tsv, "rt") as f:
            for line in f:
                a, _, b = line.rstrip("\n").partition("\t")
                if a == "n/a" and b == "n/a":
                    vals.append(math.nan)
                    flags.append(0)
                    lost.append(True)
                else:
                    vals.append(math.nan if a == "n/a" else float(a))
                    flags.append(int(b) if b not in ("", "n/a") else 0)
                    lost.append(False)
    except (OSError, EOFError, ValueError) as exc:
        raise SourceError(f"{tsv} is damaged or not a physio TSV ({exc})") from exc
    # the hub stores float32 and writes 9 significant digits, which round-trip float32 exactly: going back
    # through float32 gives the very values the database holds
    values = np.asarray(vals, dtype=np.float32).astype(np.float64)
    return values, np.asarray(flags, dtype=np.int64), np.asarray(lost, dtype=bool)


def load_from_folder(folder: Path | str, session: str | None = None, *, with_raw: bool = True) -> SessionData:
    """Read a session pulled by ``dyadsync lab pull`` (or an unpacked ``archive.tar``)."""
    d = _session_dir(Path(folder), session)
    row = _bids_row(d)
    if row is not None and not (d / "session.json").is_file():
        return _load_from_bids(d, row, with_raw)
    try:
        meta = json.loads((d / "session.json").read_text())
    except (OSError, ValueError) as exc:
        raise SourceError(f"{d / 'session.json'} cannot be read ({exc})") from exc
    streams = _physio_series(sorted(d.glob("*_physio.json")), with_raw)
    for st in meta.get("streams", []):
        s = streams.get((st["kind"], st["stream"]))
        if s is not None:
            s.blocks = int(st.get("blocks", 0))
            s.flagged_blocks = int(st.get("flagged_blocks", 0))
    metrics: dict[str, list[MetricRow]] = {}
    mpath = d / "metrics.csv"
    if mpath.is_file():
        with open(mpath, newline="") as f:
            for row in csv.DictReader(f):
                fixed = ("room", "unit", "name", "seq", "window_start_ns", "window_end_ns")
                vals = {k: (math.nan if v == "" else float(v)) for k, v in row.items() if k not in fixed}
                metrics.setdefault(row["name"], []).append(
                    MetricRow(int(row["seq"]), int(row["window_start_ns"]), int(row["window_end_ns"]), vals))
        for rows in metrics.values():
            rows.sort(key=lambda r: r.seq)
    status: list[tuple[int, str, str]] = []
    spath = d / "status.tsv"
    if spath.is_file():
        for line in spath.read_text().splitlines()[1:]:
            parts = line.split("\t")
            if len(parts) == 4:
                status.append((int(parts[2]), parts[1], parts[3]))
    q = meta.get("quality", {})
    quality = _quality(streams, metrics, status, int(q.get("unit_reported_dropped", 0)))
    return SessionData(meta["session"], meta.get("room", ""), meta.get("therapist_code"), meta.get("client_code"),
                       meta.get("started_ns"), meta.get("stopped_ns"), streams, metrics,
                       list(meta.get("markers", [])), quality, status, origin=f"pulled folder {d}")


def load_session(session: str | None, *, db: Path | str | None = None, folder: Path | str | None = None,
                 with_raw: bool = True) -> SessionData:
    """Load from exactly one of ``db`` (hub database) or ``folder`` (pulled export)."""
    if (db is None) == (folder is None):
        raise AnalysisError("give exactly one of a hub database (--db) or a pulled folder (--dir)")
    if db is not None:
        if session is None:
            raise AnalysisError("name the session to read from the hub database")
        return load_from_db(db, session, with_raw=with_raw)
    return load_from_folder(folder, session, with_raw=with_raw)  # type: ignore[arg-type]


def _quality(streams: dict[tuple[str, str], Series], metrics: dict[str, list[MetricRow]],
             status: list[tuple[int, str, str]], unit_dropped: int) -> dict:
    from core.vocab import BlockFlags

    per_stream = []
    for (kind, stream), s in sorted(streams.items()):
        fl = s.flags
        per_stream.append({
            "kind": kind, "stream": stream, "unit": s.unit, "rate_hz": s.rate_hz, "samples": int(len(s.values)),
            "lost_samples": int(s.lost.sum()), "missing_blocks": s.missing_blocks,
            "nan_samples": int(np.sum(~np.isfinite(s.values) & ~s.lost)),
            "contact_lost_samples": int(np.sum((fl & BlockFlags.CONTACT_LOST) != 0)),
            "saturated_samples": int(np.sum((fl & BlockFlags.SATURATED) != 0)),
            "invalid_samples": int(np.sum((fl & BlockFlags.INVALID) != 0)),
            "flagged_samples": int(np.sum(fl != 0)),
        })
    missing_metrics = {}
    for name, rows in metrics.items():
        seqs = [r.seq for r in rows]
        missing_metrics[name] = (max(seqs) - min(seqs) + 1 - len(seqs)) if seqs else 0
    return {
        "streams": per_stream,
        "missing_blocks": sum(p["missing_blocks"] for p in per_stream),
        "missing_metrics": missing_metrics,
        "unit_reported_dropped": unit_dropped,
        "status_changes": len(status),
    }


# ------------------------------------------------------------------------------------------ alignment
def aligned_features(data: SessionData, signal: str) -> tuple[int, np.ndarray, np.ndarray]:
    """Therapist and client ``feat/<role>/<signal>`` on one 4 Hz grid: ``(t0_ns, therapist, client)``.

    The grid starts at the earlier stream's first sample (the unit's session bin ``k0``); samples outside a
    stream or lost are NaN. Raises :class:`IncompleteSession` if either stream is missing.
    """
    t = data.feature(f"therapist/{signal}")
    c = data.feature(f"client/{signal}")
    missing = [n for n, s in (("therapist", t), ("client", c)) if s is None]
    if missing:
        have = sorted(f"{k}/{s}" for k, s in data.streams)
        raise IncompleteSession(
            f"session {data.session}: no {signal} feature stream for {' and '.join(missing)} "
            f"(streams stored: {', '.join(have) or 'none'})")
    assert t is not None and c is not None
    if abs(t.rate_hz - c.rate_hz) > 1e-9:
        raise IncompleteSession(f"session {data.session}: {signal} rates differ ({t.rate_hz} vs {c.rate_hz} Hz)")
    ns_per = 1e9 / t.rate_hz
    t0 = min(t.t0_ns, c.t0_ns)
    oft = int(round((t.t0_ns - t0) / ns_per))
    ofc = int(round((c.t0_ns - t0) / ns_per))
    n = max(oft + len(t.values), ofc + len(c.values))
    a = np.full(n, np.nan)
    b = np.full(n, np.nan)
    a[oft : oft + len(t.values)] = t.values
    b[ofc : ofc + len(c.values)] = c.values
    return t0, a, b


def aligned_lost(data: SessionData, signal: str) -> np.ndarray:
    """On the grid of :func:`aligned_features`: True where either person's sample was lost in transit."""
    t, c = data.feature(f"therapist/{signal}"), data.feature(f"client/{signal}")
    if t is None or c is None:
        raise IncompleteSession(f"session {data.session}: no {signal} feature stream for both people")
    ns_per = 1e9 / t.rate_hz
    t0 = min(t.t0_ns, c.t0_ns)
    oft = int(round((t.t0_ns - t0) / ns_per))
    ofc = int(round((c.t0_ns - t0) / ns_per))
    n = max(oft + len(t.values), ofc + len(c.values))
    lost = np.zeros(n, dtype=bool)
    lost[oft : oft + len(t.lost)] |= t.lost
    lost[ofc : ofc + len(c.lost)] |= c.lost
    return lost
