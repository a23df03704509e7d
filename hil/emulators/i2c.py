"""A fake I2C bus with the smbus2 ``SMBus`` methods, dispatching by address to emulated chips.

Transactions are modelled as the bytes on the wire: a register read is "write the register pointer, then
read n bytes"; how a chip answers (auto-increment, pointer registers) is the chip model's business. A
transaction addressed to nobody, or to a chip with an injected NACK, raises ``OSError(EREMOTEIO)`` as the
Linux i2c-dev driver does; an injected stall raises ``OSError(ETIMEDOUT)`` (clock stretching past the
adapter's timeout). A failed transaction changes no chip state.

Chips behind a TCA9548A are reachable only while their mux channel is enabled; if two enabled channels
hold chips at the same address, reads see the wired-AND of their answers (open-drain bus) and writes reach
both, as on a real bus.
"""

from __future__ import annotations

import ctypes
import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

I2C_SMBUS_BLOCK_MAX = 32
I2C_M_RD = 0x0001


class SimClock:
    """Simulated seconds. ``sleep`` advances time, so a driver given ``sleep=clock.sleep`` and
    ``monotonic=clock.now`` runs in simulated time against emulators sharing the clock."""

    def __init__(self, t0_s: float = 0.0) -> None:
        self.t_s = float(t0_s)

    def now(self) -> float:
        return self.t_s

    __call__ = now

    def advance(self, dt_s: float) -> None:
        if dt_s < 0:
            raise ValueError(f"time cannot go backwards (dt_s={dt_s})")
        self.t_s += dt_s

    def sleep(self, dt_s: float) -> None:
        self.advance(max(0.0, dt_s))


@dataclass
class I2CFaults:
    """Fault knobs of one chip (or of the whole bus).

    nack_next(n): the next n transactions are NACKed (``OSError(EREMOTEIO)``).
    stall_next(n, stall_s): the next n transactions time out (``OSError(ETIMEDOUT)``) after ``stall_s``
        simulated seconds (the clock advances if it can).
    bit_error_rate: each bit read from the chip is flipped with this probability.
    drop_byte_rate: each byte read may be lost (later bytes shift up, 0xFF fills the end: the bus idles high).
    unplugged: the chip does not answer at all.
    """

    bit_error_rate: float = 0.0
    drop_byte_rate: float = 0.0
    unplugged: bool = False
    nack_pending: int = 0
    stall_pending: int = 0
    stall_s: float = 0.0
    nacks_injected: int = 0
    stalls_injected: int = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def nack_next(self, n: int) -> None:
        self.nack_pending += n

    def stall_next(self, n: int, stall_s: float = 0.025) -> None:
        self.stall_pending += n
        self.stall_s = stall_s

    def check(self, clock: object, what: str) -> None:
        if self.unplugged:
            raise OSError(errno.EREMOTEIO, f"Remote I/O error (no ACK: {what}, device unplugged)")
        if self.nack_pending > 0:
            self.nack_pending -= 1
            self.nacks_injected += 1
            raise OSError(errno.EREMOTEIO, f"Remote I/O error (injected NACK: {what})")
        if self.stall_pending > 0:
            self.stall_pending -= 1
            self.stalls_injected += 1
            advance = getattr(clock, "advance", None)
            if advance is not None:
                advance(self.stall_s)
            raise OSError(errno.ETIMEDOUT, f"Connection timed out (injected stall: {what})")

    def corrupt(self, data: list[int]) -> list[int]:
        if self.drop_byte_rate > 0 and data:
            keep = [b for b in data if self.rng.random() >= self.drop_byte_rate]
            data = keep + [0xFF] * (len(data) - len(keep))
        if self.bit_error_rate > 0 and data:
            out = []
            for b in data:
                for bit in range(8):
                    if self.rng.random() < self.bit_error_rate:
                        b ^= 1 << bit
                out.append(b)
            data = out
        return data


class EmulatedChip:
    """Base of emulated chips: an address, fault knobs, a clock and a log of what the driver did.

    Subclasses implement ``_read(reg, n)`` / ``_write(reg, data)`` for register transactions (``reg`` None
    for a plain byte read/write without register pointer).
    ``log`` holds ``(t_s, op, reg, data)`` tuples: op is ``"read"`` or ``"write"``.
    """

    def __init__(self, address: int, clock: Callable[[], float] | SimClock | None = None) -> None:
        if not 0x03 <= address <= 0x77:
            raise ValueError(f"7-bit I2C address must be 0x03..0x77, got 0x{address:02x}")
        self.address = address
        self.clock = clock if clock is not None else SimClock()
        self.faults = I2CFaults()
        self.log: list[tuple[float, str, int | None, tuple[int, ...]]] = []

    def now(self) -> float:
        return float(self.clock())

    def read(self, reg: int | None, n: int) -> list[int]:
        self.faults.check(self.clock, f"read 0x{self.address:02x}")
        data = [int(b) & 0xFF for b in self._read(reg, n)]
        self.log.append((self.now(), "read", reg, tuple(data)))
        return self.faults.corrupt(data)

    def write(self, reg: int | None, data: list[int]) -> None:
        self.faults.check(self.clock, f"write 0x{self.address:02x}")
        data = [int(b) & 0xFF for b in data]
        self.log.append((self.now(), "write", reg, tuple(data)))
        self._write(reg, data)

    def writes_to(self, reg: int) -> list[tuple[int, ...]]:
        """Data of every logged write to ``reg`` (for assertions)."""
        return [d for _, op, r, d in self.log if op == "write" and r == reg]

    def _read(self, reg: int | None, n: int) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _write(self, reg: int | None, data: list[int]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class FakeSMBus:
    """The smbus2 ``SMBus`` methods the drivers use, over emulated chips.

    ``attach(chip)`` puts a chip directly on the bus; a TCA9548A emulator attached here exposes the chips
    attached to its channels. ``faults`` are bus-wide (every transaction).
    """

    def __init__(self, bus: int = 1) -> None:
        self.bus = bus
        self.chips: list[EmulatedChip] = []
        self.faults = I2CFaults()
        self.transactions = 0
        self.closed = False

    def attach(self, chip: EmulatedChip) -> EmulatedChip:
        self.chips.append(chip)
        return chip

    def _targets(self, addr: int) -> list[EmulatedChip]:
        found = [c for c in self.chips if c.address == addr and not c.faults.unplugged]
        for c in self.chips:
            behind = getattr(c, "chips_behind", None)
            if behind is not None and not c.faults.unplugged:
                found += [d for d in behind() if d.address == addr and not d.faults.unplugged]
        return found

    def _check_addr(self, addr: int) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "bus closed")
        if not 0x03 <= addr <= 0x77:
            raise ValueError(f"bad I2C address {addr!r}")
        self.transactions += 1
        self.faults.check(None, f"bus transaction to 0x{addr:02x}")

    def _read(self, addr: int, reg: int | None, n: int) -> list[int]:
        self._check_addr(addr)
        targets = self._targets(addr)
        if not targets:
            raise OSError(errno.EREMOTEIO, f"Remote I/O error (no device at 0x{addr:02x})")
        answers = [t.read(reg, n) for t in targets]
        out = answers[0]
        for a in answers[1:]:
            out = [x & y for x, y in zip(out, a, strict=True)]  # wired-AND of open-drain drivers
        return self.faults.corrupt(out)

    def _write(self, addr: int, reg: int | None, data: list[int]) -> None:
        self._check_addr(addr)
        targets = self._targets(addr)
        if not targets:
            raise OSError(errno.EREMOTEIO, f"Remote I/O error (no device at 0x{addr:02x})")
        for t in targets:
            t.write(reg, data)

    # ------------------------------------------------------------------------- smbus2 interface
    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int:
        return self._read(i2c_addr, None, 1)[0]

    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None:
        self._write(i2c_addr, None, [value])

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        return self._read(i2c_addr, register, 1)[0]

    def write_byte_data(self, i2c_addr: int, register: int, value: int, force: bool | None = None) -> None:
        self._write(i2c_addr, register, [value])

    def read_word_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        lo, hi = self._read(i2c_addr, register, 2)  # SMBus words travel low byte first
        return lo | (hi << 8)

    def write_word_data(self, i2c_addr: int, register: int, value: int, force: bool | None = None) -> None:
        self._write(i2c_addr, register, [value & 0xFF, (value >> 8) & 0xFF])

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int, force: bool | None = None) -> list[int]:
        if length > I2C_SMBUS_BLOCK_MAX:
            raise ValueError(f"Desired block length over {I2C_SMBUS_BLOCK_MAX} bytes")
        return self._read(i2c_addr, register, length)

    def write_i2c_block_data(self, i2c_addr: int, register: int, data: list[int], force: bool | None = None) -> None:
        if len(data) > I2C_SMBUS_BLOCK_MAX:
            raise ValueError(f"Data length cannot exceed {I2C_SMBUS_BLOCK_MAX} bytes")
        self._write(i2c_addr, register, list(data))

    def i2c_rdwr(self, *i2c_msgs) -> None:
        """Combined transactions: ``write(addr, [reg])`` followed by ``read(addr, n)`` reads n bytes from reg
        (no 32-byte limit); a lone write sends ``[reg, data...]``; a lone read reads without register."""
        pending_reg: int | None = None
        pending_addr: int | None = None
        for msg in i2c_msgs:
            if msg.flags & I2C_M_RD:
                if pending_addr is not None and pending_addr != msg.addr:
                    raise OSError(errno.EINVAL, "combined transaction to two addresses")
                data = self._read(msg.addr, pending_reg, msg.len)
                ctypes.memmove(msg.buf, bytes(data), msg.len)
                pending_reg = pending_addr = None
            else:
                raw = list(bytes(msg))
                if pending_addr is not None:
                    self._write(pending_addr, pending_reg, [])
                if len(raw) == 1:
                    pending_reg, pending_addr = raw[0], msg.addr
                else:
                    self._write(msg.addr, raw[0] if raw else None, raw[1:])
        if pending_addr is not None:
            self._write(pending_addr, pending_reg, [])

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeSMBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
