# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Streaming windowed cross-correlation kernel (Boker et al. 2002), O(lags) work per new sample.

How it stays exact and cheap
----------------------------
Pair index ``i`` stands for the pairs ``(T[i], C[i + τ])`` of every lag τ ∈ [−lag, lag]; the window starting at
``t`` is the pair indices ``[t, t + win)``. Pair indices from ``lag`` on are cut into blocks of ``win``. A window
then covers a suffix of one block and a prefix of the next (van Herk / Gil-Werman decomposition), so its
co-moments are the merge of two aggregates (Chan, Golub & LeVeque 1979 pairwise update), never a running
sum with subtraction:

* while block j+1 fills, its prefix co-moments grow by one Welford update per lag per pair;
* when block j completes, its suffix co-moments are built once, backwards, by Welford updates (stored only
  at positions where a window starts): amortised one more update per lag per pair;
* each window = merge(suffix of block j at t, prefix of block j+1 up to t + win − 1).

No value is ever removed from an accumulator, so rounding does not build up over a long session; every
window's numbers depend only on its own block pair, so the streaming and the batch runs are bit-identical
for any chunking. Values are shifted by the median of the previous block (the same shift for the suffix of
block j and the prefix of block j+1), which keeps Welford's means small for signals with a large offset
(skin conductance, ``x + 1e9``). A constant side gives a co-moment of exactly 0 and so NaN, and a lag with
fewer than ``win / 2`` valid (finite) pairs gives NaN.

The kernel trusts its inputs: ``synchrony`` validates and converts them once.
"""

import numpy as np

cimport numpy as cnp
from libc.math cimport NAN, isfinite, log, sqrt
from libc.stdlib cimport free, malloc

cnp.import_array()

cdef double R_CLIP = 0.999
cdef enum:
    N_VALUES = 11


cdef inline void _welford_add(double* a, Py_ssize_t stride, Py_ssize_t l, double u, double v) noexcept nogil:
    """Add one pair to the aggregate of lag ``l``; ``a`` holds six rows (n, mx, my, mxx, myy, cxy)."""
    cdef double n = a[l] + 1.0
    cdef double dx = u - a[stride + l]
    cdef double dy = v - a[2 * stride + l]
    cdef double mx = a[stride + l] + dx / n
    cdef double my = a[2 * stride + l] + dy / n
    a[l] = n
    a[stride + l] = mx
    a[2 * stride + l] = my
    a[3 * stride + l] += dx * (u - mx)
    a[4 * stride + l] += dy * (v - my)
    a[5 * stride + l] += dx * (v - my)


cdef inline void _welford_add_all(double* a, Py_ssize_t stride, Py_ssize_t nl, double u,
                                  const double* cv, double sc) noexcept nogil:
    """Add the pairs (u, cv[l] - sc) of every lag l; all cv[l] finite. Branch-free, so it vectorises."""
    cdef double* an = a
    cdef double* amx = a + stride
    cdef double* amy = a + 2 * stride
    cdef double* axx = a + 3 * stride
    cdef double* ayy = a + 4 * stride
    cdef double* axy = a + 5 * stride
    cdef Py_ssize_t l
    cdef double n, dx, dy, mx, my, v, inv
    for l in range(nl):
        v = cv[l] - sc
        n = an[l] + 1.0
        inv = 1.0 / n
        dx = u - amx[l]
        dy = v - amy[l]
        mx = amx[l] + dx * inv
        my = amy[l] + dy * inv
        an[l] = n
        amx[l] = mx
        amy[l] = my
        axx[l] += dx * (u - mx)
        ayy[l] += dy * (v - my)
        axy[l] += dx * (v - my)


cdef inline double _corr_merged(const double* a, const double* b, Py_ssize_t stride, Py_ssize_t l,
                                Py_ssize_t win) noexcept nogil:
    """Pearson r of the union of aggregates ``a`` and ``b`` (either may be NULL = empty) for lag ``l``."""
    cdef double na = a[l] if a != NULL else 0.0
    cdef double nb = b[l] if b != NULL else 0.0
    cdef double n = na + nb
    cdef double mxx, myy, cxy, dx, dy, f
    if 2.0 * n < win or n < 2.0:
        return NAN
    if nb == 0.0:
        mxx = a[3 * stride + l]
        myy = a[4 * stride + l]
        cxy = a[5 * stride + l]
    elif na == 0.0:
        mxx = b[3 * stride + l]
        myy = b[4 * stride + l]
        cxy = b[5 * stride + l]
    else:
        dx = b[stride + l] - a[stride + l]
        dy = b[2 * stride + l] - a[2 * stride + l]
        f = na * nb / n
        mxx = a[3 * stride + l] + b[3 * stride + l] + dx * dx * f
        myy = a[4 * stride + l] + b[4 * stride + l] + dy * dy * f
        cxy = a[5 * stride + l] + b[5 * stride + l] + dx * dy * f
    if not (mxx > 0.0 and myy > 0.0):
        return NAN
    cdef double r = cxy / sqrt(mxx * myy)
    if r > 1.0:
        return 1.0
    if r < -1.0:
        return -1.0
    return r


cdef inline double _fisher_z(double r) noexcept nogil:
    if r > R_CLIP:
        r = R_CLIP
    elif r < -R_CLIP:
        r = -R_CLIP
    return 0.5 * log((1.0 + r) / (1.0 - r))


cdef inline bint _is_peak(const double* r, Py_ssize_t c, Py_ssize_t nl, Py_ssize_t half,
                          double sign) noexcept nogil:
    cdef Py_ssize_t d
    cdef double pc, pd
    if c - half < 0 or c + half >= nl:
        return False
    pc = sign * r[c]
    if not (pc > 0.0):
        return False
    for d in range(c - half, c + half + 1):
        pd = sign * r[d]
        if not isfinite(pd) or pd > pc:
            return False
    return True


cdef inline Py_ssize_t _find_peak(const double* r, Py_ssize_t lag, Py_ssize_t half, double sign) noexcept nogil:
    """Boker peak picking outward from τ = 0 (column ``lag``); −1 if none. Ties between ±d go to +d."""
    cdef Py_ssize_t nl = 2 * lag + 1
    cdef Py_ssize_t d
    cdef bint pos, neg
    if _is_peak(r, lag, nl, half, sign):
        return lag
    for d in range(1, lag + 1):
        pos = _is_peak(r, lag + d, nl, half, sign)
        neg = _is_peak(r, lag - d, nl, half, sign)
        if pos and neg:
            if sign * r[lag - d] > sign * r[lag + d]:
                return lag - d
            return lag + d
        if pos:
            return lag + d
        if neg:
            return lag - d
    return -1


cdef inline void _mean_max_z(const double* r, Py_ssize_t lo, Py_ssize_t hi, double* mean, double* mx) noexcept nogil:
    """Mean and max of Fisher z over columns [lo, hi); NaN if more than half are NaN or the range is empty."""
    cdef Py_ssize_t l, cnt = 0
    cdef double s = 0.0, m = -1e300, z
    for l in range(lo, hi):
        if isfinite(r[l]):
            z = _fisher_z(r[l])
            s += z
            cnt += 1
            if z > m:
                m = z
    if hi <= lo or 2 * cnt < hi - lo:
        mean[0] = NAN
        mx[0] = NAN
    else:
        mean[0] = s / cnt
        mx[0] = m


cdef void _window_values(const double* r, Py_ssize_t lag, Py_ssize_t half, double rate_hz,
                         double* out) noexcept nogil:
    """The 11 per-window scalars in WINDOW_VALUE_NAMES order."""
    cdef Py_ssize_t nl = 2 * lag + 1
    cdef Py_ssize_t c, k
    cdef double sign
    out[0] = r[lag]
    _mean_max_z(r, lag + 1, nl, &out[1], &out[3])
    _mean_max_z(r, 0, lag, &out[2], &out[4])
    for k in range(2):
        sign = 1.0 if k == 0 else -1.0
        c = _find_peak(r, lag, half, sign)
        if c >= 0:
            out[5 + 3 * k] = r[c]
            out[6 + 3 * k] = _fisher_z(r[c])
            out[7 + 3 * k] = (c - lag) / rate_hz
        else:
            out[5 + 3 * k] = NAN
            out[6 + 3 * k] = NAN
            out[7 + 3 * k] = NAN


cdef double _finite_median(const double* x, Py_ssize_t n, double* scratch) noexcept nogil:
    """Lower median of the finite values of x[0:n] (0.0 if none), by quickselect on a scratch copy."""
    cdef Py_ssize_t m = 0, i, lo, hi, k, a, b
    cdef double pivot, tmp
    for i in range(n):
        if isfinite(x[i]):
            scratch[m] = x[i]
            m += 1
    if m == 0:
        return 0.0
    k = (m - 1) // 2
    lo = 0
    hi = m - 1
    while lo < hi:
        pivot = scratch[(lo + hi) // 2]
        a = lo
        b = hi
        while a <= b:
            while scratch[a] < pivot:
                a += 1
            while scratch[b] > pivot:
                b -= 1
            if a <= b:
                tmp = scratch[a]
                scratch[a] = scratch[b]
                scratch[b] = tmp
                a += 1
                b -= 1
        if k <= b:
            hi = b
        elif k >= a:
            lo = a
        else:
            break
    return scratch[k]


cdef inline Py_ssize_t _n_windows_ending_before(Py_ssize_t pair_end, Py_ssize_t win, Py_ssize_t inc,
                                                Py_ssize_t lag) noexcept nogil:
    """Number of windows (starts lag + k*inc) whose last pair index lies below ``pair_end``."""
    cdef Py_ssize_t span = pair_end - win - lag  # t + win - 1 < pair_end  <=>  t - lag < pair_end - win - lag + 1
    if span < 0:
        return 0
    return span // inc + 1


cdef class WccEngine:
    """Kernel state of one streaming windowed cross-correlation. Use ``dsp_ext.synchrony`` instead."""

    cdef readonly Py_ssize_t win, inc, lag, half, nl, n_slots
    cdef readonly double rate_hz
    cdef Py_ssize_t nt, nc          # samples received per side
    cdef Py_ssize_t next_pair       # next pair index to process
    cdef Py_ssize_t buf0            # absolute index of tbuf[0]; cbuf[0] is index buf0 - lag
    cdef object tbuf, cbuf          # float64 arrays of kept samples
    cdef double[:, ::1] pre         # prefix aggregates of the filling block: 6 x nl
    cdef double[:, ::1] run         # running suffix aggregates while a block completes: 6 x nl
    cdef double[:, :, ::1] suf      # suffix aggregates at window starts of the last completed block
    cdef Py_ssize_t suf_q0          # block position of suffix slot 0
    cdef double shift_t, shift_c    # median shift of the last completed block (frame of suf and pre)
    cdef double[::1] scratch

    def __init__(self, Py_ssize_t win, Py_ssize_t inc, Py_ssize_t lag, Py_ssize_t half, double rate_hz):
        if win < 2 or inc < 1 or lag < 0 or half < 1 or not rate_hz > 0:
            raise ValueError(f"bad kernel parameters win={win} inc={inc} lag={lag} half={half} rate_hz={rate_hz}")
        self.win, self.inc, self.lag, self.half, self.rate_hz = win, inc, lag, half, rate_hz
        self.nl = 2 * lag + 1
        self.n_slots = (win + inc - 1) // inc
        self.pre = np.zeros((6, self.nl))
        self.run = np.zeros((6, self.nl))
        self.suf = np.zeros((self.n_slots, 6, self.nl))
        self.scratch = np.zeros(win)
        self.reset()

    def reset(self):
        self.nt = 0
        self.nc = 0
        self.next_pair = self.lag
        self.buf0 = self.lag
        self.tbuf = np.empty(0)
        self.cbuf = np.empty(0)
        self.pre[:, :] = 0.0
        self.run[:, :] = 0.0
        self.suf[:, :, :] = 0.0
        self.suf_q0 = 0
        self.shift_t = 0.0
        self.shift_c = 0.0

    @property
    def n_samples(self):
        return (int(self.nt), int(self.nc))

    @property
    def state_nbytes(self):
        return int(self.tbuf.nbytes + self.cbuf.nbytes + 8 * (self.pre.size + self.run.size + self.suf.size
                                                               + self.scratch.shape[0]))

    def push(self, const double[::1] t, const double[::1] c):
        """Append samples to both sides; return (starts, profiles, values) of the windows completed."""
        cdef Py_ssize_t lag = self.lag, win = self.win, inc = self.inc
        # keep samples from buf0 (therapist) and buf0 - lag (client); drop what arrives before that point
        cdef Py_ssize_t t_skip = max(0, min(t.shape[0], self.buf0 - self.nt))
        cdef Py_ssize_t c_skip = max(0, min(c.shape[0], self.buf0 - lag - self.nc))
        self.tbuf = np.concatenate((self.tbuf, np.asarray(t[t_skip:])))
        self.cbuf = np.concatenate((self.cbuf, np.asarray(c[c_skip:])))
        self.nt += t.shape[0]
        self.nc += c.shape[0]
        cdef Py_ssize_t end_pair = min(self.nt, self.nc - lag)  # pairs [next_pair, end_pair) are ready
        cdef Py_ssize_t first_k = 0, last_k = 0, n_out = 0
        if end_pair > self.next_pair:
            # windows end at pair t + win - 1; count those with t in [L, ...] ending in the ready range
            first_k = _n_windows_ending_before(self.next_pair, win, inc, lag)
            last_k = _n_windows_ending_before(end_pair, win, inc, lag)
            n_out = last_k - first_k
        starts = np.empty(n_out, dtype=np.int64)
        prof = np.empty((n_out, self.nl))
        vals = np.empty((n_out, N_VALUES))
        if end_pair > self.next_pair:
            # cbad[k] = number of non-finite client samples in cbuf[:k]: O(1) test of a lag range
            cbad = np.zeros(self.cbuf.shape[0] + 1, dtype=np.int64)
            np.cumsum(~np.isfinite(self.cbuf), out=cbad[1:])
            self._process(end_pair, starts, prof, vals, cbad)
        # trim: keep from the start of the block of next_pair (needed for its suffix pass)
        cdef Py_ssize_t keep = lag + ((self.next_pair - lag) // win) * win
        if keep > self.buf0:
            self.tbuf = self.tbuf[min(keep - self.buf0, self.tbuf.shape[0]):].copy()
            self.cbuf = self.cbuf[min(keep - self.buf0, self.cbuf.shape[0]):].copy()
            self.buf0 = keep
        return starts, prof, vals

    cdef void _process(self, Py_ssize_t end_pair, cnp.int64_t[::1] starts, double[:, ::1] prof,
                       double[:, ::1] vals, const cnp.int64_t[::1] cbad):
        cdef const double[::1] tb = self.tbuf
        cdef const double[::1] cb = self.cbuf
        cdef Py_ssize_t lag = self.lag, win = self.win, inc = self.inc, nl = self.nl, half = self.half
        cdef Py_ssize_t i, j, pos, l, q, slot, b, t0, w_out = 0, buf0 = self.buf0
        cdef double u, v, st, sc
        cdef double* pre = &self.pre[0, 0]
        cdef double* run = &self.run[0, 0]
        cdef double* rowp
        cdef double* scratch = &self.scratch[0]
        with nogil:
            for i in range(self.next_pair, end_pair):
                pos = (i - lag) % win
                j = (i - lag) // win
                # 1. prefix of block j (j >= 1) in the frame of block j - 1
                if j >= 1:
                    if pos == 0:
                        for l in range(6 * nl):
                            pre[l] = 0.0
                    u = tb[i - buf0]
                    if isfinite(u):
                        u = u - self.shift_t
                        if cbad[i - buf0 + nl] == cbad[i - buf0]:
                            _welford_add_all(pre, nl, nl, u, &cb[i - buf0], self.shift_c)
                        else:
                            for l in range(nl):
                                v = cb[i - buf0 + l]
                                if isfinite(v):
                                    _welford_add(pre, nl, l, u, v - self.shift_c)
                # 2. block j complete: new shift, suffix aggregates at window starts, backwards
                if pos == win - 1:
                    b = i - win + 1 - buf0
                    self.shift_t = _finite_median(&tb[b], win, scratch)
                    self.shift_c = _finite_median(&cb[b + lag], win, scratch)
                    st = self.shift_t
                    sc = self.shift_c
                    self.suf_q0 = (inc - (j * win) % inc) % inc
                    for l in range(6 * nl):
                        run[l] = 0.0
                    for q in range(win - 1, -1, -1):
                        u = tb[b + q]
                        if isfinite(u):
                            if cbad[b + q + nl] == cbad[b + q]:
                                _welford_add_all(run, nl, nl, u - st, &cb[b + q], sc)
                            else:
                                for l in range(nl):
                                    v = cb[b + q + l]
                                    if isfinite(v):
                                        _welford_add(run, nl, l, u - st, v - sc)
                        if q >= self.suf_q0 and (q - self.suf_q0) % inc == 0:
                            slot = (q - self.suf_q0) // inc
                            rowp = &self.suf[slot, 0, 0]
                            for l in range(6 * nl):
                                rowp[l] = run[l]
                # 3. the window ending at pair i
                t0 = i - win + 1
                if t0 >= lag and (t0 - lag) % inc == 0:
                    starts[w_out] = t0
                    if pos == win - 1:
                        rowp = &self.suf[0, 0, 0]  # whole block = suffix from position 0 (suf_q0 == 0 here)
                        for l in range(nl):
                            prof[w_out, l] = _corr_merged(rowp, NULL, nl, l, win)
                    else:
                        slot = (pos + 1 - self.suf_q0) // inc
                        rowp = &self.suf[slot, 0, 0]
                        for l in range(nl):
                            prof[w_out, l] = _corr_merged(rowp, pre, nl, l, win)
                    _window_values(&prof[w_out, 0], lag, half, self.rate_hz, &vals[w_out, 0])
                    w_out += 1
            self.next_pair = end_pair
