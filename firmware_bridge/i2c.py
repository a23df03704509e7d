"""Shared pieces of the I2C drivers: register maps as data, masked field writes, retries with backoff.

The seam is a ``bus`` object with the smbus2 ``SMBus`` methods a driver uses (``read_byte_data``,
``write_byte_data``, ``read_i2c_block_data``, ``write_i2c_block_data``, ``read_byte``, ``write_byte``);
``smbus2.SMBus(1)`` satisfies it, so do the emulators in ``hil.emulators``.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError

from .errors import SensorError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BitField:
    """A field of ``mask`` bits inside a register; ``values`` maps user values to raw codes (optional)."""

    name: str
    mask: int
    values: Mapping[Any, int] | None = None

    @property
    def shift(self) -> int:
        return (self.mask & -self.mask).bit_length() - 1

    def encode(self, value: Any) -> int:
        """Raw field code for ``value`` (looked up in ``values`` if given), checked to fit the mask."""
        if self.values is not None:
            if value not in self.values:
                raise ConfigError(f"{self.name} must be one of {sorted(self.values)}, got {value!r}")
            code = self.values[value]
        else:
            code = int(value)
        if code < 0 or (code << self.shift) & ~self.mask:
            raise ConfigError(f"{self.name}: value {value!r} does not fit mask 0x{self.mask:x}")
        return code

    def decode(self, raw: int) -> Any:
        code = (raw & self.mask) >> self.shift
        if self.values is None:
            return code
        for k, v in self.values.items():
            if v == code:
                return k
        return code

    def insert(self, register_value: int, value: Any) -> int:
        """``register_value`` with this field set to ``value``: ``(old & ~mask) | ((code << shift) & mask)``."""
        return (register_value & ~self.mask) | ((self.encode(value) << self.shift) & self.mask)


@dataclass(frozen=True)
class Register:
    name: str
    address: int
    fields: tuple[BitField, ...] = ()
    width_bits: int = 8

    def field(self, name: str) -> BitField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"register {self.name} has no field {name!r}")

    def compose(self, base: int = 0, **values: Any) -> int:
        """Register value from ``base`` with each named field replaced (masked)."""
        out = base
        for name, value in values.items():
            out = self.field(name).insert(out, value)
        return out


def register_map(*regs: Register) -> dict[str, Register]:
    return {r.name: r for r in regs}


@dataclass
class BusCounters:
    """Counters a driver exposes for the unit's status message."""

    bus_errors: int = 0  # OSErrors seen on the bus (each failed attempt)
    retries: int = 0  # attempts repeated after an OSError
    failures: int = 0  # operations that failed after every retry
    reinits: int = 0  # chip re-initialisations after persistent failures
    errnos: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bus_errors": self.bus_errors,
            "retries": self.retries,
            "failures": self.failures,
            "reinits": self.reinits,
            "errnos": {errno.errorcode.get(k, str(k)): v for k, v in self.errnos.items()},
        }


class I2CDriver:
    """Base of the chip drivers: address checks and bus calls retried with exponential backoff.

    retries: repeats after the first failed attempt. backoff_s: first wait, doubled each retry.
    sleep / monotonic: injected for simulated time (default ``time.sleep`` / ``time.monotonic``).
    """

    CHIP = "I2C device"
    ADDRESSES: tuple[int, ...] = ()

    def __init__(
        self,
        bus: Any,
        address: int,
        *,
        retries: int = 3,
        backoff_s: float = 0.001,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if self.ADDRESSES and address not in self.ADDRESSES:
            raise ConfigError(
                f"{self.CHIP} address must be one of {[hex(a) for a in self.ADDRESSES]}, got {address!r}"
            )
        if retries < 0:
            raise ConfigError(f"retries must be >= 0, got {retries}")
        self.bus = bus
        self.address = address
        self.retries = retries
        self.backoff_s = backoff_s
        self.sleep = sleep
        self.monotonic = monotonic
        self.counters = BusCounters()

    def _io(self, method: str, *args: Any) -> Any:
        """Call ``bus.<method>(address, *args)``, retrying OSErrors; SensorError after the last retry."""
        fn = getattr(self.bus, method)
        try:  # the first attempt without the retry loop's set-up (a sensor polled at 32-100 Hz all day)
            return fn(self.address, *args)
        except SensorError:
            raise
        except OSError as exc:
            return self._io_call(lambda addr: fn(addr, *args), method, first_error=exc)

    def _io_call(self, op: Callable[[int], Any], what: str, first_error: OSError | None = None) -> Any:
        """Run ``op(address)``, retrying OSErrors with exponential backoff; SensorError after the last.
        ``first_error``: the first attempt was already made and failed with it."""
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                if first_error is not None:
                    exc, first_error = first_error, None
                    raise exc
                return op(self.address)
            except SensorError:
                raise
            except OSError as exc:
                self.counters.bus_errors += 1
                self.counters.errnos[exc.errno or 0] = self.counters.errnos.get(exc.errno or 0, 0) + 1
                if attempt == self.retries:
                    self.counters.failures += 1
                    raise SensorError(
                        exc.errno,
                        f"{self.CHIP} at 0x{self.address:02x}: {what} failed after {attempt + 1} attempts: {exc}",
                    ) from exc
                self.counters.retries += 1
                logger.debug("%s at 0x%02x: %s failed (%s), retry in %.4f s", self.CHIP, self.address, what, exc, delay)
                self.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def read_reg(self, reg: int) -> int:
        return int(self._io("read_byte_data", reg)) & 0xFF

    def write_reg(self, reg: int, value: int) -> None:
        self._io("write_byte_data", reg, value & 0xFF)

    def read_block(self, reg: int, length: int) -> list[int]:
        data = list(self._io("read_i2c_block_data", reg, length))
        if len(data) != length:
            raise SensorError(
                errno.EIO, f"{self.CHIP} at 0x{self.address:02x}: asked {length} bytes from 0x{reg:02x}, got {len(data)}"
            )
        return data
