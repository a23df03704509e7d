# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The per-sample part of RSA (Porges–Bohrer) for ``dsp_ext.hrv.HrvStream``: from the IBI series on the 4 Hz
grid to the detrended and band-passed 2 Hz series of each 30-s epoch.

Per push: the even grid points form the 2 Hz series; each new value completes the centred window of the
value ``h`` = 10 samples earlier, whose residual from the moving cubic (Savitzky–Golay weights ``w``) is

    resid = −Σ_{i=0}^{20} w[i] · (x[i] − x[h])      (summed in order i = 0 … 20)

(the same as ``x[h] − Σ w[i]·x[i]`` since Σ w = 1, but centred on ``x[h]`` so that a large offset such as
``x + 1e9`` does not cancel); a NaN or inf in the window gives a non-finite residual. Residuals go through
the causal band-pass (second-order sections, zero-order hold on non-finite input, output NaN there) and are
collected per epoch of ``epoch_n`` 2 Hz samples; the epoch before the first residual is filled with NaN.
Completed epochs are returned as ``(epoch, resid, band)``.

Its numpy twin is ``dsp_ext.hrv.rsa_front_reference``. ``push`` takes C-contiguous int64 grid indices and
float64 values (``dsp_ext.hrv`` converts) and raises ``DspError`` if the grid does not continue where it
left off.
"""

import numpy as np

cimport numpy as cnp
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport NAN
from libc.string cimport memcpy, memmove

from dsp_ext._sos cimport sos_hold_step

from .errors import DspError

cnp.import_array()

cdef enum:
    SG_POINTS = 21
    SG_HALF = 10
    MAX_SECTIONS = 8


cdef inline Py_ssize_t _floordiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef Py_ssize_t q = a // b
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q -= 1
    return q


cdef class RsaKernel:
    """State of the detrend / band-pass / epoch stage of one HRV stream. Use ``dsp_ext.hrv`` instead."""

    cdef readonly Py_ssize_t epoch_n, ns
    cdef double w[SG_POINTS]
    cdef double sos[6 * MAX_SECTIONS]
    cdef double zi[2 * MAX_SECTIONS]
    cdef double hold                # last finite band-pass input
    cdef double win[SG_POINTS]      # the last values of the 2 Hz series (win[0] oldest)
    cdef Py_ssize_t n_win
    cdef double* acc_r              # residuals of the current epoch
    cdef double* acc_b              # band-passed residuals of the current epoch
    cdef Py_ssize_t n_acc
    cdef double* scr_r              # scratch: residuals of one push
    cdef double* scr_b
    cdef Py_ssize_t scr_cap
    cdef readonly bint has_grid     # a grid point was seen (the grid position below is set)
    cdef bint started               # the first residual was produced
    cdef Py_ssize_t k_next          # next 4 Hz grid index expected
    cdef readonly Py_ssize_t epoch  # epoch being filled

    def __cinit__(self, *args, **kwargs):
        self.acc_r = NULL
        self.acc_b = NULL
        self.scr_r = NULL
        self.scr_b = NULL
        self.scr_cap = 0

    def __init__(self, Py_ssize_t epoch_n, const double[::1] w, const double[:, ::1] sos):
        cdef Py_ssize_t i
        if epoch_n < 1 or w.shape[0] != SG_POINTS or sos.shape[1] != 6 or not 1 <= sos.shape[0] <= MAX_SECTIONS:
            raise ValueError(f"bad kernel parameters epoch_n={epoch_n} weights {w.shape[0]} "
                             f"sos {sos.shape[0]}x{sos.shape[1]}")
        self.epoch_n = epoch_n
        self.ns = sos.shape[0]
        for i in range(SG_POINTS):
            self.w[i] = w[i]
        for i in range(6 * self.ns):
            self.sos[i] = sos[i // 6, i % 6]
        PyMem_Free(self.acc_r)
        PyMem_Free(self.acc_b)
        self.acc_r = <double*>PyMem_Malloc(epoch_n * sizeof(double))
        self.acc_b = <double*>PyMem_Malloc(epoch_n * sizeof(double))
        if self.acc_r == NULL or self.acc_b == NULL:
            raise MemoryError()
        self._grow_scratch(64)
        self.reset()

    def __dealloc__(self):
        PyMem_Free(self.acc_r)
        PyMem_Free(self.acc_b)
        PyMem_Free(self.scr_r)
        PyMem_Free(self.scr_b)

    def reset(self):
        cdef Py_ssize_t i
        for i in range(2 * MAX_SECTIONS):
            self.zi[i] = 0.0
        self.hold = NAN
        self.n_win = 0
        self.n_acc = 0
        self.has_grid = False
        self.started = False
        self.k_next = 0
        self.epoch = 0

    @property
    def state_nbytes(self):
        return int(8 * (2 * self.epoch_n + 2 * self.scr_cap + 3 * SG_POINTS + 8 * MAX_SECTIONS) + 128)

    cdef _grow_scratch(self, Py_ssize_t need):
        cdef Py_ssize_t cap = max(need, 2 * self.scr_cap)
        cdef double* r = <double*>PyMem_Malloc(cap * sizeof(double))
        cdef double* b = <double*>PyMem_Malloc(cap * sizeof(double))
        if r == NULL or b == NULL:
            PyMem_Free(r)
            PyMem_Free(b)
            raise MemoryError()
        PyMem_Free(self.scr_r)
        PyMem_Free(self.scr_b)
        self.scr_r, self.scr_b, self.scr_cap = r, b, cap

    cdef Py_ssize_t _front(self, const cnp.int64_t* gi, const double* g, Py_ssize_t n) noexcept nogil:
        """Residuals and band-passed values of the new 2 Hz values (the even grid points, taken as consecutive
        from the first one's index) into the scratch; returns how many, the NaN fill of the first epoch
        included. The scratch holds (even points) + ``epoch_n + SG_POINTS`` values."""
        cdef Py_ssize_t i, j, m = 0, n_out = 0, k0
        cdef double xc, acc, r
        cdef double* win = self.win
        cdef const double* w = self.w
        cdef bint first = True
        for i in range(n):
            if gi[i] & 1:
                continue
            if first:
                m = _floordiv(gi[i], 2)  # the 2 Hz index of the first new value
                first = False
            else:
                m += 1
            if self.n_win == SG_POINTS:
                memmove(win, win + 1, (SG_POINTS - 1) * sizeof(double))
                self.n_win -= 1
            win[self.n_win] = g[i]
            self.n_win += 1
            if self.n_win < SG_POINTS:
                continue
            if not self.started:  # before the first centred fit: the epoch's start is invalid
                self.started = True
                k0 = m - SG_HALF  # 2 Hz index of this residual
                for j in range(self.epoch * self.epoch_n, k0):
                    self.scr_r[n_out] = NAN
                    self.scr_b[n_out] = sos_hold_step(self.sos, self.zi, self.ns, NAN, &self.hold)
                    n_out += 1
            xc = win[SG_HALF]
            acc = 0.0
            for j in range(SG_POINTS):
                acc = acc + w[j] * (win[j] - xc)
            r = -acc
            self.scr_r[n_out] = r
            self.scr_b[n_out] = sos_hold_step(self.sos, self.zi, self.ns, r, &self.hold)
            n_out += 1
        return n_out

    def push(self, cnp.ndarray grid_index not None, cnp.ndarray values not None):
        """Feed grid points (indices, IBI in ms); returns the completed epochs as ``(epoch, resid, band)``."""
        if (cnp.PyArray_TYPE(grid_index) != cnp.NPY_INT64 or cnp.PyArray_NDIM(grid_index) != 1
                or not cnp.PyArray_IS_C_CONTIGUOUS(grid_index) or cnp.PyArray_TYPE(values) != cnp.NPY_DOUBLE
                or cnp.PyArray_NDIM(values) != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(values)):
            raise DspError("grid indices must be C-contiguous int64 and values C-contiguous float64, 1-D")
        cdef Py_ssize_t n = cnp.PyArray_DIM(grid_index, 0), n_out, pos, take, n_even = 0, i
        if cnp.PyArray_DIM(values, 0) != n:
            raise DspError(f"grid_index ({n}) and ibi_grid_ms ({cnp.PyArray_DIM(values, 0)}) differ in length")
        if n == 0:
            return []
        cdef const cnp.int64_t* gi = <const cnp.int64_t*>cnp.PyArray_DATA(grid_index)
        cdef const double* g = <const double*>cnp.PyArray_DATA(values)
        if not self.has_grid:
            self.has_grid = True
            self.k_next = gi[0]
            # the first 2 Hz index at or after the first grid point opens the first epoch
            self.epoch = _floordiv(-_floordiv(-self.k_next, 2), self.epoch_n)
        if gi[0] != self.k_next:
            raise DspError(f"IBI grid jumps from index {self.k_next} to {gi[0]}: feed every point once")
        for i in range(n):
            n_even += (gi[i] & 1) == 0
        if n_even + self.epoch_n + SG_POINTS > self.scr_cap:
            self._grow_scratch(n_even + self.epoch_n + SG_POINTS)
        with nogil:
            n_out = self._front(gi, g, n)
            self.k_next += n
        # distribute over epochs
        cdef list done = []
        cdef cnp.npy_intp dim = self.epoch_n
        pos = 0
        while pos < n_out:
            take = min(n_out - pos, self.epoch_n - self.n_acc)
            memcpy(&self.acc_r[self.n_acc], &self.scr_r[pos], take * sizeof(double))
            memcpy(&self.acc_b[self.n_acc], &self.scr_b[pos], take * sizeof(double))
            self.n_acc += take
            pos += take
            if self.n_acc == self.epoch_n:
                r_a = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_DOUBLE, 0)
                b_a = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_DOUBLE, 0)
                memcpy(cnp.PyArray_DATA(r_a), self.acc_r, self.epoch_n * sizeof(double))
                memcpy(cnp.PyArray_DATA(b_a), self.acc_b, self.epoch_n * sizeof(double))
                done.append((int(self.epoch), r_a, b_a))
                self.epoch += 1
                self.n_acc = 0
        return done

