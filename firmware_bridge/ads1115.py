"""ADS1115 16-bit ADC driver (TI datasheet SBAS444) and the GSR front-end conversion to microsiemens.

Registers are 16-bit, sent MSB first; they are accessed with ``read_i2c_block_data(addr, reg, 2)`` and
``write_i2c_block_data(addr, reg, [msb, lsb])`` (the SMBus word calls would swap the bytes).
"""

from __future__ import annotations

import errno
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import ConfigError

from .errors import SensorError, SensorTimeout
from .i2c import BitField, I2CDriver, Register, register_map

logger = logging.getLogger(__name__)

DATA_RATES_SPS = {8: 0, 16: 1, 32: 2, 64: 3, 128: 4, 250: 5, 475: 6, 860: 7}
PGA_FSR_V = {6.144: 0, 4.096: 1, 2.048: 2, 1.024: 3, 0.512: 4, 0.256: 5}
MUX = {
    "AIN0-AIN1": 0,
    "AIN0-AIN3": 1,
    "AIN1-AIN3": 2,
    "AIN2-AIN3": 3,
    "AIN0": 4,
    "AIN1": 5,
    "AIN2": 6,
    "AIN3": 7,
}
CONVERSION_MARGIN = 0.15  # the internal oscillator may run up to 10 % slow

REGS = register_map(
    Register("CONVERSION", 0x00, width_bits=16),
    Register(
        "CONFIG",
        0x01,
        (
            BitField("os", 0x8000),
            BitField("mux", 0x7000, MUX),
            BitField("pga", 0x0E00, PGA_FSR_V),
            BitField("mode", 0x0100, {"continuous": 0, "single": 1}),
            BitField("dr", 0x00E0, DATA_RATES_SPS),
            BitField("comp_mode", 0x0010),
            BitField("comp_pol", 0x0008),
            BitField("comp_lat", 0x0004),
            BitField("comp_que", 0x0003),
        ),
        width_bits=16,
    ),
    Register("LO_THRESH", 0x02, width_bits=16),
    Register("HI_THRESH", 0x03, width_bits=16),
)


def _mux_name(channel: int | str) -> str:
    if isinstance(channel, int) and not isinstance(channel, bool) and 0 <= channel <= 3:
        return f"AIN{channel}"
    if channel in MUX:
        return str(channel)
    raise ConfigError(f"ADS1115 input must be 0..3 (single-ended) or one of {list(MUX)}, got {channel!r}")


class ADS1115(I2CDriver):
    """``ADS1115(bus, address=0x48, *, fsr_v=4.096, data_rate_sps=128, retries=3, backoff_s=0.001,
    sleep=time.sleep, monotonic=time.monotonic)``. ``fsr_v`` is the PGA full-scale range in volts."""

    CHIP = "ADS1115"
    ADDRESSES = (0x48, 0x49, 0x4A, 0x4B)

    def __init__(self, bus: Any, address: int = 0x48, *, fsr_v: float = 4.096, data_rate_sps: int = 128, **io: Any) -> None:
        super().__init__(bus, address, **io)
        if fsr_v not in PGA_FSR_V:
            raise ConfigError(f"ADS1115 fsr_v must be one of {sorted(PGA_FSR_V)}, got {fsr_v!r}")
        if data_rate_sps not in DATA_RATES_SPS:
            raise ConfigError(f"ADS1115 data_rate_sps must be one of {sorted(DATA_RATES_SPS)}, got {data_rate_sps!r}")
        self.fsr_v = fsr_v
        self.data_rate_sps = data_rate_sps
        self.conversions = 0
        self.timeouts = 0
        self.last_start_s = math.nan  # driver clock just after the last single-shot conversion was started
        self._continuous_mux: str | None = None
        self._config_words: dict[tuple[str, str, bool], int] = {}

    # ---------------------------------------------------------------------------------- registers
    def read_register(self, reg: int) -> int:
        msb, lsb = self.read_block(reg, 2)
        return (msb << 8) | lsb

    def write_register(self, reg: int, value: int) -> None:
        self._io("write_i2c_block_data", reg, [(value >> 8) & 0xFF, value & 0xFF])

    def _config(self, mux: str, mode: str, start: bool) -> int:
        key = (mux, mode, start)
        word = self._config_words.get(key)
        if word is None:  # composed once per (input, mode): a scan writes the same few words all day
            word = self._config_words[key] = REGS["CONFIG"].compose(
                os=int(start), mux=mux, pga=self.fsr_v, mode=mode, dr=self.data_rate_sps, comp_que=0b11
            )
        return word

    def init(self) -> None:
        """Put the ADC in power-down single-shot mode with comparator off and check it reads back."""
        cfg = self._config("AIN0", "single", start=False)
        self.write_register(0x01, cfg)
        got = self.read_register(0x01) & 0x7FFF
        if got != cfg & 0x7FFF:
            raise SensorError(errno.ENODEV, f"ADS1115 at 0x{self.address:02x}: config reads 0x{got:04x} after writing 0x{cfg:04x}")
        self._continuous_mux = None

    def code_to_volts(self, code: int | np.ndarray) -> float | np.ndarray:
        """Volts of a signed 16-bit code (or an array of codes) at the configured full-scale range."""
        return code * (self.fsr_v / 32768.0)

    @staticmethod
    def _signed(raw: int) -> int:
        return raw - 0x10000 if raw & 0x8000 else raw

    # -------------------------------------------------------------------------------- conversions
    @property
    def conversion_s(self) -> float:
        return 1.0 / self.data_rate_sps

    def read_raw(self, channel: int | str) -> int:
        """One single-shot conversion of ``channel``: start, poll OS until ready, read the code."""
        mux = self.start_conversion(channel)
        self.sleep(self.conversion_s * (1 + 0.02))
        return self.finish_conversion(mux)

    def start_conversion(self, channel: int | str) -> str:
        """Start one single-shot conversion of ``channel`` (the chip must be idle) and return its input name;
        :attr:`last_start_s` is the driver clock just after the start. Read it with :meth:`finish_conversion`."""
        mux = _mux_name(channel)
        self.write_register(0x01, self._config(mux, "single", start=True))
        self.last_start_s = self.monotonic()  # the conversion started before this (the config write)
        self._continuous_mux = None
        return mux

    def finish_conversion(self, mux: str) -> int:
        """The code of the conversion started last: poll OS until ready (SensorTimeout if the chip has not
        finished within three conversion times (+10 ms) of the start), then read the conversion register."""
        deadline = self.last_start_s + self.conversion_s * (1 + CONVERSION_MARGIN) * 3 + 0.01
        while not self.read_register(0x01) & 0x8000:
            if self.monotonic() > deadline:
                self.timeouts += 1
                raise SensorTimeout(errno.ETIMEDOUT, f"ADS1115 at 0x{self.address:02x}: conversion of {mux} not ready")
            self.sleep(self.conversion_s * 0.05)
        self.conversions += 1
        return self._signed(self.read_register(0x00))

    def read_volts(self, channel: int | str) -> float:
        return float(self.code_to_volts(self.read_raw(channel)))

    def start_continuous(self, channel: int | str) -> None:
        """Convert ``channel`` back to back at ``data_rate_sps``; read with :meth:`read_latest_volts`."""
        mux = _mux_name(channel)
        self.write_register(0x01, self._config(mux, "continuous", start=False))
        self._continuous_mux = mux

    def read_latest_volts(self) -> float:
        if self._continuous_mux is None:
            raise SensorError(errno.EIO, f"ADS1115 at 0x{self.address:02x}: not in continuous mode")
        return float(self.code_to_volts(self._signed(self.read_register(0x00))))

    def stop(self) -> None:
        self.write_register(0x01, self._config("AIN0", "single", start=False))
        self._continuous_mux = None

    def status(self) -> dict:
        out = self.counters.as_dict()
        out.update(conversions=self.conversions, timeouts=self.timeouts)
        return out


@dataclass
class ScanResult:
    """Per channel: for every scan run, its number ``k`` (scheduled at :meth:`MultiplexedScanner.time_of`),
    the host time the conversion started and the result in volts (NaN if it failed)."""

    times_s: list[float] = field(default_factory=list)
    volts: list[float] = field(default_factory=list)
    index: list[int] = field(default_factory=list)


class MultiplexedScanner:
    """Sample several ADS1115 inputs, each at ``rate_hz``, by single-shot conversions on a fixed schedule.

    Scan k starts at ``t0 + k / rate_hz`` (host clock ``adc.monotonic``; :meth:`time_of`). A scan that starts
    more than one period late is skipped and counted in ``missed_scans`` (never silently; the scan numbers
    in the results then jump); so is a conversion that, though due in time, was only started (its config
    write done) a period or more after its scheduled time (the thread was preempted in between): every
    result was sampled less than one period after its scheduled time. Bus errors inside a scan are
    retried by the driver; a conversion that still fails gives NaN, is counted in ``failed``, and the chip
    is re-initialised before the next scan (counted in ``adc.counters.reinits``); while that fails, the
    scan's values are NaN. The scanner itself never raises on bus errors.

    With one input the scans are pipelined: scan k's conversion is started at its scheduled time and read
    at scan k + 1's, a period later (long finished), so the host wakes once per sample instead of twice and
    the result comes one period later; :meth:`flush` reads the last one. With several inputs each scan
    converts them one after the other and waits for each.
    """

    def __init__(self, adc: ADS1115, channels: list[int | str], rate_hz: float) -> None:
        if not channels:
            raise ConfigError("MultiplexedScanner needs at least one channel")
        names = [_mux_name(c) for c in channels]
        if not rate_hz > 0:
            raise ConfigError(f"rate_hz must be > 0, got {rate_hz!r}")
        need_s = len(names) * adc.conversion_s * (1 + CONVERSION_MARGIN)
        if need_s >= 1.0 / rate_hz:
            raise ConfigError(
                f"{len(names)} channels at {rate_hz} Hz need {need_s * 1e3:.1f} ms per scan at "
                f"{adc.data_rate_sps} SPS, more than the {1e3 / rate_hz:.1f} ms period: raise data_rate_sps"
            )
        self.adc = adc
        self.channels = names
        self.rate_hz = float(rate_hz)
        self.results = {name: ScanResult() for name in names}
        self.missed_scans = 0
        self.failed = 0
        self.pipelined = len(names) == 1
        self._needs_init = False
        self._t0: float | None = None
        self._k = 0
        # pipelined: the conversion started and not read yet, as (scan number or None if it started too late
        # to be recorded, host time just before its start)
        self._pending: tuple[int | None, float] | None = None

    def start_at(self, t0_s: float) -> None:
        """Put scan 0 at host time ``t0_s`` (before the first poll; otherwise the first poll's time)."""
        if self._t0 is not None:
            raise SensorError(errno.EIO, "MultiplexedScanner.start_at after the first poll")
        self._t0 = float(t0_s)

    def next_due_s(self) -> float:
        if self._t0 is None:
            return self.adc.monotonic()
        return self._t0 + self._k / self.rate_hz

    def time_of(self, k: int) -> float:
        """Scheduled host time of scan ``k`` (after the first poll)."""
        if self._t0 is None:
            raise SensorError(errno.EIO, "MultiplexedScanner.time_of before the first poll")
        return self._t0 + k / self.rate_hz

    def poll(self) -> int:
        """Run the scans that are due now; returns how many were run."""
        now = self.adc.monotonic()
        if self._t0 is None:
            self._t0 = now
        ran = 0
        period = 1.0 / self.rate_hz
        while self._t0 + self._k / self.rate_hz <= now:  # the same expression as next_due_s (to the last bit)
            due = self._t0 + self._k / self.rate_hz
            if now - due >= period:
                behind = int(math.floor((now - due) * self.rate_hz))
                self.missed_scans += behind
                self._k += behind
                continue
            if self.pipelined:
                self.flush()  # the previous scan's conversion, started a period ago
            if self._needs_init:
                self.adc.counters.reinits += 1
                try:
                    self.adc.init()
                    self._needs_init = False
                except SensorError as exc:
                    logger.warning("ADS1115 re-initialisation failed: %s", exc)
            if self.pipelined:
                self._start(due)
            else:
                self._scan(due)
            self._k += 1
            ran += 1
            now = self.adc.monotonic()
        return ran

    def _record(self, name: str, t: float, v: float, k: int) -> None:
        if math.isnan(v):
            self.failed += 1
        res = self.results[name]
        res.times_s.append(t)
        res.volts.append(v)
        res.index.append(k)

    def _scan(self, due: float) -> None:
        """Every input in turn, each conversion waited for."""
        late = False
        values = []
        for name in self.channels:
            t = self.adc.monotonic()
            v = math.nan
            if not self._needs_init:
                try:
                    v = self.adc.read_volts(name)
                except SensorError as exc:
                    logger.warning("%s", exc)
                    self._needs_init = True
                else:
                    late = late or self.adc.last_start_s - due >= 1.0 / self.rate_hz
            values.append((name, t, v))
        if late:  # started too late to be this scan: not a sample of it
            self.missed_scans += 1
            return
        for name, t, v in values:
            self._record(name, t, v, self._k)

    def _start(self, due: float) -> None:
        """Pipelined: start this scan's conversion; it is read by :meth:`flush` (at the next scan)."""
        name = self.channels[0]
        t = self.adc.monotonic()
        if self._needs_init:
            self._record(name, t, math.nan, self._k)
            return
        try:
            self.adc.start_conversion(name)
        except SensorError as exc:
            logger.warning("%s", exc)
            self._needs_init = True
            self._record(name, t, math.nan, self._k)
            return
        if self.adc.last_start_s - due >= 1.0 / self.rate_hz:  # started too late to be this scan
            self.missed_scans += 1
            self._pending = (None, t)  # still read (and dropped), so that no start meets a busy chip
        else:
            self._pending = (self._k, t)

    def flush(self) -> None:
        """Pipelined: read the conversion started last, if any (it waits for the chip if it is not done)."""
        if self._pending is None:
            return
        k, t = self._pending
        self._pending = None
        name = self.channels[0]
        v = math.nan
        try:
            v = float(self.adc.code_to_volts(self.adc.finish_conversion(name)))
        except SensorError as exc:
            logger.warning("%s", exc)
            self._needs_init = True
        if k is not None:
            self._record(name, t, v, k)

    def run_until(self, t_end_s: float) -> None:
        """Poll and sleep (``adc.sleep``) until the host clock reaches ``t_end_s``."""
        while self.adc.monotonic() < t_end_s:
            self.poll()
            self.adc.sleep(max(0.0, min(self.next_due_s(), t_end_s) - self.adc.monotonic()))
        self.flush()
