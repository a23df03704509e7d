"""A simulated room's processes: the broker, the hub recorder and the unit daemons, started and watched.

The HIL runner (:mod:`hil.scenarios.runner`) and the demo (:mod:`hil.demo`) start a room the same way:

* the broker: Mosquitto as a child process (:mod:`broker.mosquitto`, the one place that starts it) or, for
  the demo on a machine without Mosquitto, the embedded amqtt broker (:mod:`broker.embedded`), on a free
  loopback port with the room's accounts and ACL;
* the hub recorder (:class:`broker.recorder.Recorder`) as ``python -m dyadsync hub run``;
* each unit (:class:`device.unit.Unit`) as ``python -m dyadsync unit run --config unit.toml``, the code a
  Raspberry Pi runs. Its config (:func:`unit_toml`) names ``hil.wiring:make_hardware`` as the hardware
  provider, so the simulator plugs in at the hardware seams (simulated sensors, an emulated I2C bus with
  register-level chips, or an emulated firmware on a pseudo-terminal), its status LED is a simulated sysfs
  tree (:func:`led_tree`), and its clock is a :class:`device.clock.ScaledClock` (``hardware.speed``).

Every child process writes its output to ``<workdir>/<name>.log``. :meth:`RoomProcesses.check` raises
:class:`RoomError` naming a process that exited (or a broker that stopped) when nobody asked it to, with
the last lines of its log; :meth:`RoomProcesses.wait_for` and :meth:`RoomProcesses.sleep` call it every
50 ms while they wait, so a process that fails to start or dies is reported within a fraction of a second
in its own words, never as a traceback of a later stage.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from broker.auth import RoomAuth
from broker.embedded import start_room_broker
from core.errors import DyadsyncError
from device.leds import PATTERNS

logger = logging.getLogger(__name__)

LED_NAME = "dyadsync:status"
PATTERN_STATE = {v: k for k, v in PATTERNS.items()}
RECORDER_READY = "recording room"  # the line ``dyadsync hub run`` prints once it is subscribed
TAIL_LINES = 15


class RoomError(DyadsyncError, RuntimeError):
    """The simulated room cannot go on: a process did not start or died, or did not answer in time."""


class RoomTimeout(RoomError, TimeoutError):
    """What :meth:`RoomProcesses.wait_for` waited for did not happen in time (every process still runs)."""


# ---------------------------------------------------------------------------------------- unit config
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, Path)):
        return json.dumps(str(v))  # a JSON string is a TOML basic string
    raise TypeError(f"no TOML rendering for {v!r}")


def _table(name: str, values: dict[str, Any]) -> str:
    body = "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items() if v is not None)
    return f"[{name}]\n{body}" if body else ""


def sensors_toml(unit: str, roles: Iterable[str], wiring: str) -> str:
    """The ``[[sensors]]`` of a unit measuring ``roles`` through ``wiring``: ``sim`` (block-level simulated
    sensors), ``i2c`` (ADS1115 + MAX30102 per person behind a TCA9548A, emulated at register level) or
    ``serial`` (one emulated firmware per person on a pseudo-terminal)."""
    out = []
    for role in roles:
        r = role[0]
        if wiring == "sim":
            for sig in ("eda", "ppg"):
                out.append(f'[[sensors]]\nname = "{r}-{sig}"\nkind = "synthetic"\nrole = "{role}"\nsignal = "{sig}"\n')
        elif wiring == "i2c":
            ch = 0 if role == "therapist" else 1
            out.append(f'[[sensors]]\nname = "{r}-eda"\nkind = "ads1115"\nrole = "{role}"\ni2c_bus = 1\n'
                       f'address = 0x48\nmux_address = 0x70\nmux_channel = {ch}\n'
                       f'gsr = {{ calibration_v = 2.9, supply_v = 3.3, r_ref_ohm = 10000.0 }}\n')
            out.append(f'[[sensors]]\nname = "{r}-ppg"\nkind = "max30102"\nrole = "{role}"\ni2c_bus = 1\n'
                       f'address = 0x57\nmux_address = 0x70\nmux_channel = {ch}\n')
        elif wiring == "serial":
            out.append(f'[[sensors]]\nname = "{r}-fw"\nkind = "serial"\nurl = "hil://{unit}/{role}"\n')
        else:
            raise RoomError(f"unit {unit}: unknown wiring {wiring!r} (sim, i2c or serial)")
    return "\n".join(out)


def unit_toml(*, room: str, unit: str, data_dir: Path, host: str, port: int, password: str, led_root: Path,
              speed: float, epoch_ns: int, sensors: str, dsp: dict[str, Any] | None = None,
              dyad: dict[str, Any] | None = None, outbox: dict[str, Any] | None = None,
              status_interval_s: float = 1.0) -> str:
    """A unit config (``examples/unit.toml`` documents every key) for the simulated room: the room's broker,
    the simulator as hardware provider, a simulated sysfs LED, simulated time at ``speed``."""
    return "".join(part + "\n" for part in (
        f"room = {_toml_value(room)}\nunit = {_toml_value(unit)}\ndata_dir = {_toml_value(data_dir)}",
        _table("broker", {"url": f"mqtt://{host}:{port}", "username": unit, "password": password,
                          "reconnect_min_s": 0.1, "reconnect_max_s": 1.0}),
        _table("dsp", dsp or {}),
        _table("dyad", dyad or {}),
        _table("outbox", outbox or {}),
        _table("leds", {"backend": "sysfs", "sysfs_root": led_root, "name": LED_NAME}),
        _table("clock", {"check": "assume_synced"}),
        _table("hardware", {"mode": "emulated", "factory": "hil.wiring:make_hardware", "speed": float(speed),
                            "sim_epoch_ns": int(epoch_ns)}),
        _table("watchdog", {"status_interval_s": float(status_interval_s)}),
        sensors,
    ) if part)


def led_tree(root: Path) -> Path:
    """A sysfs LED class directory (``<root>/dyadsync:status``) as the kernel offers it; returns the LED dir."""
    d = Path(root) / LED_NAME
    d.mkdir(parents=True, exist_ok=True)
    for name, value in (("brightness", "0"), ("max_brightness", "1"), ("trigger", "none"), ("delay_on", "0"),
                        ("delay_off", "0")):
        (d / name).write_text(value + "\n")
    return d


def read_led(d: Path) -> str | None:
    """The unit state a simulated LED shows (``off``, ``recording``, a blink pattern's state), None mid-write."""
    try:
        trigger = (d / "trigger").read_text().strip()
        if trigger == "none":
            return "recording" if int((d / "brightness").read_text().strip() or 0) > 0 else "off"
        pattern = (int((d / "delay_on").read_text().strip()), int((d / "delay_off").read_text().strip()))
    except (OSError, ValueError):
        return None  # a write in progress
    return PATTERN_STATE.get(pattern, f"unknown{pattern}")


# ------------------------------------------------------------------------------------------ processes
def log_tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    return "\n".join("    " + line for line in lines[-n:]) or "    (empty)"


@dataclass
class Child:
    """A child process of the room and its log file."""

    name: str  # also the log's stem: <workdir>/<name>.log
    what: str  # in messages: "the hub recorder", "unit unit-a"
    proc: subprocess.Popen
    log_path: Path

    def tail(self, n: int = TAIL_LINES) -> str:
        return log_tail(self.log_path, n)

    def failure(self) -> str:
        rc = self.proc.returncode
        how = f"was killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with status {rc}"
        return f"{self.what} {how}; last lines of {self.log_path}:\n{self.tail()}"


class RoomProcesses:
    """Starts the room's broker and child processes in ``workdir`` and watches them (see the module doc).

    ``down(name)`` marks a process (or ``"broker"``) as stopped on purpose (a fault being played), so
    :meth:`check` does not report it; ``up(name)`` ends that.
    """

    def __init__(self, workdir: Path, room: str, *, verbose: bool = False) -> None:
        self.workdir = Path(workdir)
        self.room = room
        self.verbose = verbose
        self.broker: Any = None
        self.children: dict[str, Child] = {}
        self._down: set[str] = set()
        self._logs: list[IO[bytes]] = []

    # --------------------------------------------------------------------------------- starting
    def start_broker(self, auth: RoomAuth, prefer: str = "mosquitto", port: int | None = None) -> Any:
        try:
            self.broker = start_room_broker(self.workdir / "broker", auth, prefer=prefer, port=port)
        except DyadsyncError as exc:
            raise RoomError(f"the room broker could not start: {exc}") from None
        return self.broker

    def spawn(self, name: str, what: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        """``python -m dyadsync <args>`` with its output in ``<workdir>/<name>.log`` (appended)."""
        log_path = self.workdir / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self._logs.append(log)
        cmd = [sys.executable, "-m", "dyadsync", *(["-v"] if self.verbose else []), *args]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, cwd=self.workdir)
        child = self.children[name] = Child(name, what, proc, log_path)
        self._down.discard(name)
        return child

    def start_recorder(self, db: Path, auth: RoomAuth, *, wait_s: float = 30.0,
                       marker_tolerance_s: float | None = None) -> Child:
        """The hub recorder on the room's broker; returns once it is subscribed (its "recording room" line)."""
        assert self.broker is not None, "start the broker first"
        user, pw = auth.service_user("recorder")
        creds = self.workdir / "recorder.toml"
        creds.write_text(f'room = "{self.room}"\n[broker]\nurl = "mqtt://{self.broker.host}:{self.broker.port}"\n'
                         f'username = "{user}"\npassword = "{pw}"\n')
        os.chmod(creds, 0o600)
        child = self.spawn("recorder", "the hub recorder",
                           ["hub", "run", "--db", str(db), "--credentials", str(creds), "--room", self.room,
                            *([] if marker_tolerance_s is None else ["--marker-tolerance-s", f"{marker_tolerance_s:g}"])])
        self.wait_for(lambda: RECORDER_READY in child.log_path.read_text(errors="replace"), wait_s,
                      "the hub recorder to connect and subscribe")
        return child

    def start_unit(self, name: str, config: Path, env: dict[str, str] | None = None) -> Child:
        return self.spawn(f"unit-{name}", f"unit {name}", ["unit", "run", "--config", str(config)], env)

    # ------------------------------------------------------------------------------------ watching
    def down(self, name: str) -> None:
        self._down.add(name)

    def up(self, name: str) -> None:
        self._down.discard(name)

    def check(self) -> None:
        """Raise :class:`RoomError` if the broker or a child process stopped without being asked to."""
        b = self.broker
        if b is not None and "broker" not in self._down and not b.running:
            raise RoomError(f"the room broker ({b.kind} on {b.host}:{b.port}) stopped; its log:\n"
                            + "\n".join("    " + line for line in b.log_tail(TAIL_LINES).splitlines()))
        for c in self.children.values():
            if c.name not in self._down and c.proc.poll() is not None:
                raise RoomError(c.failure())

    def wait_for(self, pred: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Wait until ``pred()`` holds, checking the processes meanwhile; :class:`RoomError` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check()
            if pred():
                return
            if time.monotonic() > deadline:
                raise RoomTimeout(f"waited {timeout_s:g} s for {what}: it did not happen (logs in {self.workdir})")
            time.sleep(0.05)

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` (real), checking the processes every 50 ms."""
        end = time.monotonic() + seconds
        while True:
            self.check()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    # ------------------------------------------------------------------------------------ stopping
    def terminate(self, name: str, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (a clean stop: a unit flushes its outbox, the recorder stores what it holds); SIGKILL if it
        does not exit within ``timeout_s``. Returns the exit status."""
        c = self.children.get(name)
        if c is None:
            return None
        self.down(name)
        if c.proc.poll() is None:
            c.proc.send_signal(signal.SIGTERM)
            try:
                c.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.error("%s did not stop within %.0f s of SIGTERM: killing it", c.what, timeout_s)
                c.proc.kill()
                c.proc.wait(5)
        return c.proc.returncode

    def kill(self, name: str) -> int | None:
        """SIGKILL (a crash or power cut); the process is marked down."""
        c = self.children[name]
        self.down(name)
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait(10)
        return c.proc.returncode

    def close(self) -> None:
        """Stop whatever still runs: units are killed, the recorder gets SIGTERM, then the broker stops."""
        for name, c in self.children.items():
            if name != "recorder" and c.proc.poll() is None:
                self.kill(name)
                logger.warning("%s was still running at cleanup: killed", c.what)
        if "recorder" in self.children:
            self.terminate("recorder", 20.0)
        if self.broker is not None:
            self.broker.stop()
        for f in self._logs:
            f.close()
        self._logs.clear()
