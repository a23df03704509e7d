# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Second-order-section IIR filtering with persistent state (direct form II transposed).

A non-finite input sample does not enter the filter: the last finite input is fed instead (zero-order hold),
so the state stays finite across a contact loss, and the output at that sample is NaN. Samples before the
first finite one give NaN and leave the state untouched. The kernel trusts its inputs (``dsp_ext.filters``
checks shapes and contiguity).
"""

from libc.math cimport NAN, fabs, isfinite

from dsp_ext._sos cimport sos_hold_step, sos_step



def sosfilt_hold(const double[:, ::1] sos, double[:, ::1] zi, const double[::1] x, double[::1] out,
                 double[::1] hold):
    """Filter ``x`` into ``out`` in place of state ``zi``; ``hold[0]`` is the last finite input (NaN if none).

    Returns nothing; ``zi`` and ``hold`` are updated so a later call continues seamlessly.
    """
    cdef Py_ssize_t i, n = x.shape[0], ns = sos.shape[0]
    cdef double last = hold[0]
    if n == 0:
        return
    with nogil:
        for i in range(n):
            out[i] = sos_hold_step(&sos[0, 0], &zi[0, 0], ns, x[i], &last)
        hold[0] = last


def eda_front(const double[::1] x, const unsigned char[::1] contact, double[::1] out,
              const double[:, ::1] sos, double[:, ::1] zi, const double[:, ::1] zi_unit, double[::1] st,
              double min_us, double max_us, double max_slope_us_s, double rate_hz, Py_ssize_t guard_n):
    """The raw-rate part of ``dsp_ext.eda.EdaStream`` in one pass (its numpy twin is ``eda_front_reference``
    in ``dsp_ext.eda``).

    Per sample: invalid if non-finite, outside ``[min_us, max_us]``, ``|x[i] − x[i−1]|·rate > max_slope``
    (the previous raw sample, also across calls) or without contact (``contact[i] == 0``; an empty
    ``contact`` means all in contact); invalid samples become NaN; then the SOS low-pass with zero-order
    hold (started in the steady state ``zi_unit · x`` of the first finite input when ``st[3] == 0``); the
    output is NaN within ``guard_n`` samples after an invalid one.

    ``st`` = [previous raw sample, raw index of the last invalid sample, samples seen, started (0/1),
    last finite filter input]; updated in place. Returns the number of invalid samples.
    """
    cdef Py_ssize_t i, s, n = x.shape[0], n_bad = 0
    cdef Py_ssize_t ns = sos.shape[0]
    cdef bint has_contact = contact.shape[0] > 0
    cdef double v, prev = st[0], last_bad = st[1], idx0 = st[2], last = st[4], y
    cdef bint started = st[3] != 0.0, bad
    with nogil:
        for i in range(n):
            v = x[i]
            bad = (not isfinite(v)) or v < min_us or v > max_us or \
                fabs(v - prev) * rate_hz > max_slope_us_s
            if has_contact and contact[i] == 0:
                bad = True
            prev = v
            if bad:
                n_bad += 1
                last_bad = idx0 + i
                v = NAN
            if isfinite(v):
                if not started:
                    for s in range(ns):
                        zi[s, 0] = zi_unit[s, 0] * v
                        zi[s, 1] = zi_unit[s, 1] * v
                    started = True
                last = v
                y = sos_step(&sos[0, 0], &zi[0, 0], ns, v)
            elif started and isfinite(last):
                sos_step(&sos[0, 0], &zi[0, 0], ns, last)
                y = NAN
            else:
                y = NAN
            if idx0 + i - last_bad <= guard_n:
                y = NAN
            out[i] = y
        st[0] = prev
        st[1] = last_bad
        st[2] = idx0 + n
        st[3] = 1.0 if started else 0.0
        st[4] = last
    return n_bad
