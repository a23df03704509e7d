"""The simulated room at the unit's hardware seams: the factory a unit calls in emulated mode.

A unit configured with ``hardware.mode = "emulated"`` and ``hardware.factory = "hil.wiring:make_hardware"``
calls :func:`make_hardware` once with its config and clock. The factory reads a :class:`HilSpec` (JSON)
from ``$DYADSYNC_HIL_SPEC`` or ``<data_dir>/hil-spec.json``, rebuilds the same
:class:`hil.physiology.DyadSimulator` the scenario runner scores against (same seed, same schedule: the
simulator is deterministic), and returns a provider with the three seam methods of
``device.sources.load_hardware``:

* ``source(sensor, clock)``: for sensors of kind ``synthetic`` a :class:`SimulatedSensor` (below); for the
  hardware kinds ``None`` (the unit then builds its own driver-based source on the two other seams).
* ``i2c_bus(n)``: a fake smbus2 bus (``hil.emulators.FakeSMBus``) with the register-level MAX30102 /
  ADS1115 / TCA9548A emulators of every I2C sensor of the config on bus ``n``, fed from the simulator.
* ``serial_url(sensor)``: the pty path of an emulated firmware (``hil.emulators.FirmwareEmulator``) that
  streams the simulated signals of the sensor's roles with its own drifting clock.

Simulated time: the simulator's ``t = 0`` is UTC ``spec.t0_ns``; an emulator asks for the signal at
``t = (clock.now_ns() - t0_ns) / 1e9`` of the unit's (scaled) clock, so the unit, its sensors and the
runner share one time line.

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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from firmware_bridge.block import BlockFlags, SampleBlock
from firmware_bridge.errors import ConfigError, SensorError

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
    ``i2c``: fault knobs of the I2C emulators, ``serial``: of the firmware emulators (see docs/hil.md).
    """

    sim: dict[str, Any]
    t0_ns: int
    drops: dict[str, list[list[float]]] = field(default_factory=dict)
    block_s: float = 0.1
    i2c: dict[str, Any] = field(default_factory=dict)
    serial: dict[str, Any] = field(default_factory=dict)
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


def find_spec(cfg: Any) -> HilSpec:
    env = os.environ.get(SPEC_ENV)
    path = Path(env) if env else Path(cfg.data_dir) / SPEC_FILE
    if not path.exists():
        raise ConfigError(f"hil.wiring: no HIL spec: set ${SPEC_ENV} or write {path}")
    return HilSpec.read(path)


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
            values = np.asarray(self.sim.value_at(self.stream, t_s), dtype=np.float32)
            flags = 0
            if self.sim.truth.event_mask(self.stream, t_s, ("contact_loss",)).any():
                flags |= BlockFlags.CONTACT_LOST
            out.append(SampleBlock(self.stream, b & 0xFFFFFFFF, self._t_ns(b * self.n), self.rate_hz, values,
                                   int(flags)))
        return out

    def close(self) -> None:
        pass


class SimulatedRoom:
    """The provider returned by :func:`make_hardware` (the three seams of ``device.sources.load_hardware``)."""

    def __init__(self, cfg: Any, clock: Any, spec: HilSpec) -> None:
        self.cfg = cfg
        self.clock = clock
        self.spec = spec
        self.sim = spec.simulator()
        self.t0_ns = spec.t0_ns
        self._buses: dict[int, Any] = {}
        self._firmware: dict[str, Any] = {}

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
        if number not in self._buses:
            from . import emulated

            self._buses[number] = emulated.build_i2c_bus(self, number)
        return self._buses[number]

    def serial_url(self, sensor: Any) -> str:
        if sensor.name not in self._firmware:
            from . import emulated

            self._firmware[sensor.name] = emulated.start_firmware(self, sensor)
        return self._firmware[sensor.name].path


def make_hardware(cfg: Any, clock: Any) -> SimulatedRoom:
    """``hardware.factory = "hil.wiring:make_hardware"``: the simulated room for this unit."""
    spec = find_spec(cfg)
    room = SimulatedRoom(cfg, clock, spec)
    logger.info("hil: simulated room, seed %s, t0 %d ns, %d sensor(s)", spec.sim.get("seed"), spec.t0_ns,
                len(cfg.sensors))
    return room
