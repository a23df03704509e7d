"""The hardware seam of the unit: which hardware provider, and one :class:`~device.sources.Source` per sensor.

The provider is :class:`RealHardware` on a Pi (smbus2 buses, serial URLs) or, with ``hardware.mode =
"emulated"``, the object ``hardware.factory`` (``module:function``) returns — the simulators plug in here
and only here (ARCHITECTURE §2), so the unit under test is the unit that runs on a Pi.
"""

from __future__ import annotations

import importlib
from typing import Any

from core.errors import ConfigError
from firmware_bridge.errors import SensorError

from .clock import Clock
from .hwsources import make_source
from .sources import Source, SyntheticSource


class RealHardware:
    """The Pi's hardware: ``smbus2.SMBus(n)`` for I2C, the configured URL for serial sensors."""

    def __init__(self) -> None:
        self._buses: dict[int, Any] = {}

    def i2c_bus(self, number: int) -> Any:
        if number not in self._buses:
            import smbus2

            try:
                self._buses[number] = smbus2.SMBus(number)
            except OSError as exc:
                raise SensorError(f"cannot open I2C bus {number}: {exc}") from exc
        return self._buses[number]

    def serial_url(self, sensor: Any) -> str:
        return sensor.url

    def source(self, sensor: Any, clock: Clock) -> Source | None:
        return None


def load_hardware(cfg: Any, clock: Clock) -> Any:
    """The hardware provider: :class:`RealHardware`, or ``factory(config, clock)`` for ``mode='emulated'``.

    A provider has ``i2c_bus(n)`` (an smbus2-like object), ``serial_url(sensor)`` and ``source(sensor,
    clock)`` (a whole :class:`Source` to use instead of the built-in one, or None).
    """
    if cfg.hardware.mode == "real":
        return RealHardware()
    mod_name, _, func_name = cfg.hardware.factory.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"hardware.factory {cfg.hardware.factory!r} cannot be loaded: {exc}") from exc
    return factory(cfg, clock)


def build_sources(cfg: Any, clock: Clock, hardware: Any) -> list[Source]:
    """One :class:`Source` per configured sensor."""
    out: list[Source] = []
    for s in cfg.sensors:
        custom = getattr(hardware, "source", None)
        src = custom(s, clock) if custom else None
        if src is None:
            src = _builtin_source(s, clock, hardware)
        out.append(src)
    return out


def _builtin_source(s: Any, clock: Clock, hardware: Any) -> Source:
    if s.kind == "synthetic":
        return SyntheticSource(s.name, s.stream, s.rate_hz, clock, block_s=s.block_s, seed=s.seed)
    return make_source(s, clock, hardware)
