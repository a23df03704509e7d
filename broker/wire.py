"""The MQTT wire contract, version 1 (ARCHITECTURE §5).

Topics::

    dyadsync/v1/<room>/<unit>/status                 JSON Status, QoS 1, retained; will = Status(state="offline")
    dyadsync/v1/<room>/<unit>/raw/<role>/<signal>    binary sample block
    dyadsync/v1/<room>/<unit>/feat/<role>/<signal>   binary sample block at 4 Hz
    dyadsync/v1/<room>/<unit>/metric/<name>          JSON Metric
    dyadsync/v1/<room>/cmd                           JSON Command
    dyadsync/v1/<room>/<unit>/ack                    JSON Ack

Binary sample block, little-endian (all offsets in bytes)::

    0  4  magic  b"DYSB"
    4  1  version (1)
    5  1  stream_len  (1..64)
    6  1  session_len (0..64)
    7  1  reserved (0)
    8  4  seq        uint32
    12 8  t0_ns      int64, UTC nanoseconds of the first sample
    20 8  rate_hz    float64, finite and > 0
    28 4  flags      uint32 (firmware_bridge.BlockFlags)
    32 4  count      uint32, number of samples (<= MAX_SAMPLES)
    36 .. stream  (UTF-8, "<role>/<signal>"), then session (UTF-8), then count float32 values

Every decoder is strict: anything unexpected raises :class:`WireError` with a message saying what was
wrong. The recorder catches it, logs it, counts it and drops the message.

JSON payloads are bounded before and while they are parsed, so no input can raise anything but
:class:`WireError` (no ``RecursionError``, ``OverflowError`` or ``MemoryError`` from a hostile payload):
at most :data:`MAX_JSON_BYTES` bytes, containers nested at most :data:`MAX_JSON_DEPTH` deep, every
integer within int64 (counters and sequence numbers within their own contract range), every number
finite (``NaN``, ``Infinity`` and overflowing literals such as ``1e400`` are refused), no key twice in an
object, strings and maps of bounded length.
"""

from __future__ import annotations

import json
import math
import operator
import re
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from broker.errors import WireError
from core.vocab import CODE_RE, ID_RE, LED_STATES, NAME_RE, OFFLINE, ROLES, SESSION_RE
from firmware_bridge.block import BlockError, SampleBlock, check_stream

PREFIX = "dyadsync"
VERSION = "v1"
SCHEMA = 1

MAX_JSON_BYTES = 64 * 1024
MAX_JSON_DEPTH = 8
"""Deepest nesting of JSON arrays/objects accepted (v1 messages use 2: an object holding maps)."""
MAX_TEXT = 256
"""Longest free-text field (status version, map keys, sensor states) in characters."""
MAX_ERROR_TEXT = 1000
"""An acknowledgement's error text is cut to this many characters (encode) and refused beyond (decode)."""
MAX_MAP_ENTRIES = 256
"""Most entries in a map field (status sensors and dropped counts, metric values)."""
MAX_SAMPLES = 1 << 20
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
UINT32_MAX = (1 << 32) - 1

BLOCK_MAGIC = b"DYSB"
BLOCK_VERSION = 1
_HEADER = struct.Struct("<4sBBBBIqdII")
HEADER_SIZE = _HEADER.size  # 36


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages about hostile input."""
    text = repr(value) if len(str(value)) <= 4 * limit else repr(str(value)[: 4 * limit])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_id(kind: str, value: str, pattern: re.Pattern[str] = ID_RE) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):  # fullmatch: "$" would allow a final "\n"
        raise WireError(f"invalid {kind} {_short(value)}: must match {pattern.pattern}")
    return value


def _check_int(what: str, value: int, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int:
    """``value`` as an int within ``lo..hi`` (numpy integers accepted); else :class:`WireError`."""
    if isinstance(value, bool):
        raise WireError(f"{what} must be an integer, got a boolean")
    try:
        value = operator.index(value)
    except TypeError:
        raise WireError(f"{what} must be an integer, got {type(value).__name__}") from None
    if not lo <= value <= hi:
        raise WireError(f"{what} {_short(value, 40)} is outside {lo}..{hi}")
    return value


# --------------------------------------------------------------------------------------------- topics
def room_prefix(room: str) -> str:
    return f"{PREFIX}/{VERSION}/{_check_id('room', room)}"


def unit_prefix(room: str, unit: str) -> str:
    if unit == "cmd":
        raise WireError("'cmd' is reserved and cannot be a unit id")
    return f"{room_prefix(room)}/{_check_id('unit', unit)}"


def status_topic(room: str, unit: str) -> str:
    return f"{unit_prefix(room, unit)}/status"


def ack_topic(room: str, unit: str) -> str:
    return f"{unit_prefix(room, unit)}/ack"


def cmd_topic(room: str) -> str:
    return f"{room_prefix(room)}/cmd"


def raw_topic(room: str, unit: str, stream: str) -> str:
    _stream_ok(stream)
    return f"{unit_prefix(room, unit)}/raw/{stream}"


def feat_topic(room: str, unit: str, stream: str) -> str:
    _stream_ok(stream)
    return f"{unit_prefix(room, unit)}/feat/{stream}"


def metric_topic(room: str, unit: str, name: str) -> str:
    return f"{unit_prefix(room, unit)}/metric/{_check_id('metric name', name, NAME_RE)}"


def _stream_ok(stream: str) -> tuple[str, str]:
    try:
        parts = check_stream(stream)
    except BlockError as exc:
        raise WireError(str(exc)) from None
    if not stream.isprintable():  # SIGNAL_RE ends in "$", which lets a final "\n" through
        raise WireError(f"stream {_short(stream)} holds a control character")
    return parts


@dataclass(frozen=True)
class Topic:
    """A parsed topic. ``kind`` is one of status, raw, feat, metric, cmd, ack."""

    room: str
    kind: str
    unit: str | None = None
    stream: str | None = None  # raw/feat: "<role>/<signal>"
    name: str | None = None  # metric name


def parse_topic(topic: str) -> Topic:
    """Parse a v1 topic; raise :class:`WireError` naming what is wrong."""
    if not isinstance(topic, str):
        raise WireError(f"topic must be str, got {type(topic).__name__}")
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != PREFIX:
        raise WireError(f"not a dyadsync topic: {topic!r}")
    if parts[1] != VERSION:
        raise WireError(f"unknown topic version {parts[1]!r} in {topic!r} (this is {VERSION})")
    room = _check_id("room", parts[2])
    if len(parts) == 4 and parts[3] == "cmd":
        return Topic(room=room, kind="cmd")
    unit = parts[3]
    if unit == "cmd":
        raise WireError(f"unexpected levels after cmd in {topic!r}")
    _check_id("unit", unit)
    rest = parts[4:]
    if rest in (["status"], ["ack"]):
        return Topic(room=room, kind=rest[0], unit=unit)
    if len(rest) == 3 and rest[0] in ("raw", "feat"):
        stream = f"{rest[1]}/{rest[2]}"
        _stream_ok(stream)
        return Topic(room=room, kind=rest[0], unit=unit, stream=stream)
    if len(rest) == 2 and rest[0] == "metric":
        return Topic(room=room, kind="metric", unit=unit, name=_check_id("metric name", rest[1], NAME_RE))
    raise WireError(f"unknown topic layout {topic!r}")


# ------------------------------------------------------------------------------------- sample blocks
def encode_block(block: SampleBlock, session: str = "") -> bytes:
    """Encode a :class:`SampleBlock` (and the session it belongs to) as a v1 binary payload."""
    stream_b = block.stream.encode()
    session_b = session.encode()
    if session:
        _check_id("session", session, SESSION_RE)
    if len(session_b) > 64:
        raise WireError(f"session id longer than 64 bytes: {session!r}")
    if block.n > MAX_SAMPLES:
        raise WireError(f"block of {block.n} samples exceeds the maximum {MAX_SAMPLES}")
    head = _HEADER.pack(
        BLOCK_MAGIC, BLOCK_VERSION, len(stream_b), len(session_b), 0,
        block.seq, block.t0_ns, block.rate_hz, block.flags, block.n,
    )
    return head + stream_b + session_b + block.values.astype("<f4", copy=False).tobytes()


def decode_block(payload: bytes) -> tuple[SampleBlock, str]:
    """Decode a v1 binary payload into ``(block, session)``; strict, raises :class:`WireError`."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise WireError(f"sample block payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if len(payload) < HEADER_SIZE:
        raise WireError(f"sample block truncated: {len(payload)} bytes, the header alone is {HEADER_SIZE}")
    magic, version, n_stream, n_session, reserved, seq, t0_ns, rate, flags, count = _HEADER.unpack_from(payload)
    if magic != BLOCK_MAGIC:
        raise WireError(f"sample block has wrong magic {magic!r}, expected {BLOCK_MAGIC!r}")
    if version != BLOCK_VERSION:
        raise WireError(f"sample block version {version} is unknown (this decoder reads {BLOCK_VERSION})")
    if reserved != 0:
        raise WireError(f"sample block reserved byte is {reserved}, must be 0")
    if not 1 <= n_stream <= 64 or n_session > 64:
        raise WireError(f"sample block stream/session lengths out of range: {n_stream}/{n_session}")
    if not math.isfinite(rate) or rate <= 0:
        raise WireError(f"sample block rate_hz must be finite and > 0, got {rate!r}")
    if count > MAX_SAMPLES:
        raise WireError(f"sample block count {count} exceeds the maximum {MAX_SAMPLES}")
    expected = HEADER_SIZE + n_stream + n_session + 4 * count
    if len(payload) != expected:
        raise WireError(
            f"sample block length mismatch: header announces {expected} bytes "
            f"({count} samples), payload has {len(payload)}"
        )
    pos = HEADER_SIZE
    try:
        stream = payload[pos : pos + n_stream].decode("utf-8")
        session = payload[pos + n_stream : pos + n_stream + n_session].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"sample block stream or session is not valid UTF-8: {exc}") from None
    if session:
        _check_id("session", session, SESSION_RE)
    _stream_ok(stream)
    values = np.frombuffer(payload, dtype="<f4", count=count, offset=pos + n_stream + n_session)
    try:
        block = SampleBlock(stream=stream, seq=seq, t0_ns=t0_ns, rate_hz=rate, values=values, flags=flags)
    except BlockError as exc:
        raise WireError(f"sample block fields invalid: {exc}") from None
    return block, session


# ------------------------------------------------------------------------------------- JSON messages
def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _json_depth(text: str, limit: int) -> int:
    """Nesting depth of ``[``/``{`` in JSON ``text`` (brackets inside strings do not count), scanned in
    linear time without recursion; stops as soon as it exceeds ``limit``. On malformed text the answer is
    only a bound: the parser, run next, reports what is wrong."""
    depth = deepest = 0
    pos = 0
    search, string_end = _JSON_SPECIAL_RE.search, _JSON_STRING_END_RE.match
    while (m := search(text, pos)) is not None:
        ch = m.group()
        if ch == '"':
            end = string_end(text, m.end())
            if end is None:  # an unterminated string runs to the end: no bracket after it counts
                break
            pos = end.end()
            continue
        pos = m.end()
        if ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        else:
            depth -= 1
    return deepest


_JSON_SPECIAL_RE = re.compile(r'["\[\]{}]')
_JSON_STRING_END_RE = re.compile(r'(?:[^"\\]++|\\.)*+"', re.DOTALL)
_INT_DIGITS = len(str(INT64_MAX))  # JSON has no leading zeros: a longer literal cannot be an int64


def _parse_int(literal: str) -> int:
    if len(literal.lstrip("-")) > _INT_DIGITS:
        raise ValueError(f"integer of {len(literal)} characters is outside int64")
    value = int(literal)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"integer {literal} is outside int64 ({INT64_MIN}..{INT64_MAX})")
    return value


def _parse_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"number {literal[:40]} is not a finite float64 (use null for a missing value)")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite constant {name} is not allowed (use null)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"key {_short(dup)} appears twice in one object")
    return obj


def _load_json(payload: bytes, what: str) -> dict[str, Any]:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise WireError(f"{what} payload must be bytes, got {type(payload).__name__}")
    payload = bytes(payload)
    if len(payload) > MAX_JSON_BYTES:
        raise WireError(f"{what} payload of {len(payload)} bytes exceeds {MAX_JSON_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"{what} payload is not valid UTF-8: {exc}") from None
    if _json_depth(text, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise WireError(f"{what} payload nests arrays/objects more than {MAX_JSON_DEPTH} deep")
    try:
        obj = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_reject_constant,
                         object_pairs_hook=_unique_keys)
    except RecursionError:  # cannot happen after the depth check; kept so no input can escape as another type
        raise WireError(f"{what} payload nests too deep to parse") from None
    except json.JSONDecodeError as exc:
        raise WireError(f"{what} payload is not valid JSON: {exc}") from None
    except (ValueError, OverflowError) as exc:  # from the hooks above (numbers, duplicate keys)
        raise WireError(f"{what} payload refused: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError(f"{what} payload must be a JSON object, got {type(obj).__name__}")
    bad = _unencodable(obj)
    if bad is not None:
        raise WireError(f"{what} payload holds a string that is not valid Unicode (lone surrogate): {_short(bad)}")
    schema = obj.get("schema")
    if isinstance(schema, bool) or not isinstance(schema, int) or schema != SCHEMA:
        raise WireError(f"{what} schema {_short(schema)} is unknown (this decoder reads schema {SCHEMA})")
    return obj


def _unencodable(obj: Any) -> str | None:
    """The first string (key or value) in a parsed JSON value that cannot be UTF-8 encoded, e.g. a lone
    ``\\ud800`` escape, which would fail later in SQLite or a log file. Depth is bounded before parsing."""
    items: Any = obj.items() if isinstance(obj, dict) else (enumerate(obj) if isinstance(obj, list) else ())
    for k, v in items:
        for x in (k, v):
            if isinstance(x, str):
                try:
                    x.encode("utf-8")
                except UnicodeEncodeError:
                    return x
            elif isinstance(x, dict | list) and (bad := _unencodable(x)) is not None:
                return bad
    return None


def _field(obj: dict[str, Any], key: str, types: type | tuple[type, ...], what: str, optional: bool = False) -> Any:
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise WireError(f"{what} lacks required field {key!r}")
    value = obj[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise WireError(f"{what} field {key!r} must be {types}, got a boolean")
    if not isinstance(value, types):
        raise WireError(f"{what} field {key!r} must be {types}, got {type(value).__name__}")
    return value


def _text(obj: dict[str, Any], key: str, what: str, limit: int = MAX_TEXT, optional: bool = False) -> str | None:
    value = _field(obj, key, str, what, optional=optional)
    if value is not None and len(value) > limit:
        raise WireError(f"{what} field {key!r} is {len(value)} characters long (at most {limit})")
    return value


def _map(obj: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    value = _field(obj, key, dict, what, optional=True) or {}
    if len(value) > MAX_MAP_ENTRIES:
        raise WireError(f"{what} field {key!r} has {len(value)} entries (at most {MAX_MAP_ENTRIES})")
    for k in value:
        if not k or len(k) > MAX_TEXT:
            raise WireError(f"{what} field {key!r} has a key of {len(k)} characters (1..{MAX_TEXT} allowed)")
    return value


def _int(obj: dict[str, Any], key: str, what: str, lo: int = INT64_MIN, hi: int = INT64_MAX,
         optional: bool = False) -> int | None:
    value = _field(obj, key, int, what, optional=optional)
    return None if value is None else _check_int(f"{what} field {key!r}", value, lo, hi)


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, sort_keys=True).encode()


class _Message:
    KIND: ClassVar[str] = ""
    FIELDS: ClassVar[frozenset[str]] = frozenset()

    def encode(self) -> bytes:
        return _dumps({"schema": SCHEMA, **asdict(self)})  # type: ignore[call-overload]

    @classmethod
    def _unknown(cls, obj: dict[str, Any]) -> None:
        extra = set(obj) - cls.FIELDS - {"schema"}
        if extra:
            raise WireError(f"{cls.KIND} has unknown fields {sorted(extra)}")


@dataclass(frozen=True)
class Status(_Message):
    """Retained unit status. ``state`` is a LED state name or ``offline`` (the will)."""

    KIND: ClassVar[str] = "status"
    STATES: ClassVar[tuple[str, ...]] = (*LED_STATES, OFFLINE)
    FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"unit", "state", "time_ns", "version", "session", "sensors", "buffer_depth", "dropped", "clock_synced"}
    )

    unit: str
    state: str
    time_ns: int
    version: str = ""
    session: str | None = None
    sensors: dict[str, str] = field(default_factory=dict)
    buffer_depth: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    clock_synced: bool | None = None

    def __post_init__(self) -> None:
        if self.state not in self.STATES:
            raise WireError(f"status state {_short(self.state)} is not one of {self.STATES}")
        _check_int("status time_ns", self.time_ns)
        _check_int("status buffer_depth", self.buffer_depth, 0)
        for name, n in self.dropped.items():
            _check_int(f"status dropped count {_short(name)}", n, 0)

    @classmethod
    def decode(cls, payload: bytes) -> Status:
        obj = _load_json(payload, "status")
        cls._unknown(obj)
        w = "status"
        sensors = _map(obj, "sensors", w)
        dropped = _map(obj, "dropped", w)
        if not all(isinstance(v, str) and len(v) <= MAX_TEXT for v in sensors.values()):
            raise WireError(f"status field 'sensors' must map names to state strings of at most {MAX_TEXT} characters")
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= INT64_MAX for v in dropped.values()):
            raise WireError("status field 'dropped' must map names to integer counts >= 0")
        session = _field(obj, "session", str, w, optional=True)
        return cls(
            unit=_check_id("unit", _field(obj, "unit", str, w)),
            state=_field(obj, "state", str, w),
            time_ns=_int(obj, "time_ns", w),
            version=_text(obj, "version", w, optional=True) or "",
            session=None if session is None else _check_id("session", session, SESSION_RE),
            sensors=sensors,
            buffer_depth=_int(obj, "buffer_depth", w, 0, optional=True) or 0,
            dropped=dropped,
            clock_synced=_field(obj, "clock_synced", bool, w, optional=True),
        )


@dataclass(frozen=True)
class Metric(_Message):
    """One window's synchrony or regulation values. Non-finite values travel as ``null`` (NaN on decode)."""

    KIND: ClassVar[str] = "metric"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"session", "seq", "name", "window_start_ns", "window_end_ns", "values"})

    session: str
    seq: int
    name: str
    window_start_ns: int
    window_end_ns: int
    values: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_int("metric seq", self.seq, 0, UINT32_MAX)
        _check_int("metric window_start_ns", self.window_start_ns)
        _check_int("metric window_end_ns", self.window_end_ns)

    def encode(self) -> bytes:
        _check_id("session", self.session, SESSION_RE)
        _check_id("metric name", self.name, NAME_RE)
        obj = {
            "schema": SCHEMA,
            "session": self.session,
            "seq": int(self.seq),
            "name": self.name,
            "window_start_ns": int(self.window_start_ns),
            "window_end_ns": int(self.window_end_ns),
            "values": {k: _finite_or_none(v) for k, v in self.values.items()},
        }
        return _dumps(obj)

    @classmethod
    def decode(cls, payload: bytes) -> Metric:
        obj = _load_json(payload, "metric")
        cls._unknown(obj)
        w = "metric"
        seq = _field(obj, "seq", int, w)
        if not 0 <= seq <= UINT32_MAX:
            raise WireError(f"metric seq {_short(seq, 40)} is not a uint32")
        start = _int(obj, "window_start_ns", w)
        end = _int(obj, "window_end_ns", w)
        if end < start:
            raise WireError(f"metric window ends ({end}) before it starts ({start})")
        _field(obj, "values", dict, w)
        raw_values = _map(obj, "values", w)
        values: dict[str, float] = {}
        for k, v in raw_values.items():
            if v is None:
                values[k] = math.nan
            elif isinstance(v, int | float) and not isinstance(v, bool):
                values[k] = float(v)
            else:
                raise WireError(f"metric value {_short(k)} must be a number or null, got {type(v).__name__}")
        return cls(
            session=_check_id("session", _field(obj, "session", str, w), SESSION_RE),
            seq=seq,
            name=_check_id("metric name", _field(obj, "name", str, w), NAME_RE),
            window_start_ns=start,
            window_end_ns=end,
            values=values,
        )


@dataclass(frozen=True)
class Command(_Message):
    """A room command: ``start`` (with participant codes), ``stop`` or ``marker`` (with a label)."""

    KIND: ClassVar[str] = "cmd"
    CMDS: ClassVar[tuple[str, ...]] = ("start", "stop", "marker")
    FIELDS: ClassVar[frozenset[str]] = frozenset({"id", "cmd", "session", "participants", "label", "time_ns"})

    id: str
    cmd: str
    session: str
    time_ns: int
    participants: dict[str, str] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if self.cmd not in self.CMDS:
            raise WireError(f"command {_short(self.cmd)} is not one of {self.CMDS}")
        _check_id("command id", self.id, SESSION_RE)
        _check_id("session", self.session, SESSION_RE)
        for role, code in self.participants.items():
            if role not in ROLES:
                raise WireError(f"participant role {_short(role)} is not therapist or client")
            _check_id(f"{role} participant code", code, CODE_RE)
        if self.cmd == "start" and set(self.participants) != {"therapist", "client"}:
            raise WireError("a start command needs participant codes for both therapist and client")
        if len(self.label) > 200:
            raise WireError("marker label longer than 200 characters")
        _check_int("command time_ns", self.time_ns)

    @classmethod
    def decode(cls, payload: bytes) -> Command:
        obj = _load_json(payload, "cmd")
        cls._unknown(obj)
        w = "cmd"
        participants = _map(obj, "participants", w)
        if not all(isinstance(v, str) for v in participants.values()):
            raise WireError("cmd participant codes must be strings")
        return cls(
            id=_field(obj, "id", str, w),
            cmd=_field(obj, "cmd", str, w),
            session=_field(obj, "session", str, w),
            time_ns=_int(obj, "time_ns", w),
            participants=participants,
            label=_field(obj, "label", str, w, optional=True) or "",
        )


def command_id(payload: bytes) -> str | None:
    """The ``id`` of a command payload that failed to decode, when one can be read safely (to address the
    NACK); ``None`` otherwise. Never raises: the same bounded parse as the decoders, without the schema."""
    try:
        text = bytes(payload).decode("utf-8")
        if len(text) > MAX_JSON_BYTES or _json_depth(text, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
            return None
        obj = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_reject_constant)
    except (ValueError, TypeError, OverflowError, RecursionError):
        return None
    cid = obj.get("id") if isinstance(obj, dict) else None
    return cid if isinstance(cid, str) and SESSION_RE.fullmatch(cid) else None


@dataclass(frozen=True)
class Ack(_Message):
    """A unit's answer to a command: ``ok`` true, or false with the ``error`` that says why (a NACK)."""

    KIND: ClassVar[str] = "ack"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"id", "unit", "ok", "error", "time_ns"})

    id: str
    unit: str
    ok: bool
    time_ns: int
    error: str | None = None

    def __post_init__(self) -> None:
        _check_int("ack time_ns", self.time_ns)
        if self.error is not None and len(self.error) > MAX_ERROR_TEXT:  # a NACK quoting hostile input
            object.__setattr__(self, "error", self.error[: MAX_ERROR_TEXT - 3] + "...")

    @classmethod
    def decode(cls, payload: bytes) -> Ack:
        obj = _load_json(payload, "ack")
        cls._unknown(obj)
        w = "ack"
        return cls(
            id=_field(obj, "id", str, w),
            unit=_check_id("unit", _field(obj, "unit", str, w)),
            ok=_field(obj, "ok", bool, w),
            time_ns=_int(obj, "time_ns", w),
            error=_text(obj, "error", w, MAX_ERROR_TEXT, optional=True),
        )
