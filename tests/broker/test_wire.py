"""Wire contract: round trips (property tests) and strict, clear rejection of bad input."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import wire
from broker.errors import WireError
from core.errors import DyadsyncError
from firmware_bridge.block import SampleBlock

streams = st.sampled_from(["therapist", "client"]).flatmap(
    lambda role: st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True).map(lambda s: f"{role}/{s}")
)
sessions = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)


@given(
    stream=streams,
    seq=st.integers(0, 2**32 - 1),
    t0=st.integers(-(2**63), 2**63 - 1),
    rate=st.floats(1e-3, 1e5, allow_nan=False),
    flags=st.integers(0, 2**32 - 1),
    values=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=300),
    session=sessions | st.just(""),
)
@settings(max_examples=300, deadline=None)
def test_block_round_trip(stream, seq, t0, rate, flags, values, session):
    b = SampleBlock(stream, seq, t0, rate, np.array(values, dtype=np.float32), flags)
    out, sess = wire.decode_block(wire.encode_block(b, session))
    assert out == b and sess == session
    assert out.values.dtype == np.float32


def _good() -> bytes:
    return wire.encode_block(SampleBlock("client/ppg", 7, 123, 100.0, np.ones(5, np.float32)), "S1")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p[:10], "truncated"),
        (lambda p: p[:-1], "length mismatch"),
        (lambda p: p + b"\x00\x00\x00\x00", "length mismatch"),
        (lambda p: b"XXXX" + p[4:], "wrong magic"),
        (lambda p: p[:4] + b"\x02" + p[5:], "version 2 is unknown"),
        (lambda p: p[:7] + b"\x01" + p[8:], "reserved"),
        (lambda p: p[:20] + struct.pack("<d", math.nan) + p[28:], "rate_hz"),
        (lambda p: p[:20] + struct.pack("<d", math.inf) + p[28:], "rate_hz"),
        (lambda p: p[:20] + struct.pack("<d", -4.0) + p[28:], "rate_hz"),
        (lambda p: p[:32] + struct.pack("<I", 2**30) + p[36:], "count"),
        (lambda p: p[:36] + b"\xff\xfe" + p[38:], "UTF-8"),
        (lambda p: p[:5] + b"\x00" + p[6:], "stream/session lengths"),
        (lambda p: p[:36] + b"nurse/ppg\x00" + p[46:], "role"),
    ],
)
def test_block_decoder_rejects(mutate, message):
    with pytest.raises(WireError, match=message) as info:
        wire.decode_block(mutate(_good()))
    assert isinstance(info.value, ValueError) and isinstance(info.value, DyadsyncError)


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_block_decoder_never_crashes_on_garbage(data):
    try:
        wire.decode_block(data)
    except WireError:
        pass


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_json_decoders_never_crash_on_garbage(data):
    for cls in (wire.Status, wire.Metric, wire.Command, wire.Ack):
        try:
            cls.decode(data)
        except WireError:
            pass


json_floats = st.floats(allow_nan=True, allow_infinity=True)


@given(
    seq=st.integers(0, 2**32 - 1),
    start=st.integers(0, 2**62),
    dur=st.integers(0, 10**12),
    values=st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), json_floats, max_size=12),
)
@settings(max_examples=200, deadline=None)
def test_metric_round_trip_nan_as_null(seq, start, dur, values):
    m = wire.Metric(session="S-1", seq=seq, name="sync_eda", window_start_ns=start, window_end_ns=start + dur, values=values)
    out = wire.Metric.decode(m.encode())
    assert out.seq == seq and out.window_end_ns - out.window_start_ns == dur
    for k, v in values.items():
        assert (math.isnan(out.values[k]) and not math.isfinite(v)) or out.values[k] == v


def test_json_messages_round_trip():
    msgs = [
        wire.Status(unit="unit-a", state="recording", time_ns=5, version="0.1", session="S1",
                    sensors={"client/eda": "ok"}, buffer_depth=3, dropped={"client/ppg": 2}, clock_synced=True),
        wire.Command(id="c1", cmd="start", session="S1", time_ns=9, participants={"therapist": "T01", "client": "C07"}),
        wire.Command(id="c2", cmd="marker", session="S1", time_ns=10, label="imagery segment begins"),
        wire.Ack(id="c1", unit="unit-a", ok=False, time_ns=11, error="no session running"),
    ]
    for m in msgs:
        assert type(m).decode(m.encode()) == m


@pytest.mark.parametrize(
    "cls, payload, message",
    [
        (wire.Metric, b"\xff\xfe", "UTF-8"),
        (wire.Metric, b"[1, 2]", "JSON object"),
        (wire.Metric, b'{"schema": 2}', "schema 2 is unknown"),
        (wire.Metric, b"{", "not valid JSON"),
        (wire.Metric, b'{"schema":1,"session":"S","seq":1,"name":"x","window_start_ns":5,"window_end_ns":1,"values":{}}',
         "ends"),
        (wire.Metric, b'{"schema":1,"session":"S","seq":1,"name":"x","window_start_ns":0,"window_end_ns":1,"values":{"a":NaN}}',
         "non-finite"),
        (wire.Metric, b'{"schema":1,"session":"S","seq":-1,"name":"x","window_start_ns":0,"window_end_ns":1,"values":{}}',
         "uint32"),
        (wire.Command, b'{"schema":1,"id":"c","cmd":"start","session":"S","time_ns":1,"participants":{"therapist":"Jane Doe","client":"C1"}}',
         "participant code"),
        (wire.Command, b'{"schema":1,"id":"c","cmd":"start","session":"S","time_ns":1,"participants":{"client":"C1"}}',
         "both therapist and client"),
        (wire.Command, b'{"schema":1,"id":"c","cmd":"reboot","session":"S","time_ns":1}', "not one of"),
        (wire.Status, b'{"schema":1,"unit":"u","state":"recording","time_ns":1,"colour":"red"}', "unknown fields"),
        (wire.Status, b'{"schema":1,"unit":"u","state":"dancing","time_ns":1}', "state"),
        (wire.Ack, b'{"schema":1,"id":"c","unit":"u","ok":"yes","time_ns":1}', "must be"),
        (wire.Ack, b'{"schema":1,"id":"c","unit":"u","ok":true,"time_ns":true}', "boolean"),
    ],
)
def test_json_decoders_reject_clearly(cls, payload, message):
    with pytest.raises(WireError, match=message):
        cls.decode(payload)


def test_oversized_json_rejected():
    with pytest.raises(WireError, match="exceeds"):
        wire.Metric.decode(b" " * (wire.MAX_JSON_BYTES + 1))


def test_topics_build_and_parse():
    assert wire.raw_topic("room-a", "unit-a", "client/ppg") == "dyadsync/v1/room-a/unit-a/raw/client/ppg"
    t = wire.parse_topic("dyadsync/v1/room-a/unit-a/feat/therapist/hr")
    assert (t.room, t.unit, t.kind, t.stream) == ("room-a", "unit-a", "feat", "therapist/hr")
    assert wire.parse_topic(wire.metric_topic("r", "u", "sync_eda")).name == "sync_eda"
    assert wire.parse_topic(wire.cmd_topic("r")).kind == "cmd"
    assert wire.parse_topic(wire.status_topic("r", "u")).kind == "status"
    for bad, msg in [
        ("mqtt/v1/r/u/status", "not a dyadsync topic"),
        ("dyadsync/v2/r/u/status", "unknown topic version"),
        ("dyadsync/v1/R!/u/status", "invalid room"),
        ("dyadsync/v1/r/u/raw/nurse/ppg", "role"),
        ("dyadsync/v1/r/u/whatever", "unknown topic layout"),
        ("dyadsync/v1/r/cmd/x", "after cmd"),
    ]:
        with pytest.raises(WireError, match=msg):
            wire.parse_topic(bad)
    with pytest.raises(WireError):
        wire.unit_prefix("r", "cmd")
