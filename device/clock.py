"""Injectable time for the unit: real time, or simulated time running ``speed`` times faster.

Every timestamp the unit makes (sample blocks, the 4 Hz grid, status, acks) comes from a :class:`Clock`,
and every pacing sleep goes through it, so a HIL scenario can run a session of an hour in a minute
(``speed = 60``) with the same code. Network timeouts, the watchdog and MQTT keepalives stay in real time.
"""

from __future__ import annotations

import threading
import time


class Clock:
    """Real time: ``now_ns`` is UTC (``time.time_ns``), ``sleep`` is ``time.sleep``."""

    speed = 1.0

    def now_ns(self) -> int:
        return time.time_ns()

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        """Sleep ``seconds`` of this clock's time; returns True early if ``stop`` is set."""
        if stop is not None:
            return stop.wait(max(0.0, seconds))
        time.sleep(max(0.0, seconds))
        return False


class ScaledClock(Clock):
    """Simulated UTC time starting at ``start_ns`` (default: now) and running ``speed`` times real time."""

    def __init__(self, speed: float = 1.0, start_ns: int | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        self.speed = float(speed)
        self._start_ns = time.time_ns() if start_ns is None else int(start_ns)
        self._m0 = time.monotonic_ns()

    def now_ns(self) -> int:
        return self._start_ns + int((time.monotonic_ns() - self._m0) * self.speed)

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        return super().sleep(seconds / self.speed, stop)


def make_clock(speed: float = 1.0) -> Clock:
    return Clock() if speed == 1.0 else ScaledClock(speed)
