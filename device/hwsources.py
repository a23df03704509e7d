"""Sources on real (or emulated) hardware: I2C sensors through the :mod:`firmware_bridge` drivers, and the
dyadsync firmware over a serial URL. The bus objects and URLs come from the hardware provider
(``device.hardware.load_hardware``), so the same code runs on a Pi and against ``hil`` emulators.

Timing: I2C sensors are polled on the injected clock (``clock.now_ns`` as the drivers' ``monotonic``,
``clock.sleep`` as their ``sleep``), so they run in simulated time too. A sample's time is when the sensor
took it, never when the poll that fetched it happened to run (on a loaded host, or in simulated time
``speed`` times faster, that can be tens of milliseconds later):

* MAX30102: the chip samples on its own clock into its FIFO; samples are numbered by the chip's count
  (read plus exactly counted losses) and timed by :class:`firmware_bridge.fifoclock.FifoClock` from the
  pointer snapshots of the polls, whose interval is dithered by a fraction of a sample period so that
  their phases sweep the sample period. A late poll only finds more samples in the FIFO.
* ADS1115: single-shot conversions on the scanner's fixed schedule; scan ``k`` is stamped at its scheduled
  time ``t0 + k / rate``; a scan more than one period late is skipped (a lost sample), so a sample is never
  further than one period from its stamp. The source sleeps until each scan is due and hands out a block
  per ``block_s``. With its one input the scans are pipelined (a conversion is read when the next one is
  started, one wake-up per sample: ``firmware_bridge.ads1115.MultiplexedScanner``).

Blocks of a stream follow each other on one grid; samples missing between two blocks (overflow, missed
scans, a reopened sensor) are counted as lost (``sample_losses``), and the block after them is flagged
``GAP_BEFORE``. Refinements of a FIFO sensor's time line are applied at most ``_Paced.SLEW`` (4 %) of a
period per block.
The serial firmware's blocks are kept on a grid numbered by the firmware's sample index the same way
(see :class:`SerialFirmwareSource`).
A ``read`` hands out one block (the source thread reports the losses counted so far before the first block
it gets, so a loss is counted when the block after it is handed out).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace
from typing import Any

import numpy as np

from core.vocab import BlockFlags
from firmware_bridge.block import SampleBlock
from firmware_bridge.errors import SensorError

from .clock import Clock
from .sources import Source

logger = logging.getLogger(__name__)

_MUXES: dict[tuple[int, int], Any] = {}  # (id(bus), mux address) -> TCA9548A, shared by sensors on one mux
_MUXES_LOCK = threading.Lock()  # sensors are opened by their source threads at the same time


def _sensor_bus(sensor: Any, hardware: Any) -> Any:
    """The bus object the sensor's driver talks to: the I2C bus, or one channel of its TCA9548A."""
    bus = hardware.i2c_bus(sensor.i2c_bus)
    if sensor.mux_address is None:
        return bus
    from firmware_bridge.tca9548a import TCA9548A

    key = (id(bus), sensor.mux_address)
    with _MUXES_LOCK:  # one driver (one lock) per mux: two would let two threads switch it under each other
        if key not in _MUXES:
            _MUXES[key] = TCA9548A(bus, sensor.mux_address)
        return _MUXES[key].channel_bus(sensor.mux_channel)


class _Paced(Source):
    """Common part of the I2C sources: the unit clock as the drivers' clock, and the grid of a stream."""

    # largest correction of a stream's grid per block, in periods: the pipeline packs the blocks of a raw
    # block (1 s, ~10 of ours) back to back, so their corrections add up there and must stay below half a
    # period (a sensor oscillator more than ~0.5 % off nominal is corrected by whole samples now and then)
    SLEW = 0.04

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
        self._origin_ns = clock.now_ns()  # the drivers' clock counts seconds from here (float precision)
        self._t_end_s: float | None = None  # drivers' clock time of the sample after the last one stamped
        self._lost = 0  # samples missing inside the stream so far (before the blocks handed out)
        self._out: list[tuple[SampleBlock, int]] = []  # stamped blocks not handed out yet, with the loss before

    def sample_losses(self) -> dict[str, int]:
        return {self.stream: self._lost}

    def _monotonic_s(self) -> float:
        return (self.clock.now_ns() - self._origin_ns) / 1e9

    def _hand_out(self) -> list[SampleBlock]:
        """One stamped block per ``read``: the source thread reports the losses counted so far before the
        first block it gets, so a loss must not be counted before the blocks ahead of it are out."""
        if not self._out:
            return []
        b, gap = self._out.pop(0)
        self._lost += gap
        return [b]

    def _emit(self, values: np.ndarray, t_s: float, gap: int | None, flags: int) -> None:
        """Stamp the next samples of the stream, the first one taken at ``t_s`` (drivers' clock), ``gap``
        samples after the last one stamped (None: unknown, e.g. the sensor was reopened; then taken from the
        times), and queue the block for :meth:`_hand_out`.

        The block follows the previous one on its grid, ``gap`` periods on; a time that disagrees with that
        by more than half a period moves the grid by whole periods (more samples lost, or, backwards, the
        samples that would overlap the previous block are dropped); a smaller disagreement is applied at most
        ``SLEW`` of a period per block, so consecutive blocks never overlap nor leave a fraction of a gap."""
        period = 1.0 / self.rate_hz
        if self._t_end_s is None:
            t0 = t_s
            gap = 0
        else:
            if gap is None:
                gap = round((t_s - self._t_end_s) / period)
            delta = t_s - (self._t_end_s + gap * period)
            if abs(delta) > 0.5 * period:
                gap += round(delta / period)
                delta = t_s - (self._t_end_s + gap * period)
            t0 = self._t_end_s + gap * period + max(-self.SLEW * period, min(self.SLEW * period, delta))
        if gap < 0:  # the grid moved back: drop what would overlap the previous block
            drop = min(-gap, values.size)
            logger.warning("%s: %d sample(s) would overlap the previous block; dropped", self.name, drop)
            values = values[drop:]
            t0 += drop * period
            gap = 0
            if values.size == 0:
                return
        if gap:
            flags |= BlockFlags.GAP_BEFORE
        b = SampleBlock(self.stream, self.seq & 0xFFFFFFFF, self._origin_ns + round(t0 * 1e9), self.rate_hz, values,
                        int(flags))
        self.seq += 1
        self._t_end_s = t0 + values.size * period
        self._out.append((b, gap))

    def _sleep_until(self, t_s: float, deadline_real: float) -> bool:
        """Sleep (unit clock) until drivers' clock time ``t_s``; False (after sleeping to the real-time
        ``deadline_real``) if that comes first."""
        wait_s = t_s - self._monotonic_s()
        if wait_s <= 0:
            return True
        left = deadline_real - time.monotonic()
        if wait_s / self.clock.speed > left:
            if left > 0:
                time.sleep(left)
            return False
        self.clock.sleep(wait_s)
        return True


class Max30102Source(_Paced):
    """MAX30102 PPG: the IR channel in ADC counts, timed by the chip's sample clock (module doc); FIFO overflow
    -> ``FIFO_OVERFLOW`` and the exact loss."""

    DITHER = 0.618  # of a sample period, added to every poll interval: the polls sweep the sample phase

    def open(self) -> None:
        from firmware_bridge.fifoclock import FifoClock
        from firmware_bridge.max30102 import MAX30102

        bus = _sensor_bus(self.sensor, self.hardware)
        root = self.hardware.i2c_bus(self.sensor.i2c_bus)
        self.dev = MAX30102(bus, self.sensor.address or 0x57, sample_rate_hz=int(self.rate_hz),
                            led_red_ma=self.sensor.led_current_ma, led_ir_ma=self.sensor.led_current_ma,
                            use_i2c_rdwr=callable(getattr(root, "i2c_rdwr", None)),  # the FIFO in one burst
                            sleep=self.clock.sleep, monotonic=self._monotonic_s)
        self.dev.init()
        self.fifo_clock = FifoClock(self.rate_hz)  # a new sample clock: the first block's gap comes from times
        self._next_index: int | None = None
        self._next_poll_s: float | None = None

    def _restart(self) -> None:
        self.fifo_clock.reset()
        self._next_index = None

    def read(self, timeout_s: float) -> list[SampleBlock]:
        if self._out:
            return self._hand_out()
        deadline = time.monotonic() + timeout_s
        if self._next_poll_s is not None and not self._sleep_until(self._next_poll_s, deadline):
            return []
        now = self._monotonic_s()
        interval = self.block_s + self.DITHER / self.rate_hz
        nxt = (now if self._next_poll_s is None else self._next_poll_s) + interval
        self._next_poll_s = nxt if nxt > now else now + interval  # late: the FIFO just holds more
        fifo = self.dev.read_fifo()
        if fifo.reinitialised:  # the chip was reset: FIFO content lost, a new sample clock
            self._restart()
            return []
        drains = [fifo]
        if not fifo.lost_exact:  # read again at once: a snapshot with a short window recovers the count
            again = self.dev.read_fifo()
            if again.reinitialised:
                self._restart()
                return []
            drains.append(again)
        firsts = [self.fifo_clock.observe(*f.snapshot_s, f.n, f.lost_before, f.lost_exact, f.queued) for f in drains]
        for f, first in zip(drains, firsts, strict=True):
            if f.n == 0:
                continue
            gap = None if self._next_index is None else first - self._next_index
            self._next_index = first + f.n
            flags = BlockFlags.FIFO_OVERFLOW if f.lost_before else 0
            self._emit(f.ir.astype(np.float32), self.fifo_clock.time_of(first), gap, flags)
        return self._hand_out()


class Ads1115EdaSource(_Paced):
    """ADS1115 + GSR front end: single-shot conversions on a fixed schedule, volts -> µS, each sample stamped
    at its scheduled time (module doc)."""

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
        # scans on the UTC grid of the sample period: every ADS1115 source at this rate scans at the same
        # instants, so their threads wake together (one wake-up from idle instead of one each)
        period_ns = 1e9 / self.rate_hz
        now_ns = self.clock.now_ns()
        first_ns = math.ceil(now_ns / period_ns) * period_ns
        self.scanner.start_at((first_ns - self._origin_ns) / 1e9)
        g = self.sensor.gsr
        self.front = GsrFrontEnd(calibration_v=g.calibration_v, supply_v=g.supply_v, r_ref_ohm=g.r_ref_ohm)
        self._res = self.scanner.results[self.scanner.channels[0]]
        self._next_index: int | None = None  # a new schedule: the first block's gap comes from times
        self._n_block = max(1, round(self.block_s * self.rate_hz))

    def read(self, timeout_s: float) -> list[SampleBlock]:
        if self._out:
            return self._hand_out()
        deadline = time.monotonic() + timeout_s
        while len(self._res.index) < self._n_block:
            if not self._sleep_until(self.scanner.next_due_s(), deadline):
                break
            self.scanner.poll()
        return self._take()

    def _take(self) -> list[SampleBlock]:
        if not self._res.index:
            return self._hand_out()
        index = self._res.index[:]
        # a few samples per block: float arithmetic per sample is cheaper than a dozen numpy calls
        us = self.front.microsiemens_of
        eda_us = [us(v) for v in self._res.volts]
        self._res.index.clear()
        self._res.volts.clear()
        self._res.times_s.clear()
        n = len(index)
        if index[-1] - index[0] == n - 1:  # no scan missed (the usual case)
            spans = [(0, n)]
        else:  # missed scans split the block
            cuts = [i for i in range(1, n) if index[i] != index[i - 1] + 1]
            spans = list(zip([0, *cuts], [*cuts, n], strict=True))
        for a, b in spans:
            first = index[a]
            gap = None if self._next_index is None else first - self._next_index
            self._next_index = index[b - 1] + 1
            values = np.array(eda_us[a:b], dtype=np.float32)
            flags = BlockFlags.INVALID if np.isnan(values).any() else 0
            self._emit(values, self.scanner.time_of(first), gap, flags)
        return self._hand_out()


class SerialFirmwareSource(Source):
    """The dyadsync firmware over a pyserial URL (``firmware_bridge.link.SerialLink``).

    The link stamps each block in UTC through its clock mapping, and numbers its samples by the firmware's
    sample index. The source puts a stream's blocks on one grid numbered by that index: a block's time is
    predicted from the previous block and the exact index difference (lost samples included), then moved
    towards the link's stamp by at most ``SLEW`` of a period per block. So a clock-fit step after a
    reconnect (a few ms at 5x simulated speed) is slewed in instead of shifting the whole block, and the
    time gap across an unplug is exactly the lost samples times the period, as the index says. A new clock
    segment (device reboot), a new link, an unsynchronised stamp or a disagreement above ``STEP_S`` starts
    the grid again at the link's stamp.
    """

    SLEW = _Paced.SLEW
    STEP_S = 0.1

    def __init__(self, sensor: Any, clock: Clock, hardware: Any) -> None:
        self.sensor = sensor
        self.name = sensor.name
        self.clock = clock
        self.url = hardware.serial_url(sensor)
        self.link: Any = None
        self._lost: dict[str, int] = {}  # per stream, over all links opened
        self._link_lost: dict[str, int] = {}  # the current link's counts already added
        self._grid: dict[str, tuple[int, int, int]] = {}  # stream -> (segment, first index, t0 ns) of the last block
        self.grid_steps = 0  # grid restarts after a disagreement above STEP_S (a clock step)

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
        first = self.link.get_delivery(timeout_s)
        if first is None:
            if self.link.refused:
                raise SensorError(f"{self.name}: firmware refused: {self.link.refused}")
            return []
        return [self._on_grid(d) for d in (first, *self.link.drain())]

    def _on_grid(self, d: Any) -> SampleBlock:
        b = d.block
        if b.flags & BlockFlags.CLOCK_UNSYNCED:
            self._grid.pop(b.stream, None)
            return b
        period_ns = 1e9 / b.rate_hz
        g = self._grid.get(b.stream)
        t0 = b.t0_ns  # integers throughout: a float64 holds UTC nanoseconds only to ~256 ns
        if g is not None and g[0] == d.segment:
            predicted = g[2] + round((d.first_index - g[1]) * period_ns)
            err = b.t0_ns - predicted
            if abs(err) <= self.STEP_S * 1e9:
                step = int(self.SLEW * period_ns)
                t0 = predicted + min(max(err, -step), step)
            else:
                self.grid_steps += 1
                logger.warning("sensor %s: %s stamp %.1f ms off its sample grid: grid restarted", self.name,
                               b.stream, err / 1e6)
        self._grid[b.stream] = (d.segment, d.first_index, t0)
        return b if t0 == b.t0_ns else replace(b, t0_ns=t0)

    def close(self) -> None:
        if self.link is not None:
            self.sample_losses()  # keep what this link counted
            self.link.stop()
            self.link = None
        self._grid.clear()  # a new link numbers (and maps) anew


def make_source(sensor: Any, clock: Clock, hardware: Any) -> Source:
    try:
        cls = {"max30102": Max30102Source, "ads1115": Ads1115EdaSource, "serial": SerialFirmwareSource}[sensor.kind]
    except KeyError:
        raise SensorError(f"sensor {sensor.name!r}: no hardware source for kind {sensor.kind!r}") from None
    return cls(sensor, clock, hardware)
