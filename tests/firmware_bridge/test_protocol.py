"""Frame protocol: round trips, version refusal, and a decoder that survives any byte stream."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.errors import ProtocolError
from firmware_bridge.protocol import (
    HEADER,
    MAX_SAMPLES_PER_FRAME,
    Ack,
    ChannelInfo,
    Config,
    Hello,
    IndexTracker,
    Nack,
    Samples,
    Start,
    Status,
    Stop,
    StreamDecoder,
    TimePing,
    TimePong,
    UnsupportedVersionError,
    cobs_decode,
    cobs_encode,
    decode_frame,
    encode_frame,
)

CHANNELS = (
    ChannelInfo(0, "therapist", "eda", 32.0, "uS", 1e-4, 0.0),
    ChannelInfo(1, "client", "ppg", 100.0, "counts"),
)
MESSAGES = [
    Hello("dyadsync-fw", (1, 2, 3), 0xDEADBEEFCAFE, 77, CHANNELS),
    Hello(is_request=True),
    Samples(1, 0xFFFFFFF0, (1, -2, 2**31 - 1, -(2**31))),
    Status(((0, 3, 7), (1, 0, 0))),
    TimePing(9, 123456789012345),
    TimePong(9, 123456789012345, 4000000000, 5),
    Start(),
    Stop(),
    Config(255, "rate_hz", 64.0),
    Ack(0x10, 65535),
    Nack(0x12, 4, 3, "unknown channel 7"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    wire = encode_frame(msg, frame_seq=70000, device_time_us=2**32 + 5)
    assert wire.endswith(b"\x00") and b"\x00" not in wire[:-1]
    frame = decode_frame(wire[:-1])
    assert frame.msg == msg
    assert frame.frame_seq == 70000 & 0xFFFF
    assert frame.device_time_us == 5


@given(st.binary(max_size=1200))
@settings(max_examples=300, deadline=None)
def test_cobs_round_trip(data):
    enc = cobs_encode(data)
    assert 0 not in enc
    assert cobs_decode(enc) == data


@pytest.mark.parametrize("n", [253, 254, 255, 508, 509])
def test_cobs_block_boundaries(n):
    for data in (bytes([7]) * n, bytes([7]) * n + b"\x00", b"\x00" + bytes([7]) * n):
        assert cobs_decode(cobs_encode(data)) == data


def test_unknown_major_is_refused_clearly():
    wire = encode_frame(Hello("fw", (9, 0, 0), 1, 1, CHANNELS), major=2, minor=4)
    with pytest.raises(UnsupportedVersionError, match=r"protocol 2\.4.*1\.x only"):
        decode_frame(wire[:-1])
    dec = StreamDecoder()
    out = dec.feed(wire + encode_frame(Samples(0, 0, (1,)), major=2))
    assert out == []
    assert dec.stats.version_errors == 2 and dec.stats.frames == 0
    assert isinstance(dec.last_version_error, UnsupportedVersionError)
    # a newer minor of the same major is accepted
    assert dec.feed(encode_frame(Samples(0, 0, (1,)), minor=9))[0].minor == 9


def test_bad_payloads_are_clear_errors():
    with pytest.raises(ProtocolError, match="count"):
        Samples(0, 0, ()).encode_payload()
    with pytest.raises(ProtocolError, match="count"):
        Samples(0, 0, tuple(range(MAX_SAMPLES_PER_FRAME + 1))).encode_payload()
    body = HEADER.pack(1, 0, 0x02, 0, 0, 0) + struct.pack("<BIH", 0, 0, 3) + b"\x01\x00\x00\x00"
    body += struct.pack("<I", zlib.crc32(body))
    with pytest.raises(ProtocolError, match="truncated"):
        decode_frame(cobs_encode(body))
    body = HEADER.pack(1, 0, 0x7E, 0, 0, 0)
    body += struct.pack("<I", zlib.crc32(body))
    with pytest.raises(ProtocolError, match="unknown message type 0x7e"):
        decode_frame(cobs_encode(body))
    with pytest.raises(ProtocolError, match="role"):
        ChannelInfo(0, "patient", "eda", 4.0, "uS")


def test_one_million_random_bytes():
    rng = np.random.default_rng(2024)
    data = rng.integers(0, 256, size=1_000_000, dtype=np.uint8).tobytes()
    dec = StreamDecoder()
    frames = []
    pos = 0
    while pos < len(data):
        step = int(rng.integers(1, 5000))
        frames += dec.feed(data[pos : pos + step])
        pos += step
    assert frames == []  # nothing was sent, so nothing may come out
    s = dec.stats
    assert s.bytes_in == len(data)
    assert s.crc_errors + s.decode_errors + s.oversize > 3000  # ~1 delimiter per 256 random bytes


def _stream(rng, n_frames):
    """A valid stream: two channels of SAMPLES with consecutive indices, interleaved with STATUS."""
    nxt = {0: 0xFFFFFF00, 1: 0}  # channel 0 wraps its 32-bit index
    frames, sent = [], {0: 0, 1: 0}
    for i in range(n_frames):
        if i % 25 == 24:
            frames.append(encode_frame(Status(((0, 1, i), (1, 0, 0))), frame_seq=i))
            continue
        ch = int(rng.integers(0, 2))
        n = int(rng.integers(1, 12))
        vals = tuple(int(v) for v in rng.integers(-(2**31), 2**31, n))
        frames.append(encode_frame(Samples(ch, nxt[ch], vals), frame_seq=i, device_time_us=i * 1000))
        nxt[ch] = (nxt[ch] + n) % 2**32
        sent[ch] += n
    return frames, sent


def _corrupt(rng, frames, mode, rate):
    out = bytearray()
    clean_tail = 10
    for k, f in enumerate(frames):
        b = bytearray(f)
        if k < len(frames) - clean_tail:
            if mode == "flip":
                nbits = len(b) * 8
                for bit in np.nonzero(rng.random(nbits) < rate)[0]:
                    b[bit // 8] ^= 1 << (bit % 8)
            elif mode == "drop":
                keep = rng.random(len(b)) >= rate
                b = bytearray(x for x, kp in zip(b, keep, strict=True) if kp)
            elif mode == "insert":
                nb = bytearray()
                for x in b:
                    if rng.random() < rate:
                        nb.append(int(rng.integers(0, 256)))
                    nb.append(x)
                b = nb
        out += b
    return bytes(out)


@pytest.mark.parametrize(("mode", "rate"), [("flip", 1e-3), ("flip", 1e-2), ("drop", 1e-3), ("insert", 1e-3)])
def test_corrupted_streams_lose_nothing_silently(mode, rate):
    rng = np.random.default_rng(sum(map(ord, mode)) + int(rate * 1e4))
    frames, sent = _stream(rng, 20_000)
    sent_set = {f[:-1] for f in frames}
    wire = _corrupt(rng, frames, mode, rate)
    dec = StreamDecoder()
    trackers = {0: IndexTracker(), 1: IndexTracker()}
    got = 0
    pos = 0
    while pos < len(wire):
        step = int(rng.integers(1, 700))
        for fr in dec.feed(wire[pos : pos + step]):
            # every frame that passes the CRC is one that was sent
            assert encode_frame(fr.msg, frame_seq=fr.frame_seq, device_time_us=fr.device_time_us)[:-1] in sent_set
            got += 1
            if isinstance(fr.msg, Samples):
                tr = trackers[fr.msg.channel]
                if tr.next_index is None:
                    # the first frame of a channel may itself be lost: count from the stream's first index
                    tr.next_index = {0: 0xFFFFFF00, 1: 0}[fr.msg.channel]
                tr.accept(fr.msg.first_index, len(fr.msg.values))
        pos += step
    for ch in (0, 1):
        tr = trackers[ch]
        assert tr.received + tr.lost == sent[ch], (mode, ch, tr)
        assert tr.duplicates == 0
    s = dec.stats
    assert got == s.frames
    if mode == "flip" and rate == 1e-2:
        assert s.crc_errors > 1000 and trackers[0].lost > 0
    assert got < len(frames) and s.crc_errors + s.decode_errors > 0


def test_index_tracker_wrap_overlap_duplicate():
    tr = IndexTracker()
    assert tr.accept(2**32 - 3, 2) == (0, 0)
    assert tr.accept(2**32 - 1, 4) == (0, 0)  # wraps: next is 3
    assert tr.accept(10, 5) == (7, 0)  # 3..9 lost
    assert tr.accept(12, 5) == (0, 3)  # overlap: 12..14 already delivered
    assert tr.accept(12, 5) == (0, 5)  # duplicate
    assert (tr.received, tr.lost, tr.duplicates, tr.gaps) == (2 + 4 + 5 + 2, 7, 1, 1)


def test_spec_worked_example():
    """The bytes printed in docs/firmware-protocol.md are what the encoder produces."""
    assert zlib.crc32(b"123456789") == 0xCBF43926
    wire = encode_frame(Samples(2, 1000, (1, -1, 70000)), frame_seq=7, device_time_us=123456789)
    assert wire.hex(" ") == (
        "02 01 02 02 02 07 08 15 cd 5b 07 02 e8 03 01 02 03 02 01 01 01 08 ff ff ff ff 70 11 01 05 e0 16 84 fd 00"
    )
    assert cobs_decode(wire[:-1]).hex(" ") == (
        "01 00 02 00 07 00 15 cd 5b 07 02 e8 03 00 00 03 00 01 00 00 00 ff ff ff ff 70 11 01 00 e0 16 84 fd"
    )


@given(st.lists(st.integers(1, 97), min_size=1, max_size=60), st.integers(0, 2**32 - 1))
@settings(max_examples=100, deadline=None)
def test_any_chunking_gives_the_same_frames(cuts, first):
    frames = [encode_frame(Samples(i % 3, (first + 10 * i) % 2**32, tuple(range(i, i + 10))), frame_seq=i) for i in range(20)]
    wire = b"".join(frames)
    dec = StreamDecoder()
    out = []
    pos = 0
    for c in cuts * (len(wire) // sum(cuts) + 1):
        out += dec.feed(wire[pos : pos + c])
        pos += c
        if pos >= len(wire):
            break
    assert [f.frame_seq for f in out] == list(range(20))
    assert dec.stats.crc_errors == dec.stats.decode_errors == 0
