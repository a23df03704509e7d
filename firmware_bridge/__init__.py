"""Hardware side of a dyadsync unit: serial firmware protocol, I2C sensor drivers, clock mapping."""

from .ads1115 import ADS1115, MultiplexedScanner
from .block import BlockFlags, SampleBlock
from .clock import ClockMapper
from .errors import (
    BrokerError,
    ConfigError,
    DyadsyncError,
    ProtocolError,
    SensorError,
    SensorTimeout,
    WireError,
)
from .gsr import GsrFrontEnd
from .link import SerialLink
from .max30102 import MAX30102
from .tca9548a import TCA9548A

__all__ = [
    "ADS1115",
    "ClockMapper",
    "GsrFrontEnd",
    "MAX30102",
    "MultiplexedScanner",
    "SerialLink",
    "TCA9548A",
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
