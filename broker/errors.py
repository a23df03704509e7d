"""Errors of the wire contract and the hub, rooted in :mod:`core.errors`."""

from __future__ import annotations

from core.errors import DyadsyncError


class WireError(DyadsyncError, ValueError):
    """A message on the wire (MQTT topic or payload) is malformed, truncated or of an unknown version."""


class BrokerError(DyadsyncError, ConnectionError):
    """The MQTT broker could not be started, reached or authenticated against."""


__all__ = ["BrokerError", "WireError"]
