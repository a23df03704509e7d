# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Second-order-section IIR filtering with persistent state (direct form II transposed).

A non-finite input sample does not enter the filter: the last finite input is fed instead (zero-order hold),
so the state stays finite across a contact loss, and the output at that sample is NaN. Samples before the
first finite one give NaN and leave the state untouched. The kernels check the arrays' dtype, shape and
contiguity (cheaply, on the ndarray header) and trust their values; ``dsp_ext.filters`` converts inputs.
"""

import numpy as np

cimport numpy as cnp
from libc.math cimport NAN, fabs, isfinite

from dsp_ext._sos cimport sos_hold_step, sos_step

cnp.import_array()


cdef inline void* _data(cnp.ndarray a, int typenum, str name, Py_ssize_t n0, Py_ssize_t n1,
                        bint write) except NULL:
    """Data pointer of a C-contiguous array of type ``typenum`` and shape (n0,) or (n0, n1) (n1 < 0: 1-D;
    n0 < 0: any length), writable if ``write``; ValueError otherwise. (Cheaper than typed memoryviews, whose
    set-up dominates a call on the few samples of a streaming push.)"""
    cdef int nd = 1 if n1 < 0 else 2
    if (cnp.PyArray_TYPE(a) != typenum or cnp.PyArray_NDIM(a) != nd or not cnp.PyArray_IS_C_CONTIGUOUS(a)
            or (n0 >= 0 and cnp.PyArray_DIM(a, 0) != n0) or (nd == 2 and cnp.PyArray_DIM(a, 1) != n1)
            or (write and not cnp.PyArray_ISWRITEABLE(a))):
        want = ("any" if n0 < 0 else n0,) + (() if n1 < 0 else (n1,))
        raise ValueError(f"{name}: expected a C-contiguous{' writable' if write else ''} "
                         f"{np.dtype(cnp.PyArray_TypeObjectFromType(typenum))} array of shape {want}, got "
                         f"{(<object>a).dtype} {(<object>a).shape}")
    return cnp.PyArray_DATA(a)


def sosfilt_hold(cnp.ndarray sos not None, cnp.ndarray zi not None, cnp.ndarray x not None,
                 cnp.ndarray out not None, cnp.ndarray hold not None):
    """Filter ``x`` into ``out`` in place of state ``zi``; ``hold[0]`` is the last finite input (NaN if none).
    All arguments are C-contiguous float64 arrays: ``sos`` (n_sections, 6), ``zi`` (n_sections, 2), ``x`` and
    ``out`` of one length, ``hold`` of length 1 (``zi``, ``out`` and ``hold`` are written).

    Returns nothing; ``zi`` and ``hold`` are updated so a later call continues seamlessly.
    """
    cdef const double* sp = <const double*>_data(sos, cnp.NPY_DOUBLE, "sos", -1, 6, False)
    cdef Py_ssize_t ns = cnp.PyArray_DIM(sos, 0)
    cdef double* zp = <double*>_data(zi, cnp.NPY_DOUBLE, "zi", ns, 2, True)
    cdef const double* xp = <const double*>_data(x, cnp.NPY_DOUBLE, "x", -1, -1, False)
    cdef Py_ssize_t i, n = cnp.PyArray_DIM(x, 0)
    cdef double* op = <double*>_data(out, cnp.NPY_DOUBLE, "out", n, -1, True)
    cdef double* hp = <double*>_data(hold, cnp.NPY_DOUBLE, "hold", 1, -1, True)
    cdef double last = hp[0]
    with nogil:
        for i in range(n):
            op[i] = sos_hold_step(sp, zp, ns, xp[i], &last)
        hp[0] = last


def eda_front(cnp.ndarray x not None, cnp.ndarray contact not None, cnp.ndarray out not None,
              cnp.ndarray sos not None, cnp.ndarray zi not None, cnp.ndarray zi_unit not None,
              cnp.ndarray st not None, double min_us, double max_us, double max_slope_us_s, double rate_hz,
              Py_ssize_t guard_n):
    """The raw-rate part of ``dsp_ext.eda.EdaStream`` in one pass (its numpy twin is ``eda_front_reference``
    in ``dsp_ext.eda``).

    Per sample: invalid if non-finite, outside ``[min_us, max_us]``, ``|x[i] − x[i−1]|·rate > max_slope``
    (the previous raw sample, also across calls) or without contact (``contact[i] == 0``; an empty
    ``contact`` means all in contact); invalid samples become NaN; then the SOS low-pass with zero-order
    hold (started in the steady state ``zi_unit · x`` of the first finite input when ``st[3] == 0``); the
    output is NaN within ``guard_n`` samples after an invalid one.

    ``st`` = [previous raw sample, raw index of the last invalid sample, samples seen, started (0/1),
    last finite filter input]; updated in place. Returns the number of invalid samples. Arrays are
    C-contiguous float64 (``contact`` uint8, empty or as long as ``x``); ``sos`` (n_sections, 6), ``zi`` and
    ``zi_unit`` (n_sections, 2).
    """
    cdef const double* xp = <const double*>_data(x, cnp.NPY_DOUBLE, "x", -1, -1, False)
    cdef Py_ssize_t i, s, n = cnp.PyArray_DIM(x, 0), n_bad = 0
    cdef bint has_contact = cnp.PyArray_NDIM(contact) == 1 and cnp.PyArray_DIM(contact, 0) > 0
    cdef const unsigned char* cp = <const unsigned char*>_data(contact, cnp.NPY_UINT8, "contact",
                                                               n if has_contact else 0, -1, False)
    cdef double* op = <double*>_data(out, cnp.NPY_DOUBLE, "out", n, -1, True)
    cdef const double* sp = <const double*>_data(sos, cnp.NPY_DOUBLE, "sos", -1, 6, False)
    cdef Py_ssize_t ns = cnp.PyArray_DIM(sos, 0)
    cdef double* zp = <double*>_data(zi, cnp.NPY_DOUBLE, "zi", ns, 2, True)
    cdef const double* up = <const double*>_data(zi_unit, cnp.NPY_DOUBLE, "zi_unit", ns, 2, False)
    cdef double* stp = <double*>_data(st, cnp.NPY_DOUBLE, "st", 5, -1, True)
    cdef double v, prev = stp[0], last_bad = stp[1], idx0 = stp[2], last = stp[4], y
    cdef bint started = stp[3] != 0.0, bad
    with nogil:
        for i in range(n):
            v = xp[i]
            bad = (not isfinite(v)) or v < min_us or v > max_us or \
                fabs(v - prev) * rate_hz > max_slope_us_s
            if has_contact and cp[i] == 0:
                bad = True
            prev = v
            if bad:
                n_bad += 1
                last_bad = idx0 + i
                v = NAN
            if isfinite(v):
                if not started:
                    for s in range(ns):
                        zp[2 * s] = up[2 * s] * v
                        zp[2 * s + 1] = up[2 * s + 1] * v
                    started = True
                last = v
                y = sos_step(sp, zp, ns, v)
            elif started and isfinite(last):
                sos_step(sp, zp, ns, last)
                y = NAN
            else:
                y = NAN
            if idx0 + i - last_bad <= guard_n:
                y = NAN
            op[i] = y
        stp[0] = prev
        stp[1] = last_bad
        stp[2] = idx0 + n
        stp[3] = 1.0 if started else 0.0
        stp[4] = last
    return n_bad
