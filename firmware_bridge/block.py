"""``SampleBlock``: the unit of data from acquisition to the hub (ARCHITECTURE §3)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from core.errors import DyadsyncError
from core.vocab import ROLES, SIGNAL_RE, BlockFlags

UINT32_MAX = 0xFFFFFFFF


KNOWN_FLAGS = int(
    BlockFlags.SATURATED
    | BlockFlags.CONTACT_LOST
    | BlockFlags.FIFO_OVERFLOW
    | BlockFlags.INTERPOLATED
    | BlockFlags.GAP_BEFORE
    | BlockFlags.CLOCK_UNSYNCED
    | BlockFlags.INVALID
    | BlockFlags.PARTIAL
)


class BlockError(DyadsyncError, ValueError):
    """A SampleBlock was constructed with inconsistent fields."""


def check_stream(stream: str) -> tuple[str, str]:
    """Split ``"<role>/<signal>"`` into (role, signal), raising :class:`BlockError` if malformed."""
    if not isinstance(stream, str):
        raise BlockError(f"stream must be a str like 'therapist/eda', got {type(stream).__name__}")
    role, sep, signal = stream.partition("/")
    if not sep or role not in ROLES or not SIGNAL_RE.match(signal):
        raise BlockError(
            f"stream must be '<role>/<signal>' with role in {ROLES} and a lower-case signal name, got {stream!r}"
        )
    return role, signal


@dataclass(frozen=True, eq=False)
class SampleBlock:
    """A run of equally spaced samples of one stream.

    stream: ``"<role>/<signal>"``, e.g. ``"client/eda"``.
    seq: uint32, grows by one per block of this stream; a gap is a loss and is counted, never hidden.
    t0_ns: UTC nanoseconds of the first sample (after clock mapping).
    rate_hz: nominal sampling rate in Hz (> 0).
    values: float32 samples (NaN marks an invalid sample; never zero-filled).
    flags: :class:`BlockFlags` bits.
    """

    stream: str
    seq: int
    t0_ns: int
    rate_hz: float
    values: np.ndarray = field(repr=False)
    flags: int = 0

    def __post_init__(self) -> None:
        check_stream(self.stream)
        if not isinstance(self.seq, int | np.integer) or not 0 <= int(self.seq) <= UINT32_MAX:
            raise BlockError(f"seq must be a uint32, got {self.seq!r}")
        if not isinstance(self.t0_ns, int | np.integer):
            raise BlockError(f"t0_ns must be an integer of nanoseconds, got {self.t0_ns!r}")
        rate = float(self.rate_hz)
        if not math.isfinite(rate) or rate <= 0:
            raise BlockError(f"rate_hz must be finite and > 0, got {self.rate_hz!r}")
        if not 0 <= int(self.flags) <= UINT32_MAX:
            raise BlockError(f"flags must fit in 32 bits, got {self.flags!r}")
        values = np.asarray(self.values)
        if values.ndim != 1:
            raise BlockError(f"values must be one-dimensional, got shape {values.shape}")
        values = np.ascontiguousarray(values, dtype=np.float32)
        values.setflags(write=False)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "seq", int(self.seq))
        object.__setattr__(self, "t0_ns", int(self.t0_ns))
        object.__setattr__(self, "rate_hz", rate)
        object.__setattr__(self, "flags", int(self.flags))

    @property
    def role(self) -> str:
        return self.stream.partition("/")[0]

    @property
    def signal(self) -> str:
        return self.stream.partition("/")[2]

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    @property
    def duration_ns(self) -> int:
        return round(self.n * 1e9 / self.rate_hz)

    def times_ns(self) -> np.ndarray:
        """UTC nanoseconds of every sample (int64)."""
        return self.t0_ns + np.round(np.arange(self.n) * (1e9 / self.rate_hz)).astype(np.int64)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SampleBlock):
            return NotImplemented
        return (
            self.stream == other.stream
            and self.seq == other.seq
            and self.t0_ns == other.t0_ns
            and self.rate_hz == other.rate_hz
            and self.flags == other.flags
            and np.array_equal(self.values, other.values, equal_nan=True)
        )

    __hash__ = None  # type: ignore[assignment]
