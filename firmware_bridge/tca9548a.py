"""TCA9548A 1-to-8 I2C multiplexer driver (TI datasheet SCPS207).

One control byte, written and read without a register pointer; bit n enables channel n. Two sensors
with the same address (two MAX30102 at 0x57, one per participant) sit on different channels;
:meth:`TCA9548A.channel_bus` gives each driver a bus object that selects its channel before every call.

Drivers of the chips behind one mux usually run in different threads (one acquisition thread per sensor),
so selecting a channel and the transaction that follows must be one step: otherwise another thread can
switch the mux in between and the transaction reaches the other participant's chip at the same address
(its FIFO drained into the wrong stream, its conversion register read as ours). :class:`MuxChannelBus`
holds the mux's lock (:attr:`TCA9548A.lock`) from the select to the end of the transaction.
"""

from __future__ import annotations

import errno
import logging
import threading
from typing import Any

from core.errors import ConfigError

from .errors import SensorError
from .i2c import I2CDriver

logger = logging.getLogger(__name__)


class TCA9548A(I2CDriver):
    """``TCA9548A(bus, address=0x70, *, retries=3, backoff_s=0.001, sleep=time.sleep, monotonic=time.monotonic)``."""

    CHIP = "TCA9548A"
    ADDRESSES = tuple(range(0x70, 0x78))

    def __init__(self, bus: Any, address: int = 0x70, **io: Any) -> None:
        super().__init__(bus, address, **io)
        self._selected: int | None = None  # control byte last written successfully; None = unknown
        self.selects = 0
        self.lock = threading.RLock()  # held from a channel select to the end of the transaction behind it

    def set_control(self, value: int) -> None:
        if not 0 <= value <= 0xFF:
            raise ConfigError(f"TCA9548A control byte must be 0..255, got {value!r}")
        self._selected = None
        self._io("write_byte", value)
        self._selected = value
        self.selects += 1

    def read_control(self) -> int:
        return int(self._io("read_byte")) & 0xFF

    def select(self, channel: int | None) -> None:
        """Enable only ``channel`` (0..7), or none with None; skipped if already selected."""
        if channel is not None and not 0 <= channel <= 7:
            raise ConfigError(f"TCA9548A channel must be 0..7 or None, got {channel!r}")
        value = 0 if channel is None else 1 << channel
        with self.lock:
            if self._selected != value:
                self.set_control(value)

    def verify(self) -> None:
        """Read back the control byte; a mismatch (mux reset by a glitch) raises SensorError."""
        with self.lock:
            got = self.read_control()
            want = self._selected
            if want is not None and got != want:
                self._selected = None
        if want is not None and got != want:
            raise SensorError(errno.EIO, f"TCA9548A at 0x{self.address:02x}: control reads 0x{got:02x}, wrote 0x{want:02x}")

    def invalidate(self) -> None:
        """Forget the cached selection (the next call writes the control byte again)."""
        self._selected = None

    def channel_bus(self, channel: int) -> MuxChannelBus:
        if not 0 <= channel <= 7:
            raise ConfigError(f"TCA9548A channel must be 0..7, got {channel!r}")
        return MuxChannelBus(self, channel)


class MuxChannelBus:
    """An smbus2-like bus that reaches the chips on one TCA9548A channel.

    Every method selects the channel first (a cached no-op if already selected) and runs the transaction
    while holding the mux's lock, so threads sharing the mux cannot switch it in between; any OSError
    invalidates the cache so the next call re-selects, in case the mux itself missed a write.
    """

    _METHODS = (
        "read_byte",
        "write_byte",
        "read_byte_data",
        "write_byte_data",
        "read_word_data",
        "write_word_data",
        "read_i2c_block_data",
        "write_i2c_block_data",
        "i2c_rdwr",
    )

    def __init__(self, mux: TCA9548A, channel: int) -> None:
        self.mux = mux
        self.channel = channel

    def __getattr__(self, name: str):
        if name not in self._METHODS:
            raise AttributeError(name)
        target = getattr(self.mux.bus, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with self.mux.lock:
                self.mux.select(self.channel)
                try:
                    return target(*args, **kwargs)
                except OSError:
                    self.mux.invalidate()
                    raise

        self.__dict__[name] = call  # made once per method: the next lookups find it without __getattr__
        return call
