"""Hardware side of a dyadsync unit: serial firmware protocol, I2C sensor drivers, clock mapping."""

from .block import BlockFlags, SampleBlock
from .errors import (
    BrokerError,
    ConfigError,
    DyadsyncError,
    ProtocolError,
    SensorError,
    SensorTimeout,
    WireError,
)

__all__ = [
    "BlockFlags",
    "BrokerError",
    "ConfigError",
    "DyadsyncError",
    "ProtocolError",
    "SampleBlock",
    "SensorError",
    "SensorTimeout",
    "WireError",
]
