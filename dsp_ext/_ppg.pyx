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

from libc.math cimport isfinite, fabs
from libc.stdint cimport int64_t


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
