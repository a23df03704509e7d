"""Input conversion shared by the thin wrappers in front of the kernels."""

from __future__ import annotations

import numpy as np

from .errors import DspError


def real_1d(x: object, what: str) -> np.ndarray:
    """``x`` as a 1-D C-contiguous float64 array: ``x`` itself when it already is one (the kernels only read
    their inputs), else a converted copy. Raises :class:`DspError` for other shapes and non-real dtypes."""
    if type(x) is np.ndarray and x.dtype == np.float64 and x.ndim == 1 and x.flags.c_contiguous:
        return x
    a = np.asarray(x)
    if a.ndim != 1 or a.dtype.kind not in "biuf":
        raise DspError(f"{what} must be a 1-D real array, got shape {a.shape} dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float64)
