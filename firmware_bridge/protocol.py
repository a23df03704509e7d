"""The dyadsync serial frame protocol, version 1.0 (spec: ``docs/firmware-protocol.md``).

Everything here is pure: bytes in, messages out, no I/O. Layers, from the wire up:

1. **Framing**: each frame is COBS-encoded (Cheshire & Baker, "Consistent Overhead Byte Stuffing",
   IEEE/ACM Trans. Networking 7(2), 1999) and followed by one ``0x00`` delimiter, so a receiver
   resynchronises at the next ``0x00`` after any corruption.
2. **Frame**: ``header (10 bytes) | payload | CRC-32 (4 bytes, little-endian)``; the CRC is the IEEE 802.3
   CRC-32 (``zlib.crc32``) over header and payload.
3. **Messages**: frozen dataclasses with ``encode_payload``/``decode_payload``.

:class:`StreamDecoder` turns an arbitrary byte stream into messages and never raises on bad input: it
counts frames, CRC errors, decode errors and version errors instead. :class:`IndexTracker` turns the
per-channel 32-bit sample indices into exact lost-sample counts.
"""

from __future__ import annotations

import enum
import logging
import math
import struct
import zlib
from dataclasses import dataclass

from core.vocab import ROLES, SIGNAL_RE

from .errors import ProtocolError

logger = logging.getLogger(__name__)

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0

HEADER = struct.Struct("<BBBBHI")  # major, minor, msg_type, flags, frame_seq, device_time_us
HEADER_SIZE = HEADER.size  # 10
CRC_SIZE = 4
MIN_FRAME = HEADER_SIZE + CRC_SIZE
MAX_FRAME = 1024  # decoded bytes (header + payload + CRC); longer frames are decode errors
MAX_SAMPLES_PER_FRAME = 240  # 240 * 4 + 7 + 14 = 981 <= MAX_FRAME
UINT32 = 1 << 32
DELIMITER = b"\x00"


class UnsupportedVersionError(ProtocolError):
    """The peer speaks a protocol major version this host does not implement; no data is accepted."""


class CrcError(ProtocolError):
    """A frame's CRC does not match its content."""


class MsgType(enum.IntEnum):
    HELLO = 0x01
    SAMPLES = 0x02
    STATUS = 0x03
    TIME_PING = 0x04
    TIME_PONG = 0x05
    START = 0x10
    STOP = 0x11
    CONFIG = 0x12
    ACK = 0x20
    NACK = 0x21


class NackCode(enum.IntEnum):
    UNKNOWN_TYPE = 1
    BAD_PAYLOAD = 2
    UNKNOWN_CHANNEL = 3
    BAD_VALUE = 4
    BUSY = 5
    UNSUPPORTED_VERSION = 6


class StatusBits(enum.IntFlag):
    NONE = 0
    CONTACT_LOST = 1 << 0
    SATURATED = 1 << 1
    FIFO_OVERFLOW = 1 << 2
    SENSOR_FAULT = 1 << 3


# ----------------------------------------------------------------------------------------------- COBS


def cobs_encode(data: bytes) -> bytes:
    """COBS-encode ``data`` (no delimiter added). The result contains no zero byte."""
    out = bytearray()
    for piece in bytes(data).split(b"\x00"):
        while len(piece) >= 254:
            out.append(255)
            out += piece[:254]
            piece = piece[254:]
        out.append(len(piece) + 1)
        out += piece
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Decode one COBS block (without delimiter). Raises :class:`ProtocolError` if malformed."""
    out = bytearray()
    i = 0
    n = len(data)
    if n == 0:
        raise ProtocolError("empty COBS frame")
    while i < n:
        code = data[i]
        if code == 0:
            raise ProtocolError(f"zero byte inside COBS frame at offset {i}")
        end = i + code
        if end > n:
            raise ProtocolError(f"COBS code {code} at offset {i} runs past the frame end ({n} bytes)")
        chunk = data[i + 1 : end]
        if 0 in chunk:
            raise ProtocolError(f"zero byte inside COBS frame near offset {i}")
        out += chunk
        i = end
        if code != 255 and i < n:
            out.append(0)
    return bytes(out)


# ------------------------------------------------------------------------------------------- messages


def _pack_str(s: str) -> bytes:
    raw = s.encode("ascii")
    if len(raw) > 255:
        raise ProtocolError(f"string too long for the protocol ({len(raw)} > 255 bytes): {s[:40]!r}")
    return bytes([len(raw)]) + raw


class _Reader:
    """Cursor over a payload; every overrun is a ProtocolError naming the field."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, fmt: str, name: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ProtocolError(f"{self.what} payload truncated while reading {name}")
        vals = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return vals

    def string(self, name: str) -> str:
        (n,) = self.take("<B", name)
        if self.pos + n > len(self.data):
            raise ProtocolError(f"{self.what} payload truncated inside string {name}")
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{self.what}: {name} is not ASCII") from exc

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{self.what} payload has {len(self.data) - self.pos} trailing bytes")


@dataclass(frozen=True)
class ChannelInfo:
    """One row of the HELLO channel table. A raw int32 value v means ``v * scale + offset`` in ``units``."""

    channel: int
    role: str
    signal: str
    rate_hz: float
    units: str
    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.channel <= 255:
            raise ProtocolError(f"channel id must be 0..255, got {self.channel}")
        if self.role not in ROLES:
            raise ProtocolError(f"channel {self.channel}: role must be one of {ROLES}, got {self.role!r}")
        if not SIGNAL_RE.fullmatch(self.signal):  # fullmatch: the pattern's "$" would allow a final "\n"
            raise ProtocolError(f"channel {self.channel}: bad signal name {self.signal!r}")
        if not (self.rate_hz > 0 and self.rate_hz < 1e6):
            raise ProtocolError(f"channel {self.channel}: rate_hz must be in (0, 1e6), got {self.rate_hz}")
        if not (math.isfinite(self.scale) and math.isfinite(self.offset)):
            raise ProtocolError(f"channel {self.channel}: scale and offset must be finite, got "
                                f"{self.scale!r} and {self.offset!r}")
        if not self.units.isprintable():
            raise ProtocolError(f"channel {self.channel}: units {self.units!r} hold a control character")

    @property
    def stream(self) -> str:
        return f"{self.role}/{self.signal}"


_ROLE_CODE = {"therapist": 0, "client": 1}
_ROLE_NAME = {v: k for k, v in _ROLE_CODE.items()}


@dataclass(frozen=True)
class Hello:
    """Device -> host: identity and channel table. Host -> device: an empty HELLO requests one."""

    firmware_id: str = ""
    firmware_version: tuple[int, int, int] = (0, 0, 0)
    device_id: int = 0
    boot_id: int = 0
    channels: tuple[ChannelInfo, ...] = ()
    is_request: bool = False

    TYPE = MsgType.HELLO

    def encode_payload(self) -> bytes:
        if self.is_request:
            return b""
        out = bytearray(_pack_str(self.firmware_id))
        out += struct.pack("<BBBQIB", *self.firmware_version, self.device_id, self.boot_id, len(self.channels))
        for ch in self.channels:
            out += struct.pack("<BB", ch.channel, _ROLE_CODE[ch.role])
            out += _pack_str(ch.signal)
            out += struct.pack("<d", ch.rate_hz)
            out += _pack_str(ch.units)
            out += struct.pack("<dd", ch.scale, ch.offset)
        return bytes(out)

    @classmethod
    def decode_payload(cls, data: bytes) -> Hello:
        if not data:
            return cls(is_request=True)
        r = _Reader(data, "HELLO")
        fw_id = r.string("firmware_id")
        ma, mi, pa, dev, boot, n = r.take("<BBBQIB", "identity")
        chans = []
        seen = set()
        for _ in range(n):
            cid, role = r.take("<BB", "channel id/role")
            if role not in _ROLE_NAME:
                raise ProtocolError(f"HELLO channel {cid}: unknown role code {role}")
            sig = r.string("signal")
            (rate,) = r.take("<d", "rate_hz")
            units = r.string("units")
            scale, offset = r.take("<dd", "scale/offset")
            if cid in seen:
                raise ProtocolError(f"HELLO lists channel {cid} twice")
            seen.add(cid)
            chans.append(ChannelInfo(cid, _ROLE_NAME[role], sig, rate, units, scale, offset))
        r.end()
        streams = [c.stream for c in chans]
        if len(set(streams)) != len(streams):
            raise ProtocolError(f"HELLO lists a stream twice: {streams}")
        return cls(fw_id, (ma, mi, pa), dev, boot, tuple(chans))


@dataclass(frozen=True)
class Samples:
    """Device -> host: ``count`` consecutive samples of one channel starting at ``first_index``.

    The frame header's device time is the time the sample ``first_index`` was taken.
    """

    channel: int
    first_index: int
    values: tuple[int, ...]

    TYPE = MsgType.SAMPLES

    def encode_payload(self) -> bytes:
        n = len(self.values)
        if not 1 <= n <= MAX_SAMPLES_PER_FRAME:
            raise ProtocolError(f"SAMPLES count must be 1..{MAX_SAMPLES_PER_FRAME}, got {n}")
        return struct.pack(f"<BIH{n}i", self.channel, self.first_index % UINT32, n, *self.values)

    @classmethod
    def decode_payload(cls, data: bytes) -> Samples:
        r = _Reader(data, "SAMPLES")
        ch, first, n = r.take("<BIH", "channel/first_index/count")
        if not 1 <= n <= MAX_SAMPLES_PER_FRAME:
            raise ProtocolError(f"SAMPLES count must be 1..{MAX_SAMPLES_PER_FRAME}, got {n}")
        values = r.take(f"<{n}i", "values")
        r.end()
        return cls(ch, first, tuple(values))


@dataclass(frozen=True)
class Status:
    """Device -> host: per-channel status bits and error counters."""

    entries: tuple[tuple[int, int, int], ...]  # (channel, StatusBits, error_count)

    TYPE = MsgType.STATUS

    def encode_payload(self) -> bytes:
        out = bytearray([len(self.entries)])
        for ch, bits, errs in self.entries:
            out += struct.pack("<BBI", ch, bits, errs)
        return bytes(out)

    @classmethod
    def decode_payload(cls, data: bytes) -> Status:
        r = _Reader(data, "STATUS")
        (n,) = r.take("<B", "count")
        entries = tuple(r.take("<BBI", "entry") for _ in range(n))
        r.end()
        return cls(entries)


@dataclass(frozen=True)
class TimePing:
    """Host -> device: ``t1_host_ns`` is the host monotonic time at sending (echoed in the PONG)."""

    ping_id: int
    t1_host_ns: int

    TYPE = MsgType.TIME_PING

    def encode_payload(self) -> bytes:
        return struct.pack("<Iq", self.ping_id, self.t1_host_ns)

    @classmethod
    def decode_payload(cls, data: bytes) -> TimePing:
        r = _Reader(data, "TIME_PING")
        pid, t1 = r.take("<Iq", "ping")
        r.end()
        return cls(pid, t1)


@dataclass(frozen=True)
class TimePong:
    """Device -> host: t2/t3 are device µs (32-bit, wrapping) at receiving the PING and sending the PONG."""

    ping_id: int
    t1_host_ns: int
    t2_device_us: int
    t3_device_us: int

    TYPE = MsgType.TIME_PONG

    def encode_payload(self) -> bytes:
        return struct.pack("<IqII", self.ping_id, self.t1_host_ns, self.t2_device_us % UINT32, self.t3_device_us % UINT32)

    @classmethod
    def decode_payload(cls, data: bytes) -> TimePong:
        r = _Reader(data, "TIME_PONG")
        vals = r.take("<IqII", "pong")
        r.end()
        return cls(*vals)


@dataclass(frozen=True)
class Start:
    """Host -> device: start streaming all channels (indices continue from where the device is)."""

    TYPE = MsgType.START

    def encode_payload(self) -> bytes:
        return b""

    @classmethod
    def decode_payload(cls, data: bytes) -> Start:
        if data:
            raise ProtocolError(f"START carries no payload, got {len(data)} bytes")
        return cls()


@dataclass(frozen=True)
class Stop:
    TYPE = MsgType.STOP

    def encode_payload(self) -> bytes:
        return b""

    @classmethod
    def decode_payload(cls, data: bytes) -> Stop:
        if data:
            raise ProtocolError(f"STOP carries no payload, got {len(data)} bytes")
        return cls()


@dataclass(frozen=True)
class Config:
    """Host -> device: set ``key`` (ASCII) of ``channel`` (255 = device-wide) to a float value."""

    channel: int
    key: str
    value: float

    TYPE = MsgType.CONFIG

    def encode_payload(self) -> bytes:
        if not math.isfinite(self.value):
            raise ProtocolError(f"CONFIG {self.key!r}: value must be finite, got {self.value!r}")
        return bytes([self.channel]) + _pack_str(self.key) + struct.pack("<d", self.value)

    @classmethod
    def decode_payload(cls, data: bytes) -> Config:
        r = _Reader(data, "CONFIG")
        (ch,) = r.take("<B", "channel")
        key = r.string("key")
        (val,) = r.take("<d", "value")
        r.end()
        if not math.isfinite(val):
            raise ProtocolError(f"CONFIG {key!r}: value must be finite, got {val!r}")
        return cls(ch, key, val)


@dataclass(frozen=True)
class Ack:
    """Device -> host: the request with ``acked_type`` and frame sequence ``acked_seq`` was done."""

    acked_type: int
    acked_seq: int

    TYPE = MsgType.ACK

    def encode_payload(self) -> bytes:
        return struct.pack("<BH", self.acked_type, self.acked_seq)

    @classmethod
    def decode_payload(cls, data: bytes) -> Ack:
        r = _Reader(data, "ACK")
        t, s = r.take("<BH", "ack")
        r.end()
        return cls(t, s)


@dataclass(frozen=True)
class Nack:
    acked_type: int
    acked_seq: int
    code: int
    reason: str = ""

    TYPE = MsgType.NACK

    def encode_payload(self) -> bytes:
        return struct.pack("<BHB", self.acked_type, self.acked_seq, self.code) + _pack_str(self.reason)

    @classmethod
    def decode_payload(cls, data: bytes) -> Nack:
        r = _Reader(data, "NACK")
        t, s, c = r.take("<BHB", "nack")
        reason = r.string("reason")
        r.end()
        return cls(t, s, c, reason)


Message = Hello | Samples | Status | TimePing | TimePong | Start | Stop | Config | Ack | Nack
MESSAGE_CLASSES: dict[int, type] = {
    cls.TYPE: cls for cls in (Hello, Samples, Status, TimePing, TimePong, Start, Stop, Config, Ack, Nack)
}


@dataclass(frozen=True)
class Frame:
    """A decoded frame: header fields plus the message."""

    msg: Message
    frame_seq: int = 0
    device_time_us: int = 0
    major: int = PROTOCOL_MAJOR
    minor: int = PROTOCOL_MINOR
    flags: int = 0


# ----------------------------------------------------------------------------------- frame encode/decode


def encode_frame(
    msg: Message,
    *,
    frame_seq: int = 0,
    device_time_us: int = 0,
    major: int = PROTOCOL_MAJOR,
    minor: int = PROTOCOL_MINOR,
) -> bytes:
    """Return the bytes on the wire for one message: COBS(header | payload | CRC-32) + 0x00."""
    body = HEADER.pack(major, minor, int(msg.TYPE), 0, frame_seq & 0xFFFF, device_time_us % UINT32)
    body += msg.encode_payload()
    body += struct.pack("<I", zlib.crc32(body))
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds MAX_FRAME={MAX_FRAME}")
    return cobs_encode(body) + DELIMITER


def decode_frame(encoded: bytes) -> Frame:
    """Decode the bytes between two delimiters. Raises :class:`ProtocolError` (CRC, layout) or
    :class:`UnsupportedVersionError` (unknown major version, checked after the CRC), whatever the bytes."""
    if not isinstance(encoded, bytes | bytearray | memoryview):
        raise ProtocolError(f"a frame must be bytes, got {type(encoded).__name__}")
    encoded = bytes(encoded)
    if len(encoded) > StreamDecoder.MAX_ENCODED:  # COBS decoding never shrinks by more than this
        raise ProtocolError(f"encoded frame of {len(encoded)} bytes exceeds {StreamDecoder.MAX_ENCODED}")
    body = cobs_decode(encoded)
    if len(body) < MIN_FRAME:
        raise ProtocolError(f"frame too short: {len(body)} bytes < {MIN_FRAME}")
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame too long: {len(body)} bytes > {MAX_FRAME}")
    (crc,) = struct.unpack_from("<I", body, len(body) - CRC_SIZE)
    if zlib.crc32(body[:-CRC_SIZE]) != crc:
        raise CrcError(f"CRC mismatch on a {len(body)}-byte frame")
    major, minor, mtype, flags, seq, dev_us = HEADER.unpack_from(body, 0)
    if major != PROTOCOL_MAJOR:
        raise UnsupportedVersionError(
            f"peer speaks protocol {major}.{minor}; this host implements {PROTOCOL_MAJOR}.x only"
        )
    cls = MESSAGE_CLASSES.get(mtype)
    if cls is None:
        raise ProtocolError(f"unknown message type 0x{mtype:02x}")
    try:
        msg = cls.decode_payload(body[HEADER_SIZE:-CRC_SIZE])
    except struct.error as exc:  # the readers check lengths first; this is a second net, not the rule
        raise ProtocolError(f"{cls.__name__} payload malformed: {exc}") from None
    return Frame(msg, seq, dev_us, major, minor, flags)


# ------------------------------------------------------------------------------------ stream decoding


@dataclass
class DecoderStats:
    frames: int = 0
    crc_errors: int = 0
    decode_errors: int = 0
    version_errors: int = 0
    oversize: int = 0
    bytes_in: int = 0
    bytes_discarded: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class StreamDecoder:
    """Feed arbitrary bytes, get :class:`Frame` objects. Never raises on bad input.

    Bytes are collected up to the next ``0x00``; a collection longer than the largest possible encoded
    frame is dropped (counted in ``oversize``) and skipped until the next delimiter. A frame with an
    unknown major version is counted in ``version_errors`` and remembered in ``last_version_error``.
    """

    MAX_ENCODED = MAX_FRAME + MAX_FRAME // 254 + 2

    def __init__(self) -> None:
        self.stats = DecoderStats()
        self._buf = bytearray()
        self._skipping = False
        self.last_version_error: UnsupportedVersionError | None = None
        self.last_error: str = ""

    def reset(self) -> None:
        """Forget a partial frame (after a reconnect); counters are kept."""
        self.stats.bytes_discarded += len(self._buf)
        self._buf.clear()
        self._skipping = False

    def feed(self, data: bytes) -> list[Frame]:
        out: list[Frame] = []
        self.stats.bytes_in += len(data)
        start = 0
        n = len(data)
        while start < n:
            idx = data.find(0, start)
            if idx < 0:
                self._append(data[start:])
                break
            self._append(data[start:idx])
            if self._skipping:
                self._skipping = False
            elif self._buf:
                frame = self._decode(bytes(self._buf))
                if frame is not None:
                    out.append(frame)
            self._buf.clear()
            start = idx + 1
        return out

    def _append(self, chunk: bytes) -> None:
        if self._skipping:
            self.stats.bytes_discarded += len(chunk)
            return
        self._buf += chunk
        if len(self._buf) > self.MAX_ENCODED:
            self.stats.oversize += 1
            self.stats.bytes_discarded += len(self._buf)
            self._buf.clear()
            self._skipping = True

    def _decode(self, raw: bytes) -> Frame | None:
        try:
            frame = decode_frame(raw)
        except CrcError as exc:
            self.stats.crc_errors += 1
            self.stats.bytes_discarded += len(raw)
            self.last_error = str(exc)
            return None
        except UnsupportedVersionError as exc:
            self.stats.version_errors += 1
            self.last_version_error = exc
            self.last_error = str(exc)
            logger.warning("refusing frame: %s", exc)
            return None
        except (ProtocolError, struct.error, ValueError) as exc:
            self.stats.decode_errors += 1
            self.stats.bytes_discarded += len(raw)
            self.last_error = str(exc)
            return None
        self.stats.frames += 1
        return frame


# ------------------------------------------------------------------------------------ index tracking


@dataclass
class IndexTracker:
    """Exact lost-sample accounting for one channel from its 32-bit wrapping sample indices.

    ``accept(first, count)`` returns ``(lost_before, keep_from)``: the number of samples missing between
    the previous accepted frame and this one, and how many leading samples of this frame to drop because
    they were already delivered (overlap after a retransmission). A frame entirely in the past returns
    ``keep_from == count`` and is counted as a duplicate.
    """

    next_index: int | None = None  # unwrapped
    received: int = 0
    lost: int = 0
    duplicates: int = 0
    gaps: int = 0

    def unwrap(self, first: int) -> int:
        if self.next_index is None:
            return first
        delta = (first - self.next_index) % UINT32
        if delta >= UINT32 // 2:
            delta -= UINT32
        return self.next_index + delta

    def accept(self, first: int, count: int) -> tuple[int, int]:
        u = self.unwrap(first)
        if self.next_index is None:
            self.next_index = u + count
            self.received += count
            return 0, 0
        lost = 0
        keep_from = 0
        if u > self.next_index:
            lost = u - self.next_index
            self.lost += lost
            self.gaps += 1
        elif u < self.next_index:
            keep_from = min(count, self.next_index - u)
            if keep_from == count:
                self.duplicates += 1
                return 0, count
        self.next_index = max(self.next_index, u + count)
        self.received += count - keep_from
        return lost, keep_from

    def reset(self) -> None:
        """A new device segment (reset): indices start over."""
        self.next_index = None
