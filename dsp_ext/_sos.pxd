# cython: language_level=3
"""The direct form II transposed step of one sample through second-order sections, shared (inline) by the
kernels that filter: ``_sosfilt`` and ``_hrv``. ``sos`` is (n_sections, 6) row-major with a0 == 1, ``zi``
(n_sections, 2)."""

from libc.math cimport NAN, isfinite


cdef inline double sos_step(const double* sos, double* zi, Py_ssize_t ns, double x) noexcept nogil:
    cdef Py_ssize_t s
    cdef double y
    for s in range(ns):
        y = sos[6 * s] * x + zi[2 * s]
        zi[2 * s] = sos[6 * s + 1] * x - sos[6 * s + 4] * y + zi[2 * s + 1]
        zi[2 * s + 1] = sos[6 * s + 2] * x - sos[6 * s + 5] * y
        x = y
    return x


cdef inline double sos_hold_step(const double* sos, double* zi, Py_ssize_t ns, double v,
                                 double* last) noexcept nogil:
    """One sample with zero-order hold: a non-finite ``v`` gives NaN and the filter is fed ``last[0]`` (the
    last finite input; if there is none yet the state is left alone)."""
    if isfinite(v):
        last[0] = v
        return sos_step(sos, zi, ns, v)
    if isfinite(last[0]):
        sos_step(sos, zi, ns, last[0])
    return NAN
