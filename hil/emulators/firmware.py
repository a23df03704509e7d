"""A sensor firmware emulator speaking the dyadsync frame protocol on a real pseudo-terminal.

The emulator plays a microcontroller: its own crystal (``drift_ppm``) drives a 32-bit microsecond
counter and the sampling of every channel; samples are taken whether or not a host listens (the sample
index keeps counting, so a host that was away sees an exact index gap). It answers HELLO requests,
TIME_PING, START/STOP and CONFIG as ``docs/firmware-protocol.md`` specifies.

It runs in *simulated time*: ``speed`` simulated seconds pass per real second, so ten minutes of data
take 30 s at ``speed=20``. The port appears at a stable path (a symlink, like udev's
``/dev/serial/by-id/...``) that the host opens by URL; :meth:`FirmwareEmulator.unplug` closes the pty and
removes the symlink for a simulated duration, then plugs a fresh pty in, just as a USB CDC device
disappears and comes back with a new ``/dev/ttyACM*`` node.

Fault knobs: ``bit_error_rate`` (flip bits of every written byte independently), ``drop_byte_rate``
(omit written bytes), :meth:`unplug`, :meth:`mute` (stay open but stop answering and sending),
:meth:`reset_device` (reboot: clock and indices restart, new boot id, unsolicited HELLO).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from firmware_bridge.protocol import (
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    Ack,
    ChannelInfo,
    Config,
    Hello,
    Nack,
    NackCode,
    Samples,
    Start,
    Status,
    Stop,
    StreamDecoder,
    TimePing,
    TimePong,
    encode_frame,
)

logger = logging.getLogger(__name__)

UINT32 = 1 << 32


@dataclass
class EmulatedChannel:
    """One channel of the emulated firmware. ``signal(t_s)`` gives the physical value at true time t_s;
    the firmware sends ``round((value - offset) / scale)`` as int32."""

    channel: int
    role: str
    signal_name: str
    rate_hz: float
    units: str
    signal: Callable[[float], float]
    scale: float = 1.0
    offset: float = 0.0
    frame_samples: int = 8
    # state
    next_index: int = 0
    pending: list[int] = field(default_factory=list)
    pending_first: int = 0
    generated: int = 0
    sent: int = 0
    dropped_full: int = 0  # samples in frames dropped whole because the output buffer was full

    def info(self) -> ChannelInfo:
        return ChannelInfo(
            self.channel, self.role, self.signal_name, self.rate_hz, self.units, self.scale, self.offset
        )

    def raw_value(self, t_s: float) -> int:
        raw = round((float(self.signal(t_s)) - self.offset) / self.scale)
        return int(min(max(raw, -(2**31)), 2**31 - 1))


class FirmwareEmulator:
    """Emulated firmware on a pty. ``path`` is the stable port path to open with ``serial_for_url``.

    channels: the channel table.
    port_dir: directory where the symlink ``ttyDYAD0`` is created.
    speed: simulated seconds per real second.
    drift_ppm: device crystal error (positive: device clock runs fast).
    start_device_us: device counter at simulated time 0 (set close to 2**32 to exercise the wrap).
    major/minor: protocol version this firmware claims (a wrong major must be refused by the host).
    tick_s: real seconds between emulator steps.
    tx_buffer_bytes: the device's output buffer. What the port does not take at once waits there and goes out
        as the host reads; a frame that does not fit is dropped whole, never cut (docs/firmware-protocol.md:
        the host then sees an index gap, not a CRC error). Default: 64 KiB times ``speed``, so that it spans
        the same real time as a real device's at 1x (a process starved for a second at 20x is twenty
        simulated seconds of data).
    """

    def __init__(
        self,
        channels: list[EmulatedChannel],
        port_dir: str | os.PathLike,
        *,
        speed: float = 1.0,
        drift_ppm: float = 0.0,
        start_device_us: int = 0,
        firmware_id: str = "dyadsync-emu",
        firmware_version: tuple[int, int, int] = (1, 0, 0),
        device_id: int = 0x0D1AD,
        major: int = PROTOCOL_MAJOR,
        minor: int = PROTOCOL_MINOR,
        bit_error_rate: float = 0.0,
        drop_byte_rate: float = 0.0,
        tick_s: float = 0.005,
        seed: int = 0,
        link_name: str = "ttyDYAD0",
        tx_buffer_bytes: int | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        ids = [c.channel for c in channels]
        if len(set(ids)) != len(ids):
            raise ValueError(f"channel ids must be unique, got {ids}")
        self.channels = {c.channel: c for c in channels}
        self.path = str(Path(port_dir) / link_name)
        self.speed = float(speed)
        self.drift_ppm = float(drift_ppm)
        self.start_device_us = int(start_device_us)
        self.firmware_id = firmware_id
        self.firmware_version = firmware_version
        self.device_id = device_id
        self.major = major
        self.minor = minor
        self.bit_error_rate = bit_error_rate
        self.drop_byte_rate = drop_byte_rate
        self.tick_s = tick_s
        self.tx_buffer_bytes = int(tx_buffer_bytes if tx_buffer_bytes is not None else 65536 * max(1.0, speed))
        self._txbuf = bytearray()
        self._rng = np.random.default_rng(seed)
        self.boot_id = int(self._rng.integers(1, 2**32 - 1))
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._decoder = StreamDecoder()
        self._frame_seq = 0
        self._real_t0 = 0.0
        self._sim_base = 0.0
        self._boot_sim_t = 0.0  # simulated time of the last (re)boot
        self._replug_at: float | None = None
        self._mute_until: float | None = None
        self._pending_reset = False
        self.streaming = False
        self.events: list[tuple[float, str, object]] = []
        self.received: list[tuple[float, object]] = []  # (sim time, message) from the host
        self.bytes_written = 0
        self.bytes_dropped_full = 0  # in whole frames that did not fit the output buffer
        self.frames_dropped_full = 0
        self.bytes_corrupted = 0

    # ----------------------------------------------------------------------------------- time
    def sim_time(self) -> float:
        """Simulated (true) seconds since start."""
        return self._sim_base + (time.monotonic() - self._real_t0) * self.speed

    def _device_us_f(self, t_s: float) -> float:
        return self.start_device_us + (t_s - self._boot_sim_t) * 1e6 * (1.0 + self.drift_ppm * 1e-6)

    def device_us(self, t_s: float | None = None) -> int:
        """The device's 32-bit µs counter at simulated time ``t_s`` (default: now)."""
        t = self.sim_time() if t_s is None else t_s
        return int(self._device_us_f(t)) % UINT32

    def true_time_of_device_us(self, device_us_unwrapped: float) -> float:
        return self._boot_sim_t + (device_us_unwrapped - self.start_device_us) / (1e6 * (1.0 + self.drift_ppm * 1e-6))

    def sample_time_s(self, ch: EmulatedChannel, index: int) -> float:
        """True simulated time of sample ``index`` of ``ch`` (sampling runs on the device clock)."""
        return self.true_time_of_device_us(self.start_device_us + index * 1e6 / ch.rate_hz)

    def value_at(self, channel: int, index: int) -> float:
        """The physical value the host should reconstruct for sample ``index`` (raw * scale + offset)."""
        ch = self.channels[channel]
        return ch.raw_value(self.sample_time_s(ch, index)) * ch.scale + ch.offset

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> FirmwareEmulator:
        self._real_t0 = time.monotonic()
        self._plug()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="firmware-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.error("firmware emulator thread did not stop within %.1f s", timeout_s)
        self._unplug_now()

    def __enter__(self) -> FirmwareEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------ fault knobs
    def unplug(self, duration_s: float) -> None:
        """Pull the cable now for ``duration_s`` simulated seconds (pty closed, port path removed)."""
        with self._lock:
            now = self.sim_time()
            self._unplug_now()
            self._replug_at = now + duration_s
            self.events.append((now, "unplug", duration_s))

    def mute(self, duration_s: float) -> None:
        """Stay connected but neither send nor answer for ``duration_s`` simulated seconds."""
        with self._lock:
            now = self.sim_time()
            self._mute_until = now + duration_s
            self.events.append((now, "mute", duration_s))

    def reset_device(self) -> None:
        """Reboot: the clock restarts at ``start_device_us``, indices at 0, new boot id, streaming off."""
        with self._lock:
            self._pending_reset = True

    @property
    def plugged(self) -> bool:
        return self._master is not None

    # ----------------------------------------------------------------------------------- pty
    def _plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = self.path + ".new"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.path)
        self._decoder.reset()
        self.streaming = False
        self.events.append((self.sim_time(), "plug", os.ttyname(slave)))

    def _unplug_now(self) -> None:
        if os.path.lexists(self.path):
            os.unlink(self.path)
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None
        self._txbuf.clear()  # what the device had not sent dies with the cable (the host counts it lost)
        self.streaming = False

    def _write(self, data: bytes) -> bool:
        """Queue one whole frame for the port; False (frame dropped whole, counted) when the buffer is full."""
        if self._master is None:
            return False
        buf = bytearray(data)
        if self.drop_byte_rate > 0:
            keep = self._rng.random(len(buf)) >= self.drop_byte_rate
            if not keep.all():
                self.bytes_corrupted += int((~keep).sum())
                buf = bytearray(np.frombuffer(bytes(buf), dtype=np.uint8)[keep].tobytes())
        if self.bit_error_rate > 0 and buf:
            flips = np.nonzero(self._rng.random(len(buf) * 8) < self.bit_error_rate)[0]
            for bit in flips:
                buf[bit // 8] ^= 1 << (bit % 8)
            self.bytes_corrupted += len(flips)
        self._flush()
        if len(self._txbuf) + len(buf) > self.tx_buffer_bytes:
            self.frames_dropped_full += 1
            self.bytes_dropped_full += len(buf)
            return False
        self._txbuf += buf
        self._flush()
        return True

    def _flush(self) -> None:
        """Hand the port what it takes now; the rest stays queued (the device waits for the host, as USB does)."""
        while self._txbuf and self._master is not None:
            try:
                n = os.write(self._master, self._txbuf)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                if exc.errno == errno.EIO:
                    n = 0
                else:
                    raise
            if n <= 0:
                return
            del self._txbuf[:n]
            self.bytes_written += n

    def _send(self, msg: object, device_us: int | None = None) -> bool:
        self._frame_seq = (self._frame_seq + 1) & 0xFFFF
        dev = self.device_us() if device_us is None else device_us
        return self._write(encode_frame(msg, frame_seq=self._frame_seq, device_time_us=dev, major=self.major, minor=self.minor))

    def _hello(self) -> Hello:
        return Hello(
            self.firmware_id,
            self.firmware_version,
            self.device_id,
            self.boot_id,
            tuple(c.info() for c in self.channels.values()),
        )

    # ------------------------------------------------------------------------------ main loop
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    self._step()
            except Exception:  # the emulator must not die silently in a test
                logger.exception("firmware emulator step failed")
                raise
            self._stop.wait(self.tick_s)

    def _step(self) -> None:
        now = self.sim_time()
        if self._pending_reset:
            self._pending_reset = False
            self._boot_sim_t = now
            self.boot_id = int(self._rng.integers(1, 2**32 - 1))
            for ch in self.channels.values():
                ch.next_index = 0
                ch.pending.clear()
            self.streaming = False
            self.events.append((now, "reset", self.boot_id))
            if self.plugged:
                self._send(self._hello())
        if self._replug_at is not None and now >= self._replug_at:
            self._replug_at = None
            self._plug()
            self.events.append((now, "replug", None))
        muted = self._mute_until is not None and now < self._mute_until
        if self._mute_until is not None and not muted:
            self._mute_until = None
        if self.plugged and not muted:
            self._flush()
            self._read_host(now)
        self._sample(now, muted)

    def _read_host(self, now: float) -> None:
        assert self._master is not None
        while True:
            try:
                r, _, _ = select.select([self._master], [], [], 0)
                if not r:
                    return
                data = os.read(self._master, 4096)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EIO:  # no process holds the slave side: nothing to read
                    return
                raise
            if not data:
                return
            for frame in self._decoder.feed(data):
                self._handle(frame)

    def _handle(self, frame) -> None:
        msg = frame.msg
        now = self.sim_time()
        t2 = self.device_us(now)
        self.received.append((now, msg))
        if isinstance(msg, Hello):
            if msg.is_request:
                self._send(self._hello())
        elif isinstance(msg, TimePing):
            self._send(TimePong(msg.ping_id, msg.t1_host_ns, t2, self.device_us()))
        elif isinstance(msg, Start):
            self.streaming = True
            self.events.append((now, "start", None))
            self._send(Ack(int(Start.TYPE), frame.frame_seq))
        elif isinstance(msg, Stop):
            self.streaming = False
            self.events.append((now, "stop", None))
            self._send(Ack(int(Stop.TYPE), frame.frame_seq))
        elif isinstance(msg, Config):
            ch = self.channels.get(msg.channel)
            if ch is None:
                self._send(Nack(int(Config.TYPE), frame.frame_seq, NackCode.UNKNOWN_CHANNEL, f"no channel {msg.channel}"))
            elif msg.key == "frame_samples" and 1 <= msg.value <= 240:
                ch.frame_samples = int(msg.value)
                self._send(Ack(int(Config.TYPE), frame.frame_seq))
            else:
                self._send(Nack(int(Config.TYPE), frame.frame_seq, NackCode.BAD_VALUE, f"cannot set {msg.key}={msg.value}"))
        else:
            self._send(Nack(int(frame.msg.TYPE), frame.frame_seq, NackCode.UNKNOWN_TYPE, "not accepted by a device"))

    def _sample(self, now: float, muted: bool) -> None:
        dev_now = self._device_us_f(now)
        for ch in self.channels.values():
            period_us = 1e6 / ch.rate_hz
            while self.start_device_us + ch.next_index * period_us <= dev_now:
                k = ch.next_index
                if not ch.pending:
                    ch.pending_first = k
                ch.pending.append(ch.raw_value(self.sample_time_s(ch, k)))
                ch.next_index += 1
                ch.generated += 1
                if len(ch.pending) >= ch.frame_samples:
                    if self.streaming and self.plugged and not muted:
                        first_dev = int(self.start_device_us + ch.pending_first * period_us) % UINT32
                        if self._send(Samples(ch.channel, ch.pending_first, tuple(ch.pending)), device_us=first_dev):
                            ch.sent += len(ch.pending)
                        elif self.plugged:
                            ch.dropped_full += len(ch.pending)
                    ch.pending = []

    def send_status(self, entries: tuple[tuple[int, int, int], ...]) -> None:
        """Send a STATUS frame now (e.g. contact lost on a channel)."""
        with self._lock:
            self._send(Status(entries))
