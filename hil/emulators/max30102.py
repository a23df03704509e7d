"""Register-level model of the Maxim MAX30102 pulse-oximetry sensor (datasheet 19-7740 rev 1).

Datasheet facts modelled:
- 7-bit address 0x57; PART_ID (0xFF) reads 0x15; REV_ID at 0xFE.
- Register pointer auto-increments after each byte, except at FIFO_DATA (0x07), where it stays so that a
  burst read drains the FIFO.
- FIFO of 32 samples. FIFO_WR_PTR (0x04) and FIFO_RD_PTR (0x06) are 5-bit pointers (modulo 32). A sample is
  3 bytes per active LED (HR mode: red; SpO2 mode: red then IR), MSB first; the ADC value is left-justified
  in bits 17:0 (lower resolutions read with zero low bits); bits 23:18 are don't-care (filled with junk
  here, so a driver that does not mask to 18 bits fails).
- When the FIFO is full and a sample arrives: with FIFO_ROLLOVER_EN = 0 the new sample is lost; with 1 the
  oldest is overwritten. Either way OVF_COUNTER (0x05) counts the lost samples and saturates at 0x1F; it
  resets to zero when a complete sample is popped (read).
- FIFO_CONFIG 0x08: SMP_AVE[7:5] (1, 2, 4, 8, 16, 32 samples averaged), FIFO_ROLLOVER_EN[4], FIFO_A_FULL[3:0].
- MODE_CONFIG 0x09: SHDN[7], RESET[6] (self-clearing, restores power-on state), MODE[2:0] (0b010 HR,
  0b011 SpO2, 0b111 multi-LED).
- SPO2_CONFIG 0x0A: SPO2_ADC_RGE[6:5] (2048..16384 nA), SPO2_SR[4:2] (50, 100, 200, 400, 800, 1000,
  1600, 3200 sps), LED_PW[1:0] (69, 118, 215, 411 µs -> 15..18 bits).
- LED1_PA 0x0C (red), LED2_PA 0x0D (IR): 0.2 mA per LSB (0x00 = off).
- INT_STATUS1 0x00: A_FULL[7], PPG_RDY[6], ALC_OVF[5], PWR_RDY[0]; cleared by reading.
- Die temperature: set TEMP_EN (0x21 bit 0); after ~29 ms TINT (0x1F, two's complement °C) and TFRAC
  (0x20, 0.0625 °C steps) hold the result, TEMP_EN clears and DIE_TEMP_RDY (0x01 bit 1) is set.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .i2c import EmulatedChip, SimClock

SAMPLE_RATES = (50, 100, 200, 400, 800, 1000, 1600, 3200)
AVERAGES = (1, 2, 4, 8, 16, 32, 32, 32)
RESOLUTION_BITS = (15, 16, 17, 18)
FIFO_DEPTH = 32
TEMP_CONVERSION_S = 0.029

# Writable bits per register (others read back as 0 / are read-only).
WRITE_MASK = {
    0x02: 0xE0,
    0x03: 0x02,
    0x04: 0x1F,
    0x05: 0x1F,
    0x06: 0x1F,
    0x08: 0xFF,
    0x09: 0xC7,
    0x0A: 0x7F,
    0x0C: 0xFF,
    0x0D: 0xFF,
    0x11: 0x77,
    0x12: 0x77,
    0x21: 0x01,
}


class MAX30102Emulator(EmulatedChip):
    """MAX30102 at ``address`` (0x57). ``red(t_s)`` and ``ir(t_s)`` give the 18-bit ADC count at true time
    t_s (the model truncates to the configured resolution and saturates at 2**18 - 1); a LED with zero
    current reads 0. ``part_id`` can be changed to emulate a wrong chip."""

    def __init__(
        self,
        red: Callable[[float], float],
        ir: Callable[[float], float],
        *,
        address: int = 0x57,
        clock: Callable[[], float] | SimClock | None = None,
        part_id: int = 0x15,
        rev_id: int = 0x03,
        temperature_c: float = 31.25,
        junk_upper_bits: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(address, clock)
        self.red = red
        self.ir = ir
        self.part_id = part_id
        self.rev_id = rev_id
        self.temperature_c = temperature_c
        self.junk_upper_bits = junk_upper_bits
        self._rng = np.random.default_rng(seed)
        self.samples_generated = 0
        self.samples_lost = 0  # samples that never reached the driver because the FIFO was full
        self.resets = 0
        self._power_on()

    # ---------------------------------------------------------------------------------- state
    def _power_on(self) -> None:
        self.regs = bytearray(256)
        self.regs[0x00] = 0x01  # PWR_RDY
        self.fifo: list[tuple[int, ...]] = [(0, 0)] * FIFO_DEPTH
        self.count = 0
        self.byte_pos = 0
        self._next_sample_t: float | None = None
        self._temp_ready_t: float | None = None
        self._sample_k = 0
        self._t_start = 0.0

    @property
    def wr_ptr(self) -> int:
        return self.regs[0x04]

    @property
    def rd_ptr(self) -> int:
        return self.regs[0x06]

    @property
    def ovf_counter(self) -> int:
        return self.regs[0x05]

    @property
    def mode(self) -> int:
        return self.regs[0x09] & 0x07

    @property
    def active(self) -> bool:
        return not (self.regs[0x09] & 0x80) and self.mode in (0x02, 0x03, 0x07)

    @property
    def leds(self) -> int:
        if self.mode == 0x02:
            return 1
        if self.mode == 0x03:
            return 2
        if self.mode == 0x07:
            return max(1, sum(1 for r in (0x11, 0x12) for s in (self.regs[r] & 0x07, (self.regs[r] >> 4) & 0x07) if s))
        return 0

    @property
    def output_rate_hz(self) -> float:
        sr = SAMPLE_RATES[(self.regs[0x0A] >> 2) & 0x07]
        return sr / AVERAGES[(self.regs[0x08] >> 5) & 0x07]

    @property
    def resolution_bits(self) -> int:
        return RESOLUTION_BITS[self.regs[0x0A] & 0x03]

    def led_current_ma(self, led: int) -> float:
        return self.regs[0x0C + led] * 0.2

    # --------------------------------------------------------------------------------- timing
    def advance_to(self, t_s: float) -> None:
        """Produce every sample due up to simulated time ``t_s``."""
        if self._temp_ready_t is not None and t_s >= self._temp_ready_t:
            self._temp_ready_t = None
            t = self.temperature_c
            tint = int(np.floor(t))
            self.regs[0x1F] = tint & 0xFF
            self.regs[0x20] = int(round((t - tint) / 0.0625)) & 0x0F
            self.regs[0x21] &= ~0x01
            self.regs[0x01] |= 0x02
        if not self.active:
            self._next_sample_t = None
            return
        if self._next_sample_t is None:
            self._restart_timer(t_s)
        while self._next_sample_t <= t_s:
            self._push(self._next_sample_t)
            self._sample_k += 1
            self._next_sample_t = self._t_start + self._sample_k / self.output_rate_hz

    def _restart_timer(self, t_s: float) -> None:
        self._t_start = t_s
        self._sample_k = 1
        self._next_sample_t = t_s + 1.0 / self.output_rate_hz

    def advance(self, dt_s: float) -> None:
        """Advance the shared clock (if it is a SimClock) by ``dt_s`` and produce the samples due."""
        if isinstance(self.clock, SimClock):
            self.clock.advance(dt_s)
        self.advance_to(self.now())

    def _adc(self, led: int, t_s: float) -> int:
        if self.regs[0x0C + led] == 0:
            value = 0
        else:
            fn = self.red if led == 0 else self.ir
            value = int(min(max(round(float(fn(t_s))), 0), (1 << 18) - 1))
        drop = 18 - self.resolution_bits
        value = (value >> drop) << drop
        if self.junk_upper_bits:
            value |= int(self._rng.integers(0, 64)) << 18
        return value

    def _push(self, t_s: float) -> None:
        self.samples_generated += 1
        sample = tuple(self._adc(led, t_s) for led in range(self.leds))
        self.regs[0x00] |= 0x40  # PPG_RDY
        if self.count == FIFO_DEPTH:
            self.regs[0x05] = min(self.regs[0x05] + 1, 0x1F)
            self.samples_lost += 1
            if not self.regs[0x08] & 0x10:
                return  # rollover disabled: the new sample is lost
            self.regs[0x06] = (self.regs[0x06] + 1) % FIFO_DEPTH  # overwrite the oldest
            self.count -= 1
            self.byte_pos = 0
        self.fifo[self.wr_ptr] = sample
        self.regs[0x04] = (self.wr_ptr + 1) % FIFO_DEPTH
        self.count += 1
        a_full = self.regs[0x08] & 0x0F
        if FIFO_DEPTH - self.count <= a_full:
            self.regs[0x00] |= 0x80

    def _timing_cfg(self) -> tuple[int, int, int]:
        return (self.regs[0x08] >> 5, self.regs[0x09] & 0x87, (self.regs[0x0A] >> 2) & 0x07)

    # --------------------------------------------------------------------------- transactions
    def _read(self, reg: int | None, n: int) -> list[int]:
        self.advance_to(self.now())
        ptr = 0 if reg is None else reg
        out = []
        for _ in range(n):
            out.append(self._read_reg(ptr))
            if ptr != 0x07 and ptr < 0xFF:
                ptr += 1
        return out

    def _read_reg(self, reg: int) -> int:
        if reg == 0x07:
            return self._read_fifo_byte()
        if reg == 0xFF:
            return self.part_id
        if reg == 0xFE:
            return self.rev_id
        value = self.regs[reg]
        if reg in (0x00, 0x01):
            self.regs[reg] = 0  # interrupt status is cleared by reading it
        return value

    def _read_fifo_byte(self) -> int:
        nbytes = 3 * max(self.leds, 1)
        sample = self.fifo[self.rd_ptr]
        led, k = divmod(self.byte_pos, 3)
        word = sample[led] if led < len(sample) else 0
        byte = (word >> (8 * (2 - k))) & 0xFF
        if self.count == 0:
            return byte  # empty FIFO: stale data, pointers do not move
        self.byte_pos += 1
        if self.byte_pos >= nbytes:
            self.byte_pos = 0
            self.regs[0x06] = (self.rd_ptr + 1) % FIFO_DEPTH
            self.count -= 1
            self.regs[0x05] = 0  # OVF_COUNTER resets when a complete sample is popped
        return byte

    def _write(self, reg: int | None, data: list[int]) -> None:
        self.advance_to(self.now())
        if reg is None:
            return
        ptr = reg
        for value in data:
            self._write_reg(ptr, value)
            if ptr != 0x07 and ptr < 0xFF:
                ptr += 1

    def _write_reg(self, reg: int, value: int) -> None:
        if reg == 0x09 and value & 0x40:
            self.resets += 1
            self._power_on()  # RESET: every register to its power-on state; the bit clears itself
            return
        mask = WRITE_MASK.get(reg)
        if mask is None:
            return  # read-only or reserved
        old_active = self.active
        old_cfg = self._timing_cfg()
        self.regs[reg] = value & mask
        if reg in (0x04, 0x06):
            self.count = (self.wr_ptr - self.rd_ptr) % FIFO_DEPTH
            self.byte_pos = 0
        if reg == 0x21 and value & 0x01:
            self._temp_ready_t = self.now() + TEMP_CONVERSION_S
        if self._timing_cfg() != old_cfg or old_active != self.active:
            # the sample timer restarts with the new configuration, from the moment of this write
            self._next_sample_t = None
            if self.active:
                self._restart_timer(self.now())
