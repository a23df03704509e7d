"""The hub's read-only pull API (FastAPI, served by uvicorn with ``dyadsync hub serve``).

Every data endpoint needs ``Authorization: Bearer <token>``; the token is read from the token file that
``dyadsync hub init`` writes and compared in constant time (:func:`hmac.compare_digest`). The OpenAPI
description is at ``/openapi.json`` (interactive docs at ``/docs``); it describes endpoints only, no data.

Endpoints (all GET)::

    /v1/sessions?since_ns=&limit=&offset=       sessions changed after since_ns, oldest change first
    /v1/sessions/{session}                      metadata + quality summary (gaps, losses, malformed counts)
    /v1/sessions/{session}/metrics.csv          metrics as CSV (streamed)
    /v1/sessions/{session}/physio               the BIDS-physio file names of the session
    /v1/sessions/{session}/files                manifest: every export file with size and SHA-256
    /v1/sessions/{session}/files/{name}         one export file (streamed; Range: bytes=N- resumes)
    /v1/sessions/{session}/archive.tar          the whole session as one tar with SHA256SUMS (streamed)
"""

from __future__ import annotations

import hmac
import logging
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.errors import ConfigError

from . import export, store

logger = logging.getLogger(__name__)

_RANGE_RE = re.compile(r"^bytes=(\d{1,19})-$")  # at most 19 digits: an int64, never a 4300-digit int()
INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)


def read_token(path: Path | str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read API token file {path}: {exc}") from exc
    if len(token) < 16:
        raise ConfigError(f"API token in {path} is shorter than 16 characters")
    return token


def _skip(chunks: Iterator[bytes], n: int) -> Iterator[bytes]:
    for chunk in chunks:
        if n >= len(chunk):
            n -= len(chunk)
            continue
        yield chunk[n:] if n else chunk
        n = 0


def create_app(db_path: Path | str, token: str) -> FastAPI:
    """The pull API over the hub database ``db_path`` (opened read-only per request)."""
    db_path = Path(db_path)
    expected = token.encode()
    bearer = HTTPBearer(auto_error=False)
    manifests = export.ManifestCache()
    app = FastAPI(
        title="dyadsync hub pull API",
        version="1",
        description="Read-only access to a room hub's recorded sessions: metadata, quality, metrics, "
                    "BIDS-physio signals and whole-session archives. Bearer-token authentication.",
    )

    def auth(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        given = creds.credentials.encode() if creds is not None and creds.scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def db() -> Iterator[sqlite3.Connection]:
        if not db_path.exists():
            raise HTTPException(503, "the hub database does not exist yet (is `dyadsync hub run` running?)")
        con = store.connect(db_path, readonly=True)
        try:
            yield con
        finally:
            con.close()

    def open_db() -> sqlite3.Connection:
        if not db_path.exists():
            raise HTTPException(503, "the hub database does not exist yet")
        return store.connect(db_path, readonly=True)

    def streamed(con: sqlite3.Connection, chunks: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from chunks
        finally:
            con.close()

    deps = [Depends(auth)]

    @app.get("/v1/sessions", dependencies=deps, summary="List sessions changed after since_ns (paged)")
    def list_sessions(
        since_ns: int | None = Query(None, ge=INT64_MIN, le=INT64_MAX,  # noqa: B008
                                     description="only sessions whose updated_ns is greater (UTC ns, int64)"),
        limit: int = Query(100, ge=1, le=1000),  # noqa: B008
        offset: int = Query(0, ge=0, le=INT64_MAX),  # noqa: B008
        con: sqlite3.Connection = Depends(db),  # noqa: B008
    ) -> dict:
        rows = store.list_sessions(con, since_ns=since_ns, limit=limit, offset=offset)
        total = store.count_sessions(con, since_ns)
        return {"sessions": rows, "total": total, "offset": offset,
                "next_offset": offset + len(rows) if offset + len(rows) < total else None}

    @app.get("/v1/sessions/{session}", dependencies=deps, summary="Session metadata and quality summary")
    def get_session(session: str, con: sqlite3.Connection = Depends(db)) -> dict:  # noqa: B008
        summary = store.session_summary(con, session)
        if summary is None:
            raise HTTPException(404, f"no session {session!r}")
        return summary

    @app.get("/v1/sessions/{session}/metrics.csv", dependencies=deps, summary="Metrics as CSV",
             response_class=StreamingResponse)
    def metrics_csv(session: str) -> StreamingResponse:
        con = open_db()
        if store.get_session(con, session) is None:
            con.close()
            raise HTTPException(404, f"no session {session!r}")
        return StreamingResponse(streamed(con, export.metrics_csv(con, session)), media_type="text/csv",
                                 headers={"Content-Disposition": f'attachment; filename="{session}_metrics.csv"'})

    @app.get("/v1/sessions/{session}/files", dependencies=deps, summary="Export files with size and SHA-256")
    def files(session: str, con: sqlite3.Connection = Depends(db)) -> dict:  # noqa: B008
        manifest = manifests.get(con, session)
        if manifest is None:
            raise HTTPException(404, f"no session {session!r}")
        meta = store.get_session(con, session)
        return {"session": session, "updated_ns": meta["updated_ns"] if meta else None, "files": manifest}

    @app.get("/v1/sessions/{session}/physio", dependencies=deps, summary="BIDS-physio files of the session")
    def physio(session: str, con: sqlite3.Connection = Depends(db)) -> dict:  # noqa: B008
        files_ = export.session_files(con, session)
        if files_ is None:
            raise HTTPException(404, f"no session {session!r}")
        return {"session": session, "files": [f.name for f in files_ if "_physio." in f.name]}

    @app.get("/v1/sessions/{session}/files/{name}", dependencies=deps, summary="One export file (Range: bytes=N-)",
             response_class=StreamingResponse)
    def file(session: str, name: str, request: Request) -> StreamingResponse:
        con = open_db()
        try:
            manifest = manifests.get(con, session)
            entry = next((m for m in manifest or [] if m["name"] == name), None)
            if entry is None:
                raise HTTPException(404, f"no file {name!r} in session {session!r}")
            f = next(f for f in export.session_files(con, session) or [] if f.name == name)
        except BaseException:
            con.close()
            raise
        headers = {"ETag": f'"{entry["sha256"]}"', "Accept-Ranges": "bytes",
                   "X-Checksum-SHA256": entry["sha256"]}
        rng = request.headers.get("range")
        start = 0
        if rng:
            m = _RANGE_RE.match(rng.strip())
            if not m or int(m.group(1)) > entry["size"]:
                con.close()
                raise HTTPException(416, f"unsupported or unsatisfiable range {rng!r}",
                                    headers={"Content-Range": f"bytes */{entry['size']}"})
            start = int(m.group(1))
        chunks = f.produce()
        if start:
            chunks = _skip(chunks, start)
            headers["Content-Range"] = f"bytes {start}-{entry['size'] - 1}/{entry['size']}"
        headers["Content-Length"] = str(entry["size"] - start)
        return StreamingResponse(streamed(con, chunks), status_code=206 if start else 200,
                                 media_type=entry["media_type"], headers=headers)

    @app.get("/v1/sessions/{session}/archive.tar", dependencies=deps,
             summary="The whole session as one tar archive with SHA256SUMS", response_class=StreamingResponse)
    def archive(session: str) -> StreamingResponse:
        con = open_db()
        manifest = manifests.get(con, session)
        if manifest is None:
            con.close()
            raise HTTPException(404, f"no session {session!r}")
        meta = store.get_session(con, session)
        mtime_s = int((meta or {}).get("updated_ns", 0) // 1_000_000_000)
        return StreamingResponse(streamed(con, export.tar_stream(con, session, manifest, mtime_s)),
                                 media_type="application/x-tar",
                                 headers={"Content-Disposition": f'attachment; filename="{session}.tar"'})

    return app


class ApiServer:
    """uvicorn serving :func:`create_app` in a background thread (tests, the demo); ``stop()`` joins it."""

    def __init__(self, db_path: Path | str, token: str, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        from .mosquitto import free_port

        self.host = host
        self.port = port or free_port(host)
        self._server = uvicorn.Server(uvicorn.Config(create_app(db_path, token), host=self.host, port=self.port,
                                                     log_level="warning", lifespan="off"))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> ApiServer:
        from .mosquitto import wait_for_port

        self._thread = threading.Thread(target=self._server.run, name="pull-api", daemon=True)
        self._thread.start()
        if not wait_for_port(self.host, self.port, timeout_s):
            self.stop()
            raise RuntimeError(f"pull API did not start on {self.url}")
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
