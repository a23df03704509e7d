"""The shared vocabulary of dyadsync (ARCHITECTURE §3, §5, §9), each idea written once.

Standard library only: every layer imports it, the unit as well as the lab.
"""

from __future__ import annotations

import enum
import math
import re

ROLES: tuple[str, str] = ("therapist", "client")
"""The two participants of a dyad, in the order every table and plot uses."""

FEATURE_RATE_HZ = 4.0
"""Rate of the shared feature grid."""
GRID_NS = 250_000_000
"""Grid point ``k`` of the shared 4 Hz feature grid is UTC ``k * GRID_NS`` nanoseconds."""

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
"""The room/unit id rule as text, for validators that take a pattern (pydantic's Rust engine: ``$`` is the
end of the text there, while Python's ``re`` lets ``$`` match before a final newline, hence ``\\Z`` below)."""
ID_RE = re.compile(ID_PATTERN[:-1] + r"\Z")
"""Room and unit ids: lower-case letters, digits, '_' and '-', 1-32 characters."""
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}\Z")
"""Metric names."""
SESSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
"""Session ids."""
CODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z")
"""Pseudonymous participant codes (e.g. ``P017``). Never a name: no spaces, at most 32 characters."""
SIGNAL_RE = re.compile(r"^[a-z][a-z0-9_]{0,23}\Z")
"""Signal names (``eda``, ``ppg``, ``hr``)."""

LED_STATES: tuple[str, ...] = ("booting", "idle", "recording", "buffering", "sensor_fault", "fatal")
"""A unit's states, as its status LED shows them (§9); the retained status adds ``offline`` (the will)."""
OFFLINE = "offline"


class BlockFlags(enum.IntFlag):
    """Bit field carried by every sample block. Bits 0-7 are defined here; the rest are reserved (must be 0)."""

    NONE = 0
    SATURATED = 1 << 0  # at least one sample hit the ADC range
    CONTACT_LOST = 1 << 1  # the sensor reported loss of skin contact
    FIFO_OVERFLOW = 1 << 2  # the sensor FIFO overflowed before this block (samples were lost)
    INTERPOLATED = 1 << 3  # some samples were interpolated, not measured
    GAP_BEFORE = 1 << 4  # samples were lost between the previous block of this stream and this one
    CLOCK_UNSYNCED = 1 << 5  # host clock not synchronised (chrony) when the block was stamped
    INVALID = 1 << 6  # some samples are NaN because they were judged invalid (artefact, out of range)
    PARTIAL = 1 << 7  # shorter than the stream's nominal block length (e.g. session end)


def samples_between(expected_ns: float, t0_ns: float, rate_hz: float) -> int:
    """Whole sample periods between where a stream's next block was expected to start and where it starts.

    The one rule for "is this block contiguous?", used by every stage (unit features and raw blocks, the
    dsp_ext block timeline): 0 means contiguous (the start is within half a period of the expected time),
    ``n > 0`` means ``n`` samples are missing before the block, ``n < 0`` means it overlaps the previous
    one by ``-n`` samples. Rounds half away from zero, so the answer does not depend on the sign.
    """
    x = (t0_ns - expected_ns) * rate_hz / 1e9
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


__all__ = ["CODE_RE", "FEATURE_RATE_HZ", "GRID_NS", "ID_RE", "LED_STATES", "NAME_RE", "OFFLINE", "ROLES",
           "SESSION_RE", "SIGNAL_RE", "BlockFlags", "samples_between"]
