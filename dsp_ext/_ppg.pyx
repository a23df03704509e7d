# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Streaming systolic-peak detector after Elgendi et al. (2013), with a rolling threshold.

Elgendi's detector squares the positive part of the band-passed PPG, ``Z = max(y, 0)²``, and marks blocks
of interest where the ``w1`` (111 ms) moving average of Z exceeds the ``w2`` (667 ms) moving average plus
``beta · mean(Z)`` (β = 0.02); a block at least ``w1`` wide holds one beat, at the maximum of y. The paper
takes ``mean(Z)`` over the whole record; here it is the median of the means of the last ``n_blocks`` (10)
one-second blocks of Z, a rolling ≈10 s level that a single spike cannot move (it lands in one block) and
that follows changes of signal amplitude within seconds. The moving averages are centred, so decisions
come ``w2 / 2`` samples late (fixed latency). The peak is refined to a fraction of a sample by a parabola
through the three samples around the maximum; beats closer than ``min_delay_s`` to the previous one are
dropped. Non-finite samples count as Z = 0 and spoil the block they fall in.

The kernel trusts its inputs; ``dsp_ext.ppg`` validates them.
"""

import numpy as np

from libc.math cimport isfinite, fabs, floor, NAN
from libc.stdint cimport int64_t, uint8_t


cdef double _median(const double[::1] x, Py_ssize_t n, double[::1] buf) noexcept nogil:
    """Median of x[:n] by insertion sort into buf (n is small)."""
    cdef Py_ssize_t i, j
    cdef double v
    for i in range(n):
        v = x[i]
        j = i - 1
        while j >= 0 and buf[j] > v:
            buf[j + 1] = buf[j]
            j -= 1
        buf[j + 1] = v
    if n % 2:
        return buf[n // 2]
    return 0.5 * (buf[n // 2 - 1] + buf[n // 2])


cdef inline double _ring_sum(const double* r, Py_ssize_t ring, Py_ssize_t start, Py_ssize_t count) noexcept nogil:
    """Sum of ``count`` ring entries from absolute index ``start`` (>= 0), in index order, wrapping without a
    division per element."""
    cdef Py_ssize_t c, j = start % ring
    cdef double acc = 0.0
    for c in range(count):
        acc += r[j]
        j += 1
        if j == ring:
            j = 0
    return acc


cdef class ElgendiDetector:
    cdef readonly Py_ssize_t h1, h2, n_thr, ring, max_block, min_delay
    cdef readonly double beta
    cdef double[::1] y_ring
    cdef double[::1] z_ring
    cdef Py_ssize_t n               # samples received
    cdef Py_ssize_t block_len, n_blocks, blocks_done
    cdef double cur_sum             # sum of Z in the current one-second block
    cdef Py_ssize_t cur_cnt
    cdef double[::1] block_mean     # ring of the last n_blocks block means
    cdef double[::1] sort_buf
    cdef double level               # rolling level of Z (median of block means)
    cdef bint in_block
    cdef Py_ssize_t block_start
    cdef bint block_bad
    cdef double last_beat

    def __init__(self, double rate_hz, double w1_s=0.111, double w2_s=0.667, double beta=0.02,
                 double block_s=1.0, Py_ssize_t n_blocks=10, double min_delay_s=0.3, double max_block_s=1.5):
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        self.h1 = max(1, <Py_ssize_t>(w1_s * rate_hz + 0.5) // 2)
        self.h2 = max(self.h1 + 1, <Py_ssize_t>(w2_s * rate_hz + 0.5) // 2)
        self.block_len = max(1, <Py_ssize_t>(block_s * rate_hz + 0.5))
        self.n_blocks = max(1, n_blocks)
        self.block_mean = np.zeros(self.n_blocks)
        self.sort_buf = np.zeros(self.n_blocks)
        self.n_thr = 2 * self.h2 + 1
        self.max_block = max(2 * self.h1 + 1, <Py_ssize_t>(max_block_s * rate_hz + 0.5))
        self.min_delay = <Py_ssize_t>(min_delay_s * rate_hz + 0.5)
        self.beta = beta
        self.ring = self.max_block + 4 * self.h2 + 8
        self.y_ring = np.zeros(self.ring)
        self.z_ring = np.zeros(self.ring)
        self.reset()

    def reset(self):
        self.y_ring[:] = 0.0
        self.z_ring[:] = 0.0
        self.n = 0
        self.blocks_done = 0
        self.cur_sum = 0.0
        self.cur_cnt = 0
        self.level = 0.0
        self.block_mean[:] = 0.0
        self.in_block = False
        self.block_start = 0
        self.block_bad = False
        self.last_beat = -1e300

    @property
    def state_nbytes(self):
        return int(16 * self.ring + 16 * self.n_blocks + 96)

    @property
    def latency_samples(self):
        """Samples between a sample's arrival and the detector's decision about it."""
        return int(self.h2)

    def push(self, const double[::1] y):
        """Feed band-passed samples; returns the refined beat positions (fractional absolute sample indices)."""
        return self.push_decided(y)[0]

    def push_decided(self, const double[::1] y):
        """Like :meth:`push`, and also the absolute index of the sample whose arrival decided each beat
        (int64): the beat was known once that sample had been pushed, whatever the chunking."""
        cdef Py_ssize_t cap = (y.shape[0] + self.ring) // max(1, self.min_delay) + 4
        beats = np.empty(cap)
        decided = np.empty(cap, dtype=np.int64)
        cdef double[::1] out = beats
        cdef int64_t[::1] out_n = decided
        cdef Py_ssize_t nb = 0
        with nogil:
            nb = self._run(y, out, out_n)
        return beats[:nb].copy(), decided[:nb].copy()

    cdef inline double _z(self, Py_ssize_t k) noexcept nogil:
        return self.z_ring[k % self.ring]

    cdef Py_ssize_t _run(self, const double[::1] y, double[::1] out, int64_t[::1] out_n) noexcept nogil:
        cdef Py_ssize_t i, k, m, p, nb = 0, ring = self.ring
        cdef double v, z, ma_peak, ma_beat, thr, yp, ym, yn, den, delta, best
        cdef bint above, finite
        cdef const double* zr = &self.z_ring[0]
        for i in range(y.shape[0]):
            v = y[i]
            finite = isfinite(v)
            z = v * v if (finite and v > 0.0) else 0.0
            self.y_ring[self.n % ring] = v
            self.z_ring[self.n % ring] = z
            # rolling level: median of the last n_blocks block means (partial block until one is complete)
            self.cur_sum += z
            self.cur_cnt += 1
            if self.cur_cnt == self.block_len:
                self.block_mean[self.blocks_done % self.n_blocks] = self.cur_sum / self.cur_cnt
                self.blocks_done += 1
                self.level = _median(self.block_mean, min(self.blocks_done, self.n_blocks), self.sort_buf)
                self.cur_sum = 0.0
                self.cur_cnt = 0
            elif self.blocks_done == 0:
                self.level = self.cur_sum / self.cur_cnt
            self.n += 1
            # decide about the centre sample m = newest - h2 (needs h2 samples on both sides)
            m = self.n - 1 - self.h2
            if m < self.h2:
                continue
            ma_peak = _ring_sum(zr, ring, m - self.h1, 2 * self.h1 + 1) / (2 * self.h1 + 1)
            ma_beat = _ring_sum(zr, ring, m - self.h2, 2 * self.h2 + 1) / (2 * self.h2 + 1)
            thr = ma_beat + self.beta * self.level
            above = ma_peak > thr and ma_peak > 0.0
            if not isfinite(self.y_ring[m % ring]):
                if self.in_block:
                    self.block_bad = True
            if above and not self.in_block:
                self.in_block = True
                self.block_start = m
                self.block_bad = not isfinite(self.y_ring[m % ring])
            elif self.in_block and (not above or m - self.block_start >= self.max_block):
                self.in_block = False
                if not above and not self.block_bad and m - self.block_start >= 2 * self.h1 + 1:
                    p = self.block_start
                    best = self.y_ring[p % ring]
                    for k in range(self.block_start + 1, m):
                        if self.y_ring[k % ring] > best:
                            best = self.y_ring[k % ring]
                            p = k
                    delta = 0.0
                    if p - 1 >= 0:
                        ym = self.y_ring[(p - 1) % ring]
                        yp = self.y_ring[p % ring]
                        yn = self.y_ring[(p + 1) % ring]
                        den = ym - 2.0 * yp + yn
                        if isfinite(den) and den < 0.0:
                            delta = 0.5 * (ym - yn) / den
                            if fabs(delta) > 0.5:
                                delta = 0.0
                    if p + delta - self.last_beat >= self.min_delay:
                        out[nb] = p + delta
                        out_n[nb] = self.n - 1
                        nb += 1
                        self.last_beat = p + delta
        return nb


cdef class LiveHrKernel:
    """The loop of ``dsp_ext.ppg.LiveHr`` (its docstring has the rules), with the same operations in the same
    order as its plain-Python twin ``dsp_ext.ppg.LiveHrReference``, so the same numbers."""
    cdef readonly double rate_hz, offset_s, delay, hold, max_rel_dev, ibi_min, ibi_max
    cdef readonly int64_t first_index, k_next
    cdef readonly Py_ssize_t history, min_history, max_rejects
    cdef double prev_beat
    cdef bint prev_ok               # the beat quality (SQI) of prev_beat
    cdef double[::1] hist           # accepted IBIs (ms), oldest first
    cdef double[::1] sort_buf
    cdef Py_ssize_t n_hist, rejects
    cdef double[::1] known_b        # accepted beats decided so far (beat position, hr), oldest first
    cdef double[::1] known_h
    cdef Py_ssize_t n_known
    cdef int64_t[::1] pend_d        # accepted beats not yet known: deciding sample, beat, hr (a FIFO)
    cdef double[::1] pend_b
    cdef double[::1] pend_h
    cdef Py_ssize_t pend_lo, pend_hi

    def __init__(self, double rate_hz, double offset_s, int64_t first_index, double delay_s, double hold_s,
                 Py_ssize_t history, Py_ssize_t min_history, double max_rel_dev, Py_ssize_t max_rejects,
                 double ibi_min_ms, double ibi_max_ms):
        self.rate_hz = rate_hz
        self.offset_s = offset_s
        self.first_index = first_index
        self.delay = delay_s * rate_hz
        self.hold = hold_s * rate_hz
        self.history = history
        self.min_history = min_history
        self.max_rel_dev = max_rel_dev
        self.max_rejects = max_rejects
        self.ibi_min = ibi_min_ms
        self.ibi_max = ibi_max_ms
        self.hist = np.zeros(history + 1)
        self.sort_buf = np.zeros(history + 1)
        self.known_b = np.zeros(9)
        self.known_h = np.zeros(9)
        self.pend_d = np.zeros(16, dtype=np.int64)
        self.pend_b = np.zeros(16)
        self.pend_h = np.zeros(16)
        self.k_next = first_index
        self.prev_beat = np.nan
        self.prev_ok = True
        self.n_hist = self.rejects = self.n_known = self.pend_lo = self.pend_hi = 0

    @property
    def state_nbytes(self):
        return int(8 * (2 * self.hist.shape[0] + 18 + 3 * self.pend_d.shape[0]) + 128)

    cdef bint _accept(self, double ibi_ms) noexcept nogil:
        cdef double med
        cdef Py_ssize_t i
        if not (self.ibi_min <= ibi_ms <= self.ibi_max):
            return False
        if self.n_hist >= self.min_history:
            med = _median(self.hist, self.n_hist, self.sort_buf)  # the order statistics of Python's sorted
            if fabs(ibi_ms - med) > self.max_rel_dev * med:
                self.rejects += 1
                if self.rejects >= self.max_rejects:
                    self.n_hist = 0
                    self.rejects = 0
                return False
        self.rejects = 0
        self.hist[self.n_hist] = ibi_ms
        self.n_hist += 1
        if self.n_hist > self.history:
            for i in range(self.n_hist - 1):
                self.hist[i] = self.hist[i + 1]
            self.n_hist -= 1
        return True

    cdef void _pend(self, int64_t d, double b, double h):
        cdef Py_ssize_t n = self.pend_hi - self.pend_lo, cap = self.pend_d.shape[0]
        if self.pend_hi == cap:
            if 2 * n > cap:  # grow (the GIL is held)
                self.pend_d = np.concatenate([np.asarray(self.pend_d[self.pend_lo:self.pend_hi]), np.zeros(cap, dtype=np.int64)])
                self.pend_b = np.concatenate([np.asarray(self.pend_b[self.pend_lo:self.pend_hi]), np.zeros(cap)])
                self.pend_h = np.concatenate([np.asarray(self.pend_h[self.pend_lo:self.pend_hi]), np.zeros(cap)])
            else:
                self.pend_d[:n] = self.pend_d[self.pend_lo:self.pend_hi].copy()
                self.pend_b[:n] = self.pend_b[self.pend_lo:self.pend_hi].copy()
                self.pend_h[:n] = self.pend_h[self.pend_lo:self.pend_hi].copy()
            self.pend_lo, self.pend_hi = 0, n
        self.pend_d[self.pend_hi] = d
        self.pend_b[self.pend_hi] = b
        self.pend_h[self.pend_hi] = h
        self.pend_hi += 1

    def push(self, const double[::1] beats, const int64_t[::1] decided, int64_t n_done, const uint8_t[::1] ok):
        """Beats (fractional sample indices) with the samples that decided them, their quality (``ok``, 0 = in
        an artefact: the intervals ending and starting at it are not used), and the number of samples pushed
        so far; returns ``(grid_index, hr_bpm)`` for every grid point whose time has been reached."""
        cdef Py_ssize_t i, j, n_out
        cdef double b, ibi, pos, tau, v, b0, h0, b1, h1
        cdef int64_t k, last
        cdef bint both_ok
        if beats.shape[0] != decided.shape[0] or beats.shape[0] != ok.shape[0]:
            raise ValueError("beats, decided and ok differ in length")
        for i in range(beats.shape[0]):
            b = beats[i]
            ibi = (b - self.prev_beat) * 1000.0 / self.rate_hz
            self.prev_beat = b
            both_ok = self.prev_ok and ok[i] != 0
            self.prev_ok = ok[i] != 0
            if ibi == ibi and both_ok and self._accept(ibi):
                self._pend(decided[i], b, 60000.0 / ibi)
        # grid points whose sample has arrived: from k_next while floor(pos + 1e-9) < n_done
        k = self.k_next
        n_out = 0
        while True:
            pos = (self.offset_s + <double>(k + n_out - self.first_index) / 4.0) * self.rate_hz
            if <int64_t>floor(pos + 1e-9) >= n_done:
                break
            n_out += 1
        ks = np.arange(k, k + n_out, dtype=np.int64)
        out = np.empty(n_out)
        cdef double[::1] o = out
        for j in range(n_out):
            pos = (self.offset_s + <double>(k + j - self.first_index) / 4.0) * self.rate_hz
            last = <int64_t>floor(pos + 1e-9)
            while self.pend_lo < self.pend_hi and self.pend_d[self.pend_lo] <= last:
                if self.n_known == 8:
                    for i in range(7):
                        self.known_b[i] = self.known_b[i + 1]
                        self.known_h[i] = self.known_h[i + 1]
                    self.n_known = 7
                self.known_b[self.n_known] = self.pend_b[self.pend_lo]
                self.known_h[self.n_known] = self.pend_h[self.pend_lo]
                self.n_known += 1
                self.pend_lo += 1
            tau = pos - self.delay
            v = NAN
            if self.n_known and tau >= self.known_b[0]:
                i = self.n_known - 1
                while self.known_b[i] > tau:
                    i -= 1
                b0 = self.known_b[i]
                h0 = self.known_h[i]
                if i + 1 < self.n_known:
                    b1 = self.known_b[i + 1]
                    h1 = self.known_h[i + 1]
                    if b1 - b0 <= self.hold:
                        v = h0 + (tau - b0) / (b1 - b0) * (h1 - h0)
                elif tau - b0 <= self.hold:
                    v = h0
            o[j] = v
        if self.pend_lo == self.pend_hi:
            self.pend_lo = self.pend_hi = 0
        self.k_next = k + n_out
        return ks, out


cdef inline double _hr_of(double ibi, bint ok) noexcept nogil:
    return 60000.0 / ibi if ok else NAN


def beat_grid(const double[::1] beat_s, double last_beat_s, double last_hr, double last_ibi, double offset_s,
              int64_t first_index, int64_t k_next, double ibi_min_ms, double ibi_max_ms,
              const uint8_t[::1] quality):
    """The grid stage of ``dsp_ext.ppg.PpgStream`` for one push of final beats (seconds; at least one):
    the intervals ending at them (ms, from ``last_beat_s``, NaN if none) and whether each is valid (within the
    limits and ``quality`` non-zero: no beat in an artefact, ``dsp_ext.sqi``); then HR (bpm) and IBI (ms) on the grid points from ``k_next`` to the one at or before the newest
    beat, linear between beats (a point in an invalid interval, or before any interval, is NaN). The same
    operations in the same order as ``PpgStream._grid_reference`` (numpy), so the same numbers.

    Returns ``(ibi_ms, valid, grid_index, hr_bpm, ibi_grid_ms, last_hr, last_ibi)``."""
    cdef Py_ssize_t nb = beat_s.shape[0] + 1, i, s, lo, hi, mid, j
    cdef double prev = last_beat_s, t0, t1, tk, w, h0, h1, i0, i1
    cdef int64_t k_end, kk
    if nb < 2:
        raise ValueError("beat_grid needs at least one beat")
    if quality.shape[0] != nb - 1:
        raise ValueError("beat_grid: quality and beat_s differ in length")
    ibi = np.empty(nb - 1)
    valid = np.empty(nb - 1, dtype=np.uint8)
    cdef double[::1] ibi_v = ibi
    cdef uint8_t[::1] ok_v = valid
    tb_a = np.empty(nb)
    hb_a = np.empty(nb)
    ib_a = np.empty(nb)
    cdef double[::1] tb = tb_a, hb = hb_a, ib = ib_a
    tb[0] = last_beat_s
    hb[0] = last_hr
    ib[0] = last_ibi
    for i in range(nb - 1):
        ibi_v[i] = (beat_s[i] - prev) * 1000.0
        prev = beat_s[i]
        ok_v[i] = ibi_min_ms <= ibi_v[i] <= ibi_max_ms and quality[i] != 0
        tb[i + 1] = beat_s[i]
        hb[i + 1] = _hr_of(ibi_v[i], ok_v[i])
        ib[i + 1] = ibi_v[i] if ok_v[i] else NAN
    k_end = first_index + <int64_t>floor((beat_s[nb - 2] - offset_s) * 4.0 + 1e-9) + 1
    if k_end < k_next:
        k_end = k_next
    k_a = np.arange(k_next, k_end, dtype=np.int64)
    hr_a = np.empty(k_end - k_next)
    ig_a = np.empty(k_end - k_next)
    cdef double[::1] hr = hr_a, ig = ig_a
    cdef bint t0_finite = isfinite(tb[0])
    for j in range(k_end - k_next):
        kk = k_next + j
        tk = offset_s + <double>(kk - first_index) / 4.0
        # the first s with tb[s] >= tk (bisect_left; tb[0] may be NaN: then the point is before any interval)
        lo = 0 if t0_finite else 1
        hi = nb
        while lo < hi:
            mid = (lo + hi) // 2
            if tb[mid] < tk:
                lo = mid + 1
            else:
                hi = mid
        s = lo
        if not t0_finite and s == 1:
            s = 0
        if not (1 <= s < nb):
            hr[j] = NAN
            ig[j] = NAN
            continue
        t0 = tb[s - 1]
        t1 = tb[s]
        if not (isfinite(hb[s]) and isfinite(t0)):
            hr[j] = NAN
            ig[j] = NAN
            continue
        w = (tk - t0) / (t1 - t0)
        h0 = hb[s - 1]
        h1 = hb[s]
        hr[j] = h0 + w * (h1 - h0) if isfinite(h0) else h1
        i0 = ib[s - 1]
        i1 = ib[s]
        ig[j] = i0 + w * (i1 - i0) if isfinite(i0) else i1
    return ibi, valid.view(bool), k_a, hr_a, ig_a, hb[nb - 1], ib[nb - 1]
