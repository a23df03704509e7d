"""Hostile input for every wire decoder: whatever the bytes, the answer is a message or a WireError.

Property-based (hypothesis): JSON nested thousands deep, integers of hundreds of digits, literals that
overflow float64 (``1e400``), lone surrogates, duplicate keys, truncations and byte flips of valid
payloads, and random bytes. An accepted message must hold only what the contract allows (every integer
within int64, sequence numbers within uint32, no infinities), so nothing downstream (the recorder's
SQLite, the unit's state) can fail on it.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import wire
from broker.errors import WireError
from firmware_bridge.block import SampleBlock

DECODERS = (wire.Status, wire.Metric, wire.Command, wire.Ack)
INT64_MAX = 2**63 - 1
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GOOD = {
    wire.Status: {"schema": 1, "unit": "unit-a", "state": "recording", "time_ns": 5, "version": "0.1",
                  "session": "S1", "sensors": {"client/eda": "ok"}, "buffer_depth": 3,
                  "dropped": {"outbox_raw": 2}, "clock_synced": True},
    wire.Metric: {"schema": 1, "session": "S1", "seq": 7, "name": "sync_eda", "window_start_ns": 10,
                  "window_end_ns": 20, "values": {"r0": 0.5, "z": None}},
    wire.Command: {"schema": 1, "id": "c1", "cmd": "start", "session": "S1", "time_ns": 9,
                   "participants": {"therapist": "T01", "client": "C07"}, "label": ""},
    wire.Ack: {"schema": 1, "id": "c1", "unit": "unit-a", "ok": False, "time_ns": 11, "error": "no session"},
}


def _ints(obj):
    """Every int (not bool) and float held by a decoded message, recursively."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _ints(v)
    elif isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    elif isinstance(obj, int | float):
        yield obj


def _decode_or_refuse(cls, payload: bytes):
    """Decode; a refusal must be a WireError. An accepted message must obey the contract's bounds."""
    try:
        msg = cls.decode(payload)
    except WireError:
        return None
    for v in _ints(msg.__dict__):
        if isinstance(v, int):
            assert -(2**63) <= v <= INT64_MAX, (cls.__name__, v)
        else:
            assert not math.isinf(v), (cls.__name__, v)
    assert type(msg).decode(msg.encode()) is not None  # an accepted message re-encodes and decodes again
    return msg


# ------------------------------------------------------------------------------ hostile JSON values
def _nest(depth: int, inner: str, kind: str) -> str:
    if kind == "list":
        return "[" * depth + inner + "]" * depth
    return '{"a":' * depth + inner + "}" * depth


huge_int_literals = st.one_of(
    st.integers(min_value=2**63, max_value=10**400).map(str),
    st.integers(min_value=-(10**400), max_value=-(2**63) - 1).map(str),
    st.integers(20, 4000).map(lambda n: "9" * n),
    st.integers(19, 40).map(lambda n: "0" * n + "1"),  # not JSON (leading zeros): a parse error, not a hang
)
bad_float_literals = st.sampled_from(["1e400", "-1e400", "1E309", "123456789e999", "NaN", "Infinity", "-Infinity",
                                      "1e-400", "-0.0", "2.5e-324"])
deep = st.builds(_nest, st.integers(1, 30_000), st.sampled_from(["1", '""', "null", "[]"]),
                 st.sampled_from(["list", "dict"]))
strings = st.one_of(
    st.text(max_size=40).map(json.dumps),
    st.sampled_from([r'"\ud800"', r'"\udfff x"', r'"[[[[[[[[[[[[[[[["', r'"\\"', '"' + "a" * 70_000 + '"']),
)
plain = st.one_of(st.sampled_from(["null", "true", "false"]), st.integers(-(2**63), INT64_MAX).map(str),
                  st.floats(allow_nan=False, allow_infinity=False).map(json.dumps))
hostile_value = st.one_of(huge_int_literals, bad_float_literals, deep, strings, plain)


def _with_field(cls, key: str, literal: str) -> bytes:
    """The good message of ``cls`` with one field (or one map entry) replaced by a raw JSON literal."""
    obj = dict(GOOD[cls])
    marker = "\x00HOLE\x00"
    if "." in key:
        outer, inner = key.split(".")
        obj[outer] = {**(obj.get(outer) or {}), inner: marker}
    else:
        obj[key] = marker
    return json.dumps(obj).replace(json.dumps(marker), literal).encode("utf-8", "surrogatepass")


FIELDS = [(cls, k) for cls in DECODERS for k in GOOD[cls] if k != "schema"] + [
    (wire.Metric, "values.r0"), (wire.Status, "dropped.outbox_raw"), (wire.Status, "sensors.client/eda"),
    (wire.Command, "participants.client"), (wire.Ack, "extra"),
]


@pytest.mark.parametrize("cls, key", FIELDS, ids=lambda x: x if isinstance(x, str) else x.__name__)
@given(literal=hostile_value)
@FUZZ
def test_any_value_in_any_field_is_decoded_within_bounds_or_refused(cls, key, literal):
    _decode_or_refuse(cls, _with_field(cls, key, literal))


@given(data=st.binary(max_size=400) | st.text(alphabet='[]{}":,0123456789e-.\\ntrufalsNIy ', max_size=2000)
       .map(str.encode))
@FUZZ
def test_random_bytes_and_json_shaped_noise(data):
    for cls in DECODERS:
        _decode_or_refuse(cls, data)
    assert wire.command_id(data) is None or wire.SESSION_RE.fullmatch(wire.command_id(data))


@pytest.mark.parametrize("cls", DECODERS, ids=lambda c: c.__name__)
def test_every_truncation_of_a_good_message_is_refused(cls):
    payload = json.dumps(GOOD[cls]).encode()
    assert cls.decode(payload) is not None
    for n in range(len(payload)):
        with pytest.raises(WireError):
            cls.decode(payload[:n])


# ------------------------------------------------------------------------ the cases from the report
@pytest.mark.parametrize("cls", DECODERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("payload", [b"[" * 20_000, b"{" * 20_000, b'{"schema":1,"x":' + b"[" * 20_000,
                                     b'{"a":' * 10_000 + b"1" + b"}" * 10_000, b"[" * 60_000 + b"]" * 4_000],
                         ids=["20000[", "20000{", "deep-field", "deep-object", "64k"])
def test_deep_nesting_is_a_wire_error(cls, payload):
    with pytest.raises(WireError, match="nests"):
        cls.decode(payload)
    assert wire.command_id(payload) is None


def test_brackets_inside_strings_are_not_nesting():
    label = "[[[[{{{{[[[[{{{{ ]]]] \\\" [[[["  # 20 brackets in a marker label: legitimate text
    c = wire.Command(id="c2", cmd="marker", session="S1", time_ns=1, label=label)
    assert wire.Command.decode(c.encode()) == c


@pytest.mark.parametrize("literal, message", [
    ("9" * 400, "outside int64"),
    (str(2**63), "outside int64"),
    (str(-(2**63) - 1), "outside int64"),
    ("1e400", "not a finite"),
    ("-1e400", "not a finite"),
    ("NaN", "non-finite"),
])
def test_huge_numbers_are_refused_by_every_decoder(literal, message):
    for cls, key in [(wire.Metric, "values.r0"), (wire.Metric, "window_end_ns"), (wire.Command, "time_ns"),
                     (wire.Status, "time_ns"), (wire.Status, "dropped.outbox_raw"), (wire.Ack, "time_ns")]:
        with pytest.raises(WireError, match=message):
            cls.decode(_with_field(cls, key, literal))


def test_int64_and_uint32_edges():
    assert wire.Command.decode(_with_field(wire.Command, "time_ns", str(INT64_MAX))).time_ns == INT64_MAX
    assert wire.Command.decode(_with_field(wire.Command, "time_ns", str(-(2**63)))).time_ns == -(2**63)
    assert wire.Metric.decode(_with_field(wire.Metric, "seq", str(2**32 - 1))).seq == 2**32 - 1
    for seq in (2**32, -1):
        with pytest.raises(WireError, match="uint32"):
            wire.Metric.decode(_with_field(wire.Metric, "seq", str(seq)))
    with pytest.raises(WireError, match="buffer_depth"):
        wire.Status.decode(_with_field(wire.Status, "buffer_depth", "-1"))
    with pytest.raises(WireError, match="time_ns"):  # the encoder refuses what the decoder would refuse
        wire.Command(id="c", cmd="marker", session="S", time_ns=2**63)


@pytest.mark.parametrize("cls, payload, message", [
    (wire.Command, _with_field(wire.Command, "label", r'"\ud800"'), "surrogate"),
    (wire.Status, b'{"schema":1,"schema":1,"unit":"u","state":"idle","time_ns":1}', "twice"),
    (wire.Status, b'{"schema":1.0,"unit":"u","state":"idle","time_ns":1}', "schema"),
    (wire.Status, _with_field(wire.Status, "version", json.dumps("v" * 300)), "characters"),
    (wire.Status, _with_field(wire.Status, "session", '"S1\\n"'), "session"),
    (wire.Status, _with_field(wire.Status, "unit", '"unit-a\\n"'), "unit"),
    (wire.Metric, json.dumps({**GOOD[wire.Metric], "values": {f"k{i}": 1.0 for i in range(300)}}).encode(),
     "entries"),
    (wire.Ack, _with_field(wire.Ack, "error", json.dumps("e" * 2000)), "characters"),
])
def test_lengths_and_text_are_bounded(cls, payload, message):
    with pytest.raises(WireError, match=message):
        cls.decode(payload)


def test_a_nack_quoting_hostile_input_stays_decodable():
    a = wire.Ack(id="invalid", unit="unit-a", ok=False, time_ns=1, error="x" * 60_000)
    assert len(a.error) == wire.MAX_ERROR_TEXT
    assert wire.Ack.decode(a.encode()) == a


def test_command_id_is_read_safely():
    assert wire.command_id(b'{"id":"c-7","cmd":"reboot"}') == "c-7"
    for p in (b"[" * 20_000, b'{"id":"c\\n"}', b'{"id":' + b"9" * 5000 + b"}", b"\xff", b'{"id":1e400}'):
        assert wire.command_id(p) is None


# ------------------------------------------------------------------------------------ binary blocks
def _block() -> bytes:
    return wire.encode_block(SampleBlock("client/ppg", 7, 123, 100.0, np.arange(6, dtype=np.float32)), "S1")


def _decode_block_or_refuse(payload: bytes) -> None:
    try:
        block, session = wire.decode_block(payload)
    except WireError:
        return
    assert 0 <= block.seq < 2**32 and -(2**63) <= block.t0_ns <= INT64_MAX
    assert math.isfinite(block.rate_hz) and block.rate_hz > 0
    assert wire.decode_block(wire.encode_block(block, session))[0] == block


@given(data=st.data())
@settings(max_examples=400, deadline=None)
def test_block_byte_flips_and_truncations(data):
    good = _block()
    p = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        p[data.draw(st.integers(0, len(p) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(p)))
    _decode_block_or_refuse(bytes(p[:cut]))
    _decode_block_or_refuse(bytes(p))


@given(header=st.tuples(st.just(b"DYSB"), st.just(1), st.integers(0, 255), st.integers(0, 255), st.just(0),
                        st.integers(0, 2**32 - 1), st.integers(-(2**63), INT64_MAX),
                        st.floats(allow_nan=True, allow_infinity=True), st.integers(0, 2**32 - 1),
                        st.integers(0, 2**32 - 1)),
       tail=st.binary(max_size=300))
@settings(max_examples=400, deadline=None)
def test_block_any_header_fields(header, tail):
    _decode_block_or_refuse(struct.pack("<4sBBBBIqdII", *header) + tail)


def test_block_stream_with_newline_is_refused():
    good = _block()
    bad = good[:36] + b"client/pp\n" + good[46:]  # same length, the last character a newline
    with pytest.raises(WireError, match="control character|stream must be"):
        wire.decode_block(bad)
