"""Sources on real (or emulated) hardware: I2C sensors through :mod:`firmware_bridge` drivers and the
firmware over a serial URL. The drivers receive the bus object / URL from the hardware provider."""

from __future__ import annotations

import importlib.util
from typing import Any

from firmware_bridge.errors import SensorError

from .clock import Clock
from .sources import Source


def make_source(sensor: Any, clock: Clock, hardware: Any) -> Source:
    if importlib.util.find_spec("firmware_bridge.drivers") is None and importlib.util.find_spec(
        "firmware_bridge.serial_link"
    ) is None:
        raise SensorError(
            f"sensor {sensor.name!r}: kind {sensor.kind!r} needs the firmware_bridge drivers, not in this build"
        )
    raise SensorError(f"sensor {sensor.name!r}: kind {sensor.kind!r} is not supported yet")
