"""The room console as an object: send a command to a room and wait for every unit's answer.

One :class:`RoomConsole` serves every place that operates a room — the ``dyadsync session`` commands,
the hub's live console page, the demo, the HIL runner, tests and benchmarks. It connects with the room's
console account (``svc-console``), subscribes to the units' acknowledgements and retained statuses
(and, with ``metrics=True``, their metrics), and keeps what arrived.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from broker import wire
from broker.errors import BrokerError, WireError
from broker.mqtt import client_id, make_client

logger = logging.getLogger(__name__)


MAX_KEPT_ACKS = 2000


def new_session_id(room: str, now_ns: int | None = None) -> str:
    """A session id that says where and when: ``<room>-YYYYMMDD-HHMMSS`` (UTC)."""
    t = dt.datetime.fromtimestamp((time.time_ns() if now_ns is None else now_ns) / 1e9, dt.UTC)
    return f"{room}-{t:%Y%m%d-%H%M%S}"


def check_code(role: str, code: str) -> str:
    """A pseudonymous participant code, checked; raises :class:`WireError` saying what is wrong."""
    code = code.strip()
    if not wire.CODE_RE.match(code):
        raise WireError(f"{role} code {code!r} is not a pseudonymous code: use 1-32 letters, digits, '_' or '-', "
                        "starting with a letter or digit (e.g. P017); never a name")
    return code


@dataclass(frozen=True)
class CommandResult:
    """Every unit's answer to one command: accepted, refused (with the unit's reason) or no answer."""

    cid: str
    cmd: str
    session: str
    units: tuple[str, ...]
    acks: dict[str, wire.Ack] = field(default_factory=dict)
    time_ns: int = 0

    @property
    def accepted(self) -> list[str]:
        return [u for u in self.units if u in self.acks and self.acks[u].ok]

    @property
    def refused(self) -> dict[str, str]:
        return {u: (self.acks[u].error or "refused") for u in self.units if u in self.acks and not self.acks[u].ok}

    @property
    def missing(self) -> list[str]:
        return [u for u in self.units if u not in self.acks]

    @property
    def ok(self) -> bool:
        return bool(self.units) and len(self.accepted) == len(self.units)

    def describe(self) -> str:
        """One line per unit, for people."""
        lines = []
        for u in self.units:
            if u in self.acks and self.acks[u].ok:
                lines.append(f"  {u}: accepted")
            elif u in self.acks:
                lines.append(f"  {u}: REFUSED: {self.acks[u].error or 'no reason given'}")
            else:
                lines.append(f"  {u}: NO ANSWER (offline, or not connected to the broker?)")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"id": self.cid, "cmd": self.cmd, "session": self.session, "time_ns": self.time_ns, "ok": self.ok,
                "accepted": self.accepted, "refused": self.refused, "missing": self.missing}


class RoomConsole:
    """Commands and answers for one room over a real broker connection.

    ``send`` publishes a :class:`wire.Command` (QoS 1) and returns its id; ``wait_acks`` waits until each
    named unit answered that id (or the timeout); ``status`` holds each unit's latest retained status.
    ``on_message(topic, payload)`` is called (in paho's thread, guarded) for every message received.
    """

    def __init__(self, host: str, port: int, room: str, user: str, password: str, *,
                 tls_ca: str | None = None, metrics: bool = False, connect_timeout_s: float = 20.0,
                 on_message: Callable[[str, bytes], None] | None = None) -> None:
        self.room = room
        self.acks: list[wire.Ack] = []
        self.status: dict[str, wire.Status] = {}
        self.bad_messages = 0
        self.cond = threading.Condition()
        self._subscribed = threading.Event()
        self._refused: str | None = None
        self._user_on_message = on_message
        prefix = wire.room_prefix(room)
        self._topics = [(f"{prefix}/+/ack", 1), (f"{prefix}/+/status", 1)]
        if metrics:
            self._topics += [(f"{prefix}/+/metric/#", 1), (f"{prefix}/+/feat/#", 1)]
        self.client = make_client(client_id("console"), username=user, password=password, tls_ca=tls_ca,
                                  reconnect_min_s=0.1, reconnect_max_s=2.0, on_connect=self._on_connect,
                                  on_subscribe=self._on_subscribe, on_message=self._on_message,
                                  on_disconnect=self._on_disconnect)
        try:
            self.client.connect(host, port)
        except OSError as exc:
            raise BrokerError(f"cannot reach the room broker at {host}:{port}: {exc}") from exc
        self.client.loop_start()
        deadline = time.monotonic() + connect_timeout_s
        while not self._subscribed.wait(0.1):
            if self._refused or time.monotonic() > deadline:
                self.close()
                why = self._refused or f"no answer within {connect_timeout_s:g} s"
                raise BrokerError(f"the console could not connect and subscribe to {host}:{port}: {why}")

    # ------------------------------------------------------------------------------- network thread
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = f"the broker refused the console account ({reason_code})"
            return
        client.subscribe(self._topics)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            self._refused = f"the broker refused a subscription ({reason_codes})"
            return
        self._subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._subscribed.clear()

    def _on_message(self, client, userdata, msg) -> None:
        payload = bytes(msg.payload)
        try:
            t = wire.parse_topic(msg.topic)
            with self.cond:
                if t.kind == "ack":
                    self.acks.append(wire.Ack.decode(payload))
                    if len(self.acks) > MAX_KEPT_ACKS:
                        del self.acks[: len(self.acks) - MAX_KEPT_ACKS // 2]
                elif t.kind == "status" and payload:
                    self.status[t.unit] = wire.Status.decode(payload)
                self.cond.notify_all()
        except WireError as exc:
            self.bad_messages += 1
            logger.warning("console: undecodable message on %s: %s", str(msg.topic)[:200], exc)
            return
        if self._user_on_message is not None:
            self._user_on_message(msg.topic, payload)

    # ---------------------------------------------------------------------------------------- API
    @property
    def connected(self) -> bool:
        return self._subscribed.is_set()

    def wait_connected(self, timeout_s: float = 20.0) -> bool:
        return self._subscribed.wait(timeout_s)

    def send(self, cmd: str, session: str, *, time_ns: int | None = None, cid: str | None = None,
             participants: dict[str, str] | None = None, label: str = "") -> str:
        """Publish a command; returns its id (``cid`` or a fresh one)."""
        cid = cid or f"{cmd}-{uuid.uuid4().hex[:10]}"
        c = wire.Command(id=cid, cmd=cmd, session=session, time_ns=time.time_ns() if time_ns is None else time_ns,
                         participants=dict(participants or {}), label=label)
        self.send_raw(c.encode())
        return cid

    def send_raw(self, payload: bytes) -> None:
        """Publish bytes on the room's command topic as they are (tests of hostile input use this)."""
        info = self.client.publish(wire.cmd_topic(self.room), payload, qos=1)
        info.wait_for_publish(10)

    def acks_for(self, cid: str) -> list[wire.Ack]:
        with self.cond:
            return [a for a in self.acks if a.id == cid]

    def wait_acks(self, cid: str, units: Iterable[str], timeout_s: float = 20.0) -> dict[str, wire.Ack]:
        """Each named unit's answer to ``cid`` (its first); a unit missing from the result did not answer."""
        want = set(units)
        with self.cond:
            self.cond.wait_for(lambda: {a.unit for a in self.acks if a.id == cid} >= want, timeout_s)
            got: dict[str, wire.Ack] = {}
            for a in self.acks:
                if a.id == cid and a.unit in want:
                    got.setdefault(a.unit, a)
            return got

    def wait_status(self, units: Iterable[str], pred: Callable[[wire.Status], bool],
                    timeout_s: float = 20.0) -> bool:
        """Wait until every named unit's latest status satisfies ``pred``."""
        want = list(units)
        with self.cond:
            return self.cond.wait_for(lambda: all(u in self.status and pred(self.status[u]) for u in want), timeout_s)

    # ------------------------------------------------------------------------------- session commands
    def running_sessions(self) -> dict[str, str]:
        """unit -> the session its latest status says it records (units that are not offline)."""
        with self.cond:
            return {u: s.session for u, s in self.status.items() if s.session and s.state != "offline"}

    def command(self, cmd: str, session: str, units: Iterable[str], *, timeout_s: float = 20.0,
                participants: dict[str, str] | None = None, label: str = "",
                time_ns: int | None = None) -> CommandResult:
        """Send a command and wait for every named unit's answer (or the timeout)."""
        units = tuple(units)
        t = time.time_ns() if time_ns is None else time_ns
        cid = self.send(cmd, session, time_ns=t, participants=participants, label=label)
        acks = self.wait_acks(cid, units, timeout_s) if units else {}
        result = CommandResult(cid, cmd, session, units, acks, t)
        log = logger.info if result.ok else logger.warning
        log("console: %s %s: accepted by %s, refused by %s, no answer from %s", cmd, session, result.accepted or "none",
            result.refused or "none", result.missing or "none")
        return result

    def start(self, session: str, therapist: str, client: str, units: Iterable[str], *,
              timeout_s: float = 20.0) -> CommandResult:
        """Start ``session`` with pseudonymous codes (checked before anything is sent)."""
        if not wire.SESSION_RE.match(session):
            raise WireError(f"session id {session!r} must match {wire.SESSION_RE.pattern}")
        codes = {"therapist": check_code("therapist", therapist), "client": check_code("client", client)}
        return self.command("start", session, units, timeout_s=timeout_s, participants=codes)

    def stop(self, session: str, units: Iterable[str], *, timeout_s: float = 20.0) -> CommandResult:
        return self.command("stop", session, units, timeout_s=timeout_s)

    def mark(self, session: str, label: str, units: Iterable[str], *, timeout_s: float = 20.0) -> CommandResult:
        """A marker stamped with this machine's clock now (the hub's, when the console runs on the hub)."""
        label = " ".join(label.split())
        if not label:
            raise WireError("a marker needs a label")
        return self.command("marker", session, units, timeout_s=timeout_s, label=label)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> RoomConsole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["RoomConsole"]
