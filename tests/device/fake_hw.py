"""A hardware provider for ``hardware.mode = "emulated"`` tests: records what the unit asked for and
serves synthetic sources in place of the configured sensors."""

from __future__ import annotations

from device.sources import SyntheticSource

CALLS: list[tuple] = []


class Provider:
    def __init__(self, cfg, clock) -> None:
        self.cfg = cfg
        self.clock = clock

    def i2c_bus(self, number: int):
        CALLS.append(("i2c_bus", number))
        raise OSError(f"no emulated bus {number}")

    def serial_url(self, sensor) -> str:
        CALLS.append(("serial_url", sensor.name))
        return "loop://"

    def source(self, sensor, clock):
        CALLS.append(("source", sensor.name))
        stream = sensor.stream or "client/eda"
        return SyntheticSource(sensor.name, stream, sensor.rate_hz, clock, block_s=0.1, seed=7)


def make(cfg, clock) -> Provider:
    CALLS.append(("make", cfg.unit, clock.speed))
    return Provider(cfg, clock)
