"""Errors of the hardware side (serial firmware protocol, I2C sensors), rooted in :mod:`core.errors`."""

from __future__ import annotations

from core.errors import DyadsyncError


class ProtocolError(DyadsyncError, ValueError):
    """A serial frame or handshake from the firmware is malformed or incompatible."""


class SensorError(DyadsyncError, OSError):
    """A sensor is missing, answers wrongly or keeps failing on its bus."""


class SensorTimeout(SensorError, TimeoutError):
    """A sensor did not answer in time."""


__all__ = ["ProtocolError", "SensorError", "SensorTimeout"]
