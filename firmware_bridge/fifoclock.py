"""Sample times of a sensor that samples on its own clock into a FIFO (MAX30102), from the FIFO polls.

Such a sensor takes sample ``j`` at ``a + j * p`` on its own oscillator, whenever the host reads it; the host
only sees, at each poll, how many samples the FIFO holds (the pointer snapshot) and when it looked. Stamping
a block with the poll time (``now - n * p``) gives every sample the poll's scheduling latency (and a
loaded host multiplies that); instead the samples are numbered — read ones plus the lost ones, which the
overflow counter gives exactly — and their times come from the line ``t_j = a + j * p`` that every poll
constrains. A pointer snapshot taken between host times ``r0`` and ``r1`` that shows ``N`` samples taken
so far (numbers ``0 .. N - 1``) says::

    a + (N - 1) * p <= r1     the newest sample existed when the snapshot was taken
    a + N * p       >  r0     the next one did not yet

Latency only widens ``[r0, r1]``; it never moves a bound past the truth. So the polls whose snapshots fell
just after a sample (tight upper bounds) and just before one (tight lower bounds) pin the phase down, however
late the others were; the poll times should sweep the sample period (the caller dithers its poll interval).
The phase is the middle of the band the bounds leave. The period is the nominal one until the polls span
``fit_after_s``; after that (and whenever the bounds contradict each other) it is the slope that leaves
the widest band, within ``max_rate_error`` of nominal: the sensor oscillator's error. Polls older than
``window_s`` are forgotten (slow drift); if the bounds still contradict each other (a host clock step, a
sensor that restarted without telling), the oldest polls are dropped until they agree.

A saturated overflow counter (an inexact loss) leaves the sample number unknown. It is then taken from the
line, with the snapshot assumed at ``r0`` and the phase at its latest bound, so that an error can only make
the number too small, by some ``k``; the polls numbered before it are set aside, and the polls that follow
(read the FIFO again at once: a fresh snapshot with a short window) put the line ``k`` periods later. As
soon as exactly one whole ``k`` makes the old polls agree with the new ones (one poll with a short window
is usually enough: the old band is narrow), the old polls are renumbered and kept (the count is exact again; :attr:`recounted` adds up the
``k``). The caller turns the line's jump into lost samples (``device.hwsources.Max30102Source``). The
sample numbers must otherwise be exact: a count error would be taken for an oscillator error.
"""

from __future__ import annotations

import math

import numpy as np


class FifoClock:
    """``FifoClock(rate_hz, *, window_s=60, fit_after_s=10, refit_s=2, max_rate_error=0.05, max_polls=2048)``.

    Call :meth:`observe` once per FIFO poll (in order); :meth:`time_of` gives the host time of a sample
    number. :meth:`reset` when the sensor restarts its sample clock (re-initialisation). Times are seconds
    of any host clock (the same for every call); not thread-safe.
    """

    PENDING_POLLS = 50  # polls after an inexact loss within which the old polls may still be renumbered

    def __init__(self, rate_hz: float, *, window_s: float = 60.0, fit_after_s: float = 10.0, refit_s: float = 2.0,
                 max_rate_error: float = 0.05, max_polls: int = 2048) -> None:
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz!r}")
        if not 0 <= max_rate_error < 0.5:
            raise ValueError(f"max_rate_error must be within [0, 0.5), got {max_rate_error!r}")
        self.nominal_period_s = 1.0 / float(rate_hz)
        self.window_s = float(window_s)
        self.fit_after_s = float(fit_after_s)
        self.refit_s = float(refit_s)
        self.max_rate_error = float(max_rate_error)
        self.max_polls = int(max_polls)
        self.dropped_polls = 0  # polls forgotten because they contradicted newer ones
        self.recounted = 0  # samples found missing by renumbering after inexact losses
        self.reset()

    def reset(self) -> None:
        """The sensor restarted its sample clock: sample numbers start again at 0, the phase is unknown."""
        self.count = 0  # samples taken (read or lost) up to the last snapshot: the number of the next one
        self.period_s = self.nominal_period_s
        self._base: float | None = None  # host time origin of the stored polls (numerical conditioning)
        # the polls kept: rows [_start, _end) of one buffer (columns n, r0, r1), appended in place;
        # _n, _r0, _r1 are views of them
        self._buf = np.empty((3, 256), dtype=np.float64)
        self._start = self._end = 0
        self._views()
        self._old: tuple | None = None  # set aside at an inexact loss
        self._since_inexact = 0
        self._lo = self._hi = math.nan  # bounds of the phase (relative to _base)
        self._fitted_at: float | None = None

    @property
    def synced(self) -> bool:
        return self._base is not None

    @property
    def band_s(self) -> float:
        """Width of the band the phase lies in (seconds; the timing uncertainty: at most one period plus the
        shortest poll window)."""
        return self._hi - self._lo if self.synced else math.inf

    # ------------------------------------------------------------------------------------------ polls
    def observe(self, r0: float, r1: float, n: int, lost: int = 0, exact: bool = True, queued: int = 0) -> int:
        """One FIFO poll: ``n`` samples read after ``lost`` lost ones (a lower bound when not ``exact``), the
        pointer snapshot taken between host times ``r0`` and ``r1``, when ``queued`` more samples had been
        taken after the ``n`` (a snapshot taken after the drain). Returns the number of the first sample
        read."""
        if not r1 >= r0:
            raise ValueError(f"poll window must have r1 >= r0, got {r0!r}, {r1!r}")
        if n < 0 or lost < 0 or queued < 0:
            raise ValueError(f"n, lost and queued must be >= 0, got {n}, {lost}, {queued}")
        if self._base is None:
            self._base = r0
        x0, x1 = r0 - self._base, r1 - self._base
        n_end = self.count + lost + n
        if not exact and self._n.size:
            # the newest sample number from the line, as small as the bounds allow; the polls numbered on the
            # old count are set aside until the new ones tell by how many whole periods it was off
            n_end = max(n_end, math.floor((x0 - self._hi) / self.period_s) + 1 - queued)
            self._old = (self._n.copy(), self._r0.copy(), self._r1.copy(), self._lo, self._hi)
            self._since_inexact = 0
            self._start = self._end = 0
        self.count = n_end
        self._append(float(n_end + queued), x0, x1)
        # forget polls older than the window (poll times only grow: the oldest are first) and beyond max_polls
        r1, start, cut = self._buf[2], self._start, x1 - self.window_s
        while start < self._end - 1 and r1[start] < cut:
            start += 1
        self._start = max(start, self._end - self.max_polls)
        self._views()
        self._update(x1)
        if self._old is not None:
            self._renumber()
        return n_end - n

    def _views(self) -> None:
        self._n, self._r0, self._r1 = self._buf[:, self._start:self._end]

    def _append(self, n: float, r0: float, r1: float) -> None:
        if self._end == self._buf.shape[1]:  # full: move the kept polls to the front, or grow
            size = self._end - self._start
            if size * 2 > self._buf.shape[1]:
                grown = np.empty((3, 2 * self._buf.shape[1]), dtype=np.float64)
                grown[:, :size] = self._buf[:, self._start:self._end]
                self._buf = grown
            else:
                self._buf[:, :size] = self._buf[:, self._start:self._end].copy()
            self._start, self._end = 0, size
        b, e = self._buf, self._end
        b[0, e], b[1, e], b[2, e] = n, r0, r1
        self._end = e + 1

    def _set_polls(self, n: np.ndarray, r0: np.ndarray, r1: np.ndarray) -> None:
        """Replace the kept polls (renumbered or trimmed)."""
        size = len(n)
        if size > self._buf.shape[1]:
            self._buf = np.empty((3, 2 * size), dtype=np.float64)
        rows = np.stack([n, r0, r1])  # a copy first: the arguments may be views of the buffer
        self._buf[:, :size] = rows
        self._start, self._end = 0, size
        self._views()

    def time_of(self, index: int | float) -> float:
        """Host time of sample number ``index`` (the middle of the band)."""
        if self._base is None:
            raise RuntimeError("FifoClock.time_of before the first observe()")
        return self._base + 0.5 * (self._lo + self._hi) + index * self.period_s

    # ---------------------------------------------------------------------------------------- fitting
    def _bounds(self, p: float, n=None, r0=None, r1=None) -> tuple[float, float]:
        n = self._n if n is None else n
        r0 = self._r0 if r0 is None else r0
        r1 = self._r1 if r1 is None else r1
        np_ = n * p
        hi = float((r1 - np_).min()) + p  # min of r1 - (n - 1) p
        lo = float((r0 - np_).max())
        return lo, hi

    FIT_ITERATIONS = 40  # golden-section steps: the slope to 0.618^40 (4e-9) of the ±max_rate_error range

    def _fit_period(self) -> float:
        """The slope leaving the widest band (the band width is concave in p: golden-section search, one
        evaluation of the bounds per step)."""
        def width(p: float) -> float:
            lo, hi = self._bounds(p)
            return hi - lo

        g = 0.5 * (math.sqrt(5.0) - 1.0)
        a = self.nominal_period_s * (1.0 - self.max_rate_error)
        b = self.nominal_period_s * (1.0 + self.max_rate_error)
        m1, m2 = b - g * (b - a), a + g * (b - a)
        w1, w2 = width(m1), width(m2)
        for _ in range(self.FIT_ITERATIONS):
            if w1 < w2:  # the widest band lies right of m1
                a, m1, w1 = m1, m2, w2
                m2 = a + g * (b - a)
                w2 = width(m2)
            else:
                b, m2, w2 = m2, m1, w1
                m1 = b - g * (b - a)
                w1 = width(m1)
        return 0.5 * (a + b)

    def _update(self, now: float) -> None:
        span = float(self._r1[-1] - self._r1[0])
        lo, hi = self._bounds(self.period_s)
        due = span >= self.fit_after_s and (self._fitted_at is None or now - self._fitted_at >= self.refit_s)
        if (lo >= hi or due) and span > 0 and self._n[-1] > self._n[0]:
            self.period_s = self._fit_period()
            self._fitted_at = now
            lo, hi = self._bounds(self.period_s)
        if lo >= hi:  # still contradictory: keep the newest polls that agree with each other
            p = self.period_s
            hi_s = np.minimum.accumulate((self._r1 - (self._n - 1.0) * p)[::-1])
            lo_s = np.maximum.accumulate((self._r0 - self._n * p)[::-1])
            ok = lo_s < hi_s
            agree = self._n.size if ok.all() else max(1, int(np.argmin(ok)))
            keep = self._n.size - agree
            self.dropped_polls += keep
            self._start += keep
            self._views()
            lo, hi = self._bounds(p)
        self._lo, self._hi = lo, hi

    def _renumber(self) -> None:
        """After an inexact loss: the old line lies a whole number ``k`` of periods before the new one; as soon
        as exactly one ``k`` makes the old polls agree with the new ones, renumber the old polls and keep
        them (if none does, or the new polls leave it open for too long, the old polls are forgotten)."""
        self._since_inexact += 1
        n_old, r0_old, r1_old, lo_old, hi_old = self._old
        p = self.period_s
        # the k for which the two bands overlap at all
        k_min = max(0, math.ceil((self._lo - hi_old) / p - 1e-9))
        k_max = math.floor((self._hi - lo_old) / p + 1e-9)
        if k_max - k_min > 3:  # the new polls do not tell yet
            if self._since_inexact > self.PENDING_POLLS:
                self._old = None
            return
        fits = []
        for k in range(k_min, k_max + 1):
            n = np.concatenate([n_old - k, self._n])
            r0 = np.concatenate([r0_old, self._r0])
            r1 = np.concatenate([r1_old, self._r1])
            lo, hi = self._bounds(p, n, r0, r1)
            if lo < hi:
                fits.append((k, n, r0, r1, lo, hi))
        if len(fits) == 1:
            k, n, r0, r1, self._lo, self._hi = fits[0]
            self._set_polls(n, r0, r1)
            self.recounted += k
            self._old = None
        elif not fits or self._since_inexact > self.PENDING_POLLS:
            self._old = None
