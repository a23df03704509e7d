"""Register-level I2C device emulators and a firmware emulator on a pty (ARCHITECTURE §2).

Written from datasheet facts, not from the drivers in ``firmware_bridge``; every emulator records what
the driver did (``log``) and takes fault knobs (``faults``: NACK bursts, stalls, bit errors, dropped
bytes, unplug). Sensor signals come from callables ``signal(t_s) -> value`` so the hil simulator can feed
them.
"""

from .ads1115 import ADS1115Emulator
from .firmware import EmulatedChannel, FirmwareEmulator
from .i2c import EmulatedChip, FakeSMBus, I2CFaults, SimClock
from .max30102 import MAX30102Emulator
from .tca9548a import TCA9548AEmulator

__all__ = [
    "ADS1115Emulator",
    "EmulatedChannel",
    "EmulatedChip",
    "FakeSMBus",
    "FirmwareEmulator",
    "I2CFaults",
    "MAX30102Emulator",
    "SimClock",
    "TCA9548AEmulator",
]
