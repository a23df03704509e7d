"""Turning ``SampleBlock``-like objects (``values``, ``t0_ns``, ``rate_hz``, ``flags``) into a gap-free
sample stream for the EDA and PPG streams.

Lost samples (a block that starts later than the previous one ended) are filled with NaN so that sample
index and UTC time stay locked together; samples that overlap what was already received are dropped. A
block flagged ``CONTACT_LOST`` (bit 1 of the block flags, see ``firmware_bridge.block.BlockFlags``) marks
all its samples as without contact. Duck-typed, so dsp_ext needs no import of the block class.
"""

from __future__ import annotations

import numpy as np

from core.vocab import BlockFlags, samples_between

from .errors import DspError


class BlockTimeline:
    """Keeps a stream's expected next sample time and converts blocks to (values, contact)."""

    def __init__(self, rate_hz: float) -> None:
        self.rate_hz = float(rate_hz)
        self.t_first_ns: int | None = None
        self.n = 0  # samples delivered so far (including NaN fill)
        self.n_filled = 0  # NaN samples inserted for gaps
        self.n_dropped = 0  # overlapping samples dropped

    def convert(self, block: object) -> tuple[np.ndarray, np.ndarray]:
        try:
            values = np.asarray(block.values, dtype=np.float64)  # type: ignore[attr-defined]
            rate = float(block.rate_hz)  # type: ignore[attr-defined]
            t0_ns = int(block.t0_ns)  # type: ignore[attr-defined]
            flags = int(getattr(block, "flags", 0))
        except (AttributeError, TypeError, ValueError) as exc:
            raise DspError(f"not a sample block (values, rate_hz, t0_ns, flags): {exc}") from exc
        if values.ndim != 1:
            raise DspError(f"block values must be 1-D, got shape {values.shape}")
        if abs(rate - self.rate_hz) > 1e-6 * self.rate_hz:
            raise DspError(f"block rate {rate} Hz differs from the stream's {self.rate_hz} Hz")
        contact = np.full(len(values), not (flags & BlockFlags.CONTACT_LOST), dtype=bool)
        if self.t_first_ns is None:
            self.t_first_ns = t0_ns
        else:
            expected = self.t_first_ns + self.n * 1e9 / self.rate_hz
            offset = samples_between(expected, t0_ns, self.rate_hz)
            if offset > 0:  # samples were lost: fill with NaN (invalid, never zero)
                values = np.concatenate((np.full(offset, np.nan), values))
                contact = np.concatenate((np.ones(offset, dtype=bool), contact))
                self.n_filled += offset
            elif offset < 0:  # overlap with what we already have: drop the repeated samples
                k = min(-offset, len(values))
                values, contact = values[k:], contact[k:]
                self.n_dropped += k
        self.n += len(values)
        return values, contact
