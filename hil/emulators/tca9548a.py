"""Register-level model of the TI TCA9548A 1-to-8 I2C multiplexer (datasheet SCPS207).

Datasheet facts modelled: addresses 0x70-0x77; a single 8-bit control register, written and read without
a register pointer; bit n enables downstream channel n (several may be enabled at once); power-on value
0x00 (all channels off). If a master sends several bytes, each byte is taken as the control value in turn.
"""

from __future__ import annotations

from collections.abc import Callable

from .i2c import EmulatedChip, SimClock


class TCA9548AEmulator(EmulatedChip):
    """TCA9548A at ``address``; ``attach(channel, chip)`` puts a chip on downstream channel 0..7."""

    def __init__(self, *, address: int = 0x70, clock: Callable[[], float] | SimClock | None = None) -> None:
        if not 0x70 <= address <= 0x77:
            raise ValueError(f"TCA9548A address must be 0x70..0x77, got 0x{address:02x}")
        super().__init__(address, clock)
        self.control = 0x00
        self.downstream: dict[int, list[EmulatedChip]] = {ch: [] for ch in range(8)}

    def attach(self, channel: int, chip: EmulatedChip) -> EmulatedChip:
        if not 0 <= channel <= 7:
            raise ValueError(f"TCA9548A channel must be 0..7, got {channel}")
        self.downstream[channel].append(chip)
        return chip

    def chips_behind(self) -> list[EmulatedChip]:
        """Chips on the enabled channels (the fake bus dispatches to these)."""
        return [c for ch in range(8) if self.control & (1 << ch) for c in self.downstream[ch]]

    def _read(self, reg: int | None, n: int) -> list[int]:
        return [self.control] * n

    def _write(self, reg: int | None, data: list[int]) -> None:
        for b in ([reg] if reg is not None else []) + list(data):
            self.control = b & 0xFF
