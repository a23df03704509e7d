"""The project's exception root.

Every error dyadsync raises on purpose derives from :class:`DyadsyncError` and, where one fits, from a
builtin too, so callers may catch either (``except ValueError`` still catches a malformed payload).
"""

from __future__ import annotations


class DyadsyncError(Exception):
    """Root of every error raised by dyadsync on purpose."""


class ConfigError(DyadsyncError, ValueError):
    """A configuration file or value is wrong; the message names the file, the key and what was found."""


class WireError(DyadsyncError, ValueError):
    """A message on the wire (MQTT topic or payload) is malformed, truncated or of an unknown version."""


class ProtocolError(DyadsyncError, ValueError):
    """A serial frame or handshake from the firmware is malformed or incompatible."""


class SensorError(DyadsyncError, OSError):
    """A sensor is missing, answers wrongly or keeps failing on its bus."""


class SensorTimeout(SensorError, TimeoutError):
    """A sensor did not answer in time."""


class BrokerError(DyadsyncError, ConnectionError):
    """The MQTT broker could not be started, reached or authenticated against."""
