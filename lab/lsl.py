"""A room on Lab Streaming Layer (``dyadsync lab lsl``; optional extra ``lsl`` = pylsl).

:class:`LslBridge` subscribes to a room broker (``broker.mqtt.make_client``, an account that reads the room:
the hub's ``svc-recorder``, or the lab broker's recorder account) and publishes LSL outlets:

* ``dyadsync-<room>-<role>-<signal>`` (type ``EDA`` / ``HR``): each person's 4 Hz features, float32, one
  channel (``eda`` in microsiemens, ``hr`` in bpm), one outlet per (unit, stream);
* ``dyadsync-<room>-<metric>`` (type ``Synchrony`` for ``sync_*``, else ``Metric``): the unit's per-window
  values, one channel per value (irregular rate; stamped at the window start);
* ``dyadsync-<room>-markers`` (type ``Markers``, string): session start/stop and every marker command;
* with ``raw=True`` also the raw signals (``eda`` µS, ``ppg`` counts) at their own rate.

Each outlet's description holds the channel labels and units, and a ``dyadsync`` element with room,
unit, session, role and participant code (from the session's start command when the bridge saw it).

Time: dyadsync stamps are UTC (the unit's clock, disciplined by chrony to the hub). LSL stamps are this
machine's ``pylsl.local_clock()`` (a monotonic clock). The bridge measures once, at start, the offset
``offset_s = time.time() - local_clock()`` (the pair of reads with the shortest gap out of 20) and stamps
every sample ``t_lsl = t_utc_ns / 1e9 - offset_s``; LabRecorder then puts every stream on one timeline
with LSL's own clock-offset measurements. The mapping is as good as this machine's UTC (run chrony against
the hub, or on the hub itself) and drifts if the system clock is stepped while the bridge runs (restart it).

:class:`LslMarkerInlet` is the other direction: it resolves an LSL marker stream (e.g. PsychoPy's) and sends
each sample as a dyadsync marker of the running session through ``broker.console.RoomConsole``, stamped
``t_utc = (t_lsl + inlet.time_correction() + offset_s)`` — the sample's time, not its arrival time.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal as _signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from broker import wire
from broker.errors import WireError
from broker.mqtt import client_id, make_client
from core.errors import DyadsyncError

logger = logging.getLogger(__name__)

UNIT_NAMES = {"eda": "microsiemens", "hr": "bpm", "ppg": "counts"}
TYPES = {"eda": "EDA", "hr": "HR", "ppg": "PPG"}


class LslError(DyadsyncError, RuntimeError):
    """LSL is not available, or a stream could not be found or opened."""


def _pylsl() -> Any:
    try:
        import pylsl
    except ImportError as exc:  # the wheel is missing, or it has no liblsl for this machine
        raise LslError(f"pylsl cannot be loaded ({exc}): pip install 'dyadsync[lsl]'; on arm64 install liblsl "
                       "first (docs/interop.md)") from exc
    return pylsl


def measure_offset_s(local_clock: Any = None, tries: int = 20) -> float:
    """``time.time() - local_clock()`` from the bracketed pair of reads with the shortest gap."""
    local_clock = local_clock or _pylsl().local_clock
    best = (math.inf, 0.0)
    for _ in range(tries):
        a = local_clock()
        u = time.time_ns()
        b = local_clock()
        best = min(best, (b - a, u / 1e9 - (a + b) / 2))
    return best[1]


class LslBridge:
    """Room broker -> LSL outlets. ``start()`` connects and subscribes; ``stop()`` closes everything."""

    def __init__(self, host: str, port: int, room: str, user: str, password: str, *, tls_ca: str | None = None,
                 raw: bool = False, offset_s: float | None = None) -> None:
        self.pylsl = _pylsl()
        self.room = room
        self.raw = raw
        self.offset_s = measure_offset_s(self.pylsl.local_clock) if offset_s is None else offset_s
        self.session: str | None = None
        self.codes: dict[str, str] = {}
        self.counts: Counter[str] = Counter()
        self.outlets: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._host, self._port = host, port
        self.client = make_client(client_id("lsl"), username=user, password=password, tls_ca=tls_ca,
                                  on_connect=self._on_connect, on_message=self._on_message,
                                  on_subscribe=lambda *a: self._subscribed.set())

    # ------------------------------------------------------------------------------------------ mqtt
    def start(self, timeout_s: float = 20.0) -> LslBridge:
        try:
            self.client.connect(self._host, self._port)
        except OSError as exc:
            raise LslError(f"cannot reach the room broker at {self._host}:{self._port}: {exc}") from exc
        self.client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise LslError(f"no subscription at {self._host}:{self._port} within {timeout_s:g} s (account?)")
        logger.info("LSL bridge for room %s: LSL time = UTC - %.6f s", self.room, self.offset_s)
        return self

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            logger.error("the broker refused the LSL bridge's account: %s", reason_code)
            return
        p = wire.room_prefix(self.room)
        topics = [(f"{p}/cmd", 1), (f"{p}/+/status", 1), (f"{p}/+/feat/#", 1), (f"{p}/+/metric/#", 1)]
        if self.raw:
            topics.append((f"{p}/+/raw/#", 1))
        client.subscribe(topics)

    def _on_message(self, client, userdata, msg) -> None:
        payload = bytes(msg.payload)
        try:
            t = wire.parse_topic(msg.topic)
            if t.kind in ("feat", "raw"):
                block, session = wire.decode_block(payload)
                self._block(t.unit, t.kind, block, session)
            elif t.kind == "metric":
                self._metric(t.unit, wire.Metric.decode(payload))
            elif t.kind == "cmd":
                self._command(wire.Command.decode(payload))
            elif t.kind == "status" and payload:
                s = wire.Status.decode(payload)
                if s.session and s.state == "recording" and self.session != s.session:
                    self._new_session(s.session, {})
        except WireError as exc:
            self.counts["malformed"] += 1
            logger.warning("LSL bridge: undecodable message on %s: %s", str(msg.topic)[:200], exc)

    # ------------------------------------------------------------------------------------------ lsl
    def lsl_time(self, t_ns: int) -> float:
        """The LSL timestamp of a dyadsync UTC stamp."""
        return t_ns / 1e9 - self.offset_s

    def _new_session(self, session: str, codes: dict[str, str]) -> None:
        with self._lock:
            if session != self.session:
                self.outlets = {k: v for k, v in self.outlets.items() if k[0] == "markers"}  # close data outlets
            self.session = session
            if codes:
                self.codes = dict(codes)

    def _describe(self, info: Any, channels: list[tuple[str, str, str]], **meta: str | None) -> None:
        desc = info.desc()
        chans = desc.append_child("channels")
        for label, unit, ctype in channels:
            ch = chans.append_child("channel")
            ch.append_child_value("label", label)
            ch.append_child_value("unit", unit)
            ch.append_child_value("type", ctype)
        d = desc.append_child("dyadsync")
        for k, v in {"room": self.room, "session": self.session, **meta}.items():
            d.append_child_value(k, "" if v is None else str(v))
        d.append_child_value("time_mapping", f"lsl = utc - {self.offset_s:.9f} s")
        desc.append_child("acquisition").append_child_value("manufacturer", "dyadsync")

    def _outlet(self, key: tuple, make) -> Any:
        with self._lock:
            out = self.outlets.get(key)
            if out is None:
                out = self.outlets[key] = make()
            return out

    def _block(self, unit: str, kind: str, block, session: str) -> None:
        if kind == "raw" and not self.raw:
            return
        if session and session != self.session:
            self._new_session(session, {})
        role, signal = block.stream.split("/", 1)
        code = self.codes.get(role)

        def make() -> Any:
            name = f"dyadsync-{self.room}-{role}-{signal}" + ("-raw" if kind == "raw" else "")
            info = self.pylsl.StreamInfo(name, TYPES.get(signal, signal.upper()), 1, block.rate_hz, "float32",
                                         f"dyadsync/{self.room}/{unit}/{kind}/{block.stream}")
            self._describe(info, [(f"{role}_{signal}", UNIT_NAMES.get(signal, ""), TYPES.get(signal, signal))],
                           unit=unit, kind=kind, role=role, participant=code)
            return self.pylsl.StreamOutlet(info)

        out = self._outlet((kind, unit, block.stream), make)
        step_ns = 1e9 / block.rate_hz
        for i, v in enumerate(block.values.tolist()):
            out.push_sample([v], self.lsl_time(block.t0_ns + round(i * step_ns)))
        self.counts[f"{kind}_samples"] += block.n

    def _metric(self, unit: str, m: wire.Metric) -> None:
        if m.session != self.session:
            self._new_session(m.session, {})
        keys = sorted(m.values)

        def make() -> Any:
            if m.name.startswith("sync_"):
                from dsp_ext.synchrony import METRIC_VALUE_NAMES

                names = list(METRIC_VALUE_NAMES) + [k for k in keys if k not in METRIC_VALUE_NAMES]
            else:
                names = keys
            info = self.pylsl.StreamInfo(f"dyadsync-{self.room}-{m.name}",
                                         "Synchrony" if m.name.startswith("sync_") else "Metric", len(names),
                                         self.pylsl.IRREGULAR_RATE, "double64",
                                         f"dyadsync/{self.room}/{unit}/metric/{m.name}")
            self._describe(info, [(k, "s" if k.endswith("_s") else "", "metric") for k in names], unit=unit,
                           metric=m.name, therapist=self.codes.get("therapist"), client=self.codes.get("client"),
                           stamp="window start", lag_sign="tau > 0: the therapist leads")
            out = self.pylsl.StreamOutlet(info)
            out.dyadsync_names = names
            return out

        out = self._outlet(("metric", unit, m.name), make)
        row = [math.nan if m.values.get(k) is None else float(m.values[k]) for k in out.dyadsync_names]
        out.push_sample(row, self.lsl_time(m.window_start_ns))
        self.counts["metrics"] += 1

    def _command(self, c: wire.Command) -> None:
        if c.cmd == "start":
            self._new_session(c.session, c.participants)
        label = {"start": "session_start", "stop": "session_stop"}.get(c.cmd, c.label)

        def make() -> Any:
            info = self.pylsl.StreamInfo(f"dyadsync-{self.room}-markers", "Markers", 1, self.pylsl.IRREGULAR_RATE,
                                         "string", f"dyadsync/{self.room}/markers")
            self._describe(info, [("marker", "", "Marker")])
            return self.pylsl.StreamOutlet(info)

        self._outlet(("markers",), make).push_sample([label], self.lsl_time(c.time_ns))
        self.counts["markers"] += 1
        if c.cmd == "stop" and c.session == self.session:
            with self._lock:
                self.session = None  # markers from the lab are dropped until the next session starts

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        with self._lock:
            self.outlets.clear()

    def __enter__(self) -> LslBridge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LslMarkerInlet:
    """An LSL marker stream -> dyadsync markers of the running session (sent with ``console.send``).

    ``session`` is a callable giving the running session id (``LslBridge`` knows it) or None."""

    def __init__(self, console, session, *, prop: str = "type", value: str = "Markers", offset_s: float | None = None,
                 resolve_timeout_s: float = 10.0) -> None:
        self.pylsl = _pylsl()
        self.console = console
        self.session = session
        self.offset_s = measure_offset_s(self.pylsl.local_clock) if offset_s is None else offset_s
        found = [s for s in self.pylsl.resolve_byprop(prop, value, timeout=resolve_timeout_s)
                 if not s.source_id().startswith("dyadsync/")]  # never our own marker outlet (no echo)
        if not found:
            raise LslError(f"no LSL stream with {prop}={value!r} found within {resolve_timeout_s:g} s")
        self.info = found[0]
        self.inlet = self.pylsl.StreamInlet(self.info)
        self.inlet.open_stream(timeout=resolve_timeout_s)
        self.correction = self.inlet.time_correction(timeout=resolve_timeout_s)
        self.sent: list[tuple[str, str, int]] = []  # (command id, label, time_ns)
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lsl-markers", daemon=True)

    def start(self) -> LslMarkerInlet:
        self._thread.start()
        logger.info("LSL marker inlet: %s (%s) -> dyadsync markers", self.info.name(), self.info.source_id())
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sample, ts = self.inlet.pull_sample(timeout=0.2)
            except Exception as exc:  # the stream went away: keep trying, never kill the thread
                logger.warning("LSL marker inlet: %s", exc)
                self._stop.wait(1.0)
                continue
            if sample is None:
                continue
            session = self.session()
            label = str(sample[0])[:200]
            try:  # liblsl refreshes the offset to the sender's clock in the background (another machine)
                self.correction = self.inlet.time_correction(timeout=1.0)
            except Exception as exc:
                logger.warning("LSL marker inlet: clock offset not refreshed (%s); using the last one", exc)
            if not session:
                self.dropped += 1
                logger.warning("LSL marker %r dropped: no session is running", label)
                continue
            t_ns = round((ts + self.correction + self.offset_s) * 1e9)
            try:
                cid = self.console.send("marker", session, label=label, time_ns=t_ns)
            except DyadsyncError as exc:
                self.dropped += 1
                logger.error("LSL marker %r not sent: %s", label, exc)
                continue
            self.sent.append((cid, label, t_ns))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.inlet.close_stream()


# ------------------------------------------------------------------------------------------------ CLI
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lsl", help="publish a room's live streams on Lab Streaming Layer (extra 'lsl')")
    p.add_argument("--credentials", required=True, type=Path,
                   help="a credentials TOML with read access to the room (hub: services/recorder.toml)")
    p.add_argument("--room", help="room id (default: from the credentials file)")
    p.add_argument("--raw", action="store_true", help="also publish the raw signals")
    p.add_argument("--markers-from", metavar="PROP=VALUE",
                   help="turn an LSL marker stream into dyadsync markers, e.g. type=Markers or name=PsychoPy")
    p.add_argument("--console-credentials", type=Path,
                   help="the console account for --markers-from (hub: services/console.toml)")
    p.set_defaults(func=cmd_lsl)


def cmd_lsl(args: argparse.Namespace) -> int:
    from broker.console import RoomConsole
    from broker.hub_cli import read_credentials
    from core.errors import ConfigError

    creds = read_credentials(args.credentials)
    room = args.room or creds.get("room")
    if not room:
        raise ConfigError("lab lsl: no room (--room or 'room' in the credentials file)")
    bridge = LslBridge(creds["host"], creds["port"], room, creds["username"], creds["password"],
                       tls_ca=creds["tls_ca"], raw=args.raw).start()
    console = inlet = None
    _signal.signal(_signal.SIGTERM, _signal.default_int_handler)  # a service manager's stop is a Ctrl-C here
    try:
        if args.markers_from:
            prop, _, value = args.markers_from.partition("=")
            if not value or not args.console_credentials:
                raise ConfigError("--markers-from needs PROP=VALUE and --console-credentials")
            cc = read_credentials(args.console_credentials)
            console = RoomConsole(cc["host"], cc["port"], room, cc["username"], cc["password"], tls_ca=cc["tls_ca"])
            inlet = LslMarkerInlet(console, lambda: bridge.session, prop=prop, value=value,
                                   offset_s=bridge.offset_s).start()
        print(f"room {room} on LSL (LSL time = UTC - {bridge.offset_s:.6f} s); Ctrl-C stops")
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        if inlet is not None:
            inlet.stop()
        if console is not None:
            console.close()
        bridge.stop()
    print(f"stopped: {dict(bridge.counts)}")
    return 0
