"""Hostile bytes for the serial frame decoder: a frame or a ProtocolError, never anything else.

Random bytes never get past the CRC, so these tests also build frames with a *correct* CRC around random
or mutated payloads of every message type: the payload decoders, not only the CRC, must refuse them.
"""

from __future__ import annotations

import math
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.errors import ProtocolError
from firmware_bridge.protocol import (
    HEADER,
    MAX_FRAME,
    MESSAGE_CLASSES,
    ChannelInfo,
    Config,
    Frame,
    Hello,
    Samples,
    StreamDecoder,
    cobs_decode,
    cobs_encode,
    decode_frame,
    encode_frame,
)

HELLO = Hello("fw", (1, 0, 0), 7, 9, (ChannelInfo(0, "therapist", "eda", 32.0, "uS", 1e-4, 0.0),
                                      ChannelInfo(1, "client", "ppg", 100.0, "counts")))


def _framed(msg_type: int, payload: bytes, major: int = 1) -> bytes:
    body = HEADER.pack(major, 0, msg_type, 0, 1, 2) + payload
    return cobs_encode(body + struct.pack("<I", zlib.crc32(body)))


def _check(frame: Frame) -> None:
    """An accepted frame holds a well-formed message that encodes to the same payload."""
    msg = frame.msg
    if isinstance(msg, Hello):
        for ch in msg.channels:
            assert math.isfinite(ch.scale) and math.isfinite(ch.offset) and 0 < ch.rate_hz < 1e6
            assert "\n" not in ch.signal
    if isinstance(msg, Config):
        assert math.isfinite(msg.value)
    assert decode_frame(encode_frame(msg, frame_seq=frame.frame_seq,
                                     device_time_us=frame.device_time_us)[:-1]).msg == msg


def _decode_or_refuse(raw: bytes) -> None:
    try:
        frame = decode_frame(raw)
    except ProtocolError:
        return
    _check(frame)


@given(msg_type=st.sampled_from(sorted(MESSAGE_CLASSES)) | st.integers(0, 255),
       payload=st.binary(max_size=MAX_FRAME))
@settings(max_examples=600, deadline=None)
def test_any_payload_with_a_good_crc(msg_type, payload):
    _decode_or_refuse(_framed(msg_type, payload))


@given(data=st.data())
@settings(max_examples=400, deadline=None)
def test_mutated_hello_with_a_good_crc(data):
    """Flip bytes inside a valid HELLO (channel table, strings, doubles), then fix the CRC."""
    p = bytearray(HELLO.encode_payload())
    for _ in range(data.draw(st.integers(1, 3))):
        p[data.draw(st.integers(0, len(p) - 1))] = data.draw(st.integers(0, 255))
    p = p[: data.draw(st.integers(0, len(p)))] if data.draw(st.booleans()) else p
    _decode_or_refuse(_framed(Hello.TYPE, bytes(p)))


@given(st.binary(max_size=2000))
@settings(max_examples=400, deadline=None)
def test_random_bytes_to_every_layer(data):
    for raw in (data, data.replace(b"\x00", b"\x01")):
        try:
            cobs_decode(raw)
        except ProtocolError:
            pass
        _decode_or_refuse(raw)
    dec = StreamDecoder()
    frames = dec.feed(data)
    for f in frames:
        _check(f)
    assert dec.stats.bytes_in == len(data)


@given(cut=st.integers(0, 200), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4))
@settings(max_examples=300, deadline=None)
def test_truncated_and_flipped_frames_in_a_stream(cut, flips):
    good = [encode_frame(HELLO, frame_seq=1), encode_frame(Samples(0, 5, (1, 2, 3)), frame_seq=2)]
    stream = bytearray(b"".join(good))
    stream = stream[: min(cut, len(stream))] + b"\x00" + stream  # a torn frame before two whole ones
    for pos, val in flips:
        stream[pos % len(stream)] = val
    dec = StreamDecoder()
    out = dec.feed(bytes(stream))
    for f in out:
        _check(f)
    s = dec.stats
    assert s.frames == len(out)
    if not flips:
        assert [f.frame_seq for f in out][-2:] == [1, 2]


@pytest.mark.parametrize("scale, offset", [(math.nan, 0.0), (1.0, math.inf), (-math.inf, 0.0)])
def test_hello_with_non_finite_calibration_is_refused(scale, offset):
    payload = bytearray(HELLO.encode_payload())
    good = struct.pack("<dd", 1e-4, 0.0)
    at = bytes(payload).index(good)
    payload[at : at + 16] = struct.pack("<dd", scale, offset)
    with pytest.raises(ProtocolError, match="finite"):
        decode_frame(_framed(Hello.TYPE, bytes(payload)))


def test_hello_signal_with_newline_is_refused():
    payload = HELLO.encode_payload().replace(b"\x03eda", b"\x04eda\n", 1)
    with pytest.raises(ProtocolError, match="signal"):
        decode_frame(_framed(Hello.TYPE, payload))


def test_config_non_finite_value_is_refused():
    with pytest.raises(ProtocolError, match="finite"):
        Config(0, "rate_hz", math.nan).encode_payload()
    payload = bytes([0]) + b"\x07rate_hz" + struct.pack("<d", math.inf)
    with pytest.raises(ProtocolError, match="finite"):
        decode_frame(_framed(Config.TYPE, payload))


def test_oversized_or_non_bytes_input_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_frame(b"\x01" * 100_000)
    with pytest.raises(ProtocolError, match="bytes"):
        decode_frame("text")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="too long"):
        decode_frame(_framed(0x02, b"\x00" * (MAX_FRAME - 13)))  # 1025 bytes decoded, 1026 encoded
