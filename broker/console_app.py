"""The live room console: a page for a tablet or laptop on the room network (``dyadsync console serve``).

The hub serves it with FastAPI/uvicorn (as the pull API). It connects to the room broker with the console
account (``svc-console``: reads the units' statuses, acknowledgements, metrics and 4 Hz features of its own
room, writes ``cmd``), keeps the last minutes of every trace, and pushes each message to the open pages with
Server-Sent Events (``/api/events``). Commands go through :class:`broker.console.RoomConsole`, which waits
for every unit's answer; the page shows which unit accepted, refused (and why) or did not answer.

Login: its own user and password (``dyadsync console passwd``; an argon2 hash in ``console/login.json``
under the hub's ``out_dir``), not the lab's read token. A login gives an HttpOnly, SameSite=Strict cookie
holding a random token kept in memory (valid ``SESSION_TTL_S``); every state-changing request must also
carry the header ``X-Dyadsync: 1``, which a page of another site cannot send. Wrong passwords are answered
after a delay that grows with repeated failures.

The page's JavaScript is the project's own (``broker/static``): no CDN, no third-party code, works without
internet.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import logging
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from core.errors import ConfigError

from . import store, wire
from .console import CommandResult, RoomConsole, new_session_id
from .errors import BrokerError, WireError

logger = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
COOKIE = "dyadsync_console"
SESSION_TTL_S = 12 * 3600
DEFAULT_MARKERS = ("task start", "task end", "rupture", "repair")
TRACE_STREAMS = ("therapist/eda", "therapist/hr", "client/eda", "client/hr")


# ------------------------------------------------------------------------------------------------ login
def _hasher():
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    return PasswordHash((Argon2Hasher(),))


def write_login(path: Path, user: str, password: str) -> None:
    """Store the console login (argon2 hash, file mode 0600)."""
    if not wire.ID_RE.match(user):
        raise ConfigError(f"console user {user!r} must match {wire.ID_RE.pattern}")
    if len(password) < 8:
        raise ConfigError("the console password needs at least 8 characters")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"user": user, "hash": _hasher().hash(password)}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@dataclass
class Login:
    user: str
    hash: str
    failures: int = 0

    @classmethod
    def load(cls, path: Path) -> Login:
        try:
            obj = json.loads(Path(path).read_text())
            return cls(user=str(obj["user"]), hash=str(obj["hash"]))
        except FileNotFoundError:
            raise ConfigError(f"no console login at {path}: set one with `dyadsync console passwd`") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"console login file {path} is unreadable or damaged: {exc}") from None

    def check(self, user: str, password: str) -> bool:
        try:
            ok_pw = _hasher().verify(password, self.hash)
        except Exception:  # a damaged hash must not let anyone in
            ok_pw = False
        return hmac.compare_digest(user.encode(), self.user.encode()) and ok_pw


# ------------------------------------------------------------------------------------------ live state
@dataclass(eq=False)
class _Sub:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    dropped: int = 0


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


@dataclass
class LiveRoom:
    """What the console has seen of the room, fed from paho's thread, read by the web handlers."""

    room: str
    units: list[str]
    history_s: float = 300.0
    statuses: dict[str, dict] = field(default_factory=dict)
    quality: dict[str, dict] = field(default_factory=dict)  # "<unit>:<role>/<signal>" -> last block flags
    traces: dict[str, collections.deque] = field(default_factory=dict)  # "<unit>:<stream>" -> (t_ns, v)
    metrics: dict[str, collections.deque] = field(default_factory=dict)  # "<unit>:<name>" -> event dicts
    commands: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))
    started: dict[str, int] = field(default_factory=dict)  # session -> start time, of starts sent here
    markers: dict[str, list] = field(default_factory=dict)  # session -> markers sent here
    link: dict[str, Any] = field(default_factory=lambda: {"connected": False, "error": "connecting"})
    bad_messages: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: set[_Sub] = set()

    # paho's thread ------------------------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes) -> None:
        try:
            t = wire.parse_topic(topic)
            if t.kind == "status":
                if payload:
                    s = wire.Status.decode(payload)
                    ev = {"unit": t.unit, "state": s.state, "time_ns": s.time_ns, "session": s.session,
                          "sensors": s.sensors, "buffer_depth": s.buffer_depth, "dropped": s.dropped,
                          "clock_synced": s.clock_synced, "version": s.version, "received_ns": time.time_ns()}
                    with self._lock:
                        self.statuses[t.unit] = ev
                    self.publish("status", ev)
            elif t.kind == "feat":
                block, session = wire.decode_block(payload)
                self._feat(t.unit, block, session)
            elif t.kind == "metric":
                m = wire.Metric.decode(payload)
                ev = {"unit": t.unit, "name": m.name, "session": m.session, "seq": m.seq,
                      "window_start_ns": m.window_start_ns, "window_end_ns": m.window_end_ns,
                      "values": {k: _finite(v) for k, v in m.values.items()}, "received_ns": time.time_ns()}
                key = f"{t.unit}:{m.name}"
                with self._lock:
                    dq = self.metrics.setdefault(key, collections.deque())
                    dq.append(ev)
                    while dq and dq[0]["window_end_ns"] < m.window_end_ns - self.history_s * 1e9:
                        dq.popleft()
                self.publish("metric", ev)
            elif t.kind == "ack":
                a = wire.Ack.decode(payload)
                self.publish("ack", {"id": a.id, "unit": a.unit, "ok": a.ok, "error": a.error})
        except WireError as exc:
            self.bad_messages += 1
            logger.warning("console: undecodable message on %s: %s", topic[:200], str(exc)[:300])

    def _feat(self, unit: str, block, session: str) -> None:
        if block.stream not in TRACE_STREAMS:
            return
        step = 1e9 / block.rate_hz
        vals = [_finite(float(v)) for v in block.values]
        pts = [(block.t0_ns + round(i * step), v) for i, v in enumerate(vals)]
        key = f"{unit}:{block.stream}"
        with self._lock:
            dq = self.traces.setdefault(key, collections.deque())
            if dq and pts and pts[0][0] < dq[-1][0]:  # a late or repeated block: keep the trace in time order
                merged = {t: v for t, v in dq}
                merged.update(pts)
                dq.clear()
                dq.extend(sorted(merged.items()))
            else:
                dq.extend(pts)
            horizon = dq[-1][0] - self.history_s * 1e9 if dq else 0
            while dq and dq[0][0] < horizon:
                dq.popleft()
            self.quality[key] = {"flags": int(block.flags), "received_ns": time.time_ns(), "session": session,
                                 "valid": sum(v is not None for v in vals), "n": len(vals)}
        self.publish("feat", {"unit": unit, "stream": block.stream, "session": session, "t0_ns": block.t0_ns,
                              "rate_hz": block.rate_hz, "flags": int(block.flags), "values": vals,
                              "received_ns": time.time_ns()})

    # any thread -----------------------------------------------------------------------------------
    def publish(self, event: str, data: dict) -> None:
        item = (event, data)
        for sub in list(self._subs):
            try:
                sub.loop.call_soon_threadsafe(_offer, sub, item)
            except RuntimeError:  # the page's loop has closed
                self._subs.discard(sub)

    def subscribe(self) -> _Sub:
        sub = _Sub(asyncio.get_running_loop(), asyncio.Queue(maxsize=2000))
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: _Sub) -> None:
        self._subs.discard(sub)

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "room": self.room, "units": list(self.units), "server_time_ns": time.time_ns(),
                "history_s": self.history_s, "link": dict(self.link),
                "statuses": dict(self.statuses), "quality": dict(self.quality),
                "traces": {k: [[t, v] for t, v in dq] for k, dq in self.traces.items()},
                "metrics": {k: list(dq)[-600:] for k, dq in self.metrics.items()},
                "commands": list(self.commands),
            }

    def running_session(self) -> str | None:
        with self._lock:
            live = [s["session"] for s in self.statuses.values() if s.get("session") and s["state"] != "offline"]
        return max(set(live), key=live.count) if live else None


def _offer(sub: _Sub, item: tuple) -> None:
    try:
        sub.queue.put_nowait(item)
    except asyncio.QueueFull:  # a page that does not read: drop, it reloads its state on reconnect
        sub.dropped += 1


class ConsoleLink:
    """The console's broker connection, made (and made again) in the background: a console started before
    its broker waits for it, and says so on the page."""

    def __init__(self, live: LiveRoom, host: str, port: int, user: str, password: str, *,
                 tls_ca: str | None = None, retry_s: float = 2.0) -> None:
        self.live = live
        self._args = (host, port, live.room, user, password)
        self._tls_ca = tls_ca
        self._retry_s = retry_s
        self.console: RoomConsole | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-link", daemon=True)

    def start(self) -> ConsoleLink:
        self._thread.start()
        return self

    def _run(self) -> None:
        host, port = self._args[0], self._args[1]
        while not self._stop.is_set():
            if self.console is None:
                try:
                    self.console = RoomConsole(*self._args, tls_ca=self._tls_ca, metrics=True,
                                               on_message=self.live.on_message, connect_timeout_s=10)
                    logger.info("console connected to the room broker %s:%d", host, port)
                except BrokerError as exc:
                    self._set_link(False, str(exc))
                    logger.warning("%s; retrying in %.0f s", exc, self._retry_s)
                    self._stop.wait(self._retry_s)
                    continue
            connected = self.console.connected
            self._set_link(connected, "" if connected else f"reconnecting to the room broker {host}:{port}")
            self._stop.wait(0.5)

    def _set_link(self, connected: bool, error: str) -> None:
        state = {"connected": connected, "error": error}
        if state != self.live.link:
            self.live.link = state
            self.live.publish("link", state)

    def require(self) -> RoomConsole:
        if self.console is None or not self.console.connected:
            raise HTTPException(503, self.live.link.get("error") or "the console is not connected to the broker")
        return self.console

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.console is not None:
            self.console.close()


# -------------------------------------------------------------------------------------------------- app
def create_app(live: LiveRoom, link: ConsoleLink, login: Login, *, db_path: Path | None = None,
               markers: tuple[str, ...] = DEFAULT_MARKERS, ack_timeout_s: float = 20.0) -> FastAPI:
    app = FastAPI(title="dyadsync room console", docs_url=None, redoc_url=None, openapi_url=None)
    tokens: dict[str, float] = {}
    tokens_lock = threading.Lock()

    def valid(request: Request) -> bool:
        tok = request.cookies.get(COOKIE, "")
        with tokens_lock:
            exp = tokens.get(tok)
            if exp is not None and exp < time.monotonic():
                tokens.pop(tok, None)
                exp = None
        return exp is not None

    def need_login(request: Request) -> None:
        if not valid(request):
            raise HTTPException(401, "log in first")

    def need_write(request: Request) -> None:
        need_login(request)
        if request.headers.get("x-dyadsync") != "1":
            raise HTTPException(403, "missing X-Dyadsync header")

    async def body(request: Request) -> dict:
        try:
            obj = await request.json()
        except ValueError:
            raise HTTPException(400, "the request body must be JSON") from None
        if not isinstance(obj, dict):
            raise HTTPException(400, "the request body must be a JSON object")
        return obj

    def hub_session(session: str | None) -> dict:
        """The hub's record of ``session`` (codes, start, markers), merged with what this console sent."""
        out: dict[str, Any] = {"id": session, "started_ns": live.started.get(session or ""),
                               "markers": list(live.markers.get(session or "", []))}
        if session and db_path is not None and Path(db_path).exists():
            con = store.connect(db_path, readonly=True)
            try:
                meta = store.get_session(con, session)
                if meta:
                    out.update(therapist=meta["therapist_code"], client=meta["client_code"])
                    out["started_ns"] = meta["started_ns"] or out["started_ns"]
                    seen = {m["id"] for m in out["markers"]}
                    out["markers"] += [m for m in store.session_markers(con, session) if m["id"] not in seen]
                    out["markers"].sort(key=lambda m: m["time_ns"])
            finally:
                con.close()
        return out

    async def send(command, *args):
        """Run a RoomConsole command (start/stop/mark) for the room's units off the event loop; a command the
        wire contract refuses is a 400 with its reason."""
        try:
            return await asyncio.to_thread(command, *args, live.units, timeout_s=ack_timeout_s)
        except WireError as exc:
            raise HTTPException(400, str(exc)) from None

    def result(r: CommandResult) -> JSONResponse:
        data = r.to_json()
        live.commands.append(data)
        live.publish("command", data)
        return JSONResponse(data, status_code=200 if r.ok else 409)

    @app.get("/", include_in_schema=False)
    def index(request: Request):
        if not valid(request):
            return RedirectResponse("/login", status_code=303)
        return FileResponse(STATIC / "console.html", headers={"Cache-Control": "no-store"})

    @app.get("/login", include_in_schema=False)
    def login_page():
        return FileResponse(STATIC / "login.html", headers={"Cache-Control": "no-store"})

    @app.post("/api/login")
    async def do_login(request: Request):
        obj = await body(request)
        user, password = str(obj.get("user", "")), str(obj.get("password", ""))
        ok = await asyncio.to_thread(login.check, user, password)
        if not ok:
            login.failures += 1
            await asyncio.sleep(min(0.5 * login.failures, 5.0))
            logger.warning("console: failed login for user %r from %s", user[:40],
                           request.client.host if request.client else "?")
            raise HTTPException(401, "wrong user or password")
        login.failures = 0
        tok = secrets.token_urlsafe(32)
        with tokens_lock:
            tokens[tok] = time.monotonic() + SESSION_TTL_S
        resp = JSONResponse({"ok": True})
        resp.set_cookie(COOKIE, tok, max_age=SESSION_TTL_S, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
        return resp

    @app.post("/api/logout")
    def do_logout(request: Request):
        with tokens_lock:
            tokens.pop(request.cookies.get(COOKIE, ""), None)
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(COOKIE)
        return resp

    @app.get("/api/state", dependencies=[Depends(need_login)])
    def state() -> dict:
        snap = live.snapshot()
        snap["session"] = hub_session(live.running_session())
        snap["marker_buttons"] = list(markers)
        snap["suggested_session"] = new_session_id(live.room)
        return snap

    @app.get("/api/events", dependencies=[Depends(need_login)])
    async def events(request: Request) -> StreamingResponse:
        sub = live.subscribe()

        async def gen():
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        event, data = await asyncio.wait_for(sub.queue.get(), 10)
                    except TimeoutError:
                        if await request.is_disconnected():
                            break
                        yield ": keep-alive\n\n"
                        continue
                    yield f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
            finally:
                live.unsubscribe(sub)

        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.post("/api/start", dependencies=[Depends(need_write)])
    async def start(request: Request):
        obj = await body(request)
        console = link.require()
        session = str(obj.get("session") or new_session_id(live.room))
        if db_path is not None and Path(db_path).exists():
            con = store.connect(db_path, readonly=True)
            try:
                meta = store.get_session(con, session)
                if meta is not None and meta["stopped_ns"] is not None:
                    raise HTTPException(409, f"session {session!r} is already recorded (and stopped) at the hub: "
                                        "choose a new id")
            finally:
                con.close()
        r = await send(console.start, session, str(obj.get("therapist", "")), str(obj.get("client", "")))
        if r.accepted:
            live.started.setdefault(session, r.time_ns)
        return result(r)

    @app.post("/api/stop", dependencies=[Depends(need_write)])
    async def stop(request: Request):
        obj = await body(request)
        console = link.require()
        session = str(obj.get("session") or live.running_session() or "")
        if not session:
            raise HTTPException(409, "no session is running")
        r = await send(console.stop, session)
        return result(r)

    @app.post("/api/marker", dependencies=[Depends(need_write)])
    async def marker(request: Request):
        obj = await body(request)
        console = link.require()
        session = str(obj.get("session") or live.running_session() or "")
        if not session:
            raise HTTPException(409, "no session is running: start one before adding markers")
        r = await send(console.mark, session, str(obj.get("label", "")))
        if r.accepted:
            live.markers.setdefault(session, []).append({"id": r.cid, "label": " ".join(
                str(obj.get("label", "")).split()), "time_ns": r.time_ns})
        return result(r)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class ConsoleServer:
    """The console (broker link + uvicorn) in background threads: for tests, the demo and benchmarks."""

    def __init__(self, room: str, units: list[str], broker: tuple[str, int, str, str], login: Login, *,
                 db_path: Path | None = None, host: str = "127.0.0.1", port: int = 0, tls_ca: str | None = None,
                 markers: tuple[str, ...] = DEFAULT_MARKERS, history_s: float = 300.0,
                 ack_timeout_s: float = 20.0) -> None:
        import uvicorn

        from .mosquitto import free_port

        self.live = LiveRoom(room, list(units), history_s=history_s)
        self.link = ConsoleLink(self.live, *broker, tls_ca=tls_ca)
        self.host = host
        self.port = port or free_port(host)
        app = create_app(self.live, self.link, login, db_path=db_path, markers=markers, ack_timeout_s=ack_timeout_s)
        self._server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, log_level="warning",
                                                     lifespan="off", timeout_graceful_shutdown=2))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> ConsoleServer:
        from .mosquitto import wait_for_port

        self.link.start()
        self._thread = threading.Thread(target=self._server.run, name="console-http", daemon=True)
        self._thread.start()
        if not wait_for_port(self.host, self.port, timeout_s):
            self.stop()
            raise BrokerError(f"the console page did not start on {self.url}")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.link.stop()

    def __enter__(self) -> ConsoleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["ConsoleLink", "ConsoleServer", "LiveRoom", "Login", "create_app", "write_login"]
