"""The lab puller: copies new and changed sessions from a hub's pull API into a lab directory.

Incremental: the state file ``DEST/.dyadsync-pull.json`` keeps the ``updated_ns`` watermark and, per
session, the version pulled; the next run asks only for sessions changed after the watermark, and skips
files whose SHA-256 already matches. Resumable: a file is downloaded into ``DEST/.partial/`` and continued
with ``Range: bytes=N-`` after an interruption, then verified against the manifest's SHA-256 and moved
into place atomically.

Layout: DEST is a BIDS dataset (:mod:`lab.bids`). The hub's export of each session is mirrored verbatim in
``DEST/sourcedata/<room>/<session>/<file>`` with a ``SHA256SUMS`` (``sha256sum -c SHA256SUMS`` verifies it
with coreutils); after the downloads every finished session is converted into ``sub-*/ses-*/beh/`` and
``derivatives/dyadsync/`` and the dataset-level files are rewritten, so the dataset is valid after every run.
A session still running is mirrored but not converted; it is converted by the run after it stops. Folders
of the earlier layout (``DEST/<room>/<session>/``) are moved into ``sourcedata/`` on the first run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tqdm import tqdm

from core.errors import DyadsyncError

from . import bids

logger = logging.getLogger(__name__)

STATE_NAME = ".dyadsync-pull.json"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")


class PullError(DyadsyncError, OSError):
    """The hub could not be reached, refused us, or sent something unusable."""


class ChecksumError(PullError):
    """A downloaded file does not match the SHA-256 the hub announced."""


@dataclass
class PullReport:
    sessions_seen: int = 0
    sessions_pulled: int = 0
    sessions_skipped: int = 0
    files_downloaded: int = 0
    files_unchanged: int = 0
    bytes_downloaded: int = 0
    resumed_files: int = 0
    failed: list[str] = field(default_factory=list)
    changing: list[str] = field(default_factory=list)
    """Sessions that changed under us twice (live sessions): they have a newer updated_ns by then, so the
    next run lists them again; they do not hold the watermark back."""
    bids: bids.SyncReport | None = None
    """What the BIDS conversion did (written, unchanged, still running, failed)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe(kind: str, name: str) -> str:
    if not isinstance(name, str) or not SAFE_NAME.match(name) or ".." in name:
        raise PullError(f"hub sent an unsafe {kind} name {name!r}")
    return name


class LabPuller:
    def __init__(self, hub_url: str, token: str, dest: Path | str, *, progress: bool = True,
                 timeout_s: float = 60.0, transport: httpx.BaseTransport | None = None,
                 on_bytes: Callable[[int], None] | None = None, chunk_bytes: int = 1 << 16,
                 to_bids: bool = True, dataset_name: str = "dyadsync recordings") -> None:
        self.hub_url = hub_url.rstrip("/")
        self.dest = Path(dest)
        self.source = self.dest / bids.SOURCE_DIR
        self.to_bids = to_bids
        self.dataset_name = dataset_name
        self.progress = progress
        self.on_bytes = on_bytes  # test hook: called with the byte count of every chunk written
        self.chunk_bytes = chunk_bytes
        self._http = httpx.Client(base_url=self.hub_url, headers={"Authorization": f"Bearer {token}"},
                                  timeout=timeout_s, transport=transport)
        self.state_path = self.dest / STATE_NAME
        self.state = self._load_state()

    # ------------------------------------------------------------------------------------------- state
    def _load_state(self) -> dict:
        """This hub's part of the state file; one dataset takes many hubs (rooms), each with its watermark.

        The file is ``{"hubs": {url: {"since_ns", "sessions"}}}``; a file of the one-hub format
        (``{"hub": url, ...}``) is read as that hub's part."""
        self._all: dict = {"hubs": {}}
        if self.state_path.exists():
            try:
                data = json.loads(self.state_path.read_text())
                if "hubs" in data:
                    self._all = data
                elif "hub" in data:
                    self._all["hubs"][data["hub"]] = {"since_ns": data.get("since_ns"),
                                                      "sessions": data.get("sessions", {})}
            except (OSError, json.JSONDecodeError, AttributeError) as exc:
                logger.warning("state file %s unreadable (%s): starting afresh", self.state_path, exc)
                self._all = {"hubs": {}}
        return self._all["hubs"].setdefault(self.hub_url, {"since_ns": None, "sessions": {}})

    def _save_state(self) -> None:
        self.dest.mkdir(parents=True, exist_ok=True)
        self._all["hubs"][self.hub_url] = self.state
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._all, indent=1, sort_keys=True))
        os.replace(tmp, self.state_path)

    # --------------------------------------------------------------------------------------------- http
    def _get_json(self, path: str, **params) -> dict:
        try:
            r = self._http.get(path, params={k: v for k, v in params.items() if v is not None})
        except httpx.HTTPError as exc:
            raise PullError(f"cannot reach hub {self.hub_url}: {exc}") from exc
        if r.status_code == 401:
            raise PullError(f"hub {self.hub_url} refused the token (401)")
        if r.status_code != 200:
            raise PullError(f"hub {self.hub_url}{path} answered {r.status_code}: {r.text[:200]}")
        return r.json()

    def list_changed(self) -> list[dict]:
        since = self.state.get("since_ns")
        out, offset = [], 0
        while True:
            page = self._get_json("/v1/sessions", since_ns=since, limit=200, offset=offset)
            out.extend(page["sessions"])
            if page.get("next_offset") is None:
                return out
            offset = page["next_offset"]

    def _download(self, session: str, entry: dict, target: Path, report: PullReport) -> None:
        name = entry["name"]
        partial = self.dest / ".partial" / session
        partial.mkdir(parents=True, exist_ok=True)
        part = partial / (name + ".part")
        offset = part.stat().st_size if part.exists() else 0
        if offset > entry["size"]:
            part.unlink()
            offset = 0
        if offset == entry["size"] and offset > 0 and _sha256(part) == entry["sha256"]:
            # Interrupted after the last byte but before the move: nothing left to fetch.
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, target)
            report.files_downloaded += 1
            return
        if offset == entry["size"]:
            part.unlink(missing_ok=True)
            offset = 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with self._http.stream("GET", f"/v1/sessions/{session}/files/{name}", headers=headers) as r:
                if r.status_code == 200 and offset:
                    offset = 0  # the hub ignored the range: start again
                elif r.status_code == 206:
                    report.resumed_files += 1
                elif r.status_code != 200:
                    raise PullError(f"hub answered {r.status_code} for {session}/{name}")
                mode = "ab" if offset else "wb"
                bar = tqdm(total=entry["size"], initial=offset, unit="B", unit_scale=True, desc=name[:40],
                           disable=not self.progress, leave=False)
                with open(part, mode) as f, bar:
                    for chunk in r.iter_bytes(self.chunk_bytes):
                        f.write(chunk)
                        f.flush()
                        bar.update(len(chunk))
                        report.bytes_downloaded += len(chunk)
                        if self.on_bytes is not None:
                            self.on_bytes(len(chunk))
        except httpx.HTTPError as exc:
            raise PullError(f"download of {session}/{name} interrupted: {exc}") from exc
        digest = _sha256(part)
        if digest != entry["sha256"]:
            part.unlink()
            raise ChecksumError(f"{session}/{name}: SHA-256 {digest} does not match the hub's {entry['sha256']}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, target)
        report.files_downloaded += 1

    def pull_session(self, meta: dict, report: PullReport) -> None:
        session = _safe("session", meta["session"])
        room = _safe("room", meta["room"])
        for attempt in (1, 2):
            listing = self._get_json(f"/v1/sessions/{session}/files")
            sdir = self.source / room / session
            try:
                for entry in listing["files"]:
                    target = sdir / _safe("file", entry["name"])
                    if target.exists() and _sha256(target) == entry["sha256"]:
                        report.files_unchanged += 1
                        continue
                    self._download(session, entry, target, report)
                break
            except ChecksumError:
                if attempt == 2:
                    raise
                logger.warning("session %s changed while pulling; fetching its manifest again", session)
        names = {e["name"] for e in listing["files"]}
        sdir.mkdir(parents=True, exist_ok=True)
        for stale in sdir.iterdir():  # a file the hub no longer exports would be converted otherwise
            if stale.is_file() and stale.name not in names and stale.name != "SHA256SUMS":
                stale.unlink()
        sums = sdir / "SHA256SUMS"
        sums.with_suffix(".tmp").write_text("".join(f"{e['sha256']}  {e['name']}\n" for e in listing["files"]))
        os.replace(sums.with_suffix(".tmp"), sums)
        self.state["sessions"][session] = {"room": room, "updated_ns": listing["updated_ns"],
                                           "files": len(listing["files"])}
        self._save_state()

    def _migrate_old_layout(self) -> None:
        """Move session folders of the layout before BIDS (``DEST/<room>/<session>/``) into sourcedata/."""
        for session, known in self.state["sessions"].items():
            room = known.get("room")
            if not room or not SAFE_NAME.match(room) or not SAFE_NAME.match(session):
                continue
            old = self.dest / room / session
            new = self.source / room / session
            if old.is_dir() and (old / "session.json").is_file() and not new.exists():
                new.parent.mkdir(parents=True, exist_ok=True)
                os.replace(old, new)
                logger.info("moved %s to %s (BIDS layout)", old, new)
                try:
                    old.parent.rmdir()
                except OSError:
                    pass

    def pull(self) -> PullReport:
        """Pull every session changed since the last run, then bring the BIDS dataset up to date.

        Raises :class:`PullError` if any session failed (the sessions that did arrive are converted first)."""
        report = PullReport()
        self._migrate_old_layout()
        sessions = self.list_changed()
        report.sessions_seen = len(sessions)
        watermark = self.state.get("since_ns")
        for meta in tqdm(sessions, desc="sessions", unit="session", disable=not self.progress):
            known = self.state["sessions"].get(meta["session"])
            if known and known.get("updated_ns") == meta["updated_ns"]:
                report.sessions_skipped += 1
                continue
            try:
                self.pull_session(meta, report)
                report.sessions_pulled += 1
            except ChecksumError as exc:
                logger.warning("session %s is still changing; it will be pulled again next run (%s)",
                               meta.get("session"), exc)
                report.changing.append(str(meta.get("session")))
            except PullError as exc:
                logger.error("session %s not pulled: %s", meta.get("session"), exc)
                report.failed.append(str(meta.get("session")))
        if not report.failed and sessions:
            watermark = max([m["updated_ns"] for m in sessions] + [watermark or 0])
            self.state["since_ns"] = watermark
        self._save_state()
        if self.to_bids:
            report.bids = bids.sync_dataset(self.dest, name=self.dataset_name)
        if report.failed:
            raise PullError(f"{len(report.failed)} session(s) not pulled: {', '.join(report.failed)}; "
                            "run again to resume")
        return report

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabPuller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
