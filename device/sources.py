"""Acquisition: one thread per source, each producing :class:`SampleBlock`s into the pipeline's queue.

A :class:`Source` is opened, read repeatedly (each ``read`` returns the blocks that arrived, waiting at
most ``timeout_s``) and closed. :class:`SourceThread` keeps it running: a :class:`SensorError` (or any
OSError) marks the sensor ``fault``, closes it and reopens it with backoff, so an unplugged sensor
comes back by itself; a source silent for ``stale_s`` seconds of the unit's clock (simulated time in a HIL
run; also at least ``stale_min_real_s`` real seconds, so a host hiccup at high speed is no fault) is also
reported as a fault.

Losses: besides sequence gaps (whole blocks, counted by the pipeline), a source reports the samples it
knows were lost inside its stream (FIFO overflow, missed ADC scans, firmware sample-index gaps) through
:meth:`Source.sample_losses`; the thread turns their growth into ``("lost", stream, n)`` events placed
just before the block that follows the loss.

Sources by config ``kind``: ``synthetic`` (built-in, below), ``ads1115``/``max30102`` (I2C drivers of
:mod:`firmware_bridge` on the bus object the hardware provider gives), ``serial`` (the firmware over a
pyserial URL). The hardware provider is the seam for emulation: see :func:`device.hardware.load_hardware`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from abc import ABC, abstractmethod

import numpy as np

from firmware_bridge.block import SampleBlock
from firmware_bridge.errors import SensorError

from .clock import Clock

logger = logging.getLogger(__name__)


class Source(ABC):
    """A producer of sample blocks (one sensor or one firmware link)."""

    name: str = "source"
    streams: tuple[str, ...] = ()

    def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire the hardware; raise :class:`SensorError` if it is not there."""

    @abstractmethod
    def read(self, timeout_s: float) -> list[SampleBlock]:
        """Blocks that arrived, waiting at most ``timeout_s`` (real seconds)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the hardware (must not raise)."""

    def sample_losses(self) -> dict[str, int]:
        """Samples lost so far per stream that are not sequence gaps (cumulative, exact; kept across reopens)."""
        return {}


class SyntheticSource(Source):
    """A deterministic stand-in for a sensor (demos and benches without hardware, not a physiology model).

    EDA (µS): tonic level + a slow shared oscillation + noise. PPG (counts): a pulse wave whose rate
    follows a slow shared oscillation. The client's shared component lags the therapist's by
    ``client_lag_s`` so synchrony is visible. Samples are paced by the injected clock.
    """

    def __init__(self, name: str, stream: str, rate_hz: float, clock: Clock, *, block_s: float = 0.1,
                 seed: int = 0, client_lag_s: float = 2.0) -> None:
        self.name = name
        self.streams = (stream,)
        self.stream = stream
        self.role, self.signal = stream.split("/")
        self.rate_hz = float(rate_hz)
        self.clock = clock
        self.n_block = max(1, round(block_s * rate_hz))
        self.rng = np.random.default_rng(seed + (0 if self.role == "therapist" else 1000))
        self.lag_s = client_lag_s if self.role == "client" else 0.0
        self.seq = 0
        self._next_ns: int | None = None
        self._phase = 0.0

    def _shared(self, t_s: np.ndarray) -> np.ndarray:
        t = t_s - self.lag_s
        return np.sin(2 * np.pi * t / 23.0) + 0.5 * np.sin(2 * np.pi * t / 7.3 + 1.0)

    def _values(self, t_ns: np.ndarray) -> np.ndarray:
        t_s = (t_ns % (10**12)) / 1e9  # periodic over ~16 min keeps float precision
        shared = self._shared(t_s)
        if self.signal == "eda":
            return 5.0 + 0.4 * shared + 0.02 * self.rng.standard_normal(t_s.size)
        hr = 70.0 + 6.0 * shared
        phase = self._phase + np.cumsum(hr / 60.0 / self.rate_hz)
        self._phase = float(phase[-1] % 1.0)
        pulse = np.exp(-((phase % 1.0) - 0.3) ** 2 / 0.01) + 0.3 * np.exp(-((phase % 1.0) - 0.6) ** 2 / 0.02)
        return 50_000.0 + 3_000.0 * pulse + 30.0 * self.rng.standard_normal(t_s.size)

    def read(self, timeout_s: float) -> list[SampleBlock]:
        now = self.clock.now_ns()
        if self._next_ns is None:
            period = round(1e9 / self.rate_hz)
            self._next_ns = (now // period) * period
        block_ns = round(self.n_block * 1e9 / self.rate_hz)
        wait_s = (self._next_ns + block_ns - now) / 1e9
        if wait_s > 0:
            real_wait = wait_s / self.clock.speed
            if real_wait > timeout_s:
                time.sleep(timeout_s)
                return []
            self.clock.sleep(wait_s)
        t0 = self._next_ns
        t = t0 + np.round(np.arange(self.n_block) * 1e9 / self.rate_hz).astype(np.int64)
        block = SampleBlock(self.stream, self.seq & 0xFFFFFFFF, t0, self.rate_hz, self._values(t))
        self.seq += 1
        self._next_ns = t0 + block_ns
        return [block]


class SourceThread:
    """Runs a :class:`Source`; puts ``("block", name, block)`` and ``("sensor", name, state)`` events."""

    def __init__(self, source: Source, out: queue.Queue, *, clock: Clock | None = None, stale_s: float = 3.0,
                 stale_min_real_s: float = 1.0, retry_max_s: float = 10.0) -> None:
        self.source = source
        self.out = out
        self.clock = clock
        self.stale_s = stale_s
        self.stale_min_real_s = stale_min_real_s
        self._lost_seen: dict[str, int] = {}
        self.retry_max_s = retry_max_s
        self.state = "starting"
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _set_state(self, state: str, detail: str = "") -> None:
        if state != self.state:
            self.state = state
            if state == "fault":
                logger.warning("sensor %s: fault: %s", self.source.name, detail)
            else:
                logger.info("sensor %s: %s", self.source.name, state)
            self.out.put(("sensor", self.source.name, state))

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                self.source.open()
            except (SensorError, OSError) as exc:
                self.errors += 1
                self._set_state("fault", str(exc))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.retry_max_s)
                continue
            last_data, last_real = self._now_s(), time.monotonic()
            try:
                while not self._stop.is_set():
                    blocks = self.source.read(0.25)
                    now, now_real = self._now_s(), time.monotonic()
                    if blocks:
                        last_data, last_real = now, now_real
                        backoff = 0.2
                        self._set_state("ok")
                        self._put_blocks(blocks)
                    elif now - last_data > self.stale_s and now_real - last_real > self.stale_min_real_s:
                        self._set_state("fault", f"no data for {now - last_data:.1f} s")
            except (SensorError, OSError) as exc:
                self.errors += 1
                self._set_state("fault", str(exc))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.retry_max_s)
            except Exception as exc:  # a driver bug must not kill acquisition silently
                self.errors += 1
                logger.exception("sensor %s: unexpected error", self.source.name)
                self._set_state("fault", repr(exc))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.retry_max_s)
            finally:
                try:
                    self.source.close()
                except Exception:
                    logger.debug("close of %s failed", self.source.name, exc_info=True)

    def _now_s(self) -> float:
        """Seconds on the unit's clock (simulated time in a HIL run), else the host's monotonic clock."""
        return self.clock.now_ns() / 1e9 if self.clock is not None else time.monotonic()

    def _put_blocks(self, blocks: list[SampleBlock]) -> None:
        """Queue ``blocks``, each stream's new sample losses as a ``lost`` event before its first block."""
        report = getattr(self.source, "sample_losses", None)  # optional for duck-typed sources (hil.wiring)
        lost = report() if report is not None else {}
        for b in blocks:
            total = lost.get(b.stream)
            if total is not None and total != self._lost_seen.get(b.stream, 0):
                self.out.put(("lost", b.stream, total - self._lost_seen.get(b.stream, 0)))
                self._lost_seen[b.stream] = total
            self.out.put(("block", self.source.name, b))

    def start(self) -> SourceThread:
        self._thread = threading.Thread(target=self._run, name=f"source-{self.source.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 3.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)


def block_gap(prev_seq: int | None, seq: int) -> int:
    """Blocks lost between two consecutive sequence numbers (uint32 wrap aware)."""
    if prev_seq is None:
        return 0
    return (seq - prev_seq - 1) & 0xFFFFFFFF if seq != prev_seq else 0
