"""Register-level model of the TI ADS1115 16-bit delta-sigma ADC (datasheet SBAS444).

Datasheet facts modelled:
- Addresses 0x48-0x4B (ADDR pin to GND, VDD, SDA, SCL).
- A pointer register selects one of four 16-bit registers: conversion 0x00, config 0x01, Lo_thresh 0x02,
  Hi_thresh 0x03. Registers are sent MSB first. Power-on config is 0x8583, Lo_thresh 0x8000,
  Hi_thresh 0x7FFF, conversion 0x0000.
- Config: OS[15] (write 1 in power-down state: start one conversion; read 0 while converting, 1 when
  idle), MUX[14:12] (AIN0-AIN1, AIN0-AIN3, AIN1-AIN3, AIN2-AIN3, AIN0-GND, AIN1-GND, AIN2-GND,
  AIN3-GND), PGA[11:9] (±6.144, ±4.096, ±2.048, ±1.024, ±0.512, ±0.256 V, the last three codes all
  ±0.256), MODE[8] (0 continuous, 1 single-shot/power-down), DR[7:5] (8, 16, 32, 64, 128, 250, 475,
  860 SPS), COMP_MODE[4], COMP_POL[3], COMP_LAT[2], COMP_QUE[1:0].
- A conversion takes 1/DR; the internal oscillator may be off by up to ±10 % (``rate_error``).
- Output code: two's complement, ``round(V / FSR * 32768)`` clipped to -32768..32767.
- Only the input pair selected by MUX is converted.
"""

from __future__ import annotations

from collections.abc import Callable

from .i2c import EmulatedChip, SimClock

DATA_RATES = (8, 16, 32, 64, 128, 250, 475, 860)
FSR_V = (6.144, 4.096, 2.048, 1.024, 0.512, 0.256, 0.256, 0.256)
MUX_PAIRS = ((0, 1), (0, 3), (1, 3), (2, 3), (0, None), (1, None), (2, None), (3, None))


class ADS1115Emulator(EmulatedChip):
    """ADS1115 at ``address``. ``inputs[i](t_s)`` is the voltage on AINi at true time t_s (missing: 0 V).

    rate_error: relative error of the conversion clock (+0.05: 5 % fast). ``conversions`` records every
    finished conversion as ``(t_done_s, mux, code)``. Fault knobs: ``faults`` (see I2CFaults) and
    ``hang_conversions``.
    """

    def __init__(
        self,
        inputs: dict[int, Callable[[float], float]],
        *,
        address: int = 0x48,
        clock: Callable[[], float] | SimClock | None = None,
        rate_error: float = 0.0,
    ) -> None:
        if not 0x48 <= address <= 0x4B:
            raise ValueError(f"ADS1115 address must be 0x48..0x4B, got 0x{address:02x}")
        if abs(rate_error) > 0.5:
            raise ValueError(f"rate_error must be within ±0.5, got {rate_error}")
        super().__init__(address, clock)
        self.inputs = dict(inputs)
        self.rate_error = rate_error
        self.conversions: list[tuple[float, int, int]] = []
        self.hang_conversions = False  # fault knob: conversions never finish (OS stays 0)
        self.pointer = 0
        self.regs = {0x00: 0x0000, 0x01: 0x8583, 0x02: 0x8000, 0x03: 0x7FFF}
        self._busy_until: float | None = None  # single-shot conversion in progress
        self._cont_start: float | None = None  # continuous mode: start of the conversion train
        self._cont_done = 0

    # ------------------------------------------------------------------------------ helpers
    @property
    def mux(self) -> int:
        return (self.regs[0x01] >> 12) & 0x07

    @property
    def fsr_v(self) -> float:
        return FSR_V[(self.regs[0x01] >> 9) & 0x07]

    @property
    def continuous(self) -> bool:
        return not (self.regs[0x01] >> 8) & 0x01

    @property
    def conversion_s(self) -> float:
        return 1.0 / (DATA_RATES[(self.regs[0x01] >> 5) & 0x07] * (1.0 + self.rate_error))

    def volts(self, mux: int, t_s: float) -> float:
        p, n = MUX_PAIRS[mux]
        vp = float(self.inputs[p](t_s)) if p in self.inputs else 0.0
        vn = float(self.inputs[n](t_s)) if n is not None and n in self.inputs else 0.0
        return vp - vn

    def _convert(self, t_done: float) -> None:
        mid = t_done - self.conversion_s / 2  # a delta-sigma result averages the conversion period
        code = round(self.volts(self.mux, mid) / self.fsr_v * 32768)
        code = max(-32768, min(32767, code))
        self.regs[0x00] = code & 0xFFFF
        self.conversions.append((t_done, self.mux, code))

    def advance_to(self, t_s: float) -> None:
        if self._busy_until is not None and t_s >= self._busy_until and not self.hang_conversions:
            self._convert(self._busy_until)
            self._busy_until = None
            self.regs[0x01] |= 0x8000  # idle again
        if self.continuous and self._cont_start is not None:
            while self._cont_start + (self._cont_done + 1) * self.conversion_s <= t_s:
                self._cont_done += 1
                self._convert(self._cont_start + self._cont_done * self.conversion_s)

    def advance(self, dt_s: float) -> None:
        if isinstance(self.clock, SimClock):
            self.clock.advance(dt_s)
        self.advance_to(self.now())

    # ------------------------------------------------------------------------- transactions
    def _read(self, reg: int | None, n: int) -> list[int]:
        self.advance_to(self.now())
        if reg is not None:
            self.pointer = reg & 0x03
        value = self.regs[self.pointer]
        if self.pointer == 0x01 and (self._busy_until is not None):
            value &= 0x7FFF
        raw = [(value >> 8) & 0xFF, value & 0xFF]
        return [raw[i % 2] for i in range(n)]

    def _write(self, reg: int | None, data: list[int]) -> None:
        self.advance_to(self.now())
        if reg is None:
            if data:
                self.pointer = data[0] & 0x03
            return
        self.pointer = reg & 0x03
        if len(data) < 2:
            return  # pointer only
        value = (data[0] << 8) | data[1]
        if self.pointer == 0x00:
            return  # conversion register is read-only
        if self.pointer != 0x01:
            self.regs[self.pointer] = value
            return
        now = self.now()
        start = bool(value & 0x8000)
        self.regs[0x01] = (value & 0x7FFF) | (self.regs[0x01] & 0x8000)
        if self.continuous:
            self._busy_until = None
            self._cont_start = now  # a config write restarts the conversion train
            self._cont_done = 0
            self.regs[0x01] |= 0x8000
        else:
            self._cont_start = None
            if start and self._busy_until is None:
                self._busy_until = now + self.conversion_s
                self.regs[0x01] &= 0x7FFF
