"""Sources on real (or emulated) hardware: I2C sensors through the :mod:`firmware_bridge` drivers, and the
dyadsync firmware over a serial URL. The bus objects and URLs come from the hardware provider
(``device.sources.load_hardware``), so the same code runs on a Pi and against ``hil`` emulators.

Timing: I2C sensors are polled on the injected clock (``clock.now_ns`` as the drivers' ``monotonic``,
``clock.sleep`` as their ``sleep``), so they run in simulated time too. Sample times are the scheduled
times of a steady sample grid; when the grid drifts more than ``RESYNC_S`` from the host clock it is
re-anchored and the block flagged ``GAP_BEFORE``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from firmware_bridge.block import BlockFlags, SampleBlock
from firmware_bridge.errors import SensorError

from .clock import Clock
from .sources import Source

logger = logging.getLogger(__name__)

RESYNC_S = 0.5
_MUXES: dict[tuple[int, int], Any] = {}  # (id(bus), mux address) -> TCA9548A, shared by sensors on one mux


def _sensor_bus(sensor: Any, hardware: Any) -> Any:
    """The bus object the sensor's driver talks to: the I2C bus, or one channel of its TCA9548A."""
    bus = hardware.i2c_bus(sensor.i2c_bus)
    if sensor.mux_address is None:
        return bus
    from firmware_bridge.tca9548a import TCA9548A

    key = (id(bus), sensor.mux_address)
    if key not in _MUXES:
        _MUXES[key] = TCA9548A(bus, sensor.mux_address)
    return _MUXES[key].channel_bus(sensor.mux_channel)


class _Paced(Source):
    """Common pacing: ``read`` waits (on the injected clock) until a block of ``block_s`` is due."""

    def __init__(self, sensor: Any, clock: Clock, hardware: Any) -> None:
        self.sensor = sensor
        self.name = sensor.name
        self.stream = sensor.stream
        self.streams = (sensor.stream,)
        self.rate_hz = float(sensor.rate_hz)
        self.clock = clock
        self.hardware = hardware
        self.block_s = sensor.block_s
        self.seq = 0
        self._t_next_ns: int | None = None  # time of the next sample on the grid
        self._lost = 0  # samples lost inside the stream so far (reported losses + grid re-anchoring jumps)

    def sample_losses(self) -> dict[str, int]:
        return {self.stream: self._lost}

    def _monotonic_s(self) -> float:
        return self.clock.now_ns() / 1e9

    def _wait_block(self, timeout_s: float) -> bool:
        """Sleep until one block is due; False if that is further away than ``timeout_s`` real seconds."""
        if self._t_next_ns is None:
            return True
        due_ns = self._t_next_ns + round(self.block_s * 1e9)
        wait_s = (due_ns - self.clock.now_ns()) / 1e9
        if wait_s / self.clock.speed > timeout_s:
            time.sleep(timeout_s)
            return False
        if wait_s > 0:
            self.clock.sleep(wait_s)
        return True

    def _block(self, values: np.ndarray, flags: int, lost: int = 0) -> SampleBlock:
        """Stamp ``values`` as the next samples on the grid (after ``lost`` lost ones)."""
        n = values.size
        now = self.clock.now_ns()
        period = 1e9 / self.rate_hz
        expected_t0 = now - round(n * period)
        if self._t_next_ns is None or abs(self._t_next_ns + lost * period - expected_t0) > RESYNC_S * 1e9:
            if self._t_next_ns is not None:
                flags |= BlockFlags.GAP_BEFORE
                # the samples the re-anchored grid skips are missing (a jump back loses nothing)
                self._lost += max(0, round((expected_t0 - self._t_next_ns) / period))
            self._t_next_ns = expected_t0
        else:
            self._t_next_ns += round(lost * period)
            self._lost += lost
        if lost:
            flags |= BlockFlags.GAP_BEFORE
        b = SampleBlock(self.stream, self.seq & 0xFFFFFFFF, self._t_next_ns, self.rate_hz, values, int(flags))
        self.seq += 1
        self._t_next_ns += round(n * period)
        return b


class Max30102Source(_Paced):
    """MAX30102 PPG: the IR channel in ADC counts; FIFO overflow -> ``FIFO_OVERFLOW`` and the exact loss."""

    def open(self) -> None:
        from firmware_bridge.max30102 import MAX30102

        bus = _sensor_bus(self.sensor, self.hardware)
        self.dev = MAX30102(bus, self.sensor.address or 0x57, sample_rate_hz=int(self.rate_hz),
                            led_red_ma=self.sensor.led_current_ma, led_ir_ma=self.sensor.led_current_ma,
                            sleep=self.clock.sleep, monotonic=self._monotonic_s)
        self.dev.init()  # the sample grid is kept: the first block after a reopen is re-anchored, GAP_BEFORE

    def read(self, timeout_s: float) -> list[SampleBlock]:
        if not self._wait_block(timeout_s):
            return []
        fifo = self.dev.read_fifo()
        if fifo.reinitialised:  # FIFO content lost: the next block is re-anchored and flagged
            return []
        if fifo.n == 0:
            return []
        flags = BlockFlags.FIFO_OVERFLOW if fifo.lost_before else 0
        return [self._block(fifo.ir.astype(np.float32), flags, fifo.lost_before)]


class Ads1115EdaSource(_Paced):
    """ADS1115 + GSR front end: single-shot conversions on a fixed schedule, volts -> µS."""

    def open(self) -> None:
        from firmware_bridge.ads1115 import ADS1115, DATA_RATES_SPS, MultiplexedScanner
        from firmware_bridge.gsr import GsrFrontEnd

        bus = _sensor_bus(self.sensor, self.hardware)
        rate_sps = min(r for r in DATA_RATES_SPS if r >= 4 * self.rate_hz) if max(DATA_RATES_SPS) >= 4 * self.rate_hz \
            else max(DATA_RATES_SPS)
        self.adc = ADS1115(bus, self.sensor.address or 0x48, fsr_v=self.sensor.fsr_v, data_rate_sps=rate_sps,
                           sleep=self.clock.sleep, monotonic=self._monotonic_s)
        self.adc.init()
        self.scanner = MultiplexedScanner(self.adc, [self.sensor.ads_channel], self.rate_hz)
        g = self.sensor.gsr
        self.front = GsrFrontEnd(calibration_v=g.calibration_v, supply_v=g.supply_v, r_ref_ohm=g.r_ref_ohm)
        self._res = self.scanner.results[self.scanner.channels[0]]
        self._missed = 0

    def read(self, timeout_s: float) -> list[SampleBlock]:
        if self._t_next_ns is None:
            self._t_next_ns = self.clock.now_ns()
        if not self._wait_block(timeout_s):
            return []
        self.scanner.poll()
        volts = np.asarray(self._res.volts, dtype=np.float64)
        self._res.volts.clear()
        self._res.times_s.clear()
        lost = self.scanner.missed_scans - self._missed
        self._missed = self.scanner.missed_scans
        if volts.size == 0:
            return []
        eda_us, invalid = self.front.to_microsiemens(volts)
        flags = BlockFlags.INVALID if invalid.any() else 0
        return [self._block(eda_us.astype(np.float32), flags, lost)]


class SerialFirmwareSource(Source):
    """The dyadsync firmware over a pyserial URL (``firmware_bridge.link.SerialLink``); its blocks are
    already stamped in UTC by the link's clock mapping."""

    def __init__(self, sensor: Any, clock: Clock, hardware: Any) -> None:
        self.sensor = sensor
        self.name = sensor.name
        self.clock = clock
        self.url = hardware.serial_url(sensor)
        self.link: Any = None
        self._lost: dict[str, int] = {}  # per stream, over all links opened
        self._link_lost: dict[str, int] = {}  # the current link's counts already added

    def sample_losses(self) -> dict[str, int]:
        if self.link is not None:  # samples the firmware numbered but the link never delivered
            for stream, n in self.link.stats().get("lost_samples", {}).items():
                self._lost[stream] = self._lost.get(stream, 0) + n - self._link_lost.get(stream, 0)
                self._link_lost[stream] = n
        return dict(self._lost)

    def open(self) -> None:
        from firmware_bridge.clock import ClockMapper
        from firmware_bridge.link import SerialLink

        speed = self.clock.speed
        self._link_lost = {}
        if speed == 1.0:
            self.link = SerialLink(self.url, baudrate=self.sensor.baudrate, clock=ClockMapper()).start()
        else:  # an emulated firmware in simulated time: its µs are simulated µs, the host clock is the
            # simulated UTC clock itself (offset 0); the link's timeouts stay the same in real time
            self.link = SerialLink(self.url, baudrate=self.sensor.baudrate, clock=ClockMapper(utc_offset_ns=lambda: 0),
                                   monotonic_ns=self.clock.now_ns, ping_interval_s=0.5 * speed,
                                   handshake_timeout_s=1.0 * speed, silence_timeout_s=2.0 * speed).start()

    def read(self, timeout_s: float) -> list[SampleBlock]:
        first = self.link.get(timeout_s)
        if first is None:
            if self.link.refused:
                raise SensorError(f"{self.name}: firmware refused: {self.link.refused}")
            return []
        return [first, *(d.block for d in self.link.drain())]

    def close(self) -> None:
        if self.link is not None:
            self.sample_losses()  # keep what this link counted
            self.link.stop()
            self.link = None


def make_source(sensor: Any, clock: Clock, hardware: Any) -> Source:
    try:
        cls = {"max30102": Max30102Source, "ads1115": Ads1115EdaSource, "serial": SerialFirmwareSource}[sensor.kind]
    except KeyError:
        raise SensorError(f"sensor {sensor.name!r}: no hardware source for kind {sensor.kind!r}") from None
    return cls(sensor, clock, hardware)
