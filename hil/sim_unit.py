"""``dyadsync hil unit``: one real unit daemon (:class:`device.unit.Unit`) with a simulated dyad at its
hardware seams, for trying a unit without sensors and without writing files by hand.

What is simulated is exactly what the HIL scenarios simulate (:mod:`hil.wiring`): the I2C buses (register
emulators of the ADS1115, MAX30102 and TCA9548A), the firmware boards (an emulated firmware on a
pseudo-terminal) and the status LED (a sysfs LED tree in the data directory, whose pattern is printed as
it changes). Everything else is the unit as it runs on a Pi: config loader, pipeline, outbox, MQTT link.

* ``dyadsync hil unit``: a unit with both participants on simulated sensors, against a Mosquitto started
  for it on a free loopback port (the command prints how to watch it and start a session);
* ``--credentials DIR``: against a real hub, with the credentials ``dyadsync hub init`` wrote for a unit;
* ``--config FILE``: a unit config as you would install it (e.g. ``examples/unit.toml``), loaded by the
  same loader as ``dyadsync unit run``; its sensors (I2C chips, firmware boards, synthetic) are served by
  the emulators, its LED goes to the simulated tree, its broker is used as written unless ``--credentials``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from device.config import load_config, parse_config
from device.leds import PATTERNS

from .wiring import SPEC_FILE, HilSpec

logger = logging.getLogger(__name__)

LED_NAME = "dyadsync:status"
_PATTERN_STATE = {v: k for k, v in PATTERNS.items()}


def register(hil_sub: argparse._SubParsersAction) -> None:
    p = hil_sub.add_parser(
        "unit", help="run one real unit with simulated sensors and LED (no hardware, no files to write)",
        description="Run the real unit daemon with a simulated therapist and client at its hardware seams.")
    p.add_argument("--config", type=Path, help="a unit config (e.g. examples/unit.toml); default: both participants "
                   "on simulated sensors")
    p.add_argument("--credentials", type=Path, help="a unit's directory from `dyadsync hub init` (<hub>/units/<unit>/)")
    p.add_argument("--data-dir", type=Path, help="outbox, LED tree and logs here (default: a temporary directory)")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated dyad (default 1)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--coupling", choices=("therapist_led", "client_led", "in_phase", "anti_phase", "uncoupled"),
                   default="therapist_led", help="how the simulated client follows the therapist (default therapist_led)")
    p.add_argument("--lag-s", type=float, default=3.0, help="the follower's lag in seconds (default 3)")
    p.set_defaults(func=cmd_unit)


def _default_toml(room: str, unit: str) -> str:
    lines = [f'room = "{room}"', f'unit = "{unit}"', 'data_dir = "."', "[broker]", 'url = "mqtt://127.0.0.1:1"',
             'username = "x"', 'password = "x"']
    for role in ("therapist", "client"):
        for sig in ("eda", "ppg"):
            lines += ["[[sensors]]", f'name = "{role}-{sig}"', 'kind = "synthetic"', f'role = "{role}"',
                      f'signal = "{sig}"']
    return "\n".join(lines) + "\n"


def _read_credentials(d: Path) -> dict:
    path = d / "credentials.toml" if d.is_dir() else d
    try:
        data = tomllib.loads(path.read_text())
        b = data["broker"]
        return {"room": data["room"], "unit": data["unit"], "url": b["url"], "username": b["username"],
                "password": b["password"], "partner": data.get("partner") or b.get("partner"),
                "tls_ca": (path.parent / b["ca_file"]) if b.get("ca_file") and b["url"].startswith("mqtts") else None}
    except OSError as exc:
        raise ConfigError(f"cannot read unit credentials {path}: {exc}") from None
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a unit credentials file from `dyadsync hub init` ({exc})") from None


def _led_tree(root: Path) -> Path:
    d = root / LED_NAME
    d.mkdir(parents=True, exist_ok=True)
    for name, value in (("brightness", "0"), ("max_brightness", "1"), ("trigger", "none"), ("delay_on", "0"),
                        ("delay_off", "0")):
        (d / name).write_text(value + "\n")
    return d


def led_state(d: Path) -> str | None:
    """The state a sysfs LED directory shows (the inverse of :data:`device.leds.PATTERNS`)."""
    try:
        if (d / "trigger").read_text().strip() == "none":
            return "recording" if int((d / "brightness").read_text().strip() or 0) > 0 else "off"
        pattern = (int((d / "delay_on").read_text().strip()), int((d / "delay_off").read_text().strip()))
    except (OSError, ValueError):
        return None  # a write in progress
    return _PATTERN_STATE.get(pattern, f"blinking {pattern[0]}/{pattern[1]} ms")


def _serial_roles(cfg: Any) -> dict[str, list[str]]:
    """Which simulated participants each firmware board carries: its name's role if it names one, else the
    roles no other sensor measures (a real board says so in its channel table)."""
    covered = {s.role for s in cfg.sensors if s.kind != "serial" and s.role}
    free = [r for r in ("therapist", "client") if r not in covered] or ["therapist", "client"]
    out: dict[str, list[str]] = {}
    for s in cfg.sensors:
        if s.kind == "serial":
            named = [r for r in ("therapist", "client") if s.name.startswith(r)]
            out[s.name] = named or free
    return out


def simulated_config(cfg: Any, data_dir: Path, creds: dict | None = None, broker_url: str | None = None,
                     password: str | None = None) -> Any:
    """``cfg`` with its hardware seams on the simulator: emulated hardware, LED tree under ``data_dir``,
    firmware boards on emulated ports; broker from ``creds`` or ``broker_url``/``password`` when given."""
    sensors = []
    roles = _serial_roles(cfg)
    for s in cfg.sensors:
        if s.kind == "serial":
            s = s.model_copy(update={"url": f"hil://{cfg.unit}/{'+'.join(roles[s.name])}"})
        sensors.append(s)
    update: dict[str, Any] = {
        "data_dir": data_dir,
        "sensors": sensors,
        "hardware": cfg.hardware.model_copy(update={"mode": "emulated", "factory": "hil.wiring:make_hardware"}),
        "leds": cfg.leds.model_copy(update={"backend": "sysfs", "sysfs_root": data_dir / "leds", "name": LED_NAME}),
    }
    if cfg.clock.check == "chronyc" and not shutil.which((cfg.clock.command or ["chronyc"])[0]):
        update["clock"] = cfg.clock.model_copy(update={"check": "assume_synced"})
    broker = cfg.broker
    if creds is not None:
        broker = broker.model_copy(update={"url": creds["url"], "username": creds["username"],
                                           "password": creds["password"], "password_file": None,
                                           "tls_ca": creds["tls_ca"]})
        update.update(room=creds["room"], unit=creds["unit"])
        if creds.get("partner"):
            update["dyad"] = cfg.dyad.model_copy(update={"partner": creds["partner"]})
    elif broker_url is not None:
        broker = broker.model_copy(update={"url": broker_url, "username": cfg.unit, "password": password,
                                           "password_file": None})
    update["broker"] = broker
    return cfg.model_copy(update=update)


def write_spec(data_dir: Path, seed: int, minutes: float | None, coupling: str, lag_s: float) -> HilSpec:
    """The simulated dyad: ``coupling`` of both channels for the whole run, with quiet stretches between."""
    duration = (minutes * 60 if minutes else 3 * 3600.0) + 120.0
    sched, t = [], 30.0
    while t < duration:
        sched.append({"start_s": t, "end_s": min(t + 120.0, duration), "mode": coupling, "lag_s": lag_s,
                      "gain": 0.85, "channel": "both"})
        t += 180.0  # 2 min coupled, 1 min uncoupled
    spec = HilSpec(sim={"seed": seed, "duration_s": duration, "schedule": sched, "events": []}, t0_ns=time.time_ns())
    spec.write(data_dir / SPEC_FILE)
    return spec


def _watch_led(d: Path, stop: threading.Event) -> None:
    last = None
    while not stop.wait(0.2):
        state = led_state(d)
        if state and state != last:
            print(f"[LED] {state}", flush=True)
            last = state


def cmd_unit(args: argparse.Namespace) -> int:
    from device.unit import Unit

    creds = _read_credentials(args.credentials) if args.credentials else None
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="dyadsync-sim-unit-")
        data_dir = Path(tmp.name)
    else:
        data_dir = args.data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
    broker = None
    try:
        if args.config is not None:
            cfg = load_config(args.config)  # the loader of `dyadsync unit run`
        else:
            cfg = parse_config(_default_toml(creds["room"] if creds else "room-a", creds["unit"] if creds else "unit-a"))
        url = password = None
        if args.config is None and creds is None:
            broker, url, password = _local_broker(cfg.room, cfg.unit, data_dir)
        cfg = simulated_config(cfg, data_dir, creds, url, password)
        write_spec(data_dir, args.seed, args.minutes, args.coupling, args.lag_s)
        led_dir = _led_tree(data_dir / "leds")
        print(f"simulated unit {cfg.unit} of room {cfg.room} -> {cfg.broker.url}; data in {data_dir}; "
              f"sensors: {', '.join(f'{s.name} ({s.kind})' for s in cfg.sensors)}", flush=True)
        logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
        unit = Unit(cfg)
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_led, args=(led_dir, stop), name="led-watch", daemon=True)
        watcher.start()
        if args.minutes:
            threading.Timer(args.minutes * 60, stop.set).start()
        try:
            rc = unit.run(stop)
        finally:
            stop.set()
            watcher.join(2)
        return rc
    finally:
        if broker is not None:
            broker.stop()
        if tmp is not None:
            tmp.cleanup()


def _local_broker(room: str, unit: str, data_dir: Path) -> tuple[Any, str, str]:
    """A Mosquitto for this room on a free loopback port (or the embedded broker when Mosquitto is missing)."""
    from broker import wire
    from broker.auth import RoomAuth
    from broker.mosquitto import MosquittoProcess, find_mosquitto, write_broker_files

    if find_mosquitto() is None:
        raise ConfigError("no Mosquitto to run a local broker: apt-get install mosquitto, or give --credentials "
                          "of a hub")
    auth = RoomAuth.generate(room, [unit])
    files = write_broker_files(data_dir / "broker", auth)
    proc = MosquittoProcess(files).start()
    user, pw = auth.service_user("console")
    start = wire.Command(id="try-1-start", cmd="start", session="try-1", time_ns=time.time_ns(),
                         participants={"therapist": "T01", "client": "C01"}).encode().decode()
    sub = f"-h {proc.host} -p {proc.port} -u {user} -P {pw}"
    print(f"local broker on {proc.host}:{proc.port} (stops with this command). Watch, and start a session:\n"
          f"  mosquitto_sub {sub} -t 'dyadsync/v1/{room}/+/status' -t 'dyadsync/v1/{room}/+/ack' -v\n"
          f"  mosquitto_pub {sub} -q 1 -t dyadsync/v1/{room}/cmd -m '{start}'", flush=True)
    return proc, f"mqtt://{proc.host}:{proc.port}", auth.units[unit]

