# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Causal IBI artefact correction after Lipponen & Tarvainen (2019): the kernel of ``dsp_ext.ppg.IbiCorrector``.

The same arithmetic, operation for operation, as the plain Python twin ``dsp_ext.ppg.IbiCorrectorReference``
(decision rules in ``dsp_ext.ppg._classify``), so both give identical beats and kinds:

* ``rr[k] = (raw[k+1] − raw[k]) · 1000`` ms, ``med[k]`` the median of the 11 intervals ending at k;
* interval j is judged once interval j + 2 exists; the thresholds are α = 5.2 times the quartile deviation
  (numpy's linear interpolation) of |dRR| and |mRR| over intervals ``j − 88 … j + 2``, kept as two sorted
  windows updated by one insertion and one removal per beat and rebuilt after a correction;
* EXTRA drops beat j+1; MISSED inserts a beat in the middle of interval j; ECTOPIC, LONG and SHORT move beat
  j+1 to the middle of beats j and j+2.

The kept beats, intervals and medians share one logical index k (arrays with a common head offset); only the
``keep`` beats before the next one to judge are kept. ``push`` takes a 1-D C-contiguous float64 array of finite
beat times (s) and raises ``DspError`` otherwise; ``dsp_ext.ppg`` converts other inputs.
"""

import numpy as np

cimport numpy as cnp
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport fabs, isfinite
from libc.string cimport memcpy, memmove

from .errors import DspError

cnp.import_array()

cdef double ALPHA = 5.2
cdef double C1 = 0.13
cdef double C2 = 0.17
cdef enum:
    QD_WIN = 91
    MED_WIN = 11
    AHEAD = 2
    NORMAL = 0
    ECTOPIC = 1
    LONG = 2
    SHORT = 3
    MISSED = 4
    EXTRA = 5


cdef double _median_tail(const double* rr, Py_ssize_t k) noexcept nogil:
    """Median of rr[max(0, k − 10) .. k] (insertion sort of at most 11 values)."""
    cdef double buf[MED_WIN]
    cdef Py_ssize_t lo = k - MED_WIN + 1, n = 0, i, m
    cdef double v
    if lo < 0:
        lo = 0
    for i in range(lo, k + 1):
        v = rr[i]
        m = n - 1
        while m >= 0 and buf[m] > v:
            buf[m + 1] = buf[m]
            m -= 1
        buf[m + 1] = v
        n += 1
    if n % 2:
        return buf[n // 2]
    return 0.5 * (buf[n // 2 - 1] + buf[n // 2])


cdef inline double _q(const double* v, Py_ssize_t n, double p) noexcept nogil:
    cdef double pos = (n - 1) * p
    cdef Py_ssize_t i = <Py_ssize_t>pos
    cdef double f = pos - i
    if i + 1 >= n:
        return v[i]
    return v[i] + f * (v[i + 1] - v[i])


cdef inline double _quartile_dev_sorted(const double* v, Py_ssize_t n) noexcept nogil:
    return (_q(v, n, 0.75) - _q(v, n, 0.25)) / 2.0


cdef inline Py_ssize_t _bisect_left(const double* v, Py_ssize_t n, double x) noexcept nogil:
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) // 2
        if v[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline void _insort(double* v, Py_ssize_t n, double x) noexcept nogil:
    """Insert x into the sorted v[0:n] (room for n + 1), after equal values."""
    cdef Py_ssize_t m = n - 1
    while m >= 0 and v[m] > x:
        v[m + 1] = v[m]
        m -= 1
    v[m + 1] = x


cdef inline void _remove(double* v, Py_ssize_t n, double x) noexcept nogil:
    """Remove the first value equal to x (its bisect_left position) from the sorted v[0:n]."""
    cdef Py_ssize_t i = _bisect_left(v, n, x)
    memmove(&v[i], &v[i + 1], (n - 1 - i) * sizeof(double))


cdef inline double _drr(const double* rr, Py_ssize_t k) noexcept nogil:
    return rr[k] - rr[k - 1] if k >= 1 else 0.0


cdef inline double _mrr(const double* rr, const double* med, Py_ssize_t k) noexcept nogil:
    cdef double m = rr[k] - med[k]
    return 2.0 * m if m < 0 else m


cdef int _classify(const double* rr, const double* med, Py_ssize_t j, double th1, double th2) noexcept nogil:
    """Decision rules for interval j (j >= 1) given the thresholds; ``dsp_ext.ppg._classify`` line by line."""
    cdef Py_ssize_t lo = j + AHEAD + 1 - QD_WIN
    cdef double mrr_j, d, mrrs, prev, nxt1, nxt2, s12, s22, medj
    cdef bint long_, short_
    if lo < 0:
        lo = 0
    if not (th1 > 0 and th2 > 0):
        return NORMAL
    mrr_j = _mrr(rr, med, j)
    d = _drr(rr, j) / th1
    mrrs = mrr_j / th2
    if fabs(d) <= 1 and fabs(mrrs) <= 3:
        return NORMAL
    prev = _drr(rr, j - 1) / th1 if j > lo else 0.0
    nxt1 = _drr(rr, j + 1) / th1
    nxt2 = _drr(rr, j + 2) / th1
    if d > 0:
        s12 = nxt1 if nxt1 > prev else prev
    else:
        s12 = nxt1 if nxt1 < prev else prev
    if (d > 1 and s12 < -C1 * d - C2) or (d < -1 and s12 > -C1 * d + C2):
        return ECTOPIC
    if d >= 0:
        s22 = nxt2 if nxt2 < nxt1 else nxt1
    else:
        s22 = nxt2 if nxt2 > nxt1 else nxt1
    long_ = (d > 1 and s22 < -1) or (fabs(mrrs) > 3 and mrr_j > 0)
    short_ = (d < -1 and s22 > 1) or (fabs(mrrs) > 3 and mrr_j < 0)
    medj = med[j]
    if short_ and fabs(rr[j] + rr[j + 1] - medj) < th2:
        return EXTRA
    if long_ and fabs(rr[j] / 2.0 - medj) < th2:
        return MISSED
    if long_:
        return LONG
    if short_:
        return SHORT
    return NORMAL


cdef class IbiKernel:
    """State of one causal IBI corrector. Use ``dsp_ext.ppg.IbiCorrector`` instead."""

    cdef readonly Py_ssize_t keep
    cdef readonly Py_ssize_t n_corrected
    cdef double* raw_buf            # raw beat times (s); logical raw[k] = raw_buf[h + k]
    cdef double* rr_buf             # rr[k] = rr_buf[h + k] (ms)
    cdef double* med_buf            # med[k] = med_buf[h + k]
    cdef Py_ssize_t cap, h, n_raw, n_rr, n_med
    cdef Py_ssize_t next_j          # interval to judge next
    cdef bint started
    cdef double sd[QD_WIN + 1]      # sorted |dRR| of intervals [wlo, whi)
    cdef double sm[QD_WIN + 1]      # sorted |mRR| of intervals [wlo, whi)
    cdef Py_ssize_t wlo, whi
    cdef bint dirty
    cdef double* out_t              # output scratch: final beats of one push
    cdef cnp.int64_t* out_k
    cdef Py_ssize_t out_cap

    def __cinit__(self, Py_ssize_t keep=QD_WIN + 8):
        self.raw_buf = NULL
        self.rr_buf = NULL
        self.med_buf = NULL
        self.cap = 0
        self.out_t = NULL
        self.out_k = NULL
        self.out_cap = 0

    def __init__(self, Py_ssize_t keep=QD_WIN + 8):
        if keep < QD_WIN:
            raise ValueError(f"keep={keep} must be at least {QD_WIN} beats")
        self.keep = keep
        self._grow(2 * keep + 64)
        self.reset()

    def __dealloc__(self):
        PyMem_Free(self.raw_buf)
        PyMem_Free(self.rr_buf)
        PyMem_Free(self.med_buf)
        PyMem_Free(self.out_t)
        PyMem_Free(self.out_k)

    def reset(self):
        self.h = 0
        self.n_raw = 0
        self.n_rr = 0
        self.n_med = 0
        self.next_j = 0
        self.started = False
        self.n_corrected = 0
        self.wlo = 0
        self.whi = 0
        self.dirty = True

    @property
    def n_kept(self):
        """Raw beats held (those still needed by the correction)."""
        return int(self.n_raw)

    @property
    def state_nbytes(self):
        return int(8 * (3 * self.cap + 2 * self.out_cap + 2 * (QD_WIN + 1)) + 128)

    cdef _grow(self, Py_ssize_t need):
        """Make room for ``need`` logical values from head 0 (compacting, and enlarging if necessary)."""
        cdef Py_ssize_t cap = self.cap
        cdef double* r
        cdef double* q
        cdef double* m
        if need > cap:
            cap = max(need, 2 * cap)
            r = <double*>PyMem_Malloc(cap * sizeof(double))
            q = <double*>PyMem_Malloc(cap * sizeof(double))
            m = <double*>PyMem_Malloc(cap * sizeof(double))
            if r == NULL or q == NULL or m == NULL:
                PyMem_Free(r)
                PyMem_Free(q)
                PyMem_Free(m)
                raise MemoryError()
            if self.cap:
                memcpy(r, &self.raw_buf[self.h], self.n_raw * sizeof(double))
                memcpy(q, &self.rr_buf[self.h], self.n_rr * sizeof(double))
                memcpy(m, &self.med_buf[self.h], self.n_med * sizeof(double))
            PyMem_Free(self.raw_buf)
            PyMem_Free(self.rr_buf)
            PyMem_Free(self.med_buf)
            self.raw_buf, self.rr_buf, self.med_buf, self.cap = r, q, m, cap
        elif self.h:
            memmove(self.raw_buf, &self.raw_buf[self.h], self.n_raw * sizeof(double))
            memmove(self.rr_buf, &self.rr_buf[self.h], self.n_rr * sizeof(double))
            memmove(self.med_buf, &self.med_buf[self.h], self.n_med * sizeof(double))
        self.h = 0

    cdef _grow_out(self, Py_ssize_t need):
        cdef Py_ssize_t cap = max(need, 2 * self.out_cap)
        cdef double* t = <double*>PyMem_Malloc(cap * sizeof(double))
        cdef cnp.int64_t* k = <cnp.int64_t*>PyMem_Malloc(cap * sizeof(cnp.int64_t))
        if t == NULL or k == NULL:
            PyMem_Free(t)
            PyMem_Free(k)
            raise MemoryError()
        PyMem_Free(self.out_t)
        PyMem_Free(self.out_k)
        self.out_t, self.out_k, self.out_cap = t, k, cap

    cdef void _extend_intervals(self) noexcept nogil:
        cdef double* raw = &self.raw_buf[self.h]
        cdef double* rr = &self.rr_buf[self.h]
        cdef double* med = &self.med_buf[self.h]
        cdef Py_ssize_t k
        while self.n_rr < self.n_raw - 1:
            k = self.n_rr
            rr[k] = (raw[k + 1] - raw[k]) * 1000.0
            self.n_rr += 1
        while self.n_med < self.n_rr:
            med[self.n_med] = _median_tail(rr, self.n_med)
            self.n_med += 1

    cdef void _thresholds(self, Py_ssize_t j, double* th1, double* th2) noexcept nogil:
        cdef Py_ssize_t lo = j + AHEAD + 1 - QD_WIN, hi = j + AHEAD + 1, k, n
        cdef const double* rr = &self.rr_buf[self.h]
        cdef const double* med = &self.med_buf[self.h]
        if lo < 0:
            lo = 0
        if self.dirty or lo < self.wlo or hi < self.whi or lo >= self.whi:
            n = 0
            for k in range(lo, hi):
                _insort(self.sd, n, fabs(_drr(rr, k)))
                _insort(self.sm, n, fabs(_mrr(rr, med, k)))
                n += 1
            self.wlo = lo
            self.whi = hi
            self.dirty = False
        while self.whi < hi:
            n = self.whi - self.wlo
            _insort(self.sd, n, fabs(_drr(rr, self.whi)))
            _insort(self.sm, n, fabs(_mrr(rr, med, self.whi)))
            self.whi += 1
        while self.wlo < lo:
            n = self.whi - self.wlo
            _remove(self.sd, n, fabs(_drr(rr, self.wlo)))
            _remove(self.sm, n, fabs(_mrr(rr, med, self.wlo)))
            self.wlo += 1
        n = self.whi - self.wlo
        th1[0] = ALPHA * _quartile_dev_sorted(self.sd, n)
        th2[0] = ALPHA * _quartile_dev_sorted(self.sm, n)

    cdef void _set_beat(self, Py_ssize_t i, double t) noexcept nogil:
        """Move raw beat i and update the two intervals around it and the medians that use them."""
        cdef double* raw = &self.raw_buf[self.h]
        cdef double* rr = &self.rr_buf[self.h]
        cdef double* med = &self.med_buf[self.h]
        cdef Py_ssize_t k, k_end
        raw[i] = t
        for k in range(i - 1, i + 1):
            if 0 <= k < self.n_rr:
                rr[k] = (raw[k + 1] - raw[k]) * 1000.0
        k_end = min(self.n_med, i + MED_WIN)
        for k in range(max(0, i - 1), k_end):
            med[k] = _median_tail(rr, k)

    cdef Py_ssize_t _run(self, double* out_t, cnp.int64_t* out_k) noexcept nogil:
        """Judge every interval that has two successors; write the final beats; return their number."""
        cdef Py_ssize_t n_out = 0, j, drop
        cdef int kind
        cdef double th1, th2
        cdef double* raw
        cdef double* rr
        if not self.started and self.n_raw:
            self.started = True
            out_t[0] = self.raw_buf[self.h]
            out_k[0] = NORMAL
            n_out = 1
        self._extend_intervals()
        while self.next_j + AHEAD < self.n_rr:
            j = self.next_j
            raw = &self.raw_buf[self.h]
            rr = &self.rr_buf[self.h]
            kind = NORMAL
            if j >= 1:  # interval 0 has fewer than 4 values in its window: always NORMAL
                self._thresholds(j, &th1, &th2)
                kind = _classify(rr, &self.med_buf[self.h], j, th1, th2)
            if kind == NORMAL:
                out_t[n_out] = raw[j + 1]
            elif kind == EXTRA:  # beat j+1 is spurious: merge intervals j and j+1
                memmove(&raw[j + 1], &raw[j + 2], (self.n_raw - j - 2) * sizeof(double))
                self.n_raw -= 1
                rr[j] = (raw[j + 1] - raw[j]) * 1000.0
                memmove(&rr[j + 1], &rr[j + 2], (self.n_rr - j - 2) * sizeof(double))
                self.n_rr -= 1
                self.n_med = j
                self._extend_intervals()
                out_t[n_out] = raw[j + 1]
            elif kind == MISSED:  # a beat was missed inside interval j
                out_t[n_out] = 0.5 * (raw[j] + raw[j + 1])
                out_k[n_out] = MISSED
                n_out += 1
                out_t[n_out] = raw[j + 1]
            else:  # ectopic, long, short: move beat j+1 to the middle of its neighbours
                self._set_beat(j + 1, 0.5 * (raw[j] + raw[j + 2]))
                out_t[n_out] = raw[j + 1]
            out_k[n_out] = kind
            n_out += 1
            self.next_j += 1
            if kind != NORMAL:
                self.n_corrected += 1
                self.dirty = True
            drop = self.next_j - self.keep
            if drop > 0:
                self.h += drop
                self.n_raw -= drop
                self.n_rr -= drop
                self.n_med -= drop
                self.next_j -= drop
                self.wlo -= drop
                self.whi -= drop
                if self.wlo < 1:  # |dRR| of the new first interval is no longer known
                    self.dirty = True
        return n_out

    def push(self, cnp.ndarray beats_s not None):
        """Append raw beat times (s; a 1-D C-contiguous float64 array of finite, increasing values); returns
        ``(beat_times_s, kind)`` of the beats that became final."""
        if (cnp.PyArray_TYPE(beats_s) != cnp.NPY_DOUBLE or cnp.PyArray_NDIM(beats_s) != 1
                or not cnp.PyArray_IS_C_CONTIGUOUS(beats_s)):
            raise DspError("beat times must be a 1-D C-contiguous float64 array")
        cdef Py_ssize_t n = cnp.PyArray_DIM(beats_s, 0), n_out, i
        cdef const double* b = <const double*>cnp.PyArray_DATA(beats_s)
        cdef cnp.npy_intp dim
        for i in range(n):
            if not isfinite(b[i]):
                raise DspError(f"beat times must be finite, got {b[i]} at position {i}")
        if n == 0:  # every judgeable interval was judged at the end of the previous push
            dim = 0
            return cnp.PyArray_EMPTY(1, &dim, cnp.NPY_DOUBLE, 0), cnp.PyArray_EMPTY(1, &dim, cnp.NPY_INT64, 0)
        if self.h + self.n_raw + n > self.cap:
            self._grow(self.n_raw + n)
        memcpy(&self.raw_buf[self.h + self.n_raw], b, n * sizeof(double))
        self.n_raw += n
        # at most two beats per judged interval, plus the very first beat
        if 2 * self.n_raw + 1 > self.out_cap:
            self._grow_out(2 * self.n_raw + 1)
        with nogil:
            n_out = self._run(self.out_t, self.out_k)
        dim = n_out
        t_a = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_DOUBLE, 0)
        k_a = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_INT64, 0)
        memcpy(cnp.PyArray_DATA(t_a), self.out_t, n_out * sizeof(double))
        memcpy(cnp.PyArray_DATA(k_a), self.out_k, n_out * sizeof(cnp.int64_t))
        return t_a, k_a
