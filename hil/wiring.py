"""The simulated room at the unit's hardware seams: the factory a unit calls in emulated mode.

A unit configured with ``hardware.mode = "emulated"`` and ``hardware.factory = "hil.wiring:make_hardware"``
calls :func:`make_hardware` once with its config and clock. The factory reads a :class:`HilSpec` (JSON)
from ``$DYADSYNC_HIL_SPEC`` or ``<data_dir>/hil-spec.json``, rebuilds the same
:class:`hil.physiology.DyadSimulator` the scenario runner scores against (same seed, same schedule: the
simulator is deterministic), and returns a provider with the three seam methods of
``device.hardware.load_hardware``:

* ``source(sensor, clock)``: for sensors of kind ``synthetic`` a :class:`SimulatedSensor` (below); for the
  hardware kinds ``None`` (the unit then builds its own driver-based source on the two other seams).
* ``i2c_bus(n)``: a fake smbus2 bus (``hil.emulators.FakeSMBus``) with the register-level MAX30102 /
  ADS1115 / TCA9548A emulators of every I2C sensor of the config on bus ``n``, fed from the simulator.
* ``serial_url(sensor)``: the pty path of an emulated firmware (``hil.emulators.FirmwareEmulator``) that
  streams the simulated signals of the sensor's roles with its own drifting clock.

Simulated time: the simulator's ``t = 0`` is UTC ``spec.t0_ns``; an emulator asks for the signal at
``t = (clock.now_ns() - t0_ns) / 1e9`` of the unit's (scaled) clock, so the unit, its sensors and the
runner share one time line. A spec without ``t0_ns`` (null) leaves it to be fixed once the unit process is
up: the factory builds the simulator, writes ``<spec>.waiting`` and waits (``t0_wait_s``) for
``<spec>.t0`` (UTC ns as text). The demo starts that way, so the session can begin a moment after the unit
is ready whatever its start-up took (:mod:`hil.demo`); the HIL runner fixes ``t0_ns`` in advance.

:class:`SimulatedSensor` is a sensor with a block-oriented interface (like a firmware that sends sample
blocks): sample ``k`` of a stream is taken at UTC ``t0_ns + k / rate`` exactly, blocks carry their block
number as sequence number. Faults: blocks listed in ``spec.drops`` are lost on the way (the sequence
number jumps, as when a FIFO overflows), and the samples inside a ``contact_loss`` event of the truth are
flagged ``CONTACT_LOST`` (the lead-off detection a sensor front end reports).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError
from core.vocab import BlockFlags
from firmware_bridge.block import SampleBlock
from firmware_bridge.errors import SensorError

logger = logging.getLogger(__name__)

SPEC_ENV = "DYADSYNC_HIL_SPEC"
SPEC_FILE = "hil-spec.json"
SPEC_VERSION = 1


@dataclass
class HilSpec:
    """What a unit process needs to emulate its part of the simulated room (JSON in a file).

    ``sim``: keyword arguments of :class:`hil.physiology.SimConfig` with ``schedule`` as a list of
    Segment dicts and ``events`` as a list of SensorEvent dicts. ``t0_ns``: UTC of simulator time 0.
    ``drops``: stream -> list of ``[t_s, n_blocks]``: at simulated time ``t_s`` the next ``n_blocks``
    blocks of that stream are lost. ``block_s``: block length of simulated sensors.
    ``serial``: ``bit_error_rate`` and ``drift_ppm`` (unit -> ppm) of the firmware emulators.
    ``faults``: timed faults executed inside the unit process, each ``{kind, at_s, duration_s, target,
    count}`` in simulator seconds: ``unplug`` (target unit: its firmware ports), ``nack_burst`` (target
    stream: its I2C chip NACKs ``count`` transactions), ``fifo_stall`` (target stream: the bus stalls the
    MAX30102 FIFO read for ``duration_s``, so the FIFO overflows).
    """

    sim: dict[str, Any]
    t0_ns: int | None
    drops: dict[str, list[list[float]]] = field(default_factory=dict)
    block_s: float = 0.1
    i2c: dict[str, Any] = field(default_factory=dict)
    serial: dict[str, Any] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)
    t0_wait_s: float = 120.0
    version: int = SPEC_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "<spec>") -> HilSpec:
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: HIL spec is not valid JSON: {exc}") from None
        if not isinstance(obj, dict) or obj.get("version") != SPEC_VERSION:
            raise ConfigError(f"{where}: HIL spec version {obj.get('version') if isinstance(obj, dict) else None!r} "
                              f"is not {SPEC_VERSION}")
        try:
            return cls(**obj)
        except TypeError as exc:
            raise ConfigError(f"{where}: bad HIL spec: {exc}") from None

    def write(self, path: Path | str) -> Path:
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, path: Path | str) -> HilSpec:
        path = Path(path)
        try:
            return cls.from_json(path.read_text(), str(path))
        except OSError as exc:
            raise ConfigError(f"cannot read HIL spec {path}: {exc}") from None

    def simulator(self) -> Any:
        """The :class:`DyadSimulator` of this spec (deterministic: the runner and every unit get the same)."""
        from hil.physiology import DyadSimulator, Segment, SensorEvent, SimConfig

        kw = dict(self.sim)
        kw["schedule"] = [Segment(**s) for s in kw.get("schedule", [])]
        kw["events"] = [SensorEvent(**e) for e in kw.get("events", [])]
        for key in ("arousal_band_hz", "hr_band_hz"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return DyadSimulator(SimConfig(**kw))

    def dropped_blocks(self, stream: str, rate_hz: float) -> set[int]:
        """Block numbers of ``stream`` that are lost (block ``b`` holds samples ``b*n .. (b+1)*n - 1``)."""
        n = block_samples(self.block_s, rate_hz)
        out: set[int] = set()
        for t_s, count in self.drops.get(stream, []):
            first = math.ceil(t_s * rate_hz / n)
            out.update(range(first, first + int(count)))
        return out


def block_samples(block_s: float, rate_hz: float) -> int:
    return max(1, round(block_s * rate_hz))


def spec_path(cfg: Any) -> Path:
    env = os.environ.get(SPEC_ENV)
    return Path(env) if env else Path(cfg.data_dir) / SPEC_FILE


def find_spec(cfg: Any) -> HilSpec:
    path = spec_path(cfg)
    if not path.exists():
        raise ConfigError(f"hil.wiring: no HIL spec: set ${SPEC_ENV} or write {path}")
    return HilSpec.read(path)


def t0_file(spec: Path | str) -> Path:
    """Where the simulator's time 0 (UTC ns) is written for a spec without ``t0_ns``."""
    return Path(str(spec) + ".t0")


def waiting_file(spec: Path | str) -> Path:
    """What a unit process writes while it waits for :func:`t0_file` (it is ready but for the time line)."""
    return Path(str(spec) + ".waiting")


def _wait_t0(path: Path, wait_s: float) -> int:
    marker, t0 = waiting_file(path), t0_file(path)
    marker.write_text(f"{os.getpid()}\n")
    logger.info("hil: simulator built; waiting up to %g s for its time line (%s)", wait_s, t0)
    deadline = time.monotonic() + wait_s
    try:
        while not t0.exists():
            if time.monotonic() > deadline:
                raise ConfigError(f"hil.wiring: {t0} did not appear within {wait_s:g} s")
            time.sleep(0.01)
    finally:
        marker.unlink(missing_ok=True)
    try:
        return int(t0.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"hil.wiring: {t0} must hold UTC nanoseconds: {exc}") from None


class SimulatedSensor:
    """A ``device.sources.Source`` reading one stream of the simulator in simulated time (see module doc)."""

    def __init__(self, name: str, stream: str, rate_hz: float, clock: Any, sim: Any, t0_ns: int, *,
                 block_s: float = 0.1, dropped: set[int] | frozenset[int] = frozenset()) -> None:
        self.name = name
        self.stream = stream
        self.streams = (stream,)
        self.rate_hz = float(rate_hz)
        self.clock = clock
        self.sim = sim
        self.t0_ns = int(t0_ns)
        self.n = block_samples(block_s, rate_hz)
        self.dropped = set(dropped)
        self.lost_blocks = 0
        self.end_s = float(sim.config.duration_s) + 9.0
        self._next_block: int | None = None

    def _t_ns(self, k: int) -> int:
        return self.t0_ns + round(k * 1e9 / self.rate_hz)

    def open(self) -> None:
        self._next_block = None

    def read(self, timeout_s: float) -> list[SampleBlock]:
        now = self.clock.now_ns()
        if self._next_block is None:  # the first whole block that starts now or later
            k = math.ceil((now - self.t0_ns) * self.rate_hz / 1e9)
            self._next_block = -(-k // self.n)
        b = self._next_block
        due_ns = self._t_ns((b + 1) * self.n)
        wait_s = (due_ns - now) / 1e9
        if wait_s > 0:
            if wait_s / self.clock.speed > timeout_s:
                time.sleep(timeout_s)
                return []
            self.clock.sleep(wait_s)
        out = []
        now = self.clock.now_ns()
        while self._t_ns((self._next_block + 1) * self.n) <= now and len(out) < 50:
            b = self._next_block
            self._next_block += 1
            if b in self.dropped:
                self.lost_blocks += 1
                continue
            k = np.arange(b * self.n, (b + 1) * self.n)
            t_s = k / self.rate_hz
            if t_s[-1] > self.end_s:
                raise SensorError(f"{self.name}: the simulated session ended at {self.end_s - 9.0:.0f} s")
            values = np.asarray(self.sim.value_at(self.stream, np.maximum(t_s, -9.9)), dtype=np.float32)
            flags = 0
            if self.sim.truth.event_mask(self.stream, t_s, ("contact_loss",)).any():
                flags |= BlockFlags.CONTACT_LOST
            out.append(SampleBlock(self.stream, b & 0xFFFFFFFF, self._t_ns(b * self.n), self.rate_hz, values,
                                   int(flags)))
        return out

    def close(self) -> None:
        pass


class SimulatedRoom:
    """The provider returned by :func:`make_hardware` (the three seams of ``device.hardware.load_hardware``)."""

    def __init__(self, cfg: Any, clock: Any, spec: HilSpec) -> None:
        self.cfg = cfg
        self.clock = clock
        self.spec = spec
        self.sim = spec.simulator()
        self.t0_ns = spec.t0_ns
        self._buses: dict[int, Any] = {}
        self._firmware: dict[str, Any] = {}
        self._chips: dict[str, Any] = {}
        self._chip_bus: dict[str, Any] = {}
        self._fault_thread: threading.Thread | None = None
        self._lock = threading.RLock()

    def sim_time_s(self) -> float:
        """Simulator time now (seconds since ``t0_ns`` on the unit's clock)."""
        return (self.clock.now_ns() - self.t0_ns) / 1e9

    # --------------------------------------------------------------------------- the three seams
    def source(self, sensor: Any, clock: Any) -> Any:
        if sensor.kind != "synthetic":
            return None
        return SimulatedSensor(sensor.name, sensor.stream, sensor.rate_hz, clock, self.sim, self.t0_ns,
                               block_s=self.spec.block_s,
                               dropped=self.spec.dropped_blocks(sensor.stream, sensor.rate_hz))

    def i2c_bus(self, number: int) -> Any:
        with self._lock:  # the unit's source threads open their sensors at the same time: one bus, one set of chips
            if number not in self._buses:
                self._buses[number] = self._build_i2c_bus(number)
                self._start_faults()
            return self._buses[number]

    def serial_url(self, sensor: Any) -> str:
        with self._lock:
            if sensor.name not in self._firmware:
                self._firmware[sensor.name] = self._start_firmware(sensor)
                self._start_faults()
            return self._firmware[sensor.name].path

    # ------------------------------------------------------------------------------- emulators
    def _signal(self, stream: str, offset_s: float = 0.0) -> Any:
        sim = self.sim
        lo, hi = -9.9, float(sim.config.duration_s) + 9.9

        def f(t_s: float) -> float:
            return float(sim.value_at(stream, min(max(t_s + offset_s, lo), hi)))

        return f

    def _build_i2c_bus(self, number: int) -> Any:
        """A FakeSMBus with a TCA9548A (if any sensor is behind one) and the ADS1115/MAX30102 emulators of
        every I2C sensor of the config on bus ``number``, their signals taken from the simulator."""
        from firmware_bridge.gsr import GsrFrontEnd
        from hil.emulators import ADS1115Emulator, FakeSMBus, MAX30102Emulator, TCA9548AEmulator

        bus = _StallableBus(FakeSMBus(number), self.clock)
        muxes: dict[int, Any] = {}
        now = self.sim_time_s
        for s in self.cfg.sensors:
            if s.kind not in ("ads1115", "max30102") or s.i2c_bus != number:
                continue
            if s.kind == "ads1115":
                g = s.gsr
                front = GsrFrontEnd(calibration_v=g.calibration_v, supply_v=g.supply_v, r_ref_ohm=g.r_ref_ohm)
                eda = self._signal(s.stream)

                def volts(t_s: float, eda=eda, front=front) -> float:
                    us = eda(t_s)
                    return front.volts_for(us) if us > 1e-3 else front.calibration_v  # open circuit

                chip = ADS1115Emulator({s.ads_channel: volts}, address=s.address or 0x48, clock=now)
            else:
                ir = self._signal(s.stream)
                chip = MAX30102Emulator(red=lambda t, ir=ir: 0.8 * ir(t), ir=ir, address=s.address or 0x57,
                                        clock=now)
            self._chips[s.stream] = chip
            if s.mux_address is None:
                bus.bus.attach(chip)
            else:
                if s.mux_address not in muxes:
                    muxes[s.mux_address] = bus.bus.attach(TCA9548AEmulator(address=s.mux_address, clock=now))
                muxes[s.mux_address].attach(s.mux_channel, chip)
            self._chip_bus[s.stream] = bus
        return bus

    def _start_firmware(self, sensor: Any) -> Any:
        """An emulated firmware on a pty for a ``serial`` sensor with url ``hil://<unit>/<role>[+<role>]``."""
        from hil.emulators import EmulatedChannel, FirmwareEmulator

        roles = [r for r in sensor.url.rsplit("/", 1)[-1].split("+") if r]
        if not sensor.url.startswith("hil://") or not roles or any(r not in ("therapist", "client") for r in roles):
            raise ConfigError(f"sensor {sensor.name}: emulated serial url must be 'hil://<unit>/<role>', "
                              f"got {sensor.url!r}")
        holder = {"base": self.sim_time_s()}
        channels = []
        for i, role in enumerate(roles):
            for j, (sig, rate, units, scale) in enumerate((("eda", 32.0, "uS", 1e-4), ("ppg", 100.0, "counts", 1.0))):
                fn = self._signal(f"{role}/{sig}")
                channels.append(EmulatedChannel(2 * i + j, role, sig, rate, units,
                                                lambda t, fn=fn: fn(t + holder["base"]), scale=scale))
        port_dir = Path(self.cfg.data_dir) / f"pty-{sensor.name}"
        port_dir.mkdir(parents=True, exist_ok=True)
        drift = float(self.spec.serial.get("drift_ppm", {}).get(self.cfg.unit, 0.0))
        emu = FirmwareEmulator(channels, port_dir, speed=self.clock.speed, drift_ppm=drift,
                               bit_error_rate=float(self.spec.serial.get("bit_error_rate", 0.0)),
                               seed=int(self.spec.sim.get("seed", 0)), link_name=f"tty-{sensor.name}")
        emu.start()
        holder["base"] = self.sim_time_s() - emu.sim_time()  # emulator time 0 on the simulator's time line
        logger.info("hil: firmware emulator for %s on %s (drift %+g ppm)", sensor.name, emu.path, drift)
        return emu

    def _start_faults(self) -> None:
        if self._fault_thread is not None or not self.spec.faults:
            return
        self._fault_thread = threading.Thread(target=self._run_faults, name="hil-faults", daemon=True)
        self._fault_thread.start()

    def _run_faults(self) -> None:
        for f in sorted(self.spec.faults, key=lambda f: f["at_s"]):
            while self.sim_time_s() < f["at_s"]:
                time.sleep(min(0.01, max(0.001, (f["at_s"] - self.sim_time_s()) / self.clock.speed)))
            kind, target = f["kind"], f.get("target", "")
            if kind == "unplug" and target == self.cfg.unit:
                for emu in self._firmware.values():
                    emu.unplug(float(f["duration_s"]))
            elif kind == "nack_burst" and target in self._chips:
                self._chips[target].faults.nack_next(int(f.get("count", 1)))
            elif kind == "fifo_stall" and target in self._chip_bus:
                self._chip_bus[target].stall(float(f["duration_s"]), self._chips[target])
            else:
                continue
            logger.info("hil: fault %s on %s at %.1f s", kind, target, self.sim_time_s())


class _StallableBus:
    """A bus wrapper whose next transaction reaching a given chip blocks for a while (clock stretching by a
    stuck device: the whole bus waits): the driver's FIFO read completes late, and meanwhile the sensor's
    FIFO overflows. Behind a mux, a transaction reaches the chip only while its channel is selected."""

    def __init__(self, bus: Any, clock: Any) -> None:
        self.bus = bus
        self.clock = clock
        self._stall_s = 0.0
        self._stall_chip: Any = None
        self._lock = threading.Lock()

    def stall(self, duration_s: float, chip: Any = None) -> None:
        with self._lock:
            self._stall_s = duration_s
            self._stall_chip = chip

    def _reaches(self, args: tuple) -> bool:
        if self._stall_chip is None:
            return True
        if not args:
            return False
        addr = getattr(args[0], "addr", args[0])  # i2c_rdwr passes messages
        return isinstance(addr, int) and self._stall_chip in self.bus._targets(addr)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.bus, name)
        if not callable(attr) or name in ("attach",):
            return attr

        def call(*args: Any, **kw: Any) -> Any:
            with self._lock:
                stall = 0.0
                if self._stall_s and self._reaches(args):
                    stall, self._stall_s = self._stall_s, 0.0
            if stall:
                logger.info("hil: %s to 0x%02x stalls for %.3f s", name, getattr(args[0], "addr", args[0]), stall)
                self.clock.sleep(stall)
            return attr(*args, **kw)

        return call


def make_hardware(cfg: Any, clock: Any) -> SimulatedRoom:
    """``hardware.factory = "hil.wiring:make_hardware"``: the simulated room for this unit."""
    spec = find_spec(cfg)
    room = SimulatedRoom(cfg, clock, spec)
    if spec.t0_ns is None:
        spec.t0_ns = room.t0_ns = _wait_t0(spec_path(cfg), spec.t0_wait_s)
    logger.info("hil: simulated room, seed %s, t0 %d ns, %d sensor(s)", spec.sim.get("seed"), spec.t0_ns,
                len(cfg.sensors))
    return room
