"""MAX30102 PPG sensor driver (register facts from the Maxim datasheet 19-7740).

SpO2 mode (red + IR), FIFO read in bursts of whole 6-byte samples within the SMBus 32-byte block limit
(5 samples = 30 bytes per transaction), pointers taken modulo 32, samples masked to 18 bits, and the
overflow counter turned into an exact lost-sample count. FIFO rollover is enabled, so samples lost to a
full FIFO are always the ones *before* the samples read next (the oldest were overwritten).

``OVF_COUNTER`` saturates at 31: a read that finds it at 31 lost at least 31 samples and the count is
flagged inexact (``FifoData.lost_exact``); poll at least every 31 sample periods plus the 32-deep FIFO
(0.63 s at 100 Hz) to keep the count exact.

A FIFO that fills up *while* it is being read (a drain started on an almost full FIFO, or a drain delayed
between the pointer read and the data read) overwrites samples that the count did not expect, and the next
popped sample resets ``OVF_COUNTER``: that loss would be silent. Every overwrite also moves ``FIFO_RD_PTR``
on. So when a drain took long enough for the FIFO to fill up, the pointers are read again: the read pointer
further on than the samples popped plus ``OVF_COUNTER`` say is the number overwritten during the drain,
added to the loss before it (``FifoData.overwritten``; exact in position with one burst read, where the
overwrites precede the data; inside the drain with the 5-sample SMBus reads). A drain not checked that way
is checked by the next one (the loss is then counted one drain late). Each drain also reports its pointer
snapshot (``FifoData.snapshot_s``, driver clock before and after the pointer read, the second one if
taken; ``FifoData.queued``: samples taken after the drained ones by then) so that a caller can time the
samples by the chip's sample clock (:class:`firmware_bridge.fifoclock.FifoClock`) instead of by when the
drain happened.
"""

from __future__ import annotations

import errno
import logging
import math
from dataclasses import dataclass

import numpy as np

from core.errors import ConfigError

from .errors import SensorError, SensorTimeout
from .i2c import BitField, I2CDriver, Register, register_map

logger = logging.getLogger(__name__)

PART_ID_VALUE = 0x15
FIFO_DEPTH = 32
BYTES_PER_SAMPLE = 6  # SpO2 mode: 3 bytes red + 3 bytes IR
SAMPLES_PER_READ = 5  # 30 bytes <= 32-byte SMBus block limit
MASK_18 = (1 << 18) - 1
LED_MA_PER_LSB = 0.2

SAMPLE_RATES_HZ = {50: 0, 100: 1, 200: 2, 400: 3, 800: 4, 1000: 5, 1600: 6, 3200: 7}
PULSE_WIDTHS_US = {69: 0, 118: 1, 215: 2, 411: 3}
ADC_RANGES_NA = {2048: 0, 4096: 1, 8192: 2, 16384: 3}
AVERAGES = {1: 0, 2: 1, 4: 2, 8: 3, 16: 4, 32: 5}
MODES = {"hr": 0b010, "spo2": 0b011, "multi": 0b111}
# Highest sample rate per pulse width in SpO2 mode (datasheet table "SpO2 mode, allowed settings").
MAX_RATE_SPO2 = {69: 1600, 118: 1000, 215: 800, 411: 400}

REGS = register_map(
    Register("INT_STATUS1", 0x00, (BitField("a_full", 0x80), BitField("ppg_rdy", 0x40), BitField("pwr_rdy", 0x01))),
    Register("INT_ENABLE1", 0x02, (BitField("a_full_en", 0x80), BitField("ppg_rdy_en", 0x40))),
    Register("FIFO_WR_PTR", 0x04, (BitField("ptr", 0x1F),)),
    Register("OVF_COUNTER", 0x05, (BitField("count", 0x1F),)),
    Register("FIFO_RD_PTR", 0x06, (BitField("ptr", 0x1F),)),
    Register("FIFO_DATA", 0x07),
    Register(
        "FIFO_CONFIG",
        0x08,
        (BitField("smp_ave", 0xE0, AVERAGES), BitField("rollover_en", 0x10), BitField("a_full", 0x0F)),
    ),
    Register("MODE_CONFIG", 0x09, (BitField("shdn", 0x80), BitField("reset", 0x40), BitField("mode", 0x07, MODES))),
    Register(
        "SPO2_CONFIG",
        0x0A,
        (
            BitField("adc_range_na", 0x60, ADC_RANGES_NA),
            BitField("sample_rate_hz", 0x1C, SAMPLE_RATES_HZ),
            BitField("pulse_width_us", 0x03, PULSE_WIDTHS_US),
        ),
    ),
    Register("LED1_PA", 0x0C, (BitField("code", 0xFF),)),
    Register("LED2_PA", 0x0D, (BitField("code", 0xFF),)),
    Register("TEMP_INT", 0x1F),
    Register("TEMP_FRAC", 0x20, (BitField("frac", 0x0F),)),
    Register("TEMP_CONFIG", 0x21, (BitField("temp_en", 0x01),)),
    Register("REV_ID", 0xFE),
    Register("PART_ID", 0xFF),
)


@dataclass(frozen=True)
class FifoData:
    """One FIFO drain. ``red``/``ir`` are 18-bit ADC counts (uint32). ``lost_before`` samples were lost
    before these (FIFO overflow); ``lost_exact`` is False when the overflow counter saturated or the chip
    had to be re-initialised (then ``lost_before`` is a lower bound). ``snapshot_s``: the driver clock just
before and just after the pointer snapshot the drain is based on."""

    red: np.ndarray
    ir: np.ndarray
    lost_before: int = 0
    lost_exact: bool = True
    reinitialised: bool = False
    snapshot_s: tuple[float, float] = (math.nan, math.nan)  # driver clock before / after the pointer read
    overwritten: int = 0  # of lost_before: overwritten while a drain was being read
    queued: int = 0  # samples taken after these by the time of the snapshot (left in the FIFO, or lost after)

    @property
    def n(self) -> int:
        return int(self.red.shape[0])


class MAX30102(I2CDriver):
    """MAX30102 on an smbus2-like ``bus``.

    Constructor: ``MAX30102(bus, address=0x57, *, sample_rate_hz=100, pulse_width_us=411,
    adc_range_na=16384, sample_average=1, led_red_ma=7.0, led_ir_ma=7.0, fifo_a_full=15, retries=3,
    backoff_s=0.001, reset_timeout_s=0.1, sleep=time.sleep, monotonic=time.monotonic)``. Every argument is
    validated and used; call :meth:`init` before reading.
    """

    CHIP = "MAX30102"
    ADDRESSES = (0x57,)

    def __init__(
        self,
        bus,
        address: int = 0x57,
        *,
        sample_rate_hz: int = 100,
        pulse_width_us: int = 411,
        adc_range_na: int = 16384,
        sample_average: int = 1,
        led_red_ma: float = 7.0,
        led_ir_ma: float = 7.0,
        fifo_a_full: int = 15,
        reset_timeout_s: float = 0.1,
        use_i2c_rdwr: bool = False,
        **io,
    ) -> None:
        super().__init__(bus, address, **io)
        for name, value, table in (
            ("sample_rate_hz", sample_rate_hz, SAMPLE_RATES_HZ),
            ("pulse_width_us", pulse_width_us, PULSE_WIDTHS_US),
            ("adc_range_na", adc_range_na, ADC_RANGES_NA),
            ("sample_average", sample_average, AVERAGES),
        ):
            if value not in table:
                raise ConfigError(f"MAX30102 {name} must be one of {sorted(table)}, got {value!r}")
        if sample_rate_hz > MAX_RATE_SPO2[pulse_width_us]:
            raise ConfigError(
                f"MAX30102: {sample_rate_hz} Hz is not allowed with a {pulse_width_us} us pulse in SpO2 mode "
                f"(max {MAX_RATE_SPO2[pulse_width_us]} Hz)"
            )
        for name, ma in (("led_red_ma", led_red_ma), ("led_ir_ma", led_ir_ma)):
            if not 0.0 <= ma <= 255 * LED_MA_PER_LSB:
                raise ConfigError(f"MAX30102 {name} must be within 0..51 mA, got {ma!r}")
        if not 0 <= fifo_a_full <= 15:
            raise ConfigError(f"MAX30102 fifo_a_full must be 0..15, got {fifo_a_full!r}")
        self.sample_rate_hz = sample_rate_hz
        self.pulse_width_us = pulse_width_us
        self.adc_range_na = adc_range_na
        self.sample_average = sample_average
        self.led_red_ma = led_red_ma
        self.led_ir_ma = led_ir_ma
        self.fifo_a_full = fifo_a_full
        self.reset_timeout_s = reset_timeout_s
        self.use_i2c_rdwr = use_i2c_rdwr
        self.initialised = False
        self._ever_initialised = False
        self.lost_samples = 0
        self.lost_inexact_events = 0
        self.overflows = 0
        self.overwritten = 0  # samples overwritten while a drain was being read (found at the next drain)
        self.samples_read = 0
        self._expect_rd: int | None = None  # FIFO_RD_PTR after the last drain, if no sample was overwritten
        # (host time, samples left in the FIFO then) after the last drain or the FIFO's clearing: tells a full
        # FIFO whose overflow counter is still 0 (the pointers meet) from an empty one
        self._level_mark: tuple[float, int] | None = None

    @property
    def output_rate_hz(self) -> float:
        return self.sample_rate_hz / self.sample_average

    @staticmethod
    def led_code(ma: float) -> int:
        return min(255, round(ma / LED_MA_PER_LSB))

    # ------------------------------------------------------------------------------------ setup
    def check_part_id(self) -> int:
        part = self.read_reg(REGS["PART_ID"].address)
        if part != PART_ID_VALUE:
            raise SensorError(
                errno.ENODEV,
                f"no MAX30102 at address 0x{self.address:02x}: PART_ID (0xFF) read 0x{part:02x}, "
                f"expected 0x{PART_ID_VALUE:02x}",
            )
        return part

    def init(self) -> None:
        """Reset, check the part id, configure SpO2 mode and clear the FIFO."""
        self.initialised = False
        mode = REGS["MODE_CONFIG"]
        self.write_reg(mode.address, mode.compose(reset=1))
        deadline = self.monotonic() + self.reset_timeout_s
        while self.read_reg(mode.address) & mode.field("reset").mask:
            if self.monotonic() > deadline:
                raise SensorTimeout(
                    errno.ETIMEDOUT, f"MAX30102 at 0x{self.address:02x}: RESET bit did not clear in {self.reset_timeout_s} s"
                )
            self.sleep(0.001)
        self.check_part_id()
        self.read_reg(REGS["INT_STATUS1"].address)  # clear PWR_RDY
        self.write_reg(REGS["FIFO_CONFIG"].address, REGS["FIFO_CONFIG"].compose(
            smp_ave=self.sample_average, rollover_en=1, a_full=self.fifo_a_full))
        self.write_reg(REGS["SPO2_CONFIG"].address, REGS["SPO2_CONFIG"].compose(
            adc_range_na=self.adc_range_na, sample_rate_hz=self.sample_rate_hz, pulse_width_us=self.pulse_width_us))
        self.write_reg(REGS["LED1_PA"].address, self.led_code(self.led_red_ma))
        self.write_reg(REGS["LED2_PA"].address, self.led_code(self.led_ir_ma))
        self._clear_fifo()
        self.write_reg(mode.address, mode.compose(mode="spo2"))
        self._verify_config()
        self.initialised = True
        self._ever_initialised = True
        logger.info("MAX30102 at 0x%02x: SpO2 mode, %d Hz, %d us", self.address, self.sample_rate_hz, self.pulse_width_us)

    def _clear_fifo(self) -> None:
        self._io("write_i2c_block_data", REGS["FIFO_WR_PTR"].address, [0, 0, 0])  # WR_PTR, OVF, RD_PTR
        self._expect_rd = 0
        self._level_mark = (self.monotonic(), 0)

    def _verify_config(self) -> None:
        want = {
            "SPO2_CONFIG": REGS["SPO2_CONFIG"].compose(
                adc_range_na=self.adc_range_na, sample_rate_hz=self.sample_rate_hz, pulse_width_us=self.pulse_width_us),
            "MODE_CONFIG": REGS["MODE_CONFIG"].compose(mode="spo2"),
        }
        for name, value in want.items():
            got = self.read_reg(REGS[name].address)
            if got != value:
                raise SensorError(
                    errno.EIO, f"MAX30102 at 0x{self.address:02x}: {name} reads 0x{got:02x} after writing 0x{value:02x}"
                )

    # ------------------------------------------------------------------------------------- FIFO
    def read_fifo(self) -> FifoData:
        """Drain the FIFO. Bus errors are retried; if they persist the chip is re-initialised (the FIFO
        content is then lost and the block flagged inexact). If re-initialisation fails too,
        :class:`SensorError` is raised and the next call tries again, so an acquisition loop that catches
        SensorError recovers by itself when the sensor comes back."""
        if not self._ever_initialised:
            raise SensorError(errno.EIO, f"MAX30102 at 0x{self.address:02x}: call init() first")
        if self.initialised:
            try:
                return self._read_fifo()
            except SensorError as exc:
                logger.warning("%s; re-initialising", exc)
                self.initialised = False
        self.counters.reinits += 1
        self._expect_rd = None
        self.init()
        self.lost_inexact_events += 1
        empty = np.zeros(0, dtype=np.uint32)
        return FifoData(empty, empty, 0, lost_exact=False, reinitialised=True)

    def _filled_since_mark(self, t: float) -> bool:
        """At host time ``t``, has the FIFO had time to fill up since the last drain (at least half full by
        the sample rate: an empty FIFO that far on would mean the chip stopped sampling)?"""
        if self._level_mark is None:
            return False
        t_mark, level = self._level_mark
        return level + (t - t_mark) * self.output_rate_hz >= 0.5 * FIFO_DEPTH

    def _read_fifo(self) -> FifoData:
        t0 = self.monotonic()
        wr, ovf, rd = self.read_block(REGS["FIFO_WR_PTR"].address, 3)  # one transaction: consistent snapshot
        t1 = self.monotonic()
        wr &= 0x1F
        ovf &= 0x1F
        rd &= 0x1F
        n = (wr - rd) % FIFO_DEPTH
        if n == 0 and (ovf > 0 or self._filled_since_mark(t1)):
            # full: the pointers meet. With 32 samples and none lost yet OVF_COUNTER is still 0, so a poll late
            # by 0.32 s or more (at 100 Hz) would read an empty FIFO and leave its 32 samples, and the FIFO clock
            # would take the snapshot for a count 32 samples short (polls dropped, stamps off for a stretch)
            n = FIFO_DEPTH
        overwritten = 0
        if self._expect_rd is not None and ovf < 0x1F:
            # each overwrite moved RD_PTR on; the ones OVF_COUNTER no longer counts happened during the last drain
            overwritten = (rd - self._expect_rd - ovf) % FIFO_DEPTH
        raw = bytearray()
        t_data = self.monotonic()  # samples arriving from here on stay in the FIFO (or overwrite)
        if self.use_i2c_rdwr and n:
            raw += self._read_rdwr(REGS["FIFO_DATA"].address, n * BYTES_PER_SAMPLE)
        left = 0 if self.use_i2c_rdwr else n
        while left > 0:
            k = min(SAMPLES_PER_READ, left)
            raw += bytes(self.read_block(REGS["FIFO_DATA"].address, k * BYTES_PER_SAMPLE))
            left -= k
        words = np.frombuffer(bytes(raw), dtype=np.uint8).reshape(-1, 3).astype(np.uint32)
        values = ((words[:, 0] << 16) | (words[:, 1] << 8) | words[:, 2]) & MASK_18
        red = np.ascontiguousarray(values[0::2])
        ir = np.ascontiguousarray(values[1::2])
        exact = ovf < 0x1F
        self._expect_rd = (rd + n) % FIFO_DEPTH
        self._level_mark = (t1, 0)  # samples taken after the snapshot stay in the FIFO
        snapshot, queued, during = (t0, t1), 0, 0
        if n and (self.monotonic() - t0) * self.output_rate_hz >= FIFO_DEPTH - n - 1:
            # long enough for the FIFO to have filled up during the drain: look again. RD_PTR moved on by every
            # overwrite; those OVF_COUNTER still counts came after our last pop, the others during the drain
            # (with one burst read: before the data, i.e. the samples read are that many later ones)
            t2 = self.monotonic()
            wr2, ovf2, rd2 = (b & 0x1F for b in self.read_block(REGS["FIFO_WR_PTR"].address, 3))
            t3 = self.monotonic()
            level = (wr2 - rd2) % FIFO_DEPTH
            if level == 0 and (ovf2 or (t3 - t_data) * self.output_rate_hz >= 0.5 * FIFO_DEPTH):
                level = FIFO_DEPTH  # the pointers meet: full, not empty (enough time since the drain to fill it)
            # the pointers give the overwrites modulo 32; the samples taken between the two snapshots say which
            # multiple: taken = overwritten + what the FIFO holds now. The first snapshot is taken as late as
            # t1 (a thread waiting for the bus waits before its transaction, not after)
            taken = (t2 - t1) * self.output_rate_hz
            during = (rd2 - rd - n - ovf2) % FIFO_DEPTH
            during += FIFO_DEPTH * max(0, round((taken - level - ovf2 - during) / FIFO_DEPTH))
            self._expect_rd = (rd2 - ovf2) % FIFO_DEPTH
            self._level_mark = (t2, level)
            snapshot, queued = (t2, t3), level + ovf2
        lost = ovf + overwritten + during
        if lost:
            self.overflows += 1
            self.lost_samples += lost
            self.overwritten += overwritten + during
            if not exact:
                self.lost_inexact_events += 1
            logger.warning("MAX30102 at 0x%02x: FIFO overflow, %d%s samples lost%s", self.address, lost,
                           "" if exact else "+", f" ({overwritten + during} while a drain was read)"
                           if overwritten + during else "")
        self.samples_read += n
        return FifoData(red, ir, lost, exact, snapshot_s=snapshot, overwritten=overwritten + during, queued=queued)

    def _read_rdwr(self, reg: int, length: int) -> bytes:
        """One combined write-register/read-n transaction (no 32-byte SMBus limit)."""
        from smbus2 import i2c_msg

        def op(addr: int) -> bytes:
            w, r = i2c_msg.write(addr, [reg]), i2c_msg.read(addr, length)
            self.bus.i2c_rdwr(w, r)
            return bytes(r)

        return self._io_call(op, f"i2c_rdwr read of {length} bytes from 0x{reg:02x}")

    def read_temperature_c(self, timeout_s: float = 0.1) -> float:
        """Die temperature in °C (one conversion, ~29 ms)."""
        cfg = REGS["TEMP_CONFIG"]
        self.write_reg(cfg.address, cfg.compose(temp_en=1))
        deadline = self.monotonic() + timeout_s
        self.sleep(0.03)
        while self.read_reg(cfg.address) & 0x01:
            if self.monotonic() > deadline:
                raise SensorTimeout(errno.ETIMEDOUT, f"MAX30102 at 0x{self.address:02x}: temperature not ready")
            self.sleep(0.005)
        tint, tfrac = self.read_block(REGS["TEMP_INT"].address, 2)
        tint = tint - 256 if tint >= 128 else tint
        return tint + (tfrac & 0x0F) * 0.0625

    def status(self) -> dict:
        out = self.counters.as_dict()
        out.update(
            lost_samples=self.lost_samples,
            lost_inexact_events=self.lost_inexact_events,
            overflows=self.overflows,
            overwritten=self.overwritten,
            samples_read=self.samples_read,
        )
        return out
