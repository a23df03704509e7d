# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: extra_compile_args = -fno-math-errno
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
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memmove, memset

cnp.import_array()

cdef double R_CLIP = 0.999
cdef enum:
    N_VALUES = 15
    NEED_PEAKS = 1   # window values 5-10 (in-phase and anti-phase Boker peaks)
    NEED_GLOBAL = 2  # window values 11-14 (the profile's global maximum and the leader)
    NEED_ALL = 3


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


cdef extern from *:
    """
    /* Add the pairs (u, cv[l] - sc) to the aggregates of every lag l (all cv[l] finite). The six rows and cv
       never overlap; saying so (restrict) lets the compiler vectorise the loop. */
    static inline void dyadsync_welford_add_all(double *restrict an, double *restrict amx,
            double *restrict amy, double *restrict axx, double *restrict ayy, double *restrict axy,
            Py_ssize_t nl, double u, const double *restrict cv, double sc) {
        for (Py_ssize_t l = 0; l < nl; l++) {
            double v = cv[l] - sc;
            double n = an[l] + 1.0;
            double dx = u - amx[l];
            double dy = v - amy[l];
            double mx = amx[l] + dx / n;
            double my = amy[l] + dy / n;
            an[l] = n;
            amx[l] = mx;
            amy[l] = my;
            axx[l] += dx * (u - mx);
            ayy[l] += dy * (v - my);
            axy[l] += dx * (v - my);
        }
    }

    /* Pearson r of the union of aggregates a and b (six rows of nl each) for every lag, branch-free.
       NaN if fewer than win/2 or 2 pairs, or a side is constant (co-moment exactly 0). */
    static inline void dyadsync_corr_all(const double *restrict a, const double *restrict b,
            Py_ssize_t nl, Py_ssize_t win, double *restrict out) {
        const double *an = a, *amx = a + nl, *amy = a + 2 * nl, *axx = a + 3 * nl, *ayy = a + 4 * nl,
                     *axy = a + 5 * nl;
        const double *bn = b, *bmx = b + nl, *bmy = b + 2 * nl, *bxx = b + 3 * nl, *byy = b + 4 * nl,
                     *bxy = b + 5 * nl;
        for (Py_ssize_t l = 0; l < nl; l++) {
            double na = an[l], nb = bn[l], n = na + nb;
            double f = (na > 0.0 && nb > 0.0) ? na * nb / n : 0.0;
            double dx = bmx[l] - amx[l], dy = bmy[l] - amy[l];
            double mxx = axx[l] + bxx[l] + dx * dx * f;
            double myy = ayy[l] + byy[l] + dy * dy * f;
            double cxy = axy[l] + bxy[l] + dx * dy * f;
            double r = cxy / sqrt(mxx * myy);
            r = r > 1.0 ? 1.0 : (r < -1.0 ? -1.0 : r);
            int ok = (2.0 * n >= (double)win) & (n >= 2.0) & (mxx > 0.0) & (myy > 0.0);
            out[l] = ok ? r : NAN;
        }
    }

    /* The same when every lag holds the same count n (no pair skipped since the reset): inv = 1/(n+1) is
       shared, so the loop has no division. */
    static inline void dyadsync_welford_add_all_uniform(double *restrict an, double *restrict amx,
            double *restrict amy, double *restrict axx, double *restrict ayy, double *restrict axy,
            Py_ssize_t nl, double u, const double *restrict cv, double sc, double n, double inv) {
        for (Py_ssize_t l = 0; l < nl; l++) {
            double v = cv[l] - sc;
            double dx = u - amx[l];
            double dy = v - amy[l];
            double mx = amx[l] + dx * inv;
            double my = amy[l] + dy * inv;
            an[l] = n;
            amx[l] = mx;
            amy[l] = my;
            axx[l] += dx * (u - mx);
            ayy[l] += dy * (v - my);
            axy[l] += dx * (v - my);
        }
    }
    """
    void dyadsync_welford_add_all_uniform(double* an, double* amx, double* amy, double* axx, double* ayy,
                                          double* axy, Py_ssize_t nl, double u, const double* cv, double sc,
                                          double n, double inv) noexcept nogil
    void dyadsync_corr_all(const double* a, const double* b, Py_ssize_t nl, Py_ssize_t win,
                           double* out) noexcept nogil
    void dyadsync_welford_add_all(double* an, double* amx, double* amy, double* axx, double* ayy,
                                  double* axy, Py_ssize_t nl, double u, const double* cv, double sc) noexcept nogil


cdef inline void _welford_add_all(double* a, Py_ssize_t stride, Py_ssize_t nl, double u,
                                  const double* cv, double sc) noexcept nogil:
    """Add the pairs (u, cv[l] - sc) of every lag l; all cv[l] finite (vectorisable C above)."""
    dyadsync_welford_add_all(a, a + stride, a + 2 * stride, a + 3 * stride, a + 4 * stride, a + 5 * stride,
                             nl, u, cv, sc)


cdef inline bint _add_pair_all_lags(double* a, Py_ssize_t nl, double u, const double* cv, double sc,
                                    bint fast, bint uniform) noexcept nogil:
    """Add the pairs (u, cv[l] - sc) of every lag; ``fast``: all cv finite. Returns whether every lag still
    holds the same count (so the next update may share one reciprocal)."""
    cdef Py_ssize_t l
    cdef double n, v
    if fast:
        if uniform:
            n = a[0] + 1.0
            dyadsync_welford_add_all_uniform(a, a + nl, a + 2 * nl, a + 3 * nl, a + 4 * nl, a + 5 * nl,
                                             nl, u, cv, sc, n, 1.0 / n)
        else:
            _welford_add_all(a, nl, nl, u, cv, sc)
        return uniform
    for l in range(nl):
        v = cv[l]
        if isfinite(v):
            _welford_add(a, nl, l, u, v - sc)
    return False


cdef inline double _fisher_z(double r) noexcept nogil:
    if r > R_CLIP:
        r = R_CLIP
    elif r < -R_CLIP:
        r = -R_CLIP
    return 0.5 * log((1.0 + r) / (1.0 - r))


cdef inline void _session_means(const double* vals, Py_ssize_t nw, const cnp.int64_t* columns,
                                const unsigned char* fisher, Py_ssize_t nc, double* out) noexcept nogil:
    """Each asked column's session statistic from ``vals`` (nw x N_VALUES, C order): the mean over the windows
    with a finite value, as Fisher z where ``fisher`` says so; NaN when no window has one."""
    cdef Py_ssize_t q, k, col, cnt
    cdef double acc, v
    for q in range(nc):
        col = columns[q]
        acc = 0.0
        cnt = 0
        for k in range(nw):
            v = vals[k * N_VALUES + col]
            if isfinite(v):
                acc += _fisher_z(v) if fisher[q] else v
                cnt += 1
        out[q] = acc / cnt if cnt > 0 else NAN


cdef inline bint _is_peak(const double* r, Py_ssize_t c, Py_ssize_t nl, Py_ssize_t half,
                          double sign, double min_r) noexcept nogil:
    cdef Py_ssize_t d
    cdef double pc, pd
    if c - half < 0 or c + half >= nl:
        return False
    pc = sign * r[c]
    if not (pc > 0.0 and pc >= min_r):
        return False
    # the next neighbours first: on a smooth profile they reject almost every non-peak (a NaN fails too)
    if not (sign * r[c - 1] <= pc and sign * r[c + 1] <= pc):
        return False
    for d in range(c - half, c + half + 1):
        pd = sign * r[d]
        if not isfinite(pd) or pd > pc:
            return False
    return True


cdef inline Py_ssize_t _find_peak(const double* r, Py_ssize_t lag, Py_ssize_t half, double sign,
                                  double min_r) noexcept nogil:
    """Boker peak picking outward from τ = 0 (column ``lag``), peaks of height sign·r >= ``min_r`` only; −1 if
    none. Ties between ±d go to +d."""
    cdef Py_ssize_t nl = 2 * lag + 1
    cdef Py_ssize_t d
    cdef bint pos, neg
    if _is_peak(r, lag, nl, half, sign, min_r):
        return lag
    for d in range(1, lag + 1):
        pos = _is_peak(r, lag + d, nl, half, sign, min_r)
        neg = _is_peak(r, lag - d, nl, half, sign, min_r)
        if pos and neg:
            if sign * r[lag - d] > sign * r[lag + d]:
                return lag - d
            return lag + d
        if pos:
            return lag + d
        if neg:
            return lag - d
    return -1


cdef extern from *:
    """
    /* One side of a profile, r[lo .. hi): Σ atanh(r) = ½ ln(Π(1 + r) / Π(1 − r)) over the finite r (clipped to
       ±clip = 0.999), their number, max and min. Four lanes (GCC/Clang vector extensions: one AVX2 register,
       two SSE2 or NEON ones) of running products, one log per run of 64 lags: each factor lies in
       [0.001, 1.999], so a product of 16 per lane and of all 64 stays within [1e-192, 2e19]. Non-finite r
       contribute a factor 1 and count nowhere. Compiled for AVX2 and the baseline (DYADSYNC_CLONES). */
    #if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    #define DYADSYNC_CLONES __attribute__((target_clones("avx2", "default")))
    #else
    #define DYADSYNC_CLONES
    #endif
    typedef double dyadsync_v4d __attribute__((vector_size(32)));
    typedef long long dyadsync_v4i __attribute__((vector_size(32)));
    #define DYADSYNC_SEL(m, a, b) \
        ((dyadsync_v4d)((((dyadsync_v4i)(a)) & (m)) | (((dyadsync_v4i)(b)) & ~(m))))

    DYADSYNC_CLONES static double dyadsync_side_z(const double *restrict r, Py_ssize_t lo, Py_ssize_t hi,
            double clip, Py_ssize_t *restrict cnt_out, double *restrict rmax_out, double *restrict rmin_out) {
        const dyadsync_v4d one = {1.0, 1.0, 1.0, 1.0}, zero = {0.0, 0.0, 0.0, 0.0};
        const dyadsync_v4d up = {clip, clip, clip, clip}, down = -up;
        const dyadsync_v4d big = {1.7976931348623157e308, 1.7976931348623157e308, 1.7976931348623157e308,
                                  1.7976931348623157e308};
        const dyadsync_v4d lowest = {-2.0, -2.0, -2.0, -2.0}, highest = -lowest;
        dyadsync_v4d rmax = lowest, rmin = highest, cnt = zero;
        double acc = 0.0;
        for (Py_ssize_t b = lo; b < hi; b += 64) {
            Py_ssize_t e = b + 64 < hi ? b + 64 : hi;
            dyadsync_v4d pp = one, pm = one;
            for (Py_ssize_t l = b; l < e; l += 4) {
                dyadsync_v4d v;
                if (l + 4 <= e) {
                    __builtin_memcpy(&v, r + l, sizeof v);
                } else {
                    double t[4] = {NAN, NAN, NAN, NAN};
                    for (Py_ssize_t k = 0; k < e - l; k++) t[k] = r[l + k];
                    __builtin_memcpy(&v, t, sizeof v);
                }
                dyadsync_v4i fin = (dyadsync_v4i)(DYADSYNC_SEL((dyadsync_v4i)(v < zero), -v, v) <= big);
                dyadsync_v4d c = DYADSYNC_SEL((dyadsync_v4i)(v > up), up, v);
                c = DYADSYNC_SEL((dyadsync_v4i)(c < down), down, c);
                c = DYADSYNC_SEL(fin, c, zero);
                pp *= one + c;
                pm *= one - c;
                cnt += DYADSYNC_SEL(fin, one, zero);
                dyadsync_v4d hiv = DYADSYNC_SEL(fin, v, lowest), lov = DYADSYNC_SEL(fin, v, highest);
                rmax = DYADSYNC_SEL((dyadsync_v4i)(hiv > rmax), hiv, rmax);
                rmin = DYADSYNC_SEL((dyadsync_v4i)(lov < rmin), lov, rmin);
            }
            acc += log(((pp[0] * pp[1]) * (pp[2] * pp[3])) / ((pm[0] * pm[1]) * (pm[2] * pm[3])));
        }
        double a = rmax[0] > rmax[1] ? rmax[0] : rmax[1], bb = rmax[2] > rmax[3] ? rmax[2] : rmax[3];
        *rmax_out = a > bb ? a : bb;
        a = rmin[0] < rmin[1] ? rmin[0] : rmin[1];
        bb = rmin[2] < rmin[3] ? rmin[2] : rmin[3];
        *rmin_out = a < bb ? a : bb;
        *cnt_out = (Py_ssize_t)((cnt[0] + cnt[1]) + (cnt[2] + cnt[3]));
        return acc;
    }
    """
    double dyadsync_side_z(const double* r, Py_ssize_t lo, Py_ssize_t hi, double clip, Py_ssize_t* cnt_out,
                           double* rmax_out, double* rmin_out) noexcept nogil


cdef inline void _side_values(const double* r, Py_ssize_t lo, Py_ssize_t hi, double* mean, double* mx,
                              double* rmax, double* rmin) noexcept nogil:
    """Mean and max of Fisher z over columns [lo, hi); NaN if more than half are NaN or the range is empty.
    The max of z is the z of the max of r (atanh is increasing). ``rmax``/``rmin``: extremes of the finite r
    (−2 / +2 if none)."""
    cdef Py_ssize_t cnt
    cdef double acc = dyadsync_side_z(r, lo, hi, R_CLIP, &cnt, rmax, rmin)
    if hi <= lo or 2 * cnt < hi - lo:
        mean[0] = NAN
        mx[0] = NAN
    else:
        mean[0] = 0.5 * acc / cnt
        mx[0] = _fisher_z(rmax[0])


cdef void _window_values(const double* r, Py_ssize_t lag, Py_ssize_t half, double rate_hz, double peak_min_r,
                         double leader_min_r, int need, double* out) noexcept nogil:
    """The 15 per-window scalars in WINDOW_VALUE_NAMES order; values 0-4 always, the peaks (5-10) and the
    global maximum (11-14) only if ``need`` asks for them (NaN otherwise)."""
    cdef Py_ssize_t nl = 2 * lag + 1
    cdef Py_ssize_t c, k, d
    cdef double sign, hi_p, lo_p, hi_n, lo_n, top
    cdef bint any_side
    out[0] = r[lag]
    _side_values(r, lag + 1, nl, &out[1], &out[3], &hi_p, &lo_p)
    _side_values(r, 0, lag, &out[2], &out[4], &hi_n, &lo_n)
    for k in range(2 if need & NEED_PEAKS else 0):
        sign = 1.0 if k == 0 else -1.0
        # a peak needs sign·r > 0 somewhere: skip the outward search when no lag has it
        if k == 0:
            any_side = hi_p > 0.0 or hi_n > 0.0 or r[lag] > 0.0
        else:
            any_side = lo_p < 0.0 or lo_n < 0.0 or r[lag] < 0.0
        c = _find_peak(r, lag, half, sign, peak_min_r) if any_side else -1
        if c >= 0:
            out[5 + 3 * k] = r[c]
            if k == 0 and c > lag and r[c] == hi_p and out[3] == out[3]:
                out[6] = out[3]  # the in-phase peak is the side's maximum: its z is already known
            elif k == 0 and c < lag and r[c] == hi_n and out[4] == out[4]:
                out[6] = out[4]
            else:
                out[6 + 3 * k] = _fisher_z(r[c])
            out[7 + 3 * k] = (c - lag) / rate_hz
        else:
            out[5 + 3 * k] = NAN
            out[6 + 3 * k] = NAN
            out[7 + 3 * k] = NAN
    # the profile's global maximum (the side maxima and r0; −2 means no finite r) and its lag, nearest τ = 0
    # on ties (+τ before −τ); the leader is the sign of that lag when the maximum reaches leader_min_r
    if not need & NEED_PEAKS:
        for k in range(5, 11):
            out[k] = NAN
    top = hi_p if hi_p > hi_n else hi_n
    if isfinite(r[lag]) and r[lag] > top:
        top = r[lag]
    if top < -1.5 or not need & NEED_GLOBAL:
        for k in range(11, 15):
            out[k] = NAN
        return
    c = lag
    for d in range(lag + 1):
        if r[lag + d] == top:
            c = lag + d
            break
        if r[lag - d] == top:
            c = lag - d
            break
    out[11] = top
    out[12] = out[3] if c > lag and out[3] == out[3] else (out[4] if c < lag and out[4] == out[4] else _fisher_z(top))
    out[13] = (c - lag) / rate_hz
    if not (top >= leader_min_r) or c == lag:
        out[14] = 0.0
    else:
        out[14] = 1.0 if c > lag else -1.0


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
    cdef readonly double rate_hz, peak_min_r, leader_min_r
    cdef Py_ssize_t nt, nc          # samples received per side
    cdef Py_ssize_t next_pair       # next pair index to process
    cdef Py_ssize_t buf0            # absolute index of tb[0]; cb[0] is index buf0 - lag
    cdef double* tb                 # kept therapist samples (n_tb of them, room for cap_t)
    cdef double* cb                 # kept client samples (n_cb of them, room for cap_c)
    cdef cnp.int64_t* cbad          # cbad[k + 1] - cbad[k] = 1 if cb[k] is not finite (running count, n_cb + 1)
    cdef Py_ssize_t n_tb, n_cb, cap_t, cap_c
    cdef double[:, ::1] pre         # prefix aggregates of the filling block: 6 x nl
    cdef double[:, ::1] run         # running suffix aggregates while a block completes: 6 x nl
    cdef double[:, :, ::1] suf      # suffix aggregates at window starts of the last completed block
    cdef Py_ssize_t suf_q0          # block position of suffix slot 0
    cdef double shift_t, shift_c    # median shift of the last completed block (frame of suf and pre)
    cdef double[::1] scratch
    cdef double[:, ::1] zero       # an empty aggregate (6 x nl zeros)
    cdef bint pre_uniform           # every lag of the prefix holds the same count

    def __init__(self, Py_ssize_t win, Py_ssize_t inc, Py_ssize_t lag, Py_ssize_t half, double rate_hz,
                 double peak_min_r=0.0, double leader_min_r=0.0):
        if win < 2 or inc < 1 or lag < 0 or half < 1 or not rate_hz > 0:
            raise ValueError(f"bad kernel parameters win={win} inc={inc} lag={lag} half={half} rate_hz={rate_hz}")
        self.win, self.inc, self.lag, self.half, self.rate_hz = win, inc, lag, half, rate_hz
        self.peak_min_r, self.leader_min_r = peak_min_r, leader_min_r
        self.nl = 2 * lag + 1
        self.n_slots = (win + inc - 1) // inc
        self.pre = np.zeros((6, self.nl))
        self.run = np.zeros((6, self.nl))
        self.suf = np.zeros((self.n_slots, 6, self.nl))
        self.scratch = np.zeros(win)
        self.zero = np.zeros((6, self.nl))
        # two blocks of pairs and the lags on both sides cover what is kept between pushes of a few samples
        self._reserve_t(2 * win + 64)
        self._reserve_c(2 * win + 2 * lag + 64)
        self.reset()

    def __cinit__(self, *args, **kwargs):
        self.tb = NULL
        self.cb = NULL
        self.cbad = NULL
        self.n_tb = self.n_cb = self.cap_t = self.cap_c = 0

    def __dealloc__(self):
        PyMem_Free(self.tb)
        PyMem_Free(self.cb)
        PyMem_Free(self.cbad)

    cdef _reserve_t(self, Py_ssize_t need):
        cdef double* p
        if need <= self.cap_t:
            return
        need = max(need, 2 * self.cap_t)
        p = <double*>PyMem_Realloc(self.tb, need * sizeof(double))
        if p == NULL:
            raise MemoryError()
        self.tb, self.cap_t = p, need

    cdef _reserve_c(self, Py_ssize_t need):
        cdef double* p
        cdef cnp.int64_t* q
        if need <= self.cap_c:
            return
        need = max(need, 2 * self.cap_c)
        p = <double*>PyMem_Realloc(self.cb, need * sizeof(double))
        if p == NULL:
            raise MemoryError()
        self.cb = p
        q = <cnp.int64_t*>PyMem_Realloc(self.cbad, (need + 1) * sizeof(cnp.int64_t))
        if q == NULL:
            raise MemoryError()
        self.cbad, self.cap_c = q, need

    def reset(self):
        self.nt = 0
        self.nc = 0
        self.next_pair = self.lag
        self.buf0 = self.lag
        self.n_tb = 0
        self.n_cb = 0
        self.cbad[0] = 0
        self.pre[:, :] = 0.0
        self.run[:, :] = 0.0
        self.suf[:, :, :] = 0.0
        self.suf_q0 = 0
        self.pre_uniform = True
        self.shift_t = 0.0
        self.shift_c = 0.0

    @property
    def n_samples(self):
        return (int(self.nt), int(self.nc))

    @property
    def state_nbytes(self):
        return int(8 * (self.cap_t + 2 * self.cap_c + 1 + self.pre.size + self.run.size + self.suf.size
                        + self.scratch.shape[0]))

    def push(self, cnp.ndarray t not None, cnp.ndarray c not None):
        """Append samples to both sides (1-D C-contiguous float64 arrays); return (starts, profiles, values)
        of the windows completed."""
        if (cnp.PyArray_TYPE(t) != cnp.NPY_DOUBLE or cnp.PyArray_NDIM(t) != 1 or not cnp.PyArray_IS_C_CONTIGUOUS(t)
                or cnp.PyArray_TYPE(c) != cnp.NPY_DOUBLE or cnp.PyArray_NDIM(c) != 1
                or not cnp.PyArray_IS_C_CONTIGUOUS(c)):
            raise ValueError("WccEngine.push takes 1-D C-contiguous float64 arrays")
        cdef Py_ssize_t lag = self.lag, win = self.win, inc = self.inc, k
        cdef Py_ssize_t n_t = cnp.PyArray_DIM(t, 0), n_c = cnp.PyArray_DIM(c, 0)
        cdef const double* tp = <const double*>cnp.PyArray_DATA(t)
        cdef const double* cp = <const double*>cnp.PyArray_DATA(c)
        # keep samples from buf0 (therapist) and buf0 - lag (client); drop what arrives before that point
        cdef Py_ssize_t t_skip = max(0, min(n_t, self.buf0 - self.nt))
        cdef Py_ssize_t c_skip = max(0, min(n_c, self.buf0 - lag - self.nc))
        self._reserve_t(self.n_tb + n_t - t_skip)
        self._reserve_c(self.n_cb + n_c - c_skip)
        memcpy(&self.tb[self.n_tb], &tp[t_skip], (n_t - t_skip) * sizeof(double))
        self.n_tb += n_t - t_skip
        for k in range(c_skip, n_c):
            self.cb[self.n_cb] = cp[k]
            self.cbad[self.n_cb + 1] = self.cbad[self.n_cb] + (not isfinite(cp[k]))
            self.n_cb += 1
        self.nt += n_t
        self.nc += n_c
        cdef Py_ssize_t end_pair = min(self.nt, self.nc - lag)  # pairs [next_pair, end_pair) are ready
        cdef Py_ssize_t first_k = 0, last_k = 0
        cdef cnp.npy_intp n_out = 0
        if end_pair > self.next_pair:
            # windows end at pair t + win - 1; count those with t in [L, ...] ending in the ready range
            first_k = _n_windows_ending_before(self.next_pair, win, inc, lag)
            last_k = _n_windows_ending_before(end_pair, win, inc, lag)
            n_out = last_k - first_k
        cdef cnp.npy_intp dims[2]
        cdef cnp.ndarray starts, prof, vals
        dims[0] = n_out
        dims[1] = self.nl
        starts = cnp.PyArray_EMPTY(1, dims, cnp.NPY_INT64, 0)
        prof = cnp.PyArray_EMPTY(2, dims, cnp.NPY_DOUBLE, 0)
        dims[1] = N_VALUES
        vals = cnp.PyArray_EMPTY(2, dims, cnp.NPY_DOUBLE, 0)
        if end_pair > self.next_pair:
            with nogil:
                self._process(end_pair, <cnp.int64_t*>cnp.PyArray_DATA(starts),
                              <double*>cnp.PyArray_DATA(prof), <double*>cnp.PyArray_DATA(vals))
        # trim: keep from the start of the block of next_pair (needed for its suffix pass)
        cdef Py_ssize_t keep = lag + ((self.next_pair - lag) // win) * win, dt, dc
        if keep > self.buf0:
            dt = min(keep - self.buf0, self.n_tb)
            dc = min(keep - self.buf0, self.n_cb)
            memmove(self.tb, &self.tb[dt], (self.n_tb - dt) * sizeof(double))
            memmove(self.cb, &self.cb[dc], (self.n_cb - dc) * sizeof(double))
            memmove(self.cbad, &self.cbad[dc], (self.n_cb - dc + 1) * sizeof(cnp.int64_t))
            self.n_tb -= dt
            self.n_cb -= dc
            self.buf0 = keep
        return starts, prof, vals

    cdef void _process(self, Py_ssize_t end_pair, cnp.int64_t* starts, double* prof, double* vals) noexcept nogil:
        cdef const double* tb = self.tb
        cdef const double* cb = self.cb
        cdef const cnp.int64_t* cbad = self.cbad
        cdef Py_ssize_t lag = self.lag, win = self.win, inc = self.inc, nl = self.nl, half = self.half
        cdef Py_ssize_t i, j, pos, l, q, slot, b, t0, w_out = 0, buf0 = self.buf0
        cdef double u, v, st, sc
        cdef bint run_uniform
        cdef double* pre = &self.pre[0, 0]
        cdef double* run = &self.run[0, 0]
        cdef double* rowp
        cdef double* scratch = &self.scratch[0]
        cdef double* zero = &self.zero[0, 0]
        for i in range(self.next_pair, end_pair):
            pos = (i - lag) % win
            j = (i - lag) // win
            # 1. prefix of block j (j >= 1) in the frame of block j - 1
            if j >= 1:
                if pos == 0:
                    memset(pre, 0, 6 * nl * sizeof(double))
                    self.pre_uniform = True
                u = tb[i - buf0]
                if isfinite(u):
                    self.pre_uniform = _add_pair_all_lags(
                        pre, nl, u - self.shift_t, &cb[i - buf0], self.shift_c,
                        cbad[i - buf0 + nl] == cbad[i - buf0], self.pre_uniform)
            # 2. block j complete: new shift, suffix aggregates at window starts, backwards
            if pos == win - 1:
                b = i - win + 1 - buf0
                self.shift_t = _finite_median(&tb[b], win, scratch)
                self.shift_c = _finite_median(&cb[b + lag], win, scratch)
                st = self.shift_t
                sc = self.shift_c
                self.suf_q0 = (inc - (j * win) % inc) % inc
                memset(run, 0, 6 * nl * sizeof(double))
                run_uniform = True
                for q in range(win - 1, -1, -1):
                    u = tb[b + q]
                    if isfinite(u):
                        run_uniform = _add_pair_all_lags(run, nl, u - st, &cb[b + q], sc,
                                                         cbad[b + q + nl] == cbad[b + q], run_uniform)
                    if q >= self.suf_q0 and (q - self.suf_q0) % inc == 0:
                        slot = (q - self.suf_q0) // inc
                        memcpy(&self.suf[slot, 0, 0], run, 6 * nl * sizeof(double))
            # 3. the window ending at pair i
            t0 = i - win + 1
            if t0 >= lag and (t0 - lag) % inc == 0:
                starts[w_out] = t0
                if pos == win - 1:
                    rowp = &self.suf[0, 0, 0]  # whole block = suffix from position 0 (suf_q0 == 0 here)
                    dyadsync_corr_all(rowp, zero, nl, win, &prof[w_out * nl])
                else:
                    slot = (pos + 1 - self.suf_q0) // inc
                    rowp = &self.suf[slot, 0, 0]
                    dyadsync_corr_all(rowp, pre, nl, win, &prof[w_out * nl])
                _window_values(&prof[w_out * nl], lag, half, self.rate_hz, self.peak_min_r, self.leader_min_r,
                               NEED_ALL, &vals[w_out * N_VALUES])
                w_out += 1
        self.next_pair = end_pair


# ---------------------------------------------------------------------------------------------------------
# Offline batch path: the same block decomposition with plain sums instead of Welford updates.

cdef extern from *:
    """
    /* The hot loops are compiled twice on x86-64 with GCC (AVX2 and the baseline, DYADSYNC_CLONES above);
       the loader picks the one the CPU runs (function multi-versioning), so the build stays portable. */

    /* Add the pair (u, cv[l] - sc) of every lag to the raw cross sums Σuv. */
    DYADSYNC_CLONES static void dyadsync_sxy_add(double *restrict sxy, Py_ssize_t nl, double u,
            const double *restrict cv, double sc) {
        for (Py_ssize_t l = 0; l < nl; l++) {
            sxy[l] += u * (cv[l] - sc);
        }
    }

    /* The same for two pairs in one sweep, in the same order as two calls (so the same sums): one load and
       store of sxy per lag instead of two. */
    DYADSYNC_CLONES static void dyadsync_sxy_add2(double *restrict sxy, Py_ssize_t nl, double u0,
            const double *restrict cv0, double u1, const double *restrict cv1, double sc) {
        for (Py_ssize_t l = 0; l < nl; l++) {
            double a = sxy[l] + u0 * (cv0[l] - sc);
            sxy[l] = a + u1 * (cv1[l] - sc);
        }
    }

    /* Pearson r of every lag of a window of n finite pairs: Σuv = a[l] + b[l] in the frame (st, sc), the
       therapist side's Σu, Σu², and the client window starting at each lag's sample (cfr: its block frame,
       cm: its mean in that frame, cmyy: its co-moment or NaN if unusable, ciy = 1/sqrt(cmyy)). Returns 0
       unless every lag passes the precision check S <= k * M on both sides (M = co-moment, S = raw sum of
       squares in the frame): then the cancellation in M = S - (ΣV)²/n and in Σuv - Σu·mean costs at most
       ~n·eps·k relative. A NaN or inf anywhere fails the check. */
    DYADSYNC_CLONES static int dyadsync_corr_cstats(double sx, double sxx, const double *restrict a,
            const double *restrict b, const double *restrict cfr, const double *restrict cm,
            const double *restrict cmyy, const double *restrict ciy, Py_ssize_t nl, double n, double sc,
            double k, double *restrict out) {
        double mxx = sxx - sx * sx / n;
        if (!((mxx > 0.0) && (sxx <= k * mxx))) return 0;
        double ix = 1.0 / sqrt(mxx);
        int bad = 0;
        for (Py_ssize_t l = 0; l < nl; l++) {
            double d = (cfr[l] - sc) + cm[l];
            double cxy = (a[l] + b[l]) - sx * d;
            double r = cxy * ix * ciy[l];
            r = r > 1.0 ? 1.0 : (r < -1.0 ? -1.0 : r);
            bad |= !(n * d * d <= k * cmyy[l]);
            out[l] = r;
        }
        return !bad;
    }
    """
    void dyadsync_sxy_add(double* sxy, Py_ssize_t nl, double u, const double* cv, double sc) noexcept nogil
    void dyadsync_sxy_add2(double* sxy, Py_ssize_t nl, double u0, const double* cv0, double u1,
                           const double* cv1, double sc) noexcept nogil
    int dyadsync_corr_cstats(double sx, double sxx, const double* a, const double* b, const double* cfr,
                             const double* cm, const double* cmyy, const double* ciy, Py_ssize_t nl, double n,
                             double sc, double k, double* out) noexcept nogil


cdef void _client_window_stats(const double* c, Py_ssize_t n, Py_ssize_t win, double kmax, double* scratch,
                               double* cfr, double* cm, double* cmyy, double* ciy, double* cs1,
                               double* cs2) noexcept nogil:
    """Mean and co-moment of every client window c[s .. s + win), s = 0 .. n − win, by the same block scheme
    (suffix of block j + prefix of block j+1, raw sums in block j's frame, ``_frame``): ``cfr[s]`` the
    frame, ``cm[s]`` the mean minus the frame, ``cmyy[s]`` the co-moment (NaN if it fails the precision
    check, holds a non-finite value or is constant), ``ciy[s] = 1/sqrt(cmyy[s])``; ``cs1[s]``, ``cs2[s]``: the raw
    sums Σ(c − cfr) and Σ(c − cfr)² (used by the windows with missing samples, ``_gap_corr``)."""
    cdef Py_ssize_t cb0, q, s, e
    cdef double fr, v, s1, s2, p1, p2, t1, t2, m1, myy
    cdef double inv = 1.0 / win
    cb0 = 0
    while cb0 <= n - win:
        fr = _frame(&c[cb0], win, scratch)
        # suffix sums of the block, stored in scratch (s1 at [q], s2 at [win + q])
        s1 = 0.0
        s2 = 0.0
        for q in range(win - 1, -1, -1):
            v = c[cb0 + q] - fr
            s1 += v
            s2 += v * v
            scratch[q] = s1
            scratch[win + q] = s2
        p1 = 0.0
        p2 = 0.0
        for q in range(win):
            s = cb0 + q
            if s > n - win:
                break
            e = s + win - 1
            if q > 0:
                v = c[e] - fr
                p1 += v
                p2 += v * v
            t1 = scratch[q] + p1
            t2 = scratch[win + q] + p2
            m1 = t1 * inv
            myy = t2 - t1 * m1
            cfr[s] = fr
            cm[s] = m1
            cs1[s] = t1
            cs2[s] = t2
            if myy > 0.0 and t2 <= kmax * myy:
                cmyy[s] = myy
                ciy[s] = 1.0 / sqrt(myy)
            else:
                cmyy[s] = NAN
                ciy[s] = NAN
        cb0 += win


cdef void _welford_window(const double* t, const double* c, Py_ssize_t ts, Py_ssize_t win, Py_ssize_t lag,
                          double st, double sc, double* agg, const double* zero, double* out) noexcept nogil:
    """r(τ) of the window starting at pair ``ts`` by Welford updates (the streaming kernel's arithmetic):
    the fallback for windows with non-finite values, a constant side or too little precision in raw sums."""
    cdef Py_ssize_t nl = 2 * lag + 1, i, l
    cdef double u
    cdef bint fin
    memset(agg, 0, 6 * nl * sizeof(double))
    for i in range(ts, ts + win):
        u = t[i]
        if not isfinite(u):
            continue
        fin = True
        for l in range(nl):
            if not isfinite(c[i - lag + l]):
                fin = False
                break
        _add_pair_all_lags(agg, nl, u - st, &c[i - lag], sc, fin, False)
    dyadsync_corr_all(agg, zero, nl, win, out)


cdef double _frame(const double* x, Py_ssize_t n, double* scratch) noexcept nogil:
    """A cheap robust frame (shift) for the raw sums of a block: the median of up to 15 evenly spaced samples
    of x[0:n] (0.0 if none is finite). Any frame is correct — a poor one only sends windows to the Welford
    fallback through the precision check — so the exact block median is not needed. ``scratch``: 2n doubles."""
    cdef Py_ssize_t m = 0, i, step = (n + 14) // 15
    if step < 1:
        step = 1
    i = step // 2
    while i < n:
        scratch[m] = x[i]
        m += 1
        i += step
    return _finite_median(scratch, m, scratch + m)


cdef Py_ssize_t _batch_work_size(Py_ssize_t n, Py_ssize_t win, Py_ssize_t inc, Py_ssize_t lag) noexcept nogil:
    """Doubles of scratch space ``_batch_core`` needs (zero-filled by the caller)."""
    cdef Py_ssize_t nl = 2 * lag + 1, n_slots = (win + inc - 1) // inc
    return n_slots * (nl + 2) + 14 * nl + 2 * win + 6 * (n - win + 1)


cdef extern from *:
    """
    /* r(τ) of the window starting at pair ts when it touches missing (non-finite) samples, from the same raw
       sums as the complete windows with masked counts: the sums over the window with each missing value
       replaced by a stand-in (tz/cz), minus the pairs that hold a missing sample — the therapist's
       lt[it0:it1] (every lag) and the client's lc[ic0:ic1] minus coff (one pair per lag). Per lag the count, Σu, Σu², Σv,
       Σv² and Σuv (six rows of nl in w) then cover the valid pairs only. NaN for a lag with fewer than win/2
       (or 2) valid pairs. Returns 0 (the caller recomputes the window by Welford updates) if another lag
       fails the precision check — the raw sums before the removals, and in the client's own frame, within k
       times the final co-moments — or has a zero co-moment (a constant side). */
    DYADSYNC_CLONES static int dyadsync_gap_corr(const double *restrict tz, const double *restrict cz,
            const double *restrict mt, Py_ssize_t ts, Py_ssize_t win, Py_ssize_t lag, double st,
            double sc, double sx, double sxx, const double *restrict a, const double *restrict b,
            const double *restrict cfr, const double *restrict cs1, const double *restrict cs2,
            const Py_ssize_t *restrict lt, Py_ssize_t it0, Py_ssize_t it1, const Py_ssize_t *restrict lc,
            Py_ssize_t ic0, Py_ssize_t ic1, Py_ssize_t coff, double k, double *restrict w, double *restrict out) {
        Py_ssize_t nl = 2 * lag + 1;
        double *restrict nn = w, *restrict su = w + nl, *restrict suu = w + 2 * nl, *restrict sv = w + 3 * nl,
               *restrict svv = w + 4 * nl, *restrict suv = w + 5 * nl;
        double fw = (double)win;
        for (Py_ssize_t l = 0; l < nl; l++) {
            double e = cfr[l] - sc;
            nn[l] = fw;
            su[l] = sx;
            suu[l] = sxx;
            sv[l] = cs1[l] + fw * e;
            svv[l] = cs2[l] + 2.0 * e * cs1[l] + fw * e * e;
            suv[l] = a[l] + b[l];
        }
        for (Py_ssize_t q = it0; q < it1; q++) {
            Py_ssize_t i = lt[q];
            double u = tz[i] - st;
            const double *restrict cv = cz + i - lag;
            for (Py_ssize_t l = 0; l < nl; l++) {
                double v = cv[l] - sc;
                nn[l] -= 1.0;
                su[l] -= u;
                suu[l] -= u * u;
                sv[l] -= v;
                svv[l] -= v * v;
                suv[l] -= u * v;
            }
        }
        for (Py_ssize_t q = ic0; q < ic1; q++) {
            Py_ssize_t j = lc[q] - coff;  /* lc holds positions in cz's own coordinates plus coff */
            double v = cz[j] - sc;
            Py_ssize_t lo = j + lag - ts - win + 1, hi = j + lag - ts;  /* pair i = j + lag - l in the window */
            if (lo < 0) lo = 0;
            if (hi > nl - 1) hi = nl - 1;
            /* mt[i] = 0 where the therapist's sample is missing: that pair is already removed */
            for (Py_ssize_t l = lo; l <= hi; l++) {
                Py_ssize_t i = j + lag - l;
                double m = mt[i], u = tz[i] - st;
                double mu = m * u, mv = m * v;
                nn[l] -= m;
                su[l] -= mu;
                suu[l] -= mu * u;
                sv[l] -= mv;
                svv[l] -= mv * v;
                suv[l] -= mu * v;
            }
        }
        int bad = 0;
        for (Py_ssize_t l = 0; l < nl; l++) {
            double n = nn[l], e = cfr[l] - sc;
            double svv0 = cs2[l] + 2.0 * e * cs1[l] + fw * e * e;
            double inv = 1.0 / n;
            double mxx = suu[l] - su[l] * su[l] * inv;
            double myy = svv[l] - sv[l] * sv[l] * inv;
            double cxy = suv[l] - su[l] * sv[l] * inv;
            double r = cxy / sqrt(mxx * myy);
            r = r > 1.0 ? 1.0 : (r < -1.0 ? -1.0 : r);
            int cnt_ok = (2.0 * n >= fw) & (n >= 2.0);
            int num_ok = (mxx > 0.0) & (myy > 0.0) & (sxx <= k * mxx) & (svv0 <= k * myy) & (cs2[l] <= k * myy);
            bad |= cnt_ok & !num_ok;
            out[l] = cnt_ok ? r : NAN;
        }
        return !bad;
    }
    """
    int dyadsync_gap_corr(const double* tz, const double* cz, const double* mt, Py_ssize_t ts,
                          Py_ssize_t win, Py_ssize_t lag, double st, double sc, double sx, double sxx,
                          const double* a, const double* b, const double* cfr, const double* cs1,
                          const double* cs2, const Py_ssize_t* lt, Py_ssize_t it0, Py_ssize_t it1,
                          const Py_ssize_t* lc, Py_ssize_t ic0, Py_ssize_t ic1, Py_ssize_t coff, double k,
                          double* w, double* out) noexcept nogil


cdef struct Gaps:
    # stand-in copies of both series, a mask of the therapist's samples (0.0 = missing, 1.0 = present), prefix
    # counts of missing samples and their positions; all NULL when both series are complete
    double* tz
    double* cz
    double* mt
    Py_ssize_t* pt
    Py_ssize_t* pc
    Py_ssize_t* lt
    Py_ssize_t* lc


cdef bint _gaps_init(Gaps* g, const double* tp, const double* cp, Py_ssize_t n) noexcept nogil:
    """Fill ``g`` if either series holds a non-finite value (each replaced by the last finite value before it,
    or the first one after it, in the stand-in copies); False (all NULL) if none does or memory runs out."""
    cdef Py_ssize_t i, k, mt = 0, mc = 0
    cdef double last
    cdef const double* x
    cdef double* z
    memset(g, 0, sizeof(Gaps))
    for i in range(n):
        if not isfinite(tp[i]):
            mt += 1
        if not isfinite(cp[i]):
            mc += 1
    if mt == 0 and mc == 0:
        return False
    g.tz = <double*>malloc(3 * n * sizeof(double))
    g.pt = <Py_ssize_t*>malloc((2 * (n + 1) + mt + mc + 2) * sizeof(Py_ssize_t))
    if g.tz == NULL or g.pt == NULL:
        _gaps_free(g)
        return False
    g.cz = g.tz + n
    g.mt = g.cz + n
    g.pc = g.pt + n + 1
    g.lt = g.pc + n + 1
    g.lc = g.lt + mt + 1
    for k in range(2):
        x = tp if k == 0 else cp
        z = g.tz if k == 0 else g.cz
        last = 0.0
        for i in range(n):  # the first finite value stands in for a missing start
            if isfinite(x[i]):
                last = x[i]
                break
        for i in range(n):
            if isfinite(x[i]):
                last = x[i]
            z[i] = last
    mt = 0
    mc = 0
    g.pt[0] = 0
    g.pc[0] = 0
    for i in range(n):
        g.mt[i] = 1.0 if isfinite(tp[i]) else 0.0
        if g.mt[i] == 0.0:
            g.lt[mt] = i
            mt += 1
        if not isfinite(cp[i]):
            g.lc[mc] = i
            mc += 1
        g.pt[i + 1] = mt
        g.pc[i + 1] = mc
    return True


cdef void _gaps_free(Gaps* g) noexcept nogil:
    free(g.tz)
    free(g.pt)
    memset(g, 0, sizeof(Gaps))


cdef void _batch_core(const double* tp, const double* cp, Py_ssize_t n, Py_ssize_t nw, Py_ssize_t win,
                      Py_ssize_t inc, Py_ssize_t lag, Py_ssize_t half, double rate_hz, double peak_min_r,
                      double leader_min_r, int need, double* work,
                      cnp.int64_t* starts, double* prof, double* vals) noexcept nogil:
    """The batch WCC of ``wcc_batch`` (nw >= 1 windows) into caller-owned outputs and scratch ``work``;
    ``need``: which window values to compute (``NEED_*``)."""
    cdef Py_ssize_t nl = 2 * lag + 1, n_slots = (win + inc - 1) // inc, ns = n - win + 1
    cdef double* suf = work
    cdef double* sufx = suf + n_slots * nl
    cdef double* acc = sufx + 2 * n_slots
    cdef double* pre = acc + nl
    cdef double* agg = pre + nl
    cdef double* zero = agg + 6 * nl  # stays all zero
    cdef double* scratch = zero + 6 * nl
    cdef double* cfr = scratch + 2 * win
    cdef double* cm = cfr + ns
    cdef double* cmyy = cm + ns
    cdef double* ciy = cmyy + ns
    cdef double* cs1 = ciy + ns
    cdef double* cs2 = cs1 + ns
    cdef Py_ssize_t last_start = lag + (nw - 1) * inc
    cdef Py_ssize_t b, q, q0, p, pmax, slot, ts, k, i
    cdef double st, sc, u, u2, sx, sxx, px, pxx
    # S <= K·M bounds the relative error of r by about 3·n·eps·K = 1.5e-11 (unit roundoff 1.1e-16)
    cdef double kmax = 5e-12 / (win * 1.1102230246251565e-16)
    cdef double* out
    cdef unsigned char* mark = <unsigned char*>scratch  # win bytes inside scratch's 2·win doubles
    cdef Gaps g
    cdef bint gaps = _gaps_init(&g, tp, cp, n), ok
    # the raw sums run over the stand-in copies when samples are missing (frames still from the originals)
    cdef const double* tq = g.tz if gaps else tp
    cdef const double* cq = g.cz if gaps else cp
    _client_window_stats(cq, n, win, kmax, scratch, cfr, cm, cmyy, ciy, cs1, cs2)
    b = lag
    while b <= last_start:
        st = _frame(&tp[b], win, scratch)
        sc = _frame(&cp[b], win, scratch)
        q0 = (inc - (b - lag) % inc) % inc
        # mark[x]: a window starts at block position x (x = q0 + s·inc); scratch is free until the next block
        memset(mark, 0, win)
        q = q0
        while q < win:
            mark[q] = 1
            q += inc
        # suffix sums of block j at the window starts in it, backwards
        memset(acc, 0, nl * sizeof(double))
        sx = 0.0
        sxx = 0.0
        q = win - 1
        while q >= q0:
            i = b + q
            u = tq[i] - st
            sx += u
            sxx += u * u
            if not mark[q] and q > q0:  # no suffix is stored at q: add pairs q and q − 1 together
                u2 = tq[i - 1] - st
                sx += u2
                sxx += u2 * u2
                dyadsync_sxy_add2(acc, nl, u, &cq[i - lag], u2, &cq[i - 1 - lag], sc)
                q -= 1
                i -= 1
            else:
                dyadsync_sxy_add(acc, nl, u, &cq[i - lag], sc)
            if mark[q] and i <= last_start:
                slot = (q - q0) // inc
                memcpy(&suf[slot * nl], acc, nl * sizeof(double))
                sufx[2 * slot] = sx
                sufx[2 * slot + 1] = sxx
            q -= 1
        # windows: start b + q0 + s·inc = suffix slot s + prefix of block j+1 up to position q0 + s·inc − 1
        memset(pre, 0, nl * sizeof(double))
        px = 0.0
        pxx = 0.0
        pmax = min(last_start - b, win - 1) - 1
        p = -1
        while True:
            if p >= 0:
                i = b + win + p
                u = tq[i] - st
                px += u
                pxx += u * u
                if p < pmax and not (mark[p + 1] and b + p + 1 <= last_start):
                    # no window ends at p: add pairs p and p + 1 together
                    u2 = tq[i + 1] - st
                    px += u2
                    pxx += u2 * u2
                    dyadsync_sxy_add2(pre, nl, u, &cq[i - lag], u2, &cq[i + 1 - lag], sc)
                    p += 1
                else:
                    dyadsync_sxy_add(pre, nl, u, &cq[i - lag], sc)
            if mark[p + 1] and b + p + 1 <= last_start:
                slot = (p + 1 - q0) // inc
                ts = b + p + 1
                k = (ts - lag) // inc
                starts[k] = ts
                out = &prof[k * nl]
                if gaps and (g.pt[ts + win] > g.pt[ts] or g.pc[ts + win + lag] > g.pc[ts - lag]):
                    ok = dyadsync_gap_corr(g.tz, g.cz, g.mt, ts, win, lag, st, sc, sufx[2 * slot] + px,
                                           sufx[2 * slot + 1] + pxx, &suf[slot * nl], pre, &cfr[ts - lag],
                                           &cs1[ts - lag], &cs2[ts - lag], g.lt, g.pt[ts], g.pt[ts + win], g.lc,
                                           g.pc[ts - lag], g.pc[ts + win + lag], 0, kmax, agg, out)
                else:
                    ok = dyadsync_corr_cstats(sufx[2 * slot] + px, sufx[2 * slot + 1] + pxx, &suf[slot * nl],
                                              pre, &cfr[ts - lag], &cm[ts - lag], &cmyy[ts - lag],
                                              &ciy[ts - lag], nl, <double>win, sc, kmax, out)
                if not ok:
                    _welford_window(tp, cp, ts, win, lag, st, sc, agg, zero, out)
                _window_values(out, lag, half, rate_hz, peak_min_r, leader_min_r, need, &vals[k * N_VALUES])
            p += 1
            if p > pmax:
                break
        b += win
    if gaps:
        _gaps_free(&g)


def wcc_batch(const double[::1] t, const double[::1] c, Py_ssize_t win, Py_ssize_t inc, Py_ssize_t lag,
              Py_ssize_t half, double rate_hz, double peak_min_r=0.0, double leader_min_r=0.0):
    """Offline WCC of two equally long series: (starts, profiles, values), equal to ``WccEngine.push`` of
    the whole series to rounding.

    Pair indices are cut into blocks of ``win`` as in the streaming kernel; a window is the suffix of block j
    plus the prefix of block j+1, here kept as raw sums in block j's frame (``_frame``): Σu and Σu² of the
    therapist side and, per lag, only Σuv — one multiply-add per lag and pair instead of a Welford update;
    no sum ever spans more than one window. Each client window's mean and co-moment is computed once
    (``_client_window_stats``) and shared by every (window, lag) that uses it, so a profile costs no square
    root or division per lag. The co-moments then come from ``S − (ΣV)²/n``; a window whose sums fail the
    precision check of ``dyadsync_corr_cstats`` (non-finite values, a constant side, a mean far from the shift)
    is recomputed by Welford updates, so accuracy and NaN rules are those of the streaming kernel.
    """
    if win < 2 or inc < 1 or lag < 0 or half < 1 or not rate_hz > 0:
        raise ValueError(f"bad kernel parameters win={win} inc={inc} lag={lag} half={half} rate_hz={rate_hz}")
    if t.shape[0] != c.shape[0]:
        raise ValueError(f"series lengths differ: {t.shape[0]} vs {c.shape[0]}")
    cdef Py_ssize_t n = t.shape[0], nl = 2 * lag + 1, span = win + 2 * lag
    cdef Py_ssize_t nw = 0 if n < span else (n - span) // inc + 1
    starts_a = np.empty(nw, dtype=np.int64)
    prof_a = np.empty((nw, nl))
    vals_a = np.empty((nw, N_VALUES))
    if nw == 0:
        return starts_a, prof_a, vals_a
    cdef cnp.int64_t[::1] starts = starts_a
    cdef double[:, ::1] prof = prof_a
    cdef double[:, ::1] vals = vals_a
    cdef double[::1] work = np.zeros(_batch_work_size(n, win, inc, lag))
    with nogil:
        _batch_core(&t[0], &c[0], n, nw, win, inc, lag, half, rate_hz, peak_min_r, leader_min_r, NEED_ALL,
                    &work[0],
                    &starts[0], &prof[0, 0],
                    &vals[0, 0])
    return starts_a, prof_a, vals_a


def circular_null(const double[::1] t, const double[::1] ring, const cnp.int64_t[::1] shifts, Py_ssize_t win,
                  Py_ssize_t inc, Py_ssize_t lag, Py_ssize_t half, double rate_hz, const cnp.int64_t[::1] columns,
                  const unsigned char[::1] fisher, double peak_min_r=0.0, double leader_min_r=0.0):
    """Session statistics of circular-shift surrogates, all from one WCC pass per shift: for each ``s`` in
    ``shifts`` (0 < s < len(ring)), the batch WCC of ``t`` with ``np.roll(ring, s)[:len(t)]`` (``ring`` is the
    client series itself for plain circular shifts, or the client followed by its time reversal for mirrored
    shifts, ``dsp_ext.stats``) and, for each ``columns[j]``, the
    mean over windows of the finite values of that window value (Fisher z of it if ``fisher[j]``; NaN if none
    is finite). Returns an array (len(shifts), len(columns)). Buffers are allocated once and the whole loop
    runs without the GIL."""
    if win < 2 or inc < 1 or lag < 0 or half < 1 or not rate_hz > 0:
        raise ValueError(f"bad kernel parameters win={win} inc={inc} lag={lag} half={half} rate_hz={rate_hz}")
    cdef Py_ssize_t n = t.shape[0], nl = 2 * lag + 1, span = win + 2 * lag, m = shifts.shape[0]
    cdef Py_ssize_t nc = columns.shape[0]
    if fisher.shape[0] != nc:
        raise ValueError(f"columns ({nc}) and fisher ({fisher.shape[0]}) differ in length")
    cdef Py_ssize_t nr = ring.shape[0], a
    if nr < n:
        raise ValueError(f"the client ring ({nr} samples) is shorter than the therapist series ({n})")
    cdef Py_ssize_t nw = 0 if n < span else (n - span) // inc + 1
    if nw == 0:
        raise ValueError(f"series of {n} samples hold no complete window")
    cdef Py_ssize_t j, k, s, cnt, q, col
    cdef int need = 0  # only the window values the statistics use: no peak picking unless one asks for peaks
    for q in range(nc):
        if not 0 <= columns[q] < N_VALUES:
            raise ValueError(f"column {columns[q]} out of range")
        if 5 <= columns[q] <= 10:
            need |= NEED_PEAKS
        elif columns[q] >= 11:
            need |= NEED_GLOBAL
    for j in range(m):
        if not 0 < shifts[j] < nr:
            raise ValueError(f"shift {shifts[j]} out of range for a ring of {nr} samples")
    null_a = np.empty((m, nc))
    cdef double[:, ::1] null = null_a
    cdef double[::1] cs = np.empty(n)
    cdef double[::1] work = np.zeros(_batch_work_size(n, win, inc, lag))
    cdef cnp.int64_t[::1] starts = np.empty(nw, dtype=np.int64)
    cdef double[:, ::1] prof = np.empty((nw, nl))
    cdef double[:, ::1] vals = np.empty((nw, N_VALUES))
    cdef double acc, v
    with nogil:
        for j in range(m):
            s = shifts[j]
            a = s if s < n else n  # np.roll(ring, s)[:n] = ring[nr - s : nr - s + a] + ring[0 : n - a]
            memcpy(&cs[0], &ring[nr - s], a * sizeof(double))
            memcpy(&cs[a], &ring[0], (n - a) * sizeof(double))
            _batch_core(&t[0], &cs[0], n, nw, win, inc, lag, half, rate_hz, peak_min_r, leader_min_r, need,
                        &work[0],
                        &starts[0], &prof[0, 0], &vals[0, 0])
            _session_means(&vals[0, 0], nw, &columns[0], &fisher[0], nc, &null[j, 0])
    return null_a


# ---------------------------------------------------------------------------------------------------------
# Rotation surrogates: many shifts of one client ring against one therapist series, the cross sums shared.

cdef extern from *:
    """
    /* One column's peak test of _is_peak (sign*r[c] > 0, >= min_r and >= each neighbour within half; a NaN
       fails every comparison; r is never infinite), made strictly and loosely by a margin delta: returns the
       loose outcome, *strict the strict one. A value within delta/2 of r gives an outcome between the two. */
    static inline int dyadsync_peak_test(const double *restrict r, Py_ssize_t c, Py_ssize_t half, double sign,
            double min_r, double delta, int *restrict strict) {
        double pc = sign * r[c];
        *strict = 0;
        if (!(pc > -delta && pc >= min_r - delta)) return 0;
        double hi = pc + delta, lo = pc - delta;
        double a = sign * r[c - 1], b = sign * r[c + 1];
        if (!(a <= hi && b <= hi)) return 0;  /* the next neighbours reject almost every non-peak */
        int s = (pc > delta) & (pc >= min_r + delta) & (a < lo) & (b < lo);
        for (Py_ssize_t d = 2; d <= half; d++) {
            a = sign * r[c - d];
            b = sign * r[c + d];
            if (!(a <= hi && b <= hi)) return 0;
            s &= (a < lo) & (b < lo);
        }
        *strict = s;
        return 1;
    }

    /* Boker's nearest peak of one profile: the column _find_peak returns (outward from tau = 0, ties between
       +-d to the larger sign*r, then to +d), from the strict tests; *fragile is set when a test the scan reads,
       or the tie break it takes, differs between strict and loose — then values within delta/2 of these could
       give another column, and the caller recomputes the statistic the exact way. Only columns within dmax of
       tau = 0 are searched (r must be known within dmax + half): -2 if none of them is a peak and dmax < lag
       (the answer lies further out), -1 if the profile has no peak. */
    DYADSYNC_CLONES static Py_ssize_t dyadsync_peak_fast(const double *restrict r, Py_ssize_t lag,
            Py_ssize_t half, double sign, double min_r, double delta, Py_ssize_t dmax,
            long long *restrict cand, int *restrict fragile) {
        Py_ssize_t nl = 2 * lag + 1, lo = half, hi = nl - half;
        int frag = 0, sp, sn, lp, ln;
        Py_ssize_t found = dmax < lag ? -2 : -1;
        if (dmax > lag) dmax = lag;
        if (hi <= lo) return -1;
        /* only columns within dmax of tau = 0 are read (r need not be known beyond dmax + half) */
        if (lo < lag - dmax) lo = lag - dmax;
        if (hi > lag + dmax + 1) hi = lag + dmax + 1;
        Py_ssize_t c = lo;
        /* candidates first, four lags at a time: the loose test against the next neighbours only (a column
           that fails it is no peak, strictly or loosely, and so never fragile) */
        const dyadsync_v4d sg = {sign, sign, sign, sign}, dl = {delta, delta, delta, delta};
        const dyadsync_v4d mr = {min_r - delta, min_r - delta, min_r - delta, min_r - delta};
        for (; c + 4 <= hi; c += 4) {
            dyadsync_v4d v, a, b;
            __builtin_memcpy(&v, r + c, sizeof v);
            __builtin_memcpy(&a, r + c - 1, sizeof a);
            __builtin_memcpy(&b, r + c + 1, sizeof b);
            v *= sg;
            a *= sg;
            b *= sg;
            dyadsync_v4i m = (v > -dl) & (v >= mr) & (a <= v + dl) & (b <= v + dl);
            __builtin_memcpy(cand + c, &m, sizeof m);
        }
        for (; c < hi; c++) {
            double v = sign * r[c];
            cand[c] = (v > -delta) && (v >= min_r - delta) && (sign * r[c - 1] <= v + delta)
                      && (sign * r[c + 1] <= v + delta);
        }
        for (c = lag - dmax; c < lo; c++) cand[c] = 0;  /* within half of an end: never a peak */
        for (c = hi; c <= lag + dmax; c++) cand[c] = 0;
        for (Py_ssize_t d = 0; d <= dmax; d++) {
            Py_ssize_t cp = lag + d, cn = lag - d;
            if (!(cand[cp] | cand[cn])) continue;
            sp = sn = 0;
            if (cand[cp]) {
                lp = dyadsync_peak_test(r, cp, half, sign, min_r, delta, &sp);
                frag |= lp != sp;
            }
            if (d > 0 && cand[cn]) {
                ln = dyadsync_peak_test(r, cn, half, sign, min_r, delta, &sn);
                frag |= ln != sn;
            }
            if (sp && sn) {
                double a = sign * r[cn], b = sign * r[cp];
                frag |= !(a - b > delta || b - a > delta);
                found = a > b ? cn : cp;
                break;
            }
            if (sp) { found = cp; break; }
            if (sn) { found = cn; break; }
        }
        *fragile |= frag;
        return found;
    }
    """
    Py_ssize_t dyadsync_peak_fast(const double* r, Py_ssize_t lag, Py_ssize_t half, double sign, double min_r,
                                  double delta, Py_ssize_t dmax, long long* cand, int* fragile) noexcept nogil


# Two computations of a profile differ by far less than this (each is within ~1.5e-11 of the exact r, the
# precision check of ``dyadsync_corr_cstats``): a peak decision with a larger margin is the same in both.
cdef double PEAK_DELTA = 1e-10

cdef enum:
    ROT_R0 = 1       # column 0
    ROT_SIDES = 2    # columns 1-4 (leading sides)
    ROT_IN = 4       # columns 5-7 (in-phase peak)
    ROT_ANTI = 8     # columns 8-10 (anti-phase peak)
    ROT_GLOBAL = 16  # columns 11-14 (the global maximum and the leader): the full _window_values
    ROT_SIDE_MAX = 32  # columns 3-4 (the sides' maximum z)


cdef inline double _side_mean(const double* r, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """The mean of ``_side_values`` alone (the same arithmetic)."""
    cdef Py_ssize_t cnt
    cdef double rmax, rmin
    cdef double acc = dyadsync_side_z(r, lo, hi, R_CLIP, &cnt, &rmax, &rmin)
    if hi <= lo or 2 * cnt < hi - lo:
        return NAN
    return 0.5 * acc / cnt


cdef inline void _rotation_window_values(const double* r, Py_ssize_t lag, Py_ssize_t half, double rate_hz,
                                         double peak_min_r, double leader_min_r, int want, int need,
                                         long long* cand, int* fragile, double* out) noexcept nogil:
    """The window values a rotation surrogate's statistics use (``want``), equal to ``_window_values``'s for
    the same profile; the values not asked for are not written. ``*fragile`` is set as by
    ``dyadsync_peak_fast`` for the peaks asked for."""
    cdef Py_ssize_t c
    cdef int k
    cdef double sign, hi_p, lo_p, hi_n, lo_n
    if want & ROT_GLOBAL:  # the peaks below (the global maximum does not use them)
        _window_values(r, lag, half, rate_hz, peak_min_r, leader_min_r, need & NEED_GLOBAL, out)
    else:
        out[0] = r[lag]
        if want & ROT_SIDE_MAX:
            _side_values(r, lag + 1, 2 * lag + 1, &out[1], &out[3], &hi_p, &lo_p)
            _side_values(r, 0, lag, &out[2], &out[4], &hi_n, &lo_n)
        elif want & ROT_SIDES:  # the side means only (_side_values without the Fisher z of the maxima)
            out[1] = _side_mean(r, lag + 1, 2 * lag + 1)
            out[2] = _side_mean(r, 0, lag)
    for k in range(2):
        if not want & (ROT_IN if k == 0 else ROT_ANTI):
            continue
        sign = 1.0 if k == 0 else -1.0
        c = dyadsync_peak_fast(r, lag, half, sign, peak_min_r, PEAK_DELTA, lag, cand, fragile)
        if c >= 0:
            out[5 + 3 * k] = r[c]
            out[6 + 3 * k] = _fisher_z(r[c])
            out[7 + 3 * k] = (c - lag) / rate_hz
        else:
            out[5 + 3 * k] = NAN
            out[6 + 3 * k] = NAN
            out[7 + 3 * k] = NAN


cdef enum:
    LAZY_K = 16  # lags within this of 0 are computed first when only peaks are asked for


cdef inline void _add_values(const double* vals, const cnp.int64_t* columns, const unsigned char* fisher,
                             Py_ssize_t nc, double* acc, double* cnt) noexcept nogil:
    """Add one window's values of the statistics' columns (Fisher z if asked) to the running sums."""
    cdef Py_ssize_t q
    cdef double v
    for q in range(nc):
        v = vals[columns[q]]
        if isfinite(v):
            acc[q] += _fisher_z(v) if fisher[q] else v
            cnt[q] += 1.0


cdef inline bint _near_peaks(const double* r, Py_ssize_t lag, Py_ssize_t half, double rate_hz, double peak_min_r,
                             int want, Py_ssize_t dmax, long long* cand, int* fragile,
                             double* out) noexcept nogil:
    """r0 and the asked peaks from the lags within dmax + half of 0 only (all that is known of ``r``): False
    if a peak asked for is not within dmax (the caller computes the whole profile)."""
    cdef Py_ssize_t c
    cdef int k
    cdef double sign
    out[0] = r[lag]
    for k in range(2):
        if not want & (ROT_IN if k == 0 else ROT_ANTI):
            continue
        sign = 1.0 if k == 0 else -1.0
        c = dyadsync_peak_fast(r, lag, half, sign, peak_min_r, PEAK_DELTA, dmax, cand, fragile)
        if c == -2:
            return False
        if c >= 0:
            out[5 + 3 * k] = r[c]
            out[6 + 3 * k] = _fisher_z(r[c])
            out[7 + 3 * k] = (c - lag) / rate_hz
        else:
            out[5 + 3 * k] = NAN
            out[6 + 3 * k] = NAN
            out[7 + 3 * k] = NAN
    return True


cdef void _rotation_core(const double* tp, const double* tq, const double* ringx, const double* ringz,
                         Py_ssize_t n, Py_ssize_t nr, const cnp.int64_t* offs, Py_ssize_t m,
                         Py_ssize_t win, Py_ssize_t inc, Py_ssize_t lag, Py_ssize_t half, double rate_hz,
                         double peak_min_r, double leader_min_r, const cnp.int64_t* columns,
                         const unsigned char* fisher, Py_ssize_t nc, int want, int need, bint gaps,
                         const double* mt, const Py_ssize_t* lt, const Py_ssize_t* pt, const Py_ssize_t* lc,
                         const Py_ssize_t* pc, Py_ssize_t tile_span, Py_ssize_t tile_max,
                         const double* cfr, const double* cm, const double* cmyy, const double* ciy,
                         const double* cs1, const double* cs2, double* work, double* null,
                         unsigned char* redo) noexcept nogil:
    """Session statistics of the WCC of ``tp`` with the client ``ringx[o : o + n]`` for each offset ``o`` in
    ``offs`` (ascending), into ``null`` (m × nc, sums then means); ``redo[h]`` = 1 where a peak decision of
    offset h was within the margin (the caller recomputes those offsets exactly). See ``rotation_null``."""
    cdef Py_ssize_t nl = 2 * lag + 1, n_slots = (win + inc - 1) // inc
    cdef Py_ssize_t nw = (n - win - 2 * lag) // inc + 1
    cdef Py_ssize_t last_start = lag + (nw - 1) * inc
    cdef Py_ssize_t wmax = tile_span + nl
    cdef double kmax = 5e-12 / (win * 1.1102230246251565e-16)
    # scratch layout
    cdef double* suf = work                       # n_slots × wmax
    cdef double* acc = suf + n_slots * wmax       # wmax
    cdef double* pre = acc + wmax                 # wmax
    cdef double* agg = pre + wmax                 # 6 nl
    cdef double* zero = agg + 6 * nl              # 6 nl, stays zero
    cdef double* prof = zero + 6 * nl             # nl
    cdef double* vals = prof + nl                 # N_VALUES
    cdef double* scratch = vals + N_VALUES        # 2 win
    cdef long long* cand = <long long*>(scratch + 2 * win)  # nl
    cdef double* cnt = scratch + 2 * win + nl     # m × nc
    cdef double* tsx = cnt + m * nc               # nw: Σu of each window in its block's frame
    cdef double* tsxx = tsx + nw                  # nw: Σu²
    cdef double* tst = tsxx + nw                  # blocks: the therapist frame of each block
    cdef unsigned char* mark = <unsigned char*>(tst + (nw * inc) // win + 2)   # win bytes
    cdef int fragile
    cdef bint gapwin
    # peaks (and r0) only: r of the lags near 0 first, the rest only for windows without a peak there
    cdef bint lazy = (not want & (ROT_SIDES | ROT_GLOBAL)) and (want & (ROT_IN | ROT_ANTI)) != 0 and \
        lag > LAZY_K and LAZY_K > half
    cdef Py_ssize_t h0, h1, h, o, oa, ob, wd, dlo, b, q, q0, p, pmax, slot, ts, k, i, e, jb, col, qq
    cdef double st, sc, u, u2, v
    cdef bint ok
    cdef double* out
    memset(null, 0, m * nc * sizeof(double))
    memset(cnt, 0, m * nc * sizeof(double))
    memset(redo, 0, m)
    # the therapist side once: the frame of every block and Σu, Σu² of every window in its block's frame
    b = lag
    jb = 0
    while b <= last_start:
        st = _frame(&tp[b], win, scratch)
        tst[jb] = st
        q0 = (inc - (b - lag) % inc) % inc
        ts = b + q0
        while ts < b + win and ts <= last_start:
            k = (ts - lag) // inc
            tsx[k] = 0.0
            tsxx[k] = 0.0
            for i in range(ts, ts + win):
                u = tq[i] - st
                tsx[k] += u
                tsxx[k] += u * u
            ts += inc
        b += win
        jb += 1
    h0 = 0
    while h0 < m:
        # a tile: consecutive offsets within tile_span of the first, at most tile_max of them
        oa = offs[h0]
        h1 = h0 + 1
        while h1 < m and h1 - h0 < tile_max and offs[h1] - oa <= tile_span:
            h1 += 1
        ob = offs[h1 - 1]
        wd = ob - oa + nl           # cross sums of ring offsets dlo .. dlo + wd − 1 relative to the pair
        dlo = oa - lag
        b = lag
        jb = 0
        while b <= last_start:
            st = tst[jb]
            sc = _frame(&ringx[b + (oa + ob) // 2], win, scratch)
            q0 = (inc - (b - lag) % inc) % inc
            memset(mark, 0, win)
            q = q0
            while q < win:
                mark[q] = 1
                q += inc
            # suffix cross sums of block j at the window starts in it, backwards
            memset(acc, 0, wd * sizeof(double))
            q = win - 1
            while q >= q0:
                i = b + q
                u = tq[i] - st
                if not mark[q] and q > q0:
                    u2 = tq[i - 1] - st
                    dyadsync_sxy_add2(acc, wd, u, &ringz[i + dlo], u2, &ringz[i - 1 + dlo], sc)
                    q -= 1
                    i -= 1
                else:
                    dyadsync_sxy_add(acc, wd, u, &ringz[i + dlo], sc)
                if mark[q] and i <= last_start:
                    slot = (q - q0) // inc
                    memcpy(&suf[slot * wd], acc, wd * sizeof(double))
                q -= 1
            # prefix of block j+1 and the windows, each for every offset of the tile
            memset(pre, 0, wd * sizeof(double))
            pmax = min(last_start - b, win - 1) - 1
            p = -1
            while True:
                if p >= 0:
                    i = b + win + p
                    u = tq[i] - st
                    if p < pmax and not (mark[p + 1] and b + p + 1 <= last_start):
                        u2 = tq[i + 1] - st
                        dyadsync_sxy_add2(pre, wd, u, &ringz[i + dlo], u2, &ringz[i + 1 + dlo], sc)
                        p += 1
                    else:
                        dyadsync_sxy_add(pre, wd, u, &ringz[i + dlo], sc)
                if mark[p + 1] and b + p + 1 <= last_start:
                    slot = (p + 1 - q0) // inc
                    ts = b + p + 1
                    k = (ts - lag) // inc
                    for h in range(h0, h1):
                        o = offs[h]
                        e = o - oa
                        out = prof
                        gapwin = gaps and (pt[ts + win] > pt[ts] or pc[o + ts + win + lag] > pc[o + ts - lag])
                        if lazy and not gapwin:
                            # the lags within LAZY_K of 0 first: most windows have their peaks there
                            ok = dyadsync_corr_cstats(tsx[k], tsxx[k], &suf[slot * wd + e + lag - LAZY_K],
                                                      &pre[e + lag - LAZY_K], &cfr[o + ts - LAZY_K],
                                                      &cm[o + ts - LAZY_K], &cmyy[o + ts - LAZY_K],
                                                      &ciy[o + ts - LAZY_K], 2 * LAZY_K + 1, <double>win, sc,
                                                      kmax, &out[lag - LAZY_K])
                            if ok:
                                fragile = 0
                                if _near_peaks(out, lag, half, rate_hz, peak_min_r, want, LAZY_K - half, cand,
                                               &fragile, vals):
                                    if fragile:
                                        redo[h] = 1
                                    _add_values(vals, columns, fisher, nc, &null[h * nc], &cnt[h * nc])
                                    continue
                                # the outer lags too (the full precision check, as in one pass)
                                ok = dyadsync_corr_cstats(tsx[k], tsxx[k], &suf[slot * wd + e], &pre[e],
                                                          &cfr[o + ts - lag], &cm[o + ts - lag],
                                                          &cmyy[o + ts - lag], &ciy[o + ts - lag], lag - LAZY_K,
                                                          <double>win, sc, kmax, out)
                                ok &= dyadsync_corr_cstats(tsx[k], tsxx[k], &suf[slot * wd + e + lag + LAZY_K + 1],
                                                           &pre[e + lag + LAZY_K + 1], &cfr[o + ts + LAZY_K + 1],
                                                           &cm[o + ts + LAZY_K + 1], &cmyy[o + ts + LAZY_K + 1],
                                                           &ciy[o + ts + LAZY_K + 1], lag - LAZY_K, <double>win,
                                                           sc, kmax, &out[lag + LAZY_K + 1])
                        elif gapwin:
                            ok = dyadsync_gap_corr(tq, &ringz[o], mt, ts, win, lag, st, sc, tsx[k], tsxx[k],
                                                   &suf[slot * wd + e], &pre[e], &cfr[o + ts - lag],
                                                   &cs1[o + ts - lag], &cs2[o + ts - lag], lt, pt[ts],
                                                   pt[ts + win], lc, pc[o + ts - lag], pc[o + ts + win + lag],
                                                   o, kmax, agg, out)
                        else:
                            ok = dyadsync_corr_cstats(tsx[k], tsxx[k], &suf[slot * wd + e], &pre[e],
                                                      &cfr[o + ts - lag], &cm[o + ts - lag],
                                                      &cmyy[o + ts - lag], &ciy[o + ts - lag], nl,
                                                      <double>win, sc, kmax, out)
                        if not ok:
                            _welford_window(tp, &ringx[o], ts, win, lag, st, sc, agg, zero, out)
                        fragile = 0
                        _rotation_window_values(out, lag, half, rate_hz, peak_min_r, leader_min_r, want, need,
                                                cand, &fragile, vals)
                        if fragile:
                            redo[h] = 1
                        _add_values(vals, columns, fisher, nc, &null[h * nc], &cnt[h * nc])
                p += 1
                if p > pmax:
                    break
            b += win
            jb += 1
        h0 = h1
    for h in range(m * nc):
        null[h] = null[h] / cnt[h] if cnt[h] > 0 else NAN


def rotation_null(const double[::1] t, const double[::1] tq, const double[::1] ringx, const double[::1] ringz,
                  Py_ssize_t nr, const cnp.int64_t[::1] offsets, Py_ssize_t win, Py_ssize_t inc, Py_ssize_t lag,
                  Py_ssize_t half, double rate_hz, const cnp.int64_t[::1] columns,
                  const unsigned char[::1] fisher, double peak_min_r, double leader_min_r,
                  const double[::1] mt, const Py_ssize_t[::1] lt, const Py_ssize_t[::1] pt,
                  const Py_ssize_t[::1] lc, const Py_ssize_t[::1] pc, Py_ssize_t tile_span=0,
                  Py_ssize_t tile_max=32):
    """Session statistics of rotation surrogates, equal to ``circular_null`` to rounding, with the cross sums
    shared between rotations.

    The client of offset ``o`` is ``ringx[o : o + n]`` (``ringx`` = the ring, length ``nr``, followed by its
    first ``n`` samples: ``np.roll(ring, s)[:n]`` is offset ``o = nr − s``); ``offsets`` ascending, in
    [1, nr). Pair i of lag τ joins ``t[i]`` with ``ringx[o + i + τ]``, so its product depends only on
    ``o + τ``: offsets within ``tile_span`` (default 4·win) of each other form a tile whose cross sums Σuv are
    accumulated once per ring offset ``o + τ`` (the same block scheme and frames as ``wcc_batch``: suffix of
    block j + prefix of block j+1, one multiply-add per pair and ring offset) and read by every rotation of the
    tile. The therapist side (frames, Σu, Σu² of every window) and every client window's statistics (over the
    ring, ``_client_window_stats``) are computed once. Each window's r then comes from those sums
    (``dyadsync_corr_cstats``; windows with missing samples by masked counts, ``dyadsync_gap_corr``; the
    Welford fallback where the precision check fails), so the NaN rules are those of ``wcc_batch``. Only the
    window values the statistics use are computed: peaks by ``dyadsync_peak_fast`` (a vectorised candidate
    pass, then the outward scan), and when only peaks (and r0) are asked for, r of the lags within ``LAZY_K``
    of 0 first — the rest of the profile only for windows without their peak there.

    ``tq``/``ringz``: stand-in copies (every non-finite value replaced by a finite one) of ``t``/``ringx``;
    ``mt`` = 1.0 where ``t`` is finite, 0.0 elsewhere; ``lt``/``lc``: positions of the non-finite samples of
    ``t``/``ringx``; ``pt``/``pc``: their running counts (length n + 1 / len(ringx) + 1). All five empty when
    both series are complete.

    A peak statistic is a discrete choice: where two columns of a profile are equal in exact arithmetic (a
    constant run, a gap) rounding decides which is the peak, so two correct computations can pick different
    columns. Every peak decision whose margin is below ``PEAK_DELTA`` (1e-10, far above the two paths'
    rounding) marks its rotation, and the marked rotations are recomputed by ``circular_null``'s own
    arithmetic (``_batch_core`` of that rotation's client), so the statistics equal ``circular_null``'s to
    rounding (1e-9, tested) on such data too. Returns ``(null, n_exact)``: the statistics, an array
    (len(offsets), len(columns)), and how many rotations took the exact path; the GIL is released
    throughout."""
    if win < 2 or inc < 1 or lag < 0 or half < 1 or not rate_hz > 0:
        raise ValueError(f"bad kernel parameters win={win} inc={inc} lag={lag} half={half} rate_hz={rate_hz}")
    cdef Py_ssize_t n = t.shape[0], nl = 2 * lag + 1, span = win + 2 * lag, m = offsets.shape[0]
    cdef Py_ssize_t nc = columns.shape[0], nx = ringx.shape[0], j, q
    if tq.shape[0] != n or ringz.shape[0] != nx or nx != nr + n or nr < n:
        raise ValueError(f"rotation_null: lengths t {n}, tq {tq.shape[0]}, ring {nr}, ringx {nx}, "
                         f"ringz {ringz.shape[0]} do not fit")
    if fisher.shape[0] != nc:
        raise ValueError(f"columns ({nc}) and fisher ({fisher.shape[0]}) differ in length")
    cdef bint gaps = pt.shape[0] > 0
    if gaps and (mt.shape[0] != n or pt.shape[0] != n + 1 or pc.shape[0] != nx + 1
                 or lt.shape[0] != pt[n] or lc.shape[0] != pc[nx]):
        raise ValueError("rotation_null: inconsistent missing-sample arrays")
    cdef Py_ssize_t nw = 0 if n < span else (n - span) // inc + 1
    if nw == 0:
        raise ValueError(f"series of {n} samples hold no complete window")
    if tile_span <= 0:
        tile_span = 4 * win
    if tile_max < 1:
        raise ValueError(f"tile_max must be >= 1, got {tile_max}")
    cdef int need = 0, want = 0
    for q in range(nc):
        if not 0 <= columns[q] < N_VALUES:
            raise ValueError(f"column {columns[q]} out of range")
        if 5 <= columns[q] <= 10:
            need |= NEED_PEAKS
            want |= ROT_IN if columns[q] <= 7 else ROT_ANTI
        elif columns[q] >= 11:
            need |= NEED_GLOBAL
            want |= ROT_GLOBAL
        elif columns[q] == 0:
            want |= ROT_R0
        else:
            want |= ROT_SIDES | (ROT_SIDE_MAX if columns[q] >= 3 else 0)
    for j in range(m):
        if not 0 < offsets[j] < nr or (j > 0 and offsets[j] < offsets[j - 1]):
            raise ValueError(f"offsets must be ascending in [1, {nr}), got {offsets[j]} at {j}")
    null_a = np.empty((m, nc))
    cdef double[:, ::1] null = null_a
    if m == 0:
        return null_a
    cdef Py_ssize_t ns = nx - win + 1, n_slots = (win + inc - 1) // inc
    cdef Py_ssize_t wmax = tile_span + nl
    cdef double[::1] cst = np.empty(6 * ns)
    cdef double[::1] cscratch = np.empty(2 * win)
    cdef Py_ssize_t n_work = (n_slots * wmax + 2 * wmax + 12 * nl + 2 * nl + N_VALUES + 2 * win + m * nc + 2 * nw
                              + (nw * inc) // win + 2 + (win + 2 * nl) // 8 + 2)
    cdef double[::1] work = np.zeros(n_work)
    cdef const double* mtp = &mt[0] if gaps else NULL
    cdef const Py_ssize_t* ltp = &lt[0] if gaps and lt.shape[0] > 0 else NULL
    cdef const Py_ssize_t* ptp = &pt[0] if gaps else NULL
    cdef const Py_ssize_t* lcp = &lc[0] if gaps and lc.shape[0] > 0 else NULL
    cdef const Py_ssize_t* pcp = &pc[0] if gaps else NULL
    cdef unsigned char[::1] redo = np.zeros(m, dtype=np.uint8)
    # the exact path (``circular_null``'s arithmetic) for the offsets with a peak decision within the margin
    cdef double[::1] bwork = np.zeros(_batch_work_size(n, win, inc, lag))
    cdef cnp.int64_t[::1] bstarts = np.empty(nw, dtype=np.int64)
    cdef double[:, ::1] bprof = np.empty((nw, nl))
    cdef double[:, ::1] bvals = np.empty((nw, N_VALUES))
    cdef Py_ssize_t h, k, col, n_redo = 0, cnt
    cdef double acc, v
    with nogil:
        _client_window_stats(&ringz[0], nx, win, 5e-12 / (win * 1.1102230246251565e-16), &cscratch[0],
                             &cst[0], &cst[ns], &cst[2 * ns], &cst[3 * ns], &cst[4 * ns], &cst[5 * ns])
        _rotation_core(&t[0], &tq[0], &ringx[0], &ringz[0], n, nr, &offsets[0], m, win, inc, lag, half,
                       rate_hz, peak_min_r, leader_min_r, &columns[0], &fisher[0], nc, want, need, gaps,
                       mtp, ltp, ptp, lcp, pcp, tile_span, tile_max,
                       &cst[0], &cst[ns], &cst[2 * ns], &cst[3 * ns], &cst[4 * ns], &cst[5 * ns],
                       &work[0], &null[0, 0], &redo[0])
        for h in range(m):
            if not redo[h]:
                continue
            n_redo += 1
            _batch_core(&t[0], &ringx[offsets[h]], n, nw, win, inc, lag, half, rate_hz, peak_min_r,
                        leader_min_r, need, &bwork[0], &bstarts[0], &bprof[0, 0], &bvals[0, 0])
            _session_means(&bvals[0, 0], nw, &columns[0], &fisher[0], nc, &null[h, 0])
    return null_a, n_redo
