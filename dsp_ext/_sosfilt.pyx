# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Second-order-section IIR filtering with persistent state (direct form II transposed).

A non-finite input sample does not enter the filter: the last finite input is fed instead (zero-order hold),
so the state stays finite across a contact loss, and the output at that sample is NaN. Samples before the
first finite one give NaN and leave the state untouched. The kernel trusts its inputs (``dsp_ext.filters``
checks shapes and contiguity).
"""

from libc.math cimport NAN, isfinite


cdef inline double _step(const double[:, ::1] sos, double[:, ::1] zi, double x) noexcept nogil:
    cdef Py_ssize_t s
    cdef double y
    for s in range(sos.shape[0]):
        y = sos[s, 0] * x + zi[s, 0]
        zi[s, 0] = sos[s, 1] * x - sos[s, 4] * y + zi[s, 1]
        zi[s, 1] = sos[s, 2] * x - sos[s, 5] * y
        x = y
    return x


def sosfilt_hold(const double[:, ::1] sos, double[:, ::1] zi, const double[::1] x, double[::1] out,
                 double[::1] hold):
    """Filter ``x`` into ``out`` in place of state ``zi``; ``hold[0]`` is the last finite input (NaN if none).

    Returns nothing; ``zi`` and ``hold`` are updated so a later call continues seamlessly.
    """
    cdef Py_ssize_t i, n = x.shape[0]
    cdef double v, last = hold[0]
    with nogil:
        for i in range(n):
            v = x[i]
            if isfinite(v):
                last = v
                out[i] = _step(sos, zi, v)
            elif isfinite(last):
                _step(sos, zi, last)
                out[i] = NAN
            else:
                out[i] = NAN
        hold[0] = last
