"""The lab's copy as a BIDS dataset (Brain Imaging Data Structure 1.10; validated by ``bids-validator-deno``).

The hub's export of a session (``broker.export``: physio files with sidecars, ``session.json``, ``metrics.csv``,
``status.tsv``, ``SHA256SUMS``) is kept verbatim under ``sourcedata/<room>/<session>/`` (BIDS leaves
``sourcedata/`` to the data owner; the validator does not read it). From it this module writes::

    dataset_description.json  README  participants.tsv/.json
    sub-<code>/sub-<code>_sessions.tsv/.json             room, dyadsync session id, role, partner, start time
    sub-<code>/ses-<session>/beh/
        sub-<code>_ses-<session>_task-therapy_acq-<unit>_recording-<signal>[feat]_physio.tsv.gz/.json
        sub-<code>_ses-<session>_task-therapy_events.tsv/.json     session start, markers, session stop
    derivatives/dyadsync/
        dataset_description.json  README
        task-therapy_desc-dyads_beh.tsv/.json             one row per session: who was paired with whom
        sub-<client>/ses-<session>/beh/sub-<client>_ses-<session>_task-therapy_desc-<metric>_beh.tsv/.json
                                                          the unit's live per-window metrics (sync_eda, ...)

* ``<code>`` is the participant's pseudonymous code, ``<session>`` the dyadsync session id, both reduced to
  letters and digits (BIDS labels); if two sessions of one participant reduce to the same label, the room is
  put in front (``ses-<room><session>``), and the label chosen first is kept for good.
* ``recording-<signal>`` is a raw signal (``eda`` µS, ``ppg`` ADC counts); ``recording-<signal>feat`` a 4 Hz
  feature stream (``edafeat`` µS, ``hrfeat`` bpm). ``acq-<unit>`` names the unit that recorded it.
* Time zero of a session is its start command (``started_ns``): physio ``StartTime`` and event ``onset`` are
  seconds from it; the absolute UTC time is kept in ``StartTimeUTCns`` and the ``utc_ns`` columns.
* Physio files are the hub's bytes (9 significant digits: every float32 comes back exactly); metric values
  are the hub's ``repr`` floats (every float64 comes back exactly).
* Dyad-level files (the per-window metrics) are in the client's folder of the derivatives (the client is the
  case in psychotherapy research); the dyads table names both people of every session.
* Only finished sessions (a stop command was recorded) are written; a session still running stays in
  ``sourcedata/`` only. A session is converted into a temporary folder and moved into place, then the
  dataset-level files are rewritten from the catalogue ``.dyadsync-bids.json``, so after every run the
  dataset is complete and valid.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core import __version__
from core.errors import DyadsyncError

logger = logging.getLogger(__name__)

BIDS_VERSION = "1.10.0"
TASK = "therapy"
DATATYPE = "beh"
CATALOG = ".dyadsync-bids.json"
SOURCE_DIR = "sourcedata"
DERIV = Path("derivatives") / "dyadsync"
ROLES = ("therapist", "client")

UNITS = {"eda": "uS", "ppg": "counts", "hr": "bpm"}
SIGNAL_TEXT = {
    "eda": "electrodermal activity (skin conductance)",
    "ppg": "photoplethysmogram, infrared channel",
    "hr": "heart rate from inter-beat intervals",
}
FLAG_BITS = {
    "1": "saturated: a sample hit the ADC range", "2": "contact lost", "4": "sensor FIFO overflow before the block",
    "8": "some samples interpolated", "16": "samples lost before this block", "32": "host clock not synchronised",
    "64": "some samples invalid (NaN)", "128": "block shorter than nominal (session end)",
}
LAG_RULE = ("Lag tau in seconds between therapist T and client C: r(tau) = corr(T[t..t+w), C[t+tau..t+tau+w)). "
            "tau > 0 means the therapist leads (the client follows tau seconds later); this is rMEA's s1_lead "
            "side with s1 = therapist. Boker's CRAN package wcc uses the opposite sign.")
SYNC_COLUMNS = {
    "r0": "Pearson r at lag 0 in the window",
    "therapist_led": "mean Fisher z of r(tau) over 0 < tau <= lag (therapist leads)",
    "client_led": "mean Fisher z of r(tau) over -lag <= tau < 0 (client leads)",
    "therapist_led_max": "largest Fisher z over 0 < tau <= lag (therapist leads)",
    "client_led_max": "largest Fisher z over -lag <= tau < 0 (client leads)",
    "inphase_r": "r of the in-phase peak (Boker peak picking: nearest local maximum with r > 0 from tau = 0)",
    "inphase_z": "Fisher z of the in-phase peak (r clipped to +-0.999)",
    "inphase_lag_s": "lag of the in-phase peak in seconds; > 0: therapist leads",
    "antiphase_r": "r of the anti-phase peak (nearest local minimum with r < 0 from tau = 0)",
    "antiphase_z": "Fisher z of the anti-phase peak (r clipped to +-0.999)",
    "antiphase_lag_s": "lag of the anti-phase peak in seconds; > 0: therapist leads",
}
SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")


class BidsError(DyadsyncError, ValueError):
    """A session cannot be written into the BIDS dataset (unreadable export, clashing labels)."""


def bids_label(value: str) -> str:
    """A BIDS label: letters and digits only."""
    label = re.sub(r"[^A-Za-z0-9]", "", str(value))
    if not label:
        raise BidsError(f"{value!r} has no letters or digits to make a BIDS label from")
    return label


def _utc_iso(t_ns: int | None) -> str:
    if t_ns is None:
        return "n/a"
    t = dt.datetime.fromtimestamp(t_ns // 1_000_000_000, tz=dt.UTC).replace(tzinfo=None)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{(t_ns % 1_000_000_000) // 1000:06d}Z"


def _seconds(delta_ns: int) -> str:
    """Exact decimal seconds of a nanosecond count (no binary rounding)."""
    sign = "-" if delta_ns < 0 else ""
    q, r = divmod(abs(int(delta_ns)), 1_000_000_000)
    return f"{sign}{q}.{r:09d}".rstrip("0").rstrip(".") if r else f"{sign}{q}"


def _json(obj: object) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _tsv(header: list[str], rows: Iterable[list[object]]) -> bytes:
    def cell(v: object) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "n/a"
        s = str(v)
        return s.replace("\t", " ").replace("\n", " ") or "n/a"

    return ("\t".join(header) + "\n" + "".join("\t".join(cell(v) for v in r) + "\n" for r in rows)).encode()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class SessionEntry:
    """One session in the dataset (a catalogue row)."""

    key: str  # "<room>/<session>"
    room: str
    session: str
    ses: str  # BIDS session label
    therapist_code: str
    client_code: str
    therapist: str  # BIDS participant label
    client: str
    started_ns: int
    stopped_ns: int
    units: list[str]
    source_digest: str  # SHA-256 of the export's SHA256SUMS the files were made from
    files: list[str] = field(default_factory=list)  # dataset-relative paths written for this session


@dataclass
class SyncReport:
    written: list[str] = field(default_factory=list)
    unchanged: int = 0
    running: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ catalogue
def load_catalog(root: Path) -> dict[str, SessionEntry]:
    path = root / CATALOG
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {k: SessionEntry(**v) for k, v in data.get("sessions", {}).items()}
    except (OSError, ValueError, TypeError) as exc:
        raise BidsError(f"the dataset catalogue {path} is damaged ({exc}); remove it and run again to rebuild "
                        "the dataset from sourcedata/") from exc


def _save_catalog(root: Path, catalog: dict[str, SessionEntry]) -> None:
    _write_atomic(root / CATALOG, _json({"version": 1, "sessions": {k: asdict(v) for k, v in sorted(catalog.items())}}))


# ------------------------------------------------------------------------------------ one session
def session_sources(root: Path) -> list[Path]:
    """Every mirrored hub export ``sourcedata/<room>/<session>/`` of the dataset at ``root``."""
    src = root / SOURCE_DIR
    if not src.is_dir():
        return []
    return sorted(p.parent for p in src.glob("*/*/session.json"))


def _verify_source(sdir: Path) -> str:
    """SHA-256 of the folder's SHA256SUMS after checking every file it lists (BidsError if one differs)."""
    sums = sdir / "SHA256SUMS"
    if not sums.is_file():
        raise BidsError(f"{sdir} has no SHA256SUMS (an interrupted pull?)")
    text = sums.read_bytes().decode()
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if not SAFE.match(name) or ".." in name:
            raise BidsError(f"{sums}: unsafe file name {name!r}")
        f = sdir / name
        if not f.is_file() or _sha256(f) != digest:
            raise BidsError(f"{f} is missing or does not match SHA256SUMS (an interrupted pull?)")
    return hashlib.sha256(sums.read_bytes()).hexdigest()


def _choose_ses(catalog: dict[str, SessionEntry], key: str, room: str, session: str, people: set[str]) -> str:
    old = catalog.get(key)
    if old is not None:
        return old.ses
    taken = {(p, e.ses) for e in catalog.values() if e.key != key for p in (e.therapist, e.client)}
    for ses in (bids_label(session), bids_label(room) + bids_label(session)):
        if not any((p, ses) in taken for p in people):
            return ses
    raise BidsError(f"session {session} of room {room}: labels ses-{bids_label(session)} and "
                    f"ses-{bids_label(room)}{bids_label(session)} are both taken for {', '.join(sorted(people))}")


def _physio_sidecar(hub: dict, meta: dict, recording: str) -> dict:
    signal = hub["Columns"][0]
    kind = hub.get("Kind", "raw")
    role = hub.get("Role", "?")
    what = SIGNAL_TEXT.get(signal, signal)
    desc = (f"raw {what} of the {role}" if kind == "raw"
            else f"{what} of the {role}, 4 Hz feature on the shared UTC grid (computed live by the unit)")
    return {
        "TaskName": TASK,
        "PhysioType": "generic",
        "SamplingFrequency": hub["SamplingFrequency"],
        "StartTime": hub["StartTime"],
        "Columns": [signal, "flags"],
        signal: {"Description": desc, "Units": UNITS.get(signal, hub.get(signal, {}).get("Units", "n/a"))},
        "flags": {"Description": "flag bits of the sample block the sample came in, a sum of: "
                                 + "; ".join(f"{b} = {t}" for b, t in FLAG_BITS.items())
                                 + " (0: none; n/a where the block was lost in transit)"},
        "Manufacturer": "dyadsync",
        "SoftwareVersions": __version__,
        "RecordingDescription": f"{recording}: dyadsync {kind} stream {role}/{signal} of unit {hub.get('Unit')}",
        "StartTimeUTCns": hub.get("StartTimeUTCns"),
        "SessionStartUTCns": meta.get("started_ns"),
        "Role": role,
        "Unit": hub.get("Unit"),
        "Room": hub.get("Room", meta.get("room")),
        "Kind": kind,
        "MissingBlocks": hub.get("MissingBlocks", 0),
        "DyadsyncSession": meta["session"],
    }


def _events(meta: dict) -> tuple[bytes, bytes]:
    t0 = int(meta["started_ns"])
    rows: list[list[object]] = [["0", "0", "session_start", "start", "n/a", t0]]
    for m in sorted(meta.get("markers", []), key=lambda m: (m["time_ns"], m["id"])):
        rows.append([_seconds(int(m["time_ns"]) - t0), "0", "marker", m.get("label") or "n/a", m["id"],
                     int(m["time_ns"])])
    stop = int(meta["stopped_ns"])
    rows.append([_seconds(stop - t0), "0", "session_stop", "stop", "n/a", stop])
    rows.sort(key=lambda r: int(r[5]))  # onset order, even when a marker's clock ran past the stop command
    tsv = _tsv(["onset", "duration", "trial_type", "value", "marker_id", "utc_ns"], rows)
    side = {
        "TaskName": TASK,
        "TaskDescription": "a psychotherapy session of a therapist and a client, both wearing EDA and PPG sensors",
        "onset": {"Description": "seconds from the session start command (time zero of every file of the "
                                 "session)", "Units": "s"},
        "duration": {"Description": "markers are instants", "Units": "s"},
        "trial_type": {"Description": "kind of event", "Levels": {
            "session_start": "the session start command (time zero)", "marker": "a marker set during the session",
            "session_stop": "the session stop command"}},
        "value": {"Description": "the marker's label (start/stop for the session commands)"},
        "marker_id": {"Description": "dyadsync command id of the marker"},
        "utc_ns": {"Description": "absolute time of the event, UTC nanoseconds since 1970 (hub clock)", "Units": "ns"},
    }
    return tsv, _json(side)


def _metric_files(sdir: Path, meta: dict) -> dict[str, tuple[bytes, bytes]]:
    """desc label -> (tsv, sidecar) of every metric name in ``metrics.csv``."""
    import csv

    from dsp_ext.synchrony import METRIC_VALUE_NAMES

    path = sdir / "metrics.csv"
    if not path.is_file():
        return {}
    fixed = ("room", "unit", "name", "seq", "window_start_ns", "window_end_ns")
    by_name: dict[str, list[dict]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        keys = [k for k in (reader.fieldnames or []) if k not in fixed]
        for row in reader:
            by_name.setdefault(row["name"], []).append(row)
    t0 = int(meta["started_ns"])
    out = {}
    for name, rows in sorted(by_name.items()):
        sync = name.startswith("sync_")
        cols = [k for k in keys if (sync and k in METRIC_VALUE_NAMES) or any(r[k] != "" for r in rows)]
        rows.sort(key=lambda r: (r["unit"], int(r["seq"])))
        header = ["window_start_s", "window_end_s", "seq", "unit", *cols, "window_start_utc_ns", "window_end_utc_ns"]
        body = [[_seconds(int(r["window_start_ns"]) - t0), _seconds(int(r["window_end_ns"]) - t0), r["seq"],
                 r["unit"], *(r[k] or None for k in cols), r["window_start_ns"], r["window_end_ns"]] for r in rows]
        side: dict = {
            "MetricName": name,
            "Description": (f"per-window values of the metric {name!r} as the unit published them live "
                            "(one row per window)" + (f". {LAG_RULE}" if sync else "")),
            "window_start_s": {"Description": "window start, seconds from the session start command", "Units": "s"},
            "window_end_s": {"Description": "window end, seconds from the session start command", "Units": "s"},
            "seq": {"Description": "the unit's sequence number of the window (a gap is a window lost in transit)"},
            "unit": {"Description": "dyadsync unit that computed the window"},
            "window_start_utc_ns": {"Description": "window start, UTC nanoseconds since 1970", "Units": "ns"},
            "window_end_utc_ns": {"Description": "window end, UTC nanoseconds since 1970", "Units": "ns"},
        }
        signal = name.removeprefix("sync_")
        for k in cols:
            if sync and k in SYNC_COLUMNS:
                d = {"Description": f"{SYNC_COLUMNS[k]}; {signal} feature series of therapist and client"}
                if k.endswith("_lag_s"):
                    d["Units"] = "s"
            else:
                d = {"Description": f"value {k!r} of metric {name!r} as published by the unit"}
            side[k] = d
        out[bids_label(name)] = (_tsv(header, body), _json(side))
    return out


def _plan_session(sdir: Path, meta: dict, entry: SessionEntry) -> dict[str, bytes | Path]:
    """Dataset-relative path -> bytes to write, or a source file to link/copy."""
    plan: dict[str, bytes | Path] = {}
    labels = {"therapist": entry.therapist, "client": entry.client}
    units: set[str] = set()
    for side_path in sorted(sdir.glob("*_physio.json")):
        try:
            hub = json.loads(side_path.read_text())
            role, unit, kind, signal = hub["Role"], hub["Unit"], hub.get("Kind", "raw"), hub["Columns"][0]
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise BidsError(f"{side_path} is not a dyadsync physio sidecar ({exc})") from exc
        if role not in labels:
            raise BidsError(f"{side_path}: unknown role {role!r}")
        data = side_path.with_name(side_path.name[: -len(".json")] + ".tsv.gz")
        if not data.is_file():
            raise BidsError(f"{data} is missing (its sidecar is there)")
        units.add(unit)
        sub = labels[role]
        recording = bids_label(signal) + ("" if kind == "raw" else "feat")
        stem = f"sub-{sub}_ses-{entry.ses}_task-{TASK}_acq-{bids_label(unit)}_recording-{recording}_physio"
        folder = f"sub-{sub}/ses-{entry.ses}/{DATATYPE}"
        if f"{folder}/{stem}.tsv.gz" in plan:
            raise BidsError(f"{sdir}: two streams map to {stem} (labels of unit {unit!r} clash)")
        plan[f"{folder}/{stem}.tsv.gz"] = data
        plan[f"{folder}/{stem}.json"] = _json(_physio_sidecar(hub, meta, recording))
    ev_tsv, ev_json = _events(meta)
    for sub in dict.fromkeys(labels.values()):
        stem = f"sub-{sub}/ses-{entry.ses}/{DATATYPE}/sub-{sub}_ses-{entry.ses}_task-{TASK}_events"
        plan[stem + ".tsv"] = ev_tsv
        plan[stem + ".json"] = ev_json
    for desc, (tsv, side) in _metric_files(sdir, meta).items():
        stem = (f"{DERIV}/sub-{entry.client}/ses-{entry.ses}/{DATATYPE}/"
                f"sub-{entry.client}_ses-{entry.ses}_task-{TASK}_desc-{desc}_beh")
        plan[stem + ".tsv"] = tsv
        plan[stem + ".json"] = side
    entry.units = sorted(units)
    return plan


def _place(root: Path, plan: dict[str, bytes | Path], old_files: Iterable[str]) -> None:
    """Write every planned file next to its target first, then move them all in; remove files no longer made."""
    staged: list[tuple[Path, Path]] = []
    try:
        for rel, content in sorted(plan.items()):
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.unlink(missing_ok=True)
            if isinstance(content, Path):
                try:
                    os.link(content, tmp)  # the hub's bytes, without a second copy on disk
                except OSError:
                    shutil.copyfile(content, tmp)
            else:
                tmp.write_bytes(content)
            staged.append((tmp, target))
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, target in staged:
        os.replace(tmp, target)
    for rel in set(old_files) - set(plan):
        (root / rel).unlink(missing_ok=True)
        _prune_empty((root / rel).parent, root)


def _prune_empty(folder: Path, root: Path) -> None:
    while folder != root and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def write_session(root: Path, sdir: Path, catalog: dict[str, SessionEntry]) -> SessionEntry | None:
    """Convert one mirrored export into the dataset; None if the session has not finished (left out).

    Raises :class:`BidsError` when the export is incomplete or unreadable (nothing is written then)."""
    try:
        meta = json.loads((sdir / "session.json").read_text())
        room, session = str(meta["room"]), str(meta["session"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BidsError(f"{sdir / 'session.json'} cannot be read ({exc})") from exc
    key = f"{room}/{session}"
    if meta.get("started_ns") is None or meta.get("stopped_ns") is None:
        return None
    old = catalog.get(key)
    sums = sdir / "SHA256SUMS"
    if old is not None and sums.is_file() and hashlib.sha256(sums.read_bytes()).hexdigest() == old.source_digest:
        return old  # converted from these very files (the puller verified them on arrival)
    digest = _verify_source(sdir)
    tcode, ccode = meta.get("therapist_code"), meta.get("client_code")
    if not tcode or not ccode:
        raise BidsError(f"session {session} of room {room} has no participant codes (no start command stored)")
    people = {bids_label(tcode), bids_label(ccode)}
    entry = SessionEntry(key=key, room=room, session=session, ses=_choose_ses(catalog, key, room, session, people),
                         therapist_code=tcode, client_code=ccode, therapist=bids_label(tcode),
                         client=bids_label(ccode), started_ns=int(meta["started_ns"]),
                         stopped_ns=int(meta["stopped_ns"]), units=[], source_digest=digest)
    plan = _plan_session(sdir, meta, entry)
    _place(root, plan, old.files if old else [])
    entry.files = sorted(plan)
    catalog[key] = entry
    return entry


# ------------------------------------------------------------------------------------ dataset files
def _readme(catalog: dict[str, SessionEntry]) -> bytes:
    rooms = sorted({e.room for e in catalog.values()})
    return (
        "# dyadsync recordings\n\n"
        "Physiology of therapist and client recorded in therapy rooms by dyadsync units (Raspberry Pi), "
        "stored by each room's hub and pulled by the lab (`dyadsync lab pull`).\n\n"
        f"Rooms: {', '.join(rooms) or 'none yet'}; sessions: {len(catalog)}.\n\n"
        "* `sub-<code>/ses-<session>/beh/*_physio.tsv.gz`: raw signals (`recording-eda` in microsiemens, "
        "`recording-ppg` in ADC counts) and the 4 Hz features computed live by the unit (`recording-edafeat` "
        "in microsiemens, `recording-hrfeat` in beats per minute); columns are the signal and the block "
        "flags. `acq-<unit>` names the unit. `n/a` rows stand for blocks lost in transit.\n"
        "* `*_events.tsv`: session start (onset 0), markers and session stop; onsets in seconds from the "
        "session start command, which is time zero of every file of the session.\n"
        "* `participants.tsv`: pseudonymous codes and roles; `sub-<code>/sub-<code>_sessions.tsv`: room, "
        "dyadsync session id and partner of every session.\n"
        "* `derivatives/dyadsync/`: who was paired with whom (`task-therapy_desc-dyads_beh.tsv`) and the "
        "per-window synchrony metrics the unit computed live (in the client's folder). " + LAG_RULE + "\n"
        "* `sourcedata/<room>/<session>/`: the hub's export as pulled, with `SHA256SUMS`.\n\n"
        "Participant codes are pseudonyms given at session start; the dataset holds no names.\n"
    ).encode()


def finalize(root: Path, catalog: dict[str, SessionEntry], *, name: str = "dyadsync recordings") -> None:
    """(Re)write the dataset-level files from the catalogue."""
    gen = [{"Name": "dyadsync", "Version": __version__,
            "Description": "dyadsync lab pull: BIDS conversion of room hub exports"}]
    desc_path = root / "dataset_description.json"
    desc = {"Name": name, "BIDSVersion": BIDS_VERSION, "DatasetType": "raw", "GeneratedBy": gen}
    if desc_path.is_file():  # keep what the lab added (Authors, License, ...)
        try:
            desc = {**json.loads(desc_path.read_text()), "BIDSVersion": BIDS_VERSION, "GeneratedBy": gen}
        except (OSError, ValueError):
            logger.warning("%s unreadable: written afresh", desc_path)
    _write_atomic(desc_path, _json(desc))
    readme = root / "README"
    if not readme.is_file() or readme.read_bytes().startswith(b"# dyadsync recordings\n"):
        _write_atomic(readme, _readme(catalog))
    roles: dict[str, dict[str, set[str]]] = {}
    sessions: dict[str, list[list[object]]] = {}
    for e in sorted(catalog.values(), key=lambda e: (e.started_ns, e.key)):
        for role, sub, code, partner in (("therapist", e.therapist, e.therapist_code, e.client),
                                         ("client", e.client, e.client_code, e.therapist)):
            r = roles.setdefault(sub, {"role": set(), "code": set()})
            r["role"].add(role)
            r["code"].add(code)
            sessions.setdefault(sub, []).append([f"ses-{e.ses}", _utc_iso(e.started_ns), e.room, e.session, role,
                                                 f"sub-{partner}"])
    _write_atomic(root / "participants.tsv", _tsv(
        ["participant_id", "role", "code"],
        [[f"sub-{s}", ",".join(sorted(r["role"])), ",".join(sorted(r["code"]))] for s, r in sorted(roles.items())]))
    _write_atomic(root / "participants.json", _json({
        "participant_id": {"Description": "sub-<pseudonymous code reduced to letters and digits>"},
        "role": {"Description": "role(s) of the person in the dataset's sessions",
                 "Levels": {"therapist": "therapist", "client": "client"}},
        "code": {"Description": "pseudonymous participant code as given at session start"}}))
    sess_side = _json({
        "acq_time": {"Description": "session start command, UTC"},
        "room": {"Description": "therapy room the session was recorded in"},
        "dyadsync_session": {"Description": "dyadsync session id"},
        "role": {"Description": "the participant's role in this session",
                 "Levels": {"therapist": "therapist", "client": "client"}},
        "partner_id": {"Description": "participant_id of the other member of the dyad"}})
    existing = {p.name for p in root.glob("sub-*") if p.is_dir()}
    for sub, rows in sessions.items():
        base = root / f"sub-{sub}" / f"sub-{sub}_sessions"
        _write_atomic(base.with_suffix(".tsv"), _tsv(
            ["session_id", "acq_time", "room", "dyadsync_session", "role", "partner_id"], rows))
        _write_atomic(base.with_suffix(".json"), sess_side)
    for stale in existing - {f"sub-{s}" for s in sessions}:  # a subject with no session left
        for f in (root / stale).glob(f"{stale}_sessions.*"):
            f.unlink()
        _prune_empty(root / stale, root)
    # derivatives
    droot = root / DERIV
    _write_atomic(droot / "dataset_description.json", _json({
        "Name": f"{name}: dyads and live synchrony", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "dyadsync", "Version": __version__,
                         "Description": "windowed cross-correlation computed live on the dyadsync unit"}]}))
    _write_atomic(droot / "README", (
        "# dyadsync: dyads and live synchrony\n\n"
        "`task-therapy_desc-dyads_beh.tsv` lists every session: room, dyadsync session id, the therapist's and "
        "the client's participant_id, start and stop time and the units that recorded it.\n\n"
        "`sub-<client>/ses-<session>/beh/*_desc-<metric>_beh.tsv` holds the unit's per-window values of each "
        "metric (`synceda`, `synchr`: windowed cross-correlation of the 4 Hz EDA / HR features, Boker et al. "
        "2002; `regulation`: RMSSD and RSA per epoch) exactly as published live. " + LAG_RULE + "\n").encode())
    rows = [[f"ses-{e.ses}", e.room, e.session, f"sub-{e.therapist}", f"sub-{e.client}", _utc_iso(e.started_ns),
             _utc_iso(e.stopped_ns), e.started_ns, e.stopped_ns, ",".join(e.units) or None]
            for e in sorted(catalog.values(), key=lambda e: (e.started_ns, e.key))]
    _write_atomic(droot / f"task-{TASK}_desc-dyads_beh.tsv", _tsv(
        ["session_id", "room", "dyadsync_session", "therapist_id", "client_id", "start_utc", "stop_utc",
         "started_ns", "stopped_ns", "units"], rows))
    _write_atomic(droot / f"task-{TASK}_desc-dyads_beh.json", _json({
        "Description": "one row per session: who was paired with whom. Per-window metrics of a session are in "
                       "sub-<client_id>/ses-<session_id>/beh/ of this derivative dataset.",
        "session_id": {"Description": "BIDS session label of the session"},
        "room": {"Description": "therapy room"},
        "dyadsync_session": {"Description": "dyadsync session id"},
        "therapist_id": {"Description": "participant_id of the therapist"},
        "client_id": {"Description": "participant_id of the client"},
        "start_utc": {"Description": "session start command, UTC"},
        "stop_utc": {"Description": "session stop command, UTC"},
        "started_ns": {"Description": "session start, UTC nanoseconds since 1970", "Units": "ns"},
        "stopped_ns": {"Description": "session stop, UTC nanoseconds since 1970", "Units": "ns"},
        "units": {"Description": "dyadsync units whose streams are in the session"}}))


def sync_dataset(root: Path | str, *, name: str = "dyadsync recordings") -> SyncReport:
    """Bring the BIDS tree at ``root`` up to date with its ``sourcedata/`` mirrors (idempotent)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    catalog = load_catalog(root)
    report = SyncReport()
    for sdir in session_sources(root):
        try:
            before = catalog.get(_key_of(sdir))
            digest_before = before.source_digest if before else None
            entry = write_session(root, sdir, catalog)
        except BidsError as exc:
            logger.error("not written into the BIDS dataset: %s", exc)
            report.failed.append(f"{sdir.parent.name}/{sdir.name}")
            continue
        if entry is None:
            report.running.append(f"{sdir.parent.name}/{sdir.name}")
            logger.info("session %s is still running: left out of the dataset until it stops", sdir.name)
        elif entry.source_digest == digest_before:
            report.unchanged += 1
        else:
            report.written.append(entry.key)
            _save_catalog(root, catalog)
    finalize(root, catalog, name=name)
    _save_catalog(root, catalog)
    return report


def _key_of(sdir: Path) -> str:
    try:
        meta = json.loads((sdir / "session.json").read_text())
        return f"{meta['room']}/{meta['session']}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{sdir.parent.name}/{sdir.name}"


# ---------------------------------------------------------------------------------- from a hub database
def mirror_from_db(db: Path | str, root: Path | str, sessions: Iterable[str] | None = None) -> list[Path]:
    """Write the hub's export of each session (``broker.export``, the bytes the pull API serves) from a hub
    database into ``root/sourcedata/<room>/<session>/`` with its SHA256SUMS; returns the folders."""
    from broker import export, store

    root = Path(root)
    con = store.connect(db, readonly=True)
    out = []
    try:
        wanted = list(sessions) if sessions is not None else [
            s["session"] for s in store.list_sessions(con, limit=1_000_000)]
        for session in wanted:
            meta = store.get_session(con, session)
            files = export.session_files(con, session)
            if meta is None or files is None:
                raise BidsError(f"session {session!r} is not in {db}")
            sdir = root / SOURCE_DIR / bids_safe(meta["room"]) / bids_safe(session)
            sums = []
            for f in files:
                data = b"".join(f.produce())
                _write_atomic(sdir / bids_safe(f.name), data)
                sums.append(f"{hashlib.sha256(data).hexdigest()}  {f.name}\n")
            _write_atomic(sdir / "SHA256SUMS", "".join(sums).encode())
            out.append(sdir)
    finally:
        con.close()
    return out


def bids_safe(name: str) -> str:
    if not isinstance(name, str) or not SAFE.match(name) or ".." in name:
        raise BidsError(f"unsafe name {name!r}")
    return name
