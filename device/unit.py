"""The unit daemon: acquisition threads -> queue -> worker (pipeline, sessions, commands) -> outbox -> MQTT.

Threads: one per source (:class:`SourceThread`), one worker, the publisher and paho's network thread;
the thread calling :meth:`Unit.run` pings the systemd watchdog while the worker is alive. Everything
the worker produces in one pass goes to the outbox in a single transaction with the pipeline state.

Sessions come from the room's ``cmd`` topic: ``start`` (with pseudonymous participant codes), ``stop``
and ``marker``. Each command is answered on ``<unit>/ack`` (``ok`` or a NACK with the reason); a
redelivered command gets the same answer again without being executed twice. The open session is kept
in the outbox database, so after a crash or power cut the unit resumes it on start.

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
from .outbox import Outbox, OutMsg
from .pipeline import Pipeline
from .service import ClockMonitor, Notifier
from .sources import Source, SourceThread

logger = logging.getLogger(__name__)

MAX_REMEMBERED_CMDS = 200
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
        self._contact_lost: dict[str, set[str]] = {}
        self._lost_before: dict[str, int] = {}  # stream -> samples lost before its next block (``lost`` events)
        self._held: list[OutMsg] = []  # raw and feature messages not committed yet (COMMIT_EVERY_S)
        self._held_since = 0.0
        self.fatal: str | None = None
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

    # Raw and feature blocks are committed together at most this often (each commit is one fsync of the WAL,
    # ~10 a second otherwise); a metric, a status or a command ack is committed at once, with whatever is held.
    # Both are seconds of the unit's clock: in simulated time (``hardware.speed``) they shrink with it, so a
    # scenario at 25x sees the same delays in simulated seconds as a room does in real ones.
    COMMIT_EVERY_S = 0.25

    # The worker takes what the sources queued every WORK_TICK_S instead of waking for each event (~40 blocks
    # a second from four sources): a condition wait and wake-up costs ~160 µs of CPU on a virtual machine
    # (~90 µs for a plain sleep), which was most of the worker's CPU. Up to this much more latency.
    WORK_TICK_S = 0.05

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
        msgs, self._held = self._held + extra, []
        state = self.pipeline.state()
        if extra:
            state["acks"] = self._acks
        if status is not None:
            msgs.append(status)
            state["last_status"] = json.loads(status.payload)
        self.outbox.put(msgs, state=state)

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
        try:
            t = wire.parse_topic(topic)
        except WireError as exc:
            logger.warning("ignoring message on unexpected topic %s: %s", topic[:200], exc)
            return []
        if t.kind == "feat":
            try:
                block, session = wire.decode_block(payload)
            except WireError as exc:
                logger.warning("malformed partner block on %s: %s", topic[:200], str(exc)[:300])
                return []
            self.pipeline.on_partner_block(block, session)
            return []
        if t.kind == "cmd":
            return self._handle_command(payload)
        return []

    def _handle_command(self, payload: bytes) -> list[OutMsg]:
        try:
            cmd = wire.Command.decode(payload)
        except WireError as exc:
            self.bad_commands += 1
            logger.warning("bad command (%s): %r", exc, payload[:200])
            cmd_id = _command_id(payload)
            return [self._ack(cmd_id, False, f"bad command: {exc}"[:300])]
        if cmd.id in self._acks:  # redelivery: answer again, do not execute twice
            prev = self._acks[cmd.id]
            return [self._ack(cmd.id, prev["ok"], prev.get("error"), remember=False)]
        ok, error = self._execute(cmd)
        if not ok:
            self.bad_commands += 1
        return [self._ack(cmd.id, ok, error)]

    def _execute(self, cmd: wire.Command) -> tuple[bool, str | None]:
        current = self.pipeline.session
        if cmd.cmd == "start":
            if current is not None:
                if current.id == cmd.session:
                    return True, None
                return False, f"session {current.id!r} is running; stop it first"
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
            fatal=self.fatal is not None,
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
        if self.bad_commands:
            dropped["bad_commands"] = self.bad_commands
        s = self.pipeline.session
        return wire.Status(unit=self.unit, state=state, time_ns=self.clock.now_ns(), version=__version__,
                           session=s.id if s else None, sensors=dict(self.sensors),
                           buffer_depth=self.outbox.depth, dropped=dropped, clock_synced=self.clock_monitor.synced)

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
        return 1 if self.fatal else 0

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
            msgs = self.pipeline.drain()
            if msgs:
                self.outbox.put(msgs, state=self.pipeline.state())
        except DyadsyncError as exc:
            logger.error("final commit failed: %s", exc)
        flushed = self.link.flush(flush_timeout_s) if self.link.connected else False
        if not flushed:
            logger.warning("%d messages stay queued in the outbox for the next start", self.outbox.depth)
        offline = wire.Status(unit=self.unit, state="offline", time_ns=self.clock.now_ns(), version=__version__,
                              session=self.pipeline.session.id if self.pipeline.session else None,
                              buffer_depth=self.outbox.depth, clock_synced=self.clock_monitor.synced)
        self.link.publish_now(wire.status_topic(self.room, self.unit), offline.encode())
        self.link.stop()
        self.outbox.set_state(last_status=json.loads(offline.encode()))
        self.outbox.close()
        self.led.close()


def _command_id(payload: bytes) -> str:
    """The id of a command that failed to decode, if one can be read; else ``invalid``."""
    try:
        obj = json.loads(payload)
        cid = obj.get("id") if isinstance(obj, dict) else None
        if isinstance(cid, str) and wire.SESSION_RE.match(cid):
            return cid
    except (ValueError, UnicodeDecodeError):
        pass
    return "invalid"
