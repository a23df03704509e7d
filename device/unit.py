"""The unit daemon: acquisition threads -> queue -> worker (pipeline, sessions, commands) -> outbox -> MQTT.

Threads: one per source (:class:`SourceThread`), one worker, the publisher and paho's network thread;
the thread calling :meth:`Unit.run` pings the systemd watchdog while the worker is alive. Everything
the worker produces in one pass goes to the outbox in a single transaction with the pipeline state.

Sessions come from the room's ``cmd`` topic: ``start`` (with pseudonymous participant codes), ``stop``
and ``marker``. Each command is answered on ``<unit>/ack`` (``ok`` or a NACK with the reason); a
redelivered command gets the same answer again without being executed twice. The open session is kept
in the outbox database, so after a crash or power cut the unit resumes it on start.

Nothing a message contains stops the unit: a command that cannot be decoded (or executed) is answered with a
NACK when its id can be read (else with a NACK for the id ``invalid``), counted (``bad_commands`` in the
status), logged, and changes no state; an undecodable partner block is counted (``bad_partner_blocks``).
The worker's ``fatal`` state is kept for what really stops it and clears by itself when its cause clears.

When the outbox cannot be written (a full disk), nothing is lost without a count: the messages of the
failed commit are kept in memory and the commit is retried every ``RETRY_WRITE_S``; the unit reports
``fatal`` meanwhile, in a status published directly (the outbox cannot carry it) every status interval.
Held messages above ``HELD_MAX_BYTES`` are dropped under the outbox's quota policy (oldest raw blocks first,
then oldest feature blocks; metrics, acks and status never) and counted exactly
(``outbox_unwritten_<kind>`` in the status, a visible sequence gap at the hub). When space returns the
held messages are committed in order with the pipeline state and the unit returns to normal by itself.

Status (retained, through the outbox): state, sensors, outbox depth, loss counts (``lost_<role>_<signal>``:
source blocks lost, i.e. sequence gaps, since the start; ``lost_samples_<role>_<signal>``: samples missing
inside the open session, all causes: sequence gaps and losses the source knows of), clock state; published
on every connect, on every state change and every ``status_interval_s``. The will is ``offline``; a
clean shutdown (SIGTERM) flushes the outbox and publishes ``offline`` itself.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from typing import Any

from broker import wire
from broker.errors import WireError
from core.errors import DyadsyncError
from core.vocab import BlockFlags

from . import __version__
from .clock import Clock, make_clock
from .hardware import build_sources, load_hardware
from .leds import StatusLed, make_led, resolve_state
from .link import Link
from .outbox import EVICTABLE, Outbox, OutboxError, OutMsg
from .pipeline import Pipeline
from .service import ClockMonitor, Notifier
from .sources import Source, SourceThread

logger = logging.getLogger(__name__)

MAX_REMEMBERED_CMDS = 200
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
BUFFERING_DEPTH = 2000  # queued messages above which the unit reports buffering even when connected


class Unit:
    def __init__(self, cfg: Any, *, clock: Clock | None = None, sources: list[Source] | None = None,
                 led: StatusLed | None = None, notifier: Notifier | None = None,
                 clock_monitor: ClockMonitor | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or make_clock(cfg.hardware.speed, cfg.hardware.sim_epoch_ns)
        self.room, self.unit = cfg.room, cfg.unit
        self.led = led or make_led(cfg.leds)
        self.led.set("booting")
        self.notifier = notifier or Notifier()
        self.clock_monitor = clock_monitor or ClockMonitor(cfg.clock.check, cfg.clock.command, cfg.clock.interval_s,
                                                           cfg.clock.max_offset_ms)
        self.outbox = Outbox(cfg.db_path, quota_bytes=int(cfg.outbox.quota_mb * 2**20),
                             synchronous=cfg.outbox.synchronous, keep_acked_s=cfg.outbox.keep_acked_s)
        self.pipeline = Pipeline(cfg)
        self.queue: queue.Queue = queue.Queue()
        if sources is None:
            sources = build_sources(cfg, self.clock, load_hardware(cfg, self.clock))
        self.source_threads = [SourceThread(s, self.queue, clock=self.clock) for s in sources]
        self.sensors: dict[str, str] = {s.name: "starting" for s in sources}
        self.bad_commands = 0
        self.bad_partner_blocks = 0
        self._contact_lost: dict[str, set[str]] = {}
        self._lost_before: dict[str, int] = {}  # stream -> samples lost before its next block (``lost`` events)
        self._held: list[OutMsg] = []  # raw and feature messages not committed yet (COMMIT_EVERY_S)
        self._held_since = 0.0
        self.fatal: str | None = None  # the worker's last pass failed (cleared by the next good pass)
        self.unwritable: str | None = None  # the outbox refused the last commit (cleared by a good commit)
        self._retry_at = 0.0
        self._unwritten: dict[str, int] = {}  # held messages dropped while the outbox is unwritable, not yet committed
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._heartbeat = time.monotonic()
        self._last_status_state: str | None = None
        self._last_status_mono = 0.0
        self._status_due = True
        self._acks: dict[str, dict[str, Any]] = self.outbox.get_state("acks", {}) or {}
        self.partner_topic = (f"{wire.unit_prefix(self.room, cfg.dyad.partner)}/feat/#"
                              if cfg.dyad.partner else None)
        will = wire.Status(unit=self.unit, state="offline", time_ns=self.clock.now_ns(), version=__version__)
        subs = [wire.cmd_topic(self.room)] + ([self.partner_topic] if self.partner_topic else [])
        b = cfg.broker
        self.link = Link(
            self.outbox, host=b.host, port=b.port, client_id=f"dyadsync-unit-{self.room}-{self.unit}",
            username=b.username, password=b.resolve_password(),
            will=(wire.status_topic(self.room, self.unit), will.encode()), subscriptions=subs,
            on_message=self._on_message, on_connect=self._on_connect, keepalive_s=b.keepalive_s,
            reconnect_min_s=b.reconnect_min_s, reconnect_max_s=b.reconnect_max_s, max_inflight=b.max_inflight,
            tls_ca=str(b.tls_ca) if b.tls_ca else None, tls_cert=str(b.tls_cert) if b.tls_cert else None,
            tls_key=str(b.tls_key) if b.tls_key else None,
        )
        saved = self.outbox.get_state("session")
        if saved:
            logger.info("resuming session %s after a restart", saved["session"]["id"])
            self.pipeline.start(saved["session"]["id"], saved["session"]["participants"], 0, resume=saved)

    # --------------------------------------------------------------------------- network callbacks
    def _on_connect(self) -> None:
        self._status_due = True
        self.queue.put(("wake", None, None))

    def _on_message(self, topic: str, payload: bytes) -> None:
        self.queue.put(("mqtt", topic, payload))

    # --------------------------------------------------------------------------------------- worker
    def _work(self) -> None:
        while not self._stop.is_set():
            self._heartbeat = time.monotonic()
            try:
                self._work_once(0.25)
            except DyadsyncError as exc:
                logger.error("worker: %s", exc)
                self.fatal = str(exc)
                self._stop.wait(1.0)
            except Exception as exc:
                logger.exception("worker error")
                self.fatal = repr(exc)
                self._stop.wait(1.0)
            else:
                if self.fatal is not None:
                    logger.warning("worker recovered (it had failed with: %s)", self.fatal)
                    self.fatal = None
                    self._status_due = True

    # Raw and feature blocks are committed together at most this often (each commit is one fsync of the WAL,
    # ~10 a second otherwise); a metric, a status or a command ack is committed at once, with whatever is held.
    # Both are seconds of the unit's clock: in simulated time (``hardware.speed``) they shrink with it, so a
    # scenario at 25x sees the same delays in simulated seconds as a room does in real ones.
    COMMIT_EVERY_S = 0.25

    # The worker takes what the sources queued every WORK_TICK_S instead of waking for each event (~40 blocks
    # a second from four sources): a condition wait and wake-up costs ~160 µs of CPU on a virtual machine
    # (~90 µs for a plain sleep), which was most of the worker's CPU. Up to this much more latency.
    WORK_TICK_S = 0.05

    # While the outbox cannot be written, a commit is tried again this often (real seconds), and at most this
    # many bytes of messages are held in memory (beyond it: dropped by the quota policy and counted).
    RETRY_WRITE_S = 1.0
    HELD_MAX_BYTES = 32 * 2**20

    def _work_once(self, timeout_s: float, commit: bool = False) -> None:
        events: list[tuple[str, Any, Any]] = []
        if timeout_s > 0 and self.WORK_TICK_S > 0:
            time.sleep(self.WORK_TICK_S / self.clock.speed)
        elif timeout_s > 0:
            try:
                events.append(self.queue.get(timeout=timeout_s))
            except queue.Empty:
                pass
        while len(events) < 500:
            try:
                events.append(self.queue.get_nowait())
            except queue.Empty:
                break
        synced = self.clock_monitor.poll()
        unsynced = synced is False or (synced is None and self.cfg.clock.flag_unknown)
        self.pipeline.clock_flags = int(BlockFlags.CLOCK_UNSYNCED) if unsynced else 0
        extra: list[OutMsg] = []
        for kind, a, b in events:
            if kind == "block":
                self.pipeline.on_block(b, self._lost_before.pop(b.stream, 0))
                self._contact(a, b)
            elif kind == "lost":
                self._lost_before[a] = self._lost_before.get(a, 0) + b
            elif kind == "sensor":
                self.sensors[a] = b
            elif kind == "mqtt":
                extra += self._handle_mqtt(a, b)
        msgs = self.pipeline.drain()
        status = self._status_if_due()
        now = time.monotonic()
        if msgs and not self._held:
            self._held_since = now
        self._held += msgs
        urgent = commit or extra or status is not None or any(m.kind == "metric" for m in msgs)
        if not (self._held or extra or status is not None):
            return
        if not urgent and now - self._held_since < self.COMMIT_EVERY_S / self.clock.speed:
            return  # the pipeline's state is committed with its messages, so a crash loses both together
        self._commit(extra, status, force=commit)

    def _commit(self, extra: list[OutMsg], status: OutMsg | None, force: bool = False) -> None:
        """Commit what is held, ``extra`` (acks) and ``status`` with the pipeline state in one transaction. If
        the outbox cannot be written, keep the messages (but not the status, which is published directly)."""
        now = time.monotonic()
        if self.unwritable is not None and not force and now < self._retry_at:
            if extra or status is not None:
                self._hold_unwritten(extra, status)
            return
        msgs = self._held + extra + ([status] if status is not None else [])
        state = self.pipeline.state()
        if any(m.kind == "ack" for m in msgs):
            state["acks"] = self._acks
        if status is not None:
            state["last_status"] = json.loads(status.payload)
        counters = {f"dropped_unwritten_{k}": n for k, n in self._unwritten.items() if n}
        try:
            self.outbox.put(msgs, state=state, counters=counters)
        except OutboxError as exc:
            if self.unwritable is None:
                logger.error("%s: keeping %d messages in memory and retrying every %.1f s", exc,
                             len(self._held) + len(extra), self.RETRY_WRITE_S)
                self._status_due = True  # the next pass reports fatal, directly to the broker
            self.unwritable = str(exc)
            self._retry_at = now + self.RETRY_WRITE_S
            self._hold_unwritten(extra, status)
            return
        self._held = []
        self._unwritten = {}
        if self.unwritable is not None:
            logger.warning("outbox writable again: the held messages are committed (dropped meanwhile: %s)",
                           counters or "none")
            self.unwritable = None
            self._status_due = True

    def _hold_unwritten(self, extra: list[OutMsg], status: OutMsg | None) -> None:
        self._held += extra
        if status is not None:
            self.link.publish_direct(status.topic, status.payload, retain=True)
        excess = sum(len(m.payload) + len(m.topic) for m in self._held) - self.HELD_MAX_BYTES
        if excess <= 0:
            return
        dropped: dict[str, int] = {}
        for kind in EVICTABLE:  # the outbox's quota policy: oldest raw blocks first, then oldest feature blocks
            keep: list[OutMsg] = []
            for m in self._held:
                if excess > 0 and m.kind == kind:
                    excess -= len(m.payload) + len(m.topic)
                    dropped[kind] = dropped.get(kind, 0) + 1
                else:
                    keep.append(m)
            self._held = keep
        level = logging.WARNING if not any(self._unwritten.values()) else logging.DEBUG  # once per spell
        for kind, n in dropped.items():
            self._unwritten[kind] = self._unwritten.get(kind, 0) + n
        logger.log(level, "outbox unwritable and %d bytes held in memory: dropping the oldest (%s so far; "
                   "counted in the status as outbox_unwritten_*)", self.HELD_MAX_BYTES, self._unwritten)

    def _contact(self, name: str, block: Any) -> None:
        """A sensor whose blocks say CONTACT_LOST (electrode or finger off) is shown as ``contact_lost``,
        which the LED treats as a sensor fault, until its blocks come without the flag again."""
        lost = self._contact_lost.setdefault(name, set())
        if block.flags & BlockFlags.CONTACT_LOST:
            lost.add(block.stream)
        else:
            lost.discard(block.stream)
        state = self.sensors.get(name)
        if lost and state == "ok":
            self.sensors[name] = "contact_lost"
            logger.warning("sensor %s: contact lost (%s)", name, ", ".join(sorted(lost)))
        elif not lost and state == "contact_lost":
            self.sensors[name] = "ok"

    def _handle_mqtt(self, topic: str, payload: bytes) -> list[OutMsg]:
        """Whatever the message holds, this returns (a bad one is logged and counted, never raised)."""
        try:
            t = wire.parse_topic(topic)
        except Exception as exc:
            logger.warning("ignoring message on unexpected topic %s: %s", topic[:200], str(exc)[:300])
            return []
        if t.kind == "feat":
            try:
                block, session = wire.decode_block(payload)
                self.pipeline.on_partner_block(block, session)
            except Exception as exc:
                self.bad_partner_blocks += 1
                logger.warning("malformed partner block on %s (%s): %s", topic[:200], type(exc).__name__,
                               str(exc)[:300])
            return []
        if t.kind == "cmd":
            return self._handle_command(payload)
        return []

    def _handle_command(self, payload: bytes) -> list[OutMsg]:
        try:
            cmd = wire.Command.decode(payload)
            if not INT64_MIN <= cmd.time_ns <= INT64_MAX:
                raise WireError(f"cmd field 'time_ns' is out of the int64 range ({len(str(abs(cmd.time_ns)))} digits)")
        except Exception as exc:  # WireError, and whatever else a decoder might let out (RecursionError...)
            self.bad_commands += 1
            why = str(exc) if isinstance(exc, WireError) else f"{type(exc).__name__}: {exc}"
            cmd_id = _command_id(payload)
            logger.warning("bad command %s (%s): %r", cmd_id, why[:300], payload[:200])
            return [self._ack(cmd_id, False, f"bad command: {why}"[:300])]
        if cmd.id in self._acks:  # redelivery: answer again, do not execute twice
            prev = self._acks[cmd.id]
            return [self._ack(cmd.id, prev["ok"], prev.get("error"), remember=False)]
        try:
            ok, error = self._execute(cmd)
        except Exception as exc:
            logger.exception("command %s could not be executed", cmd.id)
            ok, error = False, f"cannot execute: {type(exc).__name__}: {exc}"[:300]
        if not ok:
            self.bad_commands += 1
        return [self._ack(cmd.id, ok, error)]

    def _execute(self, cmd: wire.Command) -> tuple[bool, str | None]:
        current = self.pipeline.session
        if cmd.cmd == "start":
            refusal = self.pipeline.start_refusal(cmd.session, cmd.participants)
            if refusal is not None:
                return False, refusal
            if current is not None:  # the running session, same codes: a repetition
                return True, None
            self.pipeline.start(cmd.session, cmd.participants, self.clock.now_ns())
            logger.info("session %s started (participants %s)", cmd.session, cmd.participants)
            self._status_due = True
            return True, None
        if current is None or current.id != cmd.session:
            return False, f"no session {cmd.session!r} is running" + (f" (running: {current.id!r})" if current else "")
        if cmd.cmd == "stop":
            self.pipeline.stop()
            logger.info("session %s stopped", cmd.session)
            self._status_due = True
            return True, None
        current.markers += 1
        logger.info("session %s marker %r", cmd.session, cmd.label)
        return True, None

    def _ack(self, cmd_id: str, ok: bool, error: str | None, remember: bool = True) -> OutMsg:
        if remember and cmd_id != "invalid":
            self._acks[cmd_id] = {"ok": ok, "error": error}
            while len(self._acks) > MAX_REMEMBERED_CMDS:
                self._acks.pop(next(iter(self._acks)))
        a = wire.Ack(id=cmd_id, unit=self.unit, ok=ok, time_ns=self.clock.now_ns(), error=error)
        return OutMsg(wire.ack_topic(self.room, self.unit), a.encode(), "ack")

    # --------------------------------------------------------------------------------------- status
    def current_state(self) -> str:
        return resolve_state(
            fatal=self.fatal is not None or self.unwritable is not None,
            sensor_fault=any(s in ("fault", "contact_lost") for s in self.sensors.values()),
            buffering=not self.link.connected or self.outbox.depth > BUFFERING_DEPTH,
            recording=self.pipeline.session is not None,
            ready=self.link.counts["connects"] > 0,
        )

    def status(self) -> wire.Status:
        state = self.current_state()
        dropped = {f"outbox_{k.removeprefix('dropped_')}": v for k, v in self.outbox.counters().items()
                   if k.startswith("dropped_")}
        dropped.update({f"lost_{k.replace('/', '_')}": v for k, v in self.pipeline.lost_blocks.items()})
        dropped.update({f"lost_samples_{k.replace('/', '_')}": v for k, v in self.pipeline.lost_samples.items()})
        for kind, n in self._unwritten.items():  # dropped while the outbox was unwritable, not committed yet
            dropped[f"outbox_unwritten_{kind}"] = dropped.get(f"outbox_unwritten_{kind}", 0) + n
        if self.bad_commands:
            dropped["bad_commands"] = self.bad_commands
        if self.bad_partner_blocks:
            dropped["bad_partner_blocks"] = self.bad_partner_blocks
        s = self.pipeline.session
        return wire.Status(unit=self.unit, state=state, time_ns=self.clock.now_ns(), version=__version__,
                           session=s.id if s else None, sensors=dict(self.sensors),
                           buffer_depth=self.outbox.depth + len(self._held), dropped=dropped, clock_synced=self.clock_monitor.synced)

    def _status_if_due(self) -> OutMsg | None:
        state = self.current_state()
        self.led.set(state)
        now = time.monotonic()
        if not (self._status_due or state != self._last_status_state
                or now - self._last_status_mono >= self.cfg.watchdog.status_interval_s):
            return None
        self._status_due = False
        self._last_status_state = state
        self._last_status_mono = now
        st = self.status()
        self.notifier.status(f"{st.state}; session {st.session or '-'}; queued {st.buffer_depth}")
        return OutMsg(wire.status_topic(self.room, self.unit), st.encode(), "status", retain=True)

    # -------------------------------------------------------------------------------------- control
    def start(self) -> Unit:
        self.clock_monitor.poll(force=True)
        self.link.start()
        for t in self.source_threads:
            t.start()
        self._worker = threading.Thread(target=self._work, name="unit-worker", daemon=True)
        self._worker.start()
        self.notifier.ready(self.current_state())
        return self

    @property
    def healthy(self) -> bool:
        return time.monotonic() - self._heartbeat < self.cfg.watchdog.stall_s

    def run(self, stop: threading.Event | None = None, install_signals: bool = True) -> int:
        """Run until SIGTERM/SIGINT (or ``stop`` is set); returns the exit status."""
        stop = stop or threading.Event()
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
        self.start()
        interval = self.notifier.watchdog_interval_s or 1.0
        try:
            while not stop.wait(min(interval, 1.0)):
                if self.healthy:
                    self.notifier.watchdog()
                else:
                    logger.error("worker stalled for %.0f s: withholding the watchdog ping",
                                 time.monotonic() - self._heartbeat)
        finally:
            self.shutdown()
        return 1 if self.fatal or self.unwritable else 0

    def shutdown(self, flush_timeout_s: float = 10.0) -> None:
        """Clean stop: sources, worker (its last pass is committed), flush the outbox, publish offline."""
        self.notifier.stopping()
        for t in self.source_threads:
            t.stop()
        self._stop.set()
        if self._worker is not None:
            self._worker.join(5)
        try:
            self._work_once(0, commit=True)  # whatever the sources queued last, and what was held
            self.pipeline.shutdown_flush()
            self._held += self.pipeline.drain()
            if self._held:
                self._commit([], None, force=True)
        except DyadsyncError as exc:
            logger.error("final commit failed: %s", exc)
            self.fatal = str(exc)
        if self._held:
            logger.error("the outbox cannot be written (%s): %d messages held in memory are lost at shutdown",
                         self.unwritable, len(self._held))
        flushed = self.link.flush(flush_timeout_s) if self.link.connected else False
        if not flushed:
            logger.warning("%d messages stay queued in the outbox for the next start", self.outbox.depth)
        offline = wire.Status(unit=self.unit, state="offline", time_ns=self.clock.now_ns(), version=__version__,
                              session=self.pipeline.session.id if self.pipeline.session else None,
                              buffer_depth=self.outbox.depth, clock_synced=self.clock_monitor.synced)
        self.link.publish_now(wire.status_topic(self.room, self.unit), offline.encode())
        self.link.stop()
        try:
            self.outbox.set_state(last_status=json.loads(offline.encode()))
        except DyadsyncError as exc:
            logger.error("last status not saved: %s", exc)
        self.outbox.close()
        self.led.close()


def _command_id(payload: bytes) -> str:
    """The id of a command that failed to decode, if one can be read; else ``invalid``. The wire's bounded
    parse first; then Python's own (which also reads an id beside a number the wire refuses, e.g. 400 digits)."""
    try:
        cid = wire.command_id(payload)
        if cid:
            return cid
        obj = json.loads(payload)
        cid = obj.get("id") if isinstance(obj, dict) else None
        if isinstance(cid, str) and wire.SESSION_RE.fullmatch(cid):
            return cid
    except Exception:  # not JSON, too deep (RecursionError), too long a number...
        pass
    return "invalid"
