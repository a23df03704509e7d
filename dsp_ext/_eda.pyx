# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The 4 Hz part of ``dsp_ext.eda.EdaStream`` in one kernel: low-passed raw µS in; grid values, tonic,
phasic, validity and skin-conductance responses out.

Per push, with the arithmetic of the Python twin ``dsp_ext.eda.eda_grid_reference`` operation for operation:

1. linear interpolation onto the grid (``dsp_ext.grid.GridResampler``): grid point j lies at raw position
   ``off + j·step``; it is emitted once the raw sample at or after it has arrived;
2. tonic = the causal low-pass ``sos`` started in the steady state of the first finite grid value (zero-order
   hold on non-finite input, NaN output there); if a non-finite value comes before ``TONIC_SETTLE_N`` finite
   values have followed that start, the start is suspect (an initial outlier followed by a slope artefact
   looks exactly like this) and the tonic starts again on the next finite value; phasic = value − tonic;
   valid = value finite;
3. the onset/peak state machine of skin-conductance responses (onset: phasic step above ``onset_step``;
   peak: the phasic step turns ≤ 0; reported if the trough-to-peak amplitude on the grid value is at least
   ``min_amp`` and the rise at most ``max_rise`` grid points).

``push`` takes a 1-D C-contiguous float64 array and returns ``(index, value, tonic, phasic, valid, scr)``
with ``scr`` a list of ``(onset_index, peak_index, amplitude_us)``.
"""

import numpy as np

cimport numpy as cnp
from libc.math cimport NAN, floor, isfinite

from dsp_ext._sos cimport sos_hold_step

from .errors import DspError

cnp.import_array()

cdef enum:
    MAX_SECTIONS = 8
    TONIC_SETTLE_N = 16  # grid values (4 s): an invalid value within them after the start restarts the tonic

TONIC_SETTLE = TONIC_SETTLE_N


cdef class EdaGridKernel:
    """State of the grid stage of one EDA stream. Use ``dsp_ext.eda.EdaStream`` instead."""

    cdef readonly double off, step
    cdef readonly Py_ssize_t first_index, ns
    cdef double sos[6 * MAX_SECTIONS]
    cdef double zi_unit[2 * MAX_SECTIONS]
    cdef double zi[2 * MAX_SECTIONS]
    cdef double hold
    cdef bint tonic_started
    cdef Py_ssize_t tonic_n       # finite values since the tonic (re)started, counted up to TONIC_SETTLE_N
    cdef double onset_step, min_amp
    cdef Py_ssize_t max_rise
    # resampler
    cdef Py_ssize_t n_in, j_next
    cdef double last
    # SCR state machine
    cdef double g_prev, p_prev, onset_v
    cdef Py_ssize_t g_prev_k, onset_k
    cdef bint rising

    def __init__(self, double off, double step, Py_ssize_t first_index, const double[:, ::1] sos,
                 const double[:, ::1] zi_unit, double onset_step, double min_amp, Py_ssize_t max_rise):
        cdef Py_ssize_t i
        if not (step > 0 and isfinite(off) and sos.shape[1] == 6 and 1 <= sos.shape[0] <= MAX_SECTIONS
                and zi_unit.shape[0] == sos.shape[0] and zi_unit.shape[1] == 2):
            raise ValueError(f"bad kernel parameters off={off} step={step} sos {sos.shape[0]}x{sos.shape[1]}")
        self.off, self.step, self.first_index = off, step, first_index
        self.ns = sos.shape[0]
        for i in range(6 * self.ns):
            self.sos[i] = sos[i // 6, i % 6]
        for i in range(2 * self.ns):
            self.zi_unit[i] = zi_unit[i // 2, i % 2]
        self.onset_step, self.min_amp, self.max_rise = onset_step, min_amp, max_rise
        self.reset()

    def reset(self):
        cdef Py_ssize_t i
        for i in range(2 * MAX_SECTIONS):
            self.zi[i] = 0.0
        self.hold = NAN
        self.tonic_started = False
        self.tonic_n = 0
        self.n_in = 0
        self.j_next = 0
        self.last = NAN
        self.g_prev = NAN
        self.p_prev = NAN
        self.g_prev_k = -1
        self.rising = False
        self.onset_k = -1
        self.onset_v = NAN

    @property
    def state_nbytes(self):
        return int(8 * (10 * self.ns + 12))

    @property
    def n_in_samples(self):
        return int(self.n_in)

    def push(self, cnp.ndarray y not None):
        if cnp.PyArray_TYPE(y) != cnp.NPY_DOUBLE or cnp.PyArray_NDIM(y) != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(y):
            raise DspError("EdaGridKernel.push takes a 1-D C-contiguous float64 array")
        cdef Py_ssize_t nx = cnp.PyArray_DIM(y, 0), n_old = self.n_in, last_idx, j_end, n_out, j, i0, r, i, s
        cdef const double* xs = <const double*>cnp.PyArray_DATA(y)
        cdef double pos, frac, v0, v1, v, p, gp, pp, amp
        cdef cnp.npy_intp dim
        self.n_in += nx
        last_idx = self.n_in - 1
        j_end = self.j_next
        if last_idx >= 0:
            j_end = <Py_ssize_t>floor((last_idx - self.off) / self.step + 1e-9) + 1
            if j_end < self.j_next:
                j_end = self.j_next
        n_out = j_end - self.j_next
        dim = n_out
        idx_a = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_INT64, 0)
        g_a = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_DOUBLE, 0)
        t_a = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_DOUBLE, 0)
        p_a = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_DOUBLE, 0)
        ok_a = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_BOOL, 0)
        cdef cnp.int64_t* idx = <cnp.int64_t*>cnp.PyArray_DATA(idx_a)
        cdef double* g = <double*>cnp.PyArray_DATA(g_a)
        cdef double* tonic = <double*>cnp.PyArray_DATA(t_a)
        cdef double* ph = <double*>cnp.PyArray_DATA(p_a)
        cdef cnp.npy_bool* ok = <cnp.npy_bool*>cnp.PyArray_DATA(ok_a)
        scr = []
        with nogil:
            # 1. grid values
            for j in range(self.j_next, j_end):
                pos = self.off + j * self.step
                i0 = <Py_ssize_t>floor(pos + 1e-9)
                frac = pos - i0
                r = i0 - n_old
                v0 = self.last if r < 0 else xs[r]
                if frac < 1e-9:
                    v = v0
                else:
                    v1 = xs[r + 1 if r + 1 < nx - 1 else nx - 1]
                    v = v0 + frac * (v1 - v0)
                idx[j - self.j_next] = self.first_index + j
                g[j - self.j_next] = v
            self.j_next = j_end
            if nx:
                self.last = xs[nx - 1]
            # 2. tonic, started in the steady state of the first finite value; restarted if an invalid value
            #    follows within TONIC_SETTLE_N finite values of the start
            for i in range(n_out):
                if not self.tonic_started and isfinite(g[i]):
                    for s in range(2 * self.ns):
                        self.zi[s] = self.zi_unit[s] * g[i]
                    self.hold = NAN
                    self.tonic_started = True
                    self.tonic_n = 0
                if self.tonic_started:
                    tonic[i] = sos_hold_step(self.sos, self.zi, self.ns, g[i], &self.hold)
                    if isfinite(g[i]):
                        if self.tonic_n < TONIC_SETTLE_N:
                            self.tonic_n += 1
                    elif self.tonic_n < TONIC_SETTLE_N:
                        self.tonic_started = False
                else:
                    tonic[i] = NAN
                ph[i] = g[i] - tonic[i]
                ok[i] = isfinite(g[i])
        # 3. skin-conductance responses (a Python list: with the GIL)
        for i in range(n_out):
            v, p = g[i], ph[i]
            gp, pp = self.g_prev, self.p_prev
            if not (isfinite(v) and isfinite(p) and isfinite(gp) and isfinite(pp)):
                self.rising = False
            elif not self.rising:
                if p - pp > self.onset_step:
                    self.rising, self.onset_k, self.onset_v = True, self.g_prev_k, gp
            elif p - pp <= 0.0:  # the phasic part turned down: the previous sample was the peak
                self.rising = False
                amp = gp - self.onset_v
                if amp >= self.min_amp and self.g_prev_k - self.onset_k <= self.max_rise:
                    scr.append((self.onset_k, self.g_prev_k, amp))
            self.g_prev, self.p_prev, self.g_prev_k = v, p, idx[i]
        return idx_a, g_a, t_a, p_a, ok_a, scr
