"""Errors raised by dsp_ext on bad input; rooted in the project's :class:`core.errors.DyadsyncError`."""

from __future__ import annotations

from core.errors import DyadsyncError


class DspError(DyadsyncError, ValueError):
    """Bad input to a DSP function or stream: wrong shape, dtype, length, or an impossible parameter."""


__all__ = ["DspError", "DyadsyncError"]
