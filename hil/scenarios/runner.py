"""Run a scenario: real Mosquitto, the hub recorder and the unit daemon(s) as separate processes.

Sequence (all times simulated unless said otherwise; ``speed`` simulated seconds per real second):

1. Room credentials (:class:`broker.auth.RoomAuth`), the generated authenticated Mosquitto config
   (:func:`broker.mosquitto.write_broker_files`) and Mosquitto on a free loopback port.
2. The hub recorder: ``python -m dyadsync hub run --db ... --credentials ... --room ...``.
3. Per unit a config (emulated hardware ``hil.wiring:make_hardware``, LED on a temporary sysfs tree,
   ``--speed``, one ``--sim-epoch-ns`` for all) and the :class:`hil.wiring.HilSpec` in its data dir;
   ``python -m dyadsync unit run --config ...``.
4. ``lead_s`` after the epoch (real start-up time x speed; the simulator's time 0 is ``PRE_S`` before
   that, so the simulated dyad is the same at every speed) the console (``svc-console``) sends ``start``; the fault timeline runs
   (broker killed/restarted, units SIGKILLed/restarted, ...); at ``lead_s + session_s`` it sends ``stop``.
5. Units get SIGTERM (they flush their outbox and publish ``offline``), the recorder is stopped after it
   stored everything, then Mosquitto.
6. :mod:`hil.scenarios.scoring` scores the hub database, the LED log and the unit logs against the truth.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from broker import store, wire
from broker.auth import RoomAuth
from broker.mosquitto import MosquittoProcess, write_broker_files
from core.errors import ConfigError, DyadsyncError
from device.clock import ScaledClock
from device.leds import PATTERNS

from ..wiring import SPEC_FILE, HilSpec
from .catalogue import Scenario, UnitPlan

logger = logging.getLogger(__name__)

ROOM = "hil-room"
LED_NAME = "dyadsync:status"
TAIL_S = 40.0  # simulator margin after the session
PRE_S = 30.0  # simulator time before the session start (the simulated dyad does not depend on the speed)
PATTERN_STATE = {v: k for k, v in PATTERNS.items()}


class ScenarioError(DyadsyncError, RuntimeError):
    """The scenario could not be run (a process did not start, a command was not acknowledged...)."""


@dataclass
class RunRecord:
    """What happened during a run, in UTC ns of the shared simulated time line (for the scorer)."""

    scenario: Scenario
    spec: HilSpec
    speed: float
    seed: int
    workdir: Path
    db_path: Path
    session: str
    t0_ns: int
    lead_s: float  # simulator seconds before the session start
    start_ns: int = 0
    stop_ns: int = 0
    events: list[tuple[str, str, int]] = field(default_factory=list)  # (kind, target, ns)
    led: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # unit -> (ns, state) changes
    acks: list[wire.Ack] = field(default_factory=list)
    exit_codes: dict[str, list[int]] = field(default_factory=dict)
    wall_s: float = 0.0

    def sim_s(self, ns: int) -> float:
        """Session-relative seconds of a UTC ns."""
        return (ns - self.start_ns) / 1e9

    def ns_of_session_s(self, t_s: float) -> int:
        return self.start_ns + round(t_s * 1e9)


def _sensors_toml(plan: UnitPlan) -> str:
    out = []
    for role in plan.roles:
        r = role[0]
        if plan.wiring == "sim":
            for sig in ("eda", "ppg"):
                out.append(f'[[sensors]]\nname = "{r}-{sig}"\nkind = "synthetic"\nrole = "{role}"\nsignal = "{sig}"\n')
        elif plan.wiring == "i2c":
            ch = 0 if role == "therapist" else 1
            out.append(f'[[sensors]]\nname = "{r}-eda"\nkind = "ads1115"\nrole = "{role}"\ni2c_bus = 1\n'
                       f'address = 0x48\nmux_address = 0x70\nmux_channel = {ch}\n'
                       f'gsr = {{ calibration_v = 2.9, supply_v = 3.3, r_ref_ohm = 10000.0 }}\n')
            out.append(f'[[sensors]]\nname = "{r}-ppg"\nkind = "max30102"\nrole = "{role}"\ni2c_bus = 1\n'
                       f'address = 0x57\nmux_address = 0x70\nmux_channel = {ch}\n')
        elif plan.wiring == "serial":
            out.append(f'[[sensors]]\nname = "{r}-fw"\nkind = "serial"\nurl = "hil://{plan.name}/{role}"\n')
        else:
            raise ConfigError(f"unit {plan.name}: unknown wiring {plan.wiring!r}")
    return "\n".join(out)


def _led_tree(root: Path) -> Path:
    d = root / LED_NAME
    d.mkdir(parents=True, exist_ok=True)
    for name, value in (("brightness", "0"), ("max_brightness", "1"), ("trigger", "none"), ("delay_on", "0"),
                        ("delay_off", "0")):
        (d / name).write_text(value + "\n")
    return d


def _read_led(d: Path) -> str | None:
    try:
        trigger = (d / "trigger").read_text().strip()
        if trigger == "none":
            return "recording" if int((d / "brightness").read_text().strip() or 0) > 0 else "off"
        pattern = (int((d / "delay_on").read_text().strip()), int((d / "delay_off").read_text().strip()))
    except (OSError, ValueError):
        return None  # a write in progress
    return PATTERN_STATE.get(pattern, f"unknown{pattern}")


class _Console:
    """The room console (``svc-console``): sends commands, collects acks and statuses."""

    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        self.acks: list[wire.Ack] = []
        self.status: dict[str, wire.Status] = {}
        self.cond = threading.Condition()
        self.ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hil-console-{uuid.uuid4().hex[:6]}")
        self.c.username_pw_set(user, password)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(0.1, 1.0)
        self.c.connect(host, port)
        self.c.loop_start()
        if not self.ready.wait(20):
            self.close()
            raise ScenarioError("the console could not connect and subscribe to the room broker")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe([(f"{wire.room_prefix(ROOM)}/+/ack", 1), (f"{wire.room_prefix(ROOM)}/+/status", 1)])

    def _on_message(self, client, userdata, msg) -> None:
        try:
            t = wire.parse_topic(msg.topic)
            with self.cond:
                if t.kind == "ack":
                    self.acks.append(wire.Ack.decode(msg.payload))
                elif t.kind == "status" and msg.payload:
                    self.status[t.unit] = wire.Status.decode(msg.payload)
                self.cond.notify_all()
        except Exception:  # never let a bad message kill paho's thread
            logger.exception("console: cannot handle %s", msg.topic)

    def send(self, cmd: str, session: str, time_ns: int, **kw) -> str:
        cid = f"{cmd}-{session}"
        c = wire.Command(id=cid, cmd=cmd, session=session, time_ns=time_ns, **kw)
        self.c.publish(wire.cmd_topic(ROOM), c.encode(), qos=1)
        return cid

    def wait_acks(self, cid: str, units: list[str], timeout_s: float) -> list[wire.Ack]:
        with self.cond:
            self.cond.wait_for(lambda: {a.unit for a in self.acks if a.id == cid} >= set(units), timeout_s)
            return [a for a in self.acks if a.id == cid]

    def wait_status(self, units: list[str], states: tuple[str, ...], timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(
                lambda: all(u in self.status and self.status[u].state in states for u in units), timeout_s)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class Runner:
    """Runs one scenario end to end; :meth:`run` returns the :class:`RunRecord` for the scorer."""

    def __init__(self, scenario: Scenario, *, speed: float | None = None, seed: int | None = None,
                 workdir: Path | str | None = None, lead_real_s: float = 15.0, verbose: bool = False) -> None:
        self.s = scenario
        self.speed = float(speed or scenario.speed)
        if not self.speed > 0:
            raise ConfigError(f"--speed must be > 0, got {speed!r}")
        self.seed = scenario.seed if seed is None else int(seed)
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"hil-{scenario.name}-")
            workdir = self._tmp.name
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lead_s = round(max(30.0, lead_real_s * self.speed))
        self.verbose = verbose
        self.auth: RoomAuth | None = None
        self.broker: MosquittoProcess | None = None
        self.recorder: subprocess.Popen | None = None
        self.units: dict[str, subprocess.Popen] = {}
        self.unit_configs: dict[str, Path] = {}
        self._led_dirs: dict[str, Path] = {}
        self._stop_led = threading.Event()
        self._led_thread: threading.Thread | None = None
        self._logs: list = []
        self._down: set[str] = set()  # units killed on purpose (power cut)

    # ---------------------------------------------------------------------------------- set-up
    def _spec(self, t0_ns: int) -> HilSpec:
        s = self.s
        lead = PRE_S
        sched = [{"start_s": lead + g.start_s, "end_s": lead + g.end_s, "mode": g.mode, "lag_s": g.lag_s,
                  "gain": g.gain, "channel": g.channel} for g in s.segments]
        events = [{"stream": f.target, "kind": "contact_loss", "start_s": lead + f.at_s, "end_s": lead + f.end_s}
                  for f in s.faults if f.kind == "contact_loss"]
        drops: dict[str, list[list[float]]] = {}
        for f in s.faults:
            if f.kind == "drop_blocks":
                drops.setdefault(f.target, []).append([lead + f.at_s, f.count])
        sim = {"seed": self.seed, "duration_s": lead + s.session_s + TAIL_S, "schedule": sched, "events": events}
        serial = {"bit_error_rate": s.extra.get("bit_error_rate", 0.0),
                  "drift_ppm": {u.name: u.drift_ppm for u in s.units}}
        inproc = [{"kind": f.kind, "at_s": lead + f.at_s, "duration_s": f.duration_s, "target": f.target,
                   "count": f.count} for f in s.faults if f.kind in ("unplug", "nack_burst", "fifo_stall")]
        return HilSpec(sim=sim, t0_ns=t0_ns, drops=drops, serial=serial, faults=inproc)

    def _unit_toml(self, plan: UnitPlan, data_dir: Path, led_root: Path, epoch_ns: int) -> str:
        assert self.auth is not None and self.broker is not None
        dyad = ""
        if plan.partner:
            dyad += f'partner = "{plan.partner}"\n'
        if not plan.compute:
            dyad += "compute = false\n"
        return (
            f'room = "{ROOM}"\nunit = "{plan.name}"\ndata_dir = "{data_dir}"\n'
            f'[broker]\nurl = "mqtt://{self.broker.host}:{self.broker.port}"\nusername = "{plan.name}"\n'
            f'password = "{self.auth.units[plan.name]}"\nreconnect_min_s = 0.1\nreconnect_max_s = 1.0\n'
            f'[dsp]\nwin_s = {self.s.win_s}\nlag_s = {self.s.lag_s}\n'
            + (f"[dyad]\n{dyad}" if dyad else "")
            + f'[leds]\nbackend = "sysfs"\nsysfs_root = "{led_root}"\nname = "{LED_NAME}"\n'
            f'[clock]\ncheck = "assume_synced"\n'
            f'[hardware]\nmode = "emulated"\nfactory = "hil.wiring:make_hardware"\nspeed = {self.speed}\n'
            f"sim_epoch_ns = {epoch_ns}\n"
            f"[watchdog]\nstatus_interval_s = 1\n\n" + _sensors_toml(plan)
        )

    def _popen(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed in _cleanup
        self._logs.append(log)
        cmd = [sys.executable, "-m", "dyadsync", *(["-v"] if self.verbose else []), *args]
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, cwd=self.workdir)

    def _start_unit(self, name: str) -> None:
        self.units[name] = self._popen(f"unit-{name}", ["unit", "run", "--config", str(self.unit_configs[name])])

    def _start_recorder(self, db: Path) -> None:
        assert self.auth is not None and self.broker is not None
        user, pw = self.auth.service_user("recorder")
        creds = self.workdir / "recorder.toml"
        creds.write_text(f'room = "{ROOM}"\n[broker]\nurl = "mqtt://{self.broker.host}:{self.broker.port}"\n'
                         f'username = "{user}"\npassword = "{pw}"\n')
        os.chmod(creds, 0o600)
        self.recorder = self._popen("recorder", ["hub", "run", "--db", str(db), "--credentials", str(creds),
                                                 "--room", ROOM])

    def _wait_recorder(self) -> None:
        assert self.broker is not None and self.recorder is not None
        log = self.broker.files.log_file
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the recorder's persistent subscription exists once it connected
            if self.recorder.poll() is not None:
                raise ScenarioError(f"the hub recorder exited with {self.recorder.returncode}; see "
                                    f"{self.workdir / 'recorder.log'}")
            if log.exists() and "u'svc-recorder'" in log.read_text(errors="replace"):
                time.sleep(0.5)
                return
            time.sleep(0.05)
        raise ScenarioError("the hub recorder did not connect to the broker within 30 s")

    def _poll_leds(self, clock: ScaledClock, rec: RunRecord) -> None:
        last: dict[str, str | None] = {}
        while not self._stop_led.wait(0.02):
            for unit, d in self._led_dirs.items():
                state = _read_led(d)
                if state is not None and state != last.get(unit):
                    last[unit] = state
                    rec.led.setdefault(unit, []).append((clock.now_ns(), state))

    # ------------------------------------------------------------------------------------- run
    def run(self) -> RunRecord:
        s = self.s
        wall0 = time.monotonic()
        epoch_ns = time.time_ns()
        clock = ScaledClock(self.speed, epoch_ns)
        spec = self._spec(epoch_ns + round((self.lead_s - PRE_S) * 1e9))
        unit_names = [u.name for u in s.units]
        partners = {u.name: u.partner for u in s.units if u.partner}
        self.auth = RoomAuth.generate(ROOM, unit_names, partners=partners)
        session = f"hil-{s.name}-{uuid.uuid4().hex[:6]}"
        db = self.workdir / "hub.sqlite"
        rec = RunRecord(s, spec, self.speed, self.seed, self.workdir, db, session, spec.t0_ns, PRE_S)
        console: _Console | None = None
        try:
            files = write_broker_files(self.workdir / "broker", self.auth)
            self.broker = MosquittoProcess(files).start()
            self._start_recorder(db)
            for plan in s.units:
                data = self.workdir / f"data-{plan.name}"
                data.mkdir(exist_ok=True)
                spec.write(data / SPEC_FILE)
                led_root = self.workdir / f"leds-{plan.name}"
                self._led_dirs[plan.name] = _led_tree(led_root)
                cfg = self.workdir / f"{plan.name}.toml"
                cfg.write_text(self._unit_toml(plan, data, led_root, epoch_ns))
                self.unit_configs[plan.name] = cfg
                self._start_unit(plan.name)
            self._wait_recorder()
            self._led_thread = threading.Thread(target=self._poll_leds, args=(clock, rec), name="hil-leds",
                                                daemon=True)
            self._led_thread.start()
            console = _Console(self.broker.host, self.broker.port, *self.auth.service_user("console"))
            start_at = epoch_ns + round(self.lead_s * 1e9)
            ready_by = (start_at - clock.now_ns()) / 1e9 / self.speed
            if not console.wait_status(unit_names, ("idle",), max(0.5, ready_by)):
                self._check_alive()
                raise ScenarioError(f"units {unit_names} not ready (status idle) {self.lead_s:.0f} simulated s "
                                    f"after start at speed {self.speed:g}: lower --speed (statuses: "
                                    f"{ {u: st.state for u, st in console.status.items()} })")
            self._sleep_until(clock, start_at)
            rec.start_ns = clock.now_ns()
            cid = console.send("start", session, rec.start_ns, participants={"therapist": "T01", "client": "C01"})
            acks = console.wait_acks(cid, unit_names, 20)
            if {a.unit for a in acks if a.ok} != set(unit_names):
                raise ScenarioError(f"start not acknowledged by every unit: {acks}")
            self._timeline(clock, rec)
            self._sleep_until(clock, rec.start_ns + round(s.session_s * 1e9))
            rec.stop_ns = clock.now_ns()
            cid = console.send("stop", session, rec.stop_ns)
            acks = console.wait_acks(cid, unit_names, 30)
            if {a.unit for a in acks if a.ok} != set(unit_names):
                raise ScenarioError(f"stop not acknowledged by every unit: {acks}")
            rec.acks = list(console.acks)
            for name in unit_names:
                rec.exit_codes.setdefault(name, []).append(self._terminate_unit(name))
            self._wait_stored(db, unit_names, rec.stop_ns)
        finally:
            if console is not None:
                console.close()
            self._cleanup()
        rec.wall_s = time.monotonic() - wall0
        return rec

    def _sleep_until(self, clock: ScaledClock, ns: int) -> None:
        while True:
            left = (ns - clock.now_ns()) / 1e9 / self.speed
            if left <= 0:
                return
            self._check_alive()
            time.sleep(min(left, 0.2))

    def _check_alive(self) -> None:
        for name, p in self.units.items():
            if name not in self._down and p.poll() is not None:
                raise ScenarioError(f"unit {name} exited with {p.returncode}; see {self.workdir}/unit-{name}.log")

    def _timeline(self, clock: ScaledClock, rec: RunRecord) -> None:
        """Run the actions of the fault list at their simulated times (threads for overlapping faults)."""
        actions: list[tuple[float, str, str]] = []
        for f in self.s.faults:
            if f.kind == "broker_outage":
                actions += [(f.at_s, "broker_kill", ""), (f.end_s, "broker_start", "")]
            elif f.kind == "power_cut":
                actions += [(f.at_s, "unit_kill", f.target), (f.end_s, "unit_start", f.target)]
            elif f.kind in ("unplug", "nack_burst", "fifo_stall"):
                pass  # executed inside the unit process by hil.wiring from the spec
        for at_s, action, target in sorted(actions):
            self._sleep_until(clock, rec.ns_of_session_s(at_s))
            ns = clock.now_ns()
            logger.info("t=%.1f s: %s %s", rec.sim_s(ns), action, target)
            if action == "broker_kill":
                assert self.broker is not None
                self.broker.kill()
            elif action == "broker_start":
                assert self.broker is not None
                self.broker.start()
            elif action == "unit_kill":
                p = self.units[target]
                self._down.add(target)
                p.kill()
                p.wait(10)
                rec.exit_codes.setdefault(target, []).append(p.returncode)
            elif action == "unit_start":
                self._start_unit(target)
                self._down.discard(target)
            rec.events.append((action, target, ns))
        # faults that do not need the runner still appear in the event log (for the scorer)
        for f in self.s.faults:
            if f.kind not in ("broker_outage", "power_cut"):
                rec.events.append((f.kind, f.target, rec.ns_of_session_s(f.at_s)))

    def _terminate_unit(self, name: str, timeout_s: float = 30.0) -> int:
        p = self.units[name]
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.error("unit %s did not stop within %.0f s of SIGTERM: killing it", name, timeout_s)
                p.kill()
                p.wait(5)
        return p.returncode

    def _wait_stored(self, db: Path, units: list[str], stop_ns: int, timeout_s: float = 60.0) -> None:
        """Until the hub stored each unit's final ``offline`` status (sent after its outbox was flushed)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                con = store.connect(db, readonly=True)
                try:
                    done = {u for (u,) in con.execute(
                        "SELECT DISTINCT unit FROM status WHERE state='offline' AND json_extract(payload, "
                        "'$.buffer_depth')=0 AND time_ns >= ?", (stop_ns,))}
                finally:
                    con.close()
                if done >= set(units):
                    time.sleep(0.5)  # the recorder commits in batches: let the last one land
                    return
            except Exception as exc:  # the db may not exist yet
                logger.debug("waiting for the hub db: %s", exc)
            time.sleep(0.1)
        logger.warning("the hub did not store a flushed offline status of every unit within %.0f s", timeout_s)

    def _cleanup(self) -> None:
        self._stop_led.set()
        if self._led_thread is not None:
            self._led_thread.join(2)
        for name, p in self.units.items():
            if p.poll() is None:
                p.kill()
                p.wait(5)
                logger.warning("unit %s was still running at cleanup: killed", name)
        if self.recorder is not None and self.recorder.poll() is None:
            self.recorder.send_signal(signal.SIGTERM)
            try:
                self.recorder.wait(20)
            except subprocess.TimeoutExpired:
                self.recorder.kill()
                self.recorder.wait(5)
        if self.broker is not None:
            self.broker.stop()
        for f in self._logs:
            f.close()
