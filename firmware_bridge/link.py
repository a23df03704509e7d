"""Host side of the serial firmware link: open by URL, handshake, stream, reconnect, account for every sample.

``SerialLink(url)`` opens the port with :func:`serial.serial_for_url` (``/dev/ttyACM0``, a pty path,
``loop://``) in a reader thread. On every connect it runs the handshake of ``docs/firmware-protocol.md``:
HELLO request -> HELLO (channel table; an unknown protocol major is refused and no data is accepted),
clock pings, START -> ACK. It then turns SAMPLES frames into :class:`SampleBlock` objects stamped in UTC
through :class:`ClockMapper`, counting lost samples exactly from the 32-bit per-channel sample indices.
When the port disappears (pyserial raises ``SerialException``) or falls silent, it closes, backs off
(doubling from ``backoff_initial_s`` to ``backoff_max_s``) and reconnects; if the device kept its boot id,
index accounting and the clock fit continue across the outage, so the loss is reported exactly.

Liveness is judged on the time the link *watched* the port, not on wall time alone: a busy host can leave
the reader thread unscheduled for longer than the silence timeout while the device keeps sending (the OS
buffers its bytes, read first when the thread runs again). Each pass of the reader loop counts at most
``max_watch_step_s`` of silence, however late it ran, so a starved process is not taken for a silent device;
the handshake's deadlines are judged the same way. On an idle host a pass takes ``read_timeout_s``, so the
timeouts are as configured.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import serial

from core.vocab import BlockFlags

from .block import SampleBlock
from .clock import ClockMapper, ClockNotSynced
from .errors import ProtocolError, SensorTimeout
from .protocol import (
    Ack,
    ChannelInfo,
    Frame,
    Hello,
    IndexTracker,
    Message,
    Nack,
    Samples,
    Start,
    Status,
    StatusBits,
    StreamDecoder,
    TimePing,
    TimePong,
    UnsupportedVersionError,
    encode_frame,
)

logger = logging.getLogger(__name__)


class LinkSilent(SensorTimeout):
    """The device sent nothing for ``silence_timeout_s``; the link reconnects."""


class HandshakeError(ProtocolError):
    """The device did not complete the handshake (no HELLO, no clock PONG or no START ACK in time)."""


class _Rehandshake(Exception):
    """Internal: an unsolicited HELLO (device reboot) requires a fresh handshake on the open port."""

    def __init__(self, hello: Hello) -> None:
        super().__init__("device sent HELLO")
        self.hello = hello


@dataclass(frozen=True)
class Delivery:
    """A block plus its accounting: the unwrapped device index of its first sample and the samples
    lost just before it (0 unless ``GAP_BEFORE``)."""

    block: SampleBlock
    first_index: int
    lost_before: int
    segment: int


class SerialLink:
    """Reader thread turning a firmware port into SampleBlocks.

    url: port URL for ``serial.serial_for_url``.
    clock: the ClockMapper to use (default ``ClockMapper()``; pass ``nominal_ns_per_us=1000/speed`` for an
        emulator running faster than real time).
    ping_interval_s: seconds between TIME_PING probes while streaming.
    handshake_timeout_s: time allowed for each handshake step.
    silence_timeout_s: no byte for this long while streaming -> reconnect (time the link watched the port).
    max_watch_step_s: the most one pass of the reader loop counts towards a timeout (default
        ``max(4 * read_timeout_s, 0.05)``): the rest of a late pass is time the process was not running.
    backoff_initial_s / backoff_max_s: reconnect delay, doubling.
    queue_max: deliveries kept for the consumer; when full, new blocks are dropped and counted
        (``queue_dropped_blocks``/``queue_dropped_samples``), their seq numbers are skipped and the next
        block of that stream carries GAP_BEFORE.
    monotonic_ns: host clock (``time.monotonic_ns``).
    serial_factory: opens a URL (``serial.serial_for_url``), called as ``factory(url, baudrate=, timeout=)``.
    """

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 921600,
        clock: ClockMapper | None = None,
        ping_interval_s: float = 0.5,
        handshake_timeout_s: float = 1.0,
        silence_timeout_s: float = 2.0,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 1.0,
        read_timeout_s: float = 0.02,
        max_watch_step_s: float | None = None,
        queue_max: int = 100_000,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
        serial_factory: Callable[..., serial.SerialBase] = serial.serial_for_url,
    ) -> None:
        if backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ValueError(
                f"need 0 < backoff_initial_s <= backoff_max_s, got {backoff_initial_s}, {backoff_max_s}"
            )
        self.url = url
        self.baudrate = baudrate
        self.clock = clock if clock is not None else ClockMapper()
        self.ping_interval_s = ping_interval_s
        self.handshake_timeout_s = handshake_timeout_s
        self.silence_timeout_s = silence_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.read_timeout_s = read_timeout_s
        self.max_watch_step_ns = int((max_watch_step_s if max_watch_step_s is not None
                                      else max(4 * read_timeout_s, 0.05)) * 1e9)
        self.monotonic_ns = monotonic_ns
        self.serial_factory = serial_factory
        self._queue: queue.Queue[Delivery] = queue.Queue(maxsize=queue_max)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._outbox: queue.Queue[Message] = queue.Queue()
        self.decoder = StreamDecoder()
        self.connected = threading.Event()
        self.hello: Hello | None = None
        self.channels: dict[int, ChannelInfo] = {}
        self.trackers: dict[int, IndexTracker] = {}
        self._seq: dict[str, int] = {}
        self._gap_pending: set[str] = set()
        self._status_bits: dict[int, int] = {}
        self._pings: dict[int, int] = {}
        self._ping_id = 0
        self._frame_seq = 0
        self._boot_id: int | None = None
        self._streamed = False
        self._last_rx_ns = 0
        self._watched_ns = 0  # time the link watched the port since the last byte (or deadline start)
        self._watch_mark_ns = 0
        self._down_since_ns: int | None = None
        self.last_outage_s: float | None = None  # host seconds from losing the device to streaming again
        self.refused: str | None = None
        self.last_error: str | None = None
        self.counters = {
            "connects": 0,
            "disconnects": 0,
            "open_failures": 0,
            "handshake_failures": 0,
            "silences": 0,
            "device_resets": 0,
            "unknown_channel_frames": 0,
            "duplicate_frames": 0,
            "queue_dropped_blocks": 0,
            "queue_dropped_samples": 0,
            "internal_errors": 0,
            "unstamped_blocks": 0,
            "acks": 0,
            "nacks": 0,
            "pongs": 0,
        }
        self.lost_samples: dict[str, int] = {}

    # ------------------------------------------------------------------------------ public API
    def start(self) -> SerialLink:
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("SerialLink already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"serial-link {self.url}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 3.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.error("serial link thread for %s did not stop within %.1f s", self.url, timeout_s)
        self.connected.clear()

    def __enter__(self) -> SerialLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def get_delivery(self, timeout_s: float | None = None) -> Delivery | None:
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def get(self, timeout_s: float | None = None) -> SampleBlock | None:
        """Next block, or None after ``timeout_s``."""
        d = self.get_delivery(timeout_s)
        return None if d is None else d.block

    def drain(self) -> Iterator[Delivery]:
        while True:
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return

    def send(self, msg: Message) -> None:
        """Queue a host->device message (STOP, CONFIG...) for the reader thread to write."""
        self._outbox.put(msg)

    def stats(self) -> dict:
        """A snapshot of every counter, for the unit's status message."""
        with self._lock:
            out = dict(self.counters)
            out["decoder"] = self.decoder.stats.as_dict()
            out["lost_samples"] = dict(self.lost_samples)
            out["received_samples"] = {
                self.channels[c].stream: t.received for c, t in self.trackers.items() if c in self.channels
            }
            out["connected"] = self.connected.is_set()
            out["refused"] = self.refused
            out["last_outage_s"] = self.last_outage_s
            out["clock_segment"] = self.clock.segment
            out["clock_drift_ppm"] = self.clock.drift_ppm if self.clock.synced else None
            return out

    # ------------------------------------------------------------------------------ reader thread
    def _run(self) -> None:
        backoff = self.backoff_initial_s
        while not self._stop.is_set():
            try:
                ser = self.serial_factory(self.url, baudrate=self.baudrate, timeout=self.read_timeout_s)
            except (serial.SerialException, OSError, ValueError) as exc:
                self.counters["open_failures"] += 1
                self.last_error = f"open {self.url}: {exc}"
                logger.debug("cannot open %s: %s (retry in %.3f s)", self.url, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                continue
            try:
                self._session(ser)
            except UnsupportedVersionError as exc:
                self.refused = str(exc)
                self.last_error = str(exc)
                logger.error("firmware on %s refused: %s", self.url, exc)
                backoff = self.backoff_max_s
            except (serial.SerialException, OSError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("serial link %s lost: %s", self.url, exc)
            except HandshakeError as exc:
                self.counters["handshake_failures"] += 1
                self.last_error = str(exc)
                logger.warning("handshake on %s failed: %s", self.url, exc)
            except Exception as exc:  # a bug or an unforeseen input must not kill the reader thread
                self.counters["internal_errors"] += 1
                self.last_error = f"internal error: {type(exc).__name__}: {exc}"
                logger.exception("serial link %s: internal error; reconnecting", self.url)
                backoff = self.backoff_max_s
            finally:
                if self.connected.is_set():
                    self.counters["disconnects"] += 1
                    self._down_since_ns = self.monotonic_ns()
                self.connected.clear()
                try:
                    ser.close()
                except Exception:  # closing a vanished port may raise anything
                    logger.debug("close of %s failed", self.url, exc_info=True)
            if self._stop.is_set():
                break
            if self._streamed:
                backoff = self.backoff_initial_s
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.backoff_max_s)

    def _write(self, ser: serial.SerialBase, msg: Message) -> int:
        self._frame_seq = (self._frame_seq + 1) & 0xFFFF
        ser.write(encode_frame(msg, frame_seq=self._frame_seq))
        return self._frame_seq

    def _ping(self, ser: serial.SerialBase) -> None:
        self._ping_id = (self._ping_id + 1) & 0xFFFFFFFF
        t1 = self.monotonic_ns()
        self._pings[self._ping_id] = t1
        if len(self._pings) > 64:
            for k in sorted(self._pings)[:-32]:
                del self._pings[k]
        self._write(ser, TimePing(self._ping_id, t1))

    def _read_frames(self, ser: serial.SerialBase) -> list[Frame]:
        data = ser.read(max(1, ser.in_waiting))  # what the OS buffered while this thread was not running first
        if not data:
            return []
        self._last_rx_ns = self.monotonic_ns()
        self._watched_ns = 0
        return self.decoder.feed(data)

    def _watch_reset(self) -> None:
        self._watched_ns = 0
        self._watch_mark_ns = self.monotonic_ns()

    def _watch(self) -> int:
        """Add this pass's watched time (capped at ``max_watch_step_ns``); returns the total since the last
        byte or reset."""
        now = self.monotonic_ns()
        self._watched_ns += min(max(now - self._watch_mark_ns, 0), self.max_watch_step_ns)
        self._watch_mark_ns = now
        return self._watched_ns

    def _session(self, ser: serial.SerialBase) -> None:
        self._streamed = False
        self.decoder.reset()
        self.decoder.last_error = ""
        self._last_rx_ns = self.monotonic_ns()
        hello: Hello | None = None
        while True:
            self._handshake(ser, hello)
            self._streamed = self.connected.is_set()
            try:
                self._stream(ser)
                return
            except _Rehandshake as rh:
                hello = rh.hello

    def _deadline_loop(self, ser: serial.SerialBase, what: str, resend: Callable[[], None]):
        """Yield frames until the caller returns; resend every quarter timeout; HandshakeError at timeout."""
        timeout_ns = int(self.handshake_timeout_s * 1e9)
        waited = 0  # watched time since the step began (see _watch), not wall time
        last_send = 0
        mark = self.monotonic_ns()
        resend()
        versions_before = self.decoder.stats.version_errors
        while not self._stop.is_set():
            yield from self._read_frames(ser)
            if self.decoder.stats.version_errors > versions_before:
                raise self.decoder.last_version_error or UnsupportedVersionError("unsupported protocol version")
            now = self.monotonic_ns()
            waited += min(max(now - mark, 0), self.max_watch_step_ns)
            mark = now
            if waited > timeout_ns:
                why = f" (last decode error: {self.decoder.last_error})" if self.decoder.last_error else ""
                raise HandshakeError(f"no {what} from {self.url} within {self.handshake_timeout_s} s{why}")
            if waited - last_send > timeout_ns // 4:
                last_send = waited
                resend()

    def _handshake(self, ser: serial.SerialBase, hello: Hello | None) -> None:
        if hello is None:
            for fr in self._deadline_loop(ser, "HELLO", lambda: self._write(ser, Hello(is_request=True))):
                if isinstance(fr.msg, Hello) and not fr.msg.is_request:
                    hello = fr.msg
                    break
            if hello is None:  # stop requested
                return
        self._accept_hello(hello)
        got_pong = False
        for fr in self._deadline_loop(ser, "TIME_PONG", lambda: self._ping(ser)):
            if isinstance(fr.msg, TimePong):
                got_pong = self._on_pong(fr.msg) or got_pong
                if got_pong:
                    break
            elif self.clock.synced:
                # the device may still be streaming from before (same boot): keep those samples
                self._handle(fr, during_handshake=True)
        if not got_pong:
            return
        start_seq: list[int] = []
        for fr in self._deadline_loop(ser, "START ACK", lambda: start_seq.append(self._write(ser, Start()))):
            if isinstance(fr.msg, Ack) and fr.msg.acked_type == int(Start.TYPE) and fr.msg.acked_seq in start_seq:
                self.counters["acks"] += 1
                if self._down_since_ns is not None:
                    self.last_outage_s = (self.monotonic_ns() - self._down_since_ns) / 1e9
                    self._down_since_ns = None
                self.connected.set()
                self.counters["connects"] += 1
                self.refused = None
                logger.info("firmware %s on %s streaming %d channels", hello.firmware_id, self.url, len(self.channels))
                return
            if isinstance(fr.msg, Nack) and fr.msg.acked_type == int(Start.TYPE):
                raise HandshakeError(f"device refused START: {fr.msg.reason}")
            self._handle(fr, during_handshake=True)

    def _accept_hello(self, hello: Hello) -> None:
        if not hello.channels:
            raise HandshakeError(f"device on {self.url} announced no channels")
        new_boot = self._boot_id is not None and hello.boot_id != self._boot_id
        table_changed = {c.channel: c for c in hello.channels} != self.channels
        if new_boot or table_changed:
            if new_boot:
                self.counters["device_resets"] += 1
                logger.warning("device on %s rebooted (boot id %08x): new segment", self.url, hello.boot_id)
            self.clock.new_segment()
            for tr in self.trackers.values():
                tr.reset()
            self._status_bits.clear()
            self._gap_pending.update(c.stream for c in hello.channels if c.stream in self._seq)
        with self._lock:
            self.hello = hello
            self._boot_id = hello.boot_id
            self.channels = {c.channel: c for c in hello.channels}
            for c in hello.channels:
                self.trackers.setdefault(c.channel, IndexTracker())
                self.lost_samples.setdefault(c.stream, 0)

    def _on_pong(self, pong: TimePong) -> bool:
        t1 = self._pings.pop(pong.ping_id, None)
        if t1 is None or t1 != pong.t1_host_ns:
            return False
        self.counters["pongs"] += 1
        return self.clock.add_probe(t1, pong.t2_device_us, pong.t3_device_us, self._last_rx_ns)

    def _stream(self, ser: serial.SerialBase) -> None:
        next_ping = self.monotonic_ns() + int(self.ping_interval_s * 1e9)
        silence_ns = int(self.silence_timeout_s * 1e9)
        self._watch_reset()
        while not self._stop.is_set():
            while True:
                try:
                    self._write(ser, self._outbox.get_nowait())
                except queue.Empty:
                    break
            for fr in self._read_frames(ser):
                self._handle(fr)
            now = self.monotonic_ns()
            if now >= next_ping:
                next_ping = now + int(self.ping_interval_s * 1e9)
                self._ping(ser)
            if self._watch() > silence_ns:
                self.counters["silences"] += 1
                raise LinkSilent(f"no data from {self.url} for {self.silence_timeout_s} s "
                                 f"(wall time {(now - self._last_rx_ns) / 1e9:.2f} s)")

    def _handle(self, fr: Frame, during_handshake: bool = False) -> None:
        msg = fr.msg
        if isinstance(msg, Samples):
            self._on_samples(fr, msg)
        elif isinstance(msg, TimePong):
            self._on_pong(msg)
        elif isinstance(msg, Status):
            for ch, bits, _errs in msg.entries:
                self._status_bits[ch] = bits
        elif isinstance(msg, Hello):
            if not msg.is_request and not during_handshake:
                raise _Rehandshake(msg)
        elif isinstance(msg, Ack):
            self.counters["acks"] += 1
        elif isinstance(msg, Nack):
            self.counters["nacks"] += 1
            logger.warning("device NACK for type 0x%02x: %s", msg.acked_type, msg.reason)

    def _on_samples(self, fr: Frame, msg: Samples) -> None:
        info = self.channels.get(msg.channel)
        if info is None:
            self.counters["unknown_channel_frames"] += 1
            return
        tr = self.trackers[msg.channel]
        n = len(msg.values)
        with self._lock:
            lost, keep_from = tr.accept(msg.first_index, n)
            self.lost_samples[info.stream] = self.lost_samples.get(info.stream, 0) + lost
        if keep_from >= n:
            self.counters["duplicate_frames"] += 1
            return
        first_unwrapped = tr.next_index - (n - keep_from)
        dev_us = fr.device_time_us + round(keep_from * 1e6 / info.rate_hz)
        flags = 0
        try:
            t0_ns = self.clock.device_to_utc_ns(dev_us)
        except ClockNotSynced:
            self.counters["unstamped_blocks"] += 1
            t0_ns = self.monotonic_ns() + self.clock.utc_offset_ns()
            flags |= BlockFlags.CLOCK_UNSYNCED
        stream = info.stream
        if lost or stream in self._gap_pending:
            flags |= BlockFlags.GAP_BEFORE
            self._gap_pending.discard(stream)
        bits = self._status_bits.get(msg.channel, 0)
        if bits & StatusBits.CONTACT_LOST:
            flags |= BlockFlags.CONTACT_LOST
        if bits & StatusBits.SATURATED:
            flags |= BlockFlags.SATURATED
        if bits & StatusBits.FIFO_OVERFLOW:
            flags |= BlockFlags.FIFO_OVERFLOW
        raw = np.asarray(msg.values[keep_from:], dtype=np.float64)
        values = (raw * info.scale + info.offset).astype(np.float32)
        seq = self._seq.get(stream, -1) + 1
        self._seq[stream] = seq & 0xFFFFFFFF
        block = SampleBlock(stream, seq & 0xFFFFFFFF, t0_ns, info.rate_hz, values, int(flags))
        d = Delivery(block, first_unwrapped, lost, self.clock.segment)
        try:
            self._queue.put_nowait(d)
        except queue.Full:
            # The consumer is behind: drop this (newest) block, count it, and flag the next block of the
            # stream, so the gap is marked where it is (its seq is skipped as well).
            self.counters["queue_dropped_blocks"] += 1
            self.counters["queue_dropped_samples"] += block.n
            self._gap_pending.add(stream)
