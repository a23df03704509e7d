"""Device clock mapping: 32-bit device microseconds -> host monotonic nanoseconds -> UTC nanoseconds.

Method. Each TIME_PING/TIME_PONG exchange gives four timestamps (as in NTP, RFC 5905 §8, and the
min-round-trip estimators used by Lab Streaming Layer and EmotiBit): host send ``t1``, device receive
``t2``, device send ``t3``, host receive ``t4``. The device midpoint ``(t2 + t3) / 2`` is paired with the
host midpoint ``(t1 + t4) / 2``; the pairing error is at most half of the round trip
``(t4 - t1) - (t3 - t2)``, so only probes with a small round trip are trusted. The mapping
``host = h_ref + slope * (device - d_ref)`` is an exponentially weighted least-squares line (half-life
``half_life_s``) over the recent probes whose round trip lies in the lowest ``rtt_quantile`` of the window,
followed by one pass of residual rejection (3 x the scaled median absolute deviation). The slope absorbs
the crystal drift (ppm), the intercept the offset.

Device time is a 32-bit µs counter that wraps every 71.6 minutes; it is unwrapped against the host time
elapsed since the previous probe. A device time that cannot be explained by forward progress (it went
backwards, or jumped by more than ``reset_tolerance_s`` against the host) starts a new *segment*: the
probes of the old segment are forgotten (the device was reset).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.errors import DyadsyncError

logger = logging.getLogger(__name__)

UINT32 = 1 << 32


class ClockNotSynced(DyadsyncError, RuntimeError):
    """No probe has been received in the current segment, so device time cannot be mapped yet."""


@dataclass(frozen=True)
class Probe:
    device_us: float  # unwrapped device midpoint
    host_ns: float  # host midpoint
    rtt_ns: float
    t_host_ns: int  # host receive time, for ageing


def _default_utc_offset_ns() -> int:
    return time.time_ns() - time.monotonic_ns()


class ClockMapper:
    """Online device -> host clock fit. Not thread-safe; the link calls it from its reader thread.

    half_life_s: weight half-life of old probes (30-120 s recommended).
    nominal_ns_per_us: expected slope (1000 for a real device; 1000 / speed for an emulator running
        ``speed`` times faster than real time).
    window: number of recent probes kept.
    rtt_quantile: fraction of the window (lowest round trips) used for the fit.
    reset_tolerance_s: a probe more than this (host seconds, plus 1 % of the elapsed time) away from the
        predicted device time starts a new segment.
    utc_offset_ns: callable returning ``UTC - monotonic`` in ns (default: from ``time``).
    """

    def __init__(
        self,
        *,
        half_life_s: float = 60.0,
        nominal_ns_per_us: float = 1000.0,
        window: int = 256,
        rtt_quantile: float = 0.3,
        reset_tolerance_s: float = 1.0,
        utc_offset_ns: Callable[[], int] = _default_utc_offset_ns,
    ) -> None:
        if not 1.0 <= half_life_s <= 3600.0:
            raise ValueError(f"half_life_s must be within [1, 3600], got {half_life_s}")
        if not nominal_ns_per_us > 0:
            raise ValueError(f"nominal_ns_per_us must be > 0, got {nominal_ns_per_us}")
        if window < 4:
            raise ValueError(f"window must be >= 4, got {window}")
        if not 0.0 < rtt_quantile <= 1.0:
            raise ValueError(f"rtt_quantile must be in (0, 1], got {rtt_quantile}")
        self.half_life_s = half_life_s
        self.nominal_ns_per_us = nominal_ns_per_us
        self.rtt_quantile = rtt_quantile
        self.reset_tolerance_s = reset_tolerance_s
        self.utc_offset_ns = utc_offset_ns
        self._probes: deque[Probe] = deque(maxlen=window)
        self.segment = 0
        self.resets_detected = 0
        self.probes_total = 0
        self._last_dev_raw: float | None = None
        self._last_dev_u: float = 0.0
        self._last_host_ns: float = 0.0
        self._slope = nominal_ns_per_us
        self._d_ref = 0.0
        self._h_ref = 0.0
        self._synced = False

    # ------------------------------------------------------------------------------------- probes
    @property
    def synced(self) -> bool:
        return self._synced

    @property
    def drift_ppm(self) -> float:
        """Device clock rate error relative to ``nominal_ns_per_us`` in ppm (positive: device fast)."""
        return (self.nominal_ns_per_us / self._slope - 1.0) * 1e6

    def new_segment(self) -> None:
        """Forget all probes (the device was reset or reconnected with a fresh clock)."""
        self._probes.clear()
        self._last_dev_raw = None
        self._synced = False
        self._slope = self.nominal_ns_per_us
        self.segment += 1

    def add_probe(self, t1_host_ns: int, t2_device_us: int, t3_device_us: int, t4_host_ns: int) -> bool:
        """Add one ping exchange. Returns False if it was rejected as impossible (t4 < t1)."""
        if t4_host_ns < t1_host_ns:
            logger.warning("clock probe rejected: host receive %d before send %d", t4_host_ns, t1_host_ns)
            return False
        t2 = int(t2_device_us) % UINT32
        turnaround_us = (int(t3_device_us) - t2) % UINT32
        if turnaround_us > UINT32 // 2:
            logger.warning("clock probe rejected: device send before device receive")
            return False
        dev_mid_raw = t2 + turnaround_us / 2.0
        host_mid = (t1_host_ns + t4_host_ns) / 2.0
        rtt = (t4_host_ns - t1_host_ns) - turnaround_us * self._slope
        dev_u = self._unwrap_probe(dev_mid_raw, host_mid)
        self._last_dev_raw = dev_mid_raw % UINT32
        self._last_dev_u = dev_u
        self._last_host_ns = host_mid
        self._probes.append(Probe(dev_u, host_mid, max(rtt, 0.0), t4_host_ns))
        self.probes_total += 1
        self._fit(t4_host_ns)
        return True

    def _unwrap_probe(self, dev_raw: float, host_mid: float) -> float:
        if self._last_dev_raw is None:
            self._last_dev_raw = dev_raw
            return dev_raw
        fwd = (dev_raw - self._last_dev_raw) % UINT32
        expected = (host_mid - self._last_host_ns) / self._slope
        wraps = round((expected - fwd) / UINT32)
        cand = fwd + wraps * UINT32
        elapsed_s = (host_mid - self._last_host_ns) / 1e9
        tol_us = (self.reset_tolerance_s + 0.01 * abs(elapsed_s)) * 1e9 / self._slope
        if wraps < 0 or abs(cand - expected) > tol_us:
            logger.warning(
                "device clock jumped (advanced %.0f us where %.0f us were expected): new segment",
                cand,
                expected,
            )
            self.resets_detected += 1
            self.new_segment()
            self._last_dev_raw = dev_raw
            return dev_raw
        return self._last_dev_u + cand

    def _fit(self, now_host_ns: int) -> None:
        probes = list(self._probes)
        n = len(probes)
        dev = np.array([p.device_us for p in probes])
        host = np.array([p.host_ns for p in probes])
        rtt = np.array([p.rtt_ns for p in probes])
        age_s = (now_host_ns - np.array([p.t_host_ns for p in probes], dtype=np.float64)) / 1e9
        # Keep the probes with the smallest round trip (at least 3, or all if fewer).
        k = max(min(3, n), int(np.ceil(self.rtt_quantile * n)))
        keep = np.argsort(rtt, kind="stable")[:k]
        d, h, w = dev[keep], host[keep], 0.5 ** (age_s[keep] / self.half_life_s)
        d_ref = float(dev[-1])
        h_ref_guess = float(host[-1])
        x = d - d_ref
        y = h - h_ref_guess - self.nominal_ns_per_us * x  # residual to the nominal line, well scaled
        span_us = float(x.max() - x.min()) if len(x) else 0.0
        if len(x) >= 3 and span_us * self.nominal_ns_per_us > 2e9:
            b, a = self._wls(x, y, w)
            resid = y - (a + b * x)
            mad = float(np.median(np.abs(resid - np.median(resid)))) * 1.4826
            good = np.abs(resid) <= max(3.0 * mad, 1e3)
            if good.sum() >= 3 and not good.all():
                b, a = self._wls(x[good], y[good], w[good])
            slope = self.nominal_ns_per_us + b
        else:
            slope = self._slope if self._synced else self.nominal_ns_per_us
            a = float(np.sum(w * (y - (slope - self.nominal_ns_per_us) * x)) / np.sum(w))
        self._slope = slope
        self._d_ref = d_ref
        self._h_ref = h_ref_guess + a
        self._synced = True

    @staticmethod
    def _wls(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
        sw = w.sum()
        mx = float((w * x).sum() / sw)
        my = float((w * y).sum() / sw)
        dx = x - mx
        sxx = float((w * dx * dx).sum())
        if sxx <= 0:
            return 0.0, my
        b = float((w * dx * (y - my)).sum() / sxx)
        return b, my - b * mx

    # ------------------------------------------------------------------------------------ mapping
    def unwrap(self, device_us: int) -> float:
        """Unwrapped device µs of a 32-bit stamp: the value nearest the latest probe (within ±35 min)."""
        if self._last_dev_raw is None:
            raise ClockNotSynced("no clock probe in this segment yet")
        delta = (float(device_us) - self._last_dev_raw) % UINT32
        if delta >= UINT32 // 2:
            delta -= UINT32
        return self._last_dev_u + delta

    def device_to_host_ns(self, device_us: int) -> int:
        """Host monotonic ns at which the device clock read ``device_us`` (32-bit, wrapping)."""
        if not self._synced:
            raise ClockNotSynced("no clock probe in this segment yet")
        u = self.unwrap(device_us)
        return round(self._h_ref + self._slope * (u - self._d_ref))

    def device_to_utc_ns(self, device_us: int) -> int:
        return self.device_to_host_ns(device_us) + int(self.utc_offset_ns())
