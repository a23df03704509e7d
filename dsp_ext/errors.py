"""Errors raised by dsp_ext on bad input; rooted in the project's :class:`DyadsyncError`.

``firmware_bridge.errors`` is a dependency-free module holding the project's exception root, so importing it
from here does not pull in any hardware code.
"""

from __future__ import annotations

from firmware_bridge.errors import DyadsyncError


class DspError(DyadsyncError, ValueError):
    """Bad input to a DSP function or stream: wrong shape, dtype, length, or an impossible parameter."""


__all__ = ["DspError", "DyadsyncError"]
