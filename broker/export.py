"""Session exports: BIDS-physio signals, metrics CSV, session JSON, checksummed manifest and tar archive.

BIDS physiological recordings (BIDS spec, "Physiological recordings"): a headerless, gzip-compressed TSV
``*_physio.tsv.gz`` plus a JSON sidecar with ``SamplingFrequency`` (Hz), ``StartTime`` (s) and ``Columns``.
One file pair per stored stream::

    sub-<code>_ses-<session>_task-therapy_recording-<unit><kind><signal>_physio.tsv.gz

``<code>`` is the participant code of the stream's role (``therapist``/``client`` from the start
command), labels are reduced to letters and digits as BIDS requires. Columns: the signal (EDA in µS, PPG
in ADC counts, features in their units) and ``flags`` (the block's flag bits). Values are written with 9
significant digits, which round-trips every float32 exactly. Missing blocks (seq gaps) are filled with
``n/a`` rows so that row index / SamplingFrequency stays the sample time. ``StartTime`` is the first
sample relative to the session start command (0 when no start was recorded); the absolute UTC time is
kept in the extra key ``StartTimeUTCns``.

These files are the lab's source data: ``lab.bids`` (``dyadsync lab pull`` / ``lab bids``) lays them out as a
BIDS dataset (``sub-<code>/ses-<session>/beh/``, events from the markers, the dyad and the live metrics in
``derivatives/dyadsync/``) and keeps them verbatim in its ``sourcedata/<room>/<session>/``. The physio pairs
here already carry what BIDS asks of a physio sidecar (TaskName, PhysioType, SamplingFrequency, StartTime,
Columns with units); the flat per-session layout and the tar are kept for the pull API's resumable transfer.

Every file is generated deterministically from the store (fixed gzip mtime, sorted keys), so a file's
size and SHA-256 are stable while the session does not change; that is what lets the lab puller resume a
half-downloaded file with an HTTP Range request and verify it afterwards.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sqlite3
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from . import store

TASK = "therapy"
CHUNK = 64 * 1024

UNITS = {"eda": "uS", "ppg": "counts", "hr": "bpm", "ibi": "ms", "rmssd": "ms", "rsa": "ln(ms^2)"}


def bids_label(value: str) -> str:
    label = re.sub(r"[^A-Za-z0-9]", "", value)
    return label or "x"


@dataclass(frozen=True)
class ExportFile:
    name: str
    media_type: str
    produce: Callable[[], Iterator[bytes]]


# ------------------------------------------------------------------------------------------ physio
def _gzip_stream(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """gzip with a fixed header (mtime 0, no name), so identical input gives identical bytes."""
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip container; zlib writes mtime 0
    for chunk in chunks:
        out = comp.compress(chunk)
        if out:
            yield out
    yield comp.flush()


def _physio_rows(con: sqlite3.Connection, session: str, st: store.StreamInfo) -> Iterator[bytes]:
    rows = store.iter_stream_blocks(con, session, st.room, st.unit, st.kind, st.stream)
    next_idx = 0
    t_first: int | None = None
    rate = st.rate_hz
    for t0, _rate, flags, data in rows:
        values = np.frombuffer(data, dtype="<f4")
        if t_first is None:
            t_first = t0
        idx = int(round((t0 - t_first) * rate / 1e9))
        if idx > next_idx:  # missing blocks: keep the time axis with n/a rows
            yield b"n/a\tn/a\n" * (idx - next_idx)
            next_idx = idx
        text = "".join(
            ("n/a" if not np.isfinite(v) else f"{v:.9g}") + f"\t{flags}\n" for v in values.tolist()
        )
        yield text.encode()
        next_idx += values.size


def physio_names(meta: dict, st: store.StreamInfo) -> tuple[str, str]:
    role, signal = st.stream.split("/", 1)
    code = meta.get(f"{role}_code") or role
    stem = (f"sub-{bids_label(code)}_ses-{bids_label(meta['session'])}_task-{TASK}_"
            f"recording-{bids_label(st.unit)}{st.kind}{bids_label(signal)}_physio")
    return stem + ".tsv.gz", stem + ".json"


def physio_sidecar(meta: dict, st: store.StreamInfo) -> dict:
    role, signal = st.stream.split("/", 1)
    start_ref = meta.get("started_ns") or st.t_start_ns
    return {
        "TaskName": TASK,
        "PhysioType": "generic",
        "SamplingFrequency": st.rate_hz,
        "StartTime": (st.t_start_ns - start_ref) / 1e9,
        "Columns": [signal, "flags"],
        signal: {"Units": UNITS.get(signal, "n/a"),
                 "Description": f"{'raw' if st.kind == 'raw' else '4 Hz feature'} {signal} of the {role}"},
        "flags": {"Description": "sample block flag bits (saturated, contact lost, FIFO overflow, interpolated)"},
        "StartTimeUTCns": st.t_start_ns,
        "Role": role,
        "Unit": st.unit,
        "Room": st.room,
        "Kind": st.kind,
        "MissingBlocks": st.missing_blocks,
    }


# ------------------------------------------------------------------------------------- other files
def metrics_csv(con: sqlite3.Connection, session: str) -> Iterator[bytes]:
    value_keys = store.metric_value_keys(con, session)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["room", "unit", "name", "seq", "window_start_ns", "window_end_ns", *value_keys])
    for n, (room, unit, name, seq, ws, we, vals) in enumerate(store.iter_session_metrics(con, session), 1):
        w.writerow([room, unit, name, seq, ws, we,
                    *("" if vals.get(k) is None else repr(float(vals[k])) for k in value_keys)])
        if n % 500 == 0:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()


def status_tsv(con: sqlite3.Connection, session: str) -> Iterator[bytes]:
    yield b"room\tunit\ttime_ns\tstate\n"
    for room, unit, t, state in store.iter_session_status(con, session):
        yield f"{room}\t{unit}\t{t}\t{state}\n".encode()


def session_files(con: sqlite3.Connection, session: str) -> list[ExportFile] | None:
    """Every file of a session export, in archive order (None if the session is unknown)."""
    summary = store.session_summary(con, session, include_hub=False)
    if summary is None:
        return None
    meta = store.get_session(con, session)
    assert meta is not None
    files = [
        ExportFile("session.json", "application/json",
                   lambda: iter([json.dumps(summary, indent=1, sort_keys=True).encode()])),
        ExportFile("metrics.csv", "text/csv", lambda: metrics_csv(con, session)),
        ExportFile("status.tsv", "text/tab-separated-values", lambda: status_tsv(con, session)),
    ]
    for st in store.session_streams(con, session):
        tsv_name, json_name = physio_names(meta, st)
        sidecar = physio_sidecar(meta, st)
        files.append(ExportFile(tsv_name, "application/gzip",
                                lambda st=st: _gzip_stream(_physio_rows(con, session, st))))
        files.append(ExportFile(json_name, "application/json",
                                lambda sidecar=sidecar: iter([json.dumps(sidecar, indent=1, sort_keys=True).encode()])))
    return files


def file_digest(f: ExportFile) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    for chunk in f.produce():
        h.update(chunk)
        size += len(chunk)
    return size, h.hexdigest()


class ManifestCache:
    """(session, updated_ns) -> [{name, size, sha256}]; computing a manifest generates every file once."""

    def __init__(self, max_entries: int = 32) -> None:
        self._data: dict[tuple[str, int], list[dict]] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def get(self, con: sqlite3.Connection, session: str) -> list[dict] | None:
        meta = store.get_session(con, session)
        if meta is None:
            return None
        key = (session, meta["updated_ns"])
        with self._lock:
            if key in self._data:
                return self._data[key]
        files = session_files(con, session) or []
        manifest = []
        for f in files:
            size, digest = file_digest(f)
            manifest.append({"name": f.name, "size": size, "sha256": digest, "media_type": f.media_type})
        with self._lock:
            if len(self._data) >= self.max_entries:
                self._data.pop(next(iter(self._data)))
            self._data[key] = manifest
        return manifest


def sha256sums(manifest: list[dict]) -> bytes:
    return "".join(f"{m['sha256']}  {m['name']}\n" for m in manifest).encode()


def tar_stream(con: sqlite3.Connection, session: str, manifest: list[dict], mtime_s: int) -> Iterator[bytes]:
    """A POSIX (pax) tar of the session (``<session>/<file>``) plus ``<session>/SHA256SUMS``, streamed.

    Headers come from :class:`tarfile.TarInfo`; contents are streamed chunk by chunk straight from the
    generators, padded to 512-byte blocks, and the archive ends with two zero blocks (POSIX.1-2001).
    """
    files = {f.name: f for f in (session_files(con, session) or [])}
    prefix = bids_label(session)

    def member(name: str, size: int, chunks: Iterator[bytes]) -> Iterator[bytes]:
        info = tarfile.TarInfo(f"{prefix}/{name}")
        info.size = size
        info.mtime = mtime_s
        info.mode = 0o644
        info.uname = info.gname = "dyadsync"
        yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        written = 0
        for chunk in chunks:
            written += len(chunk)
            yield chunk
        if written != size:
            raise RuntimeError(f"export of {name} changed while streaming ({written} != {size} bytes)")
        if size % tarfile.BLOCKSIZE:
            yield tarfile.NUL * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE)

    for m in manifest:
        yield from member(m["name"], m["size"], files[m["name"]].produce())
    sums = sha256sums(manifest)
    yield from member("SHA256SUMS", len(sums), iter([sums]))
    yield tarfile.NUL * (2 * tarfile.BLOCKSIZE)
