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
    """Simulated UTC time running ``speed`` times real time from the anchor ``epoch_ns`` (default: now).

    ``now = epoch + (wall - epoch) * speed``: processes given the same epoch (``hardware.sim_epoch_ns``,
    ``--sim-epoch-ns``) share one simulated time line, which two-unit HIL scenarios need.
    """

    def __init__(self, speed: float = 1.0, epoch_ns: int | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        self.speed = float(speed)
        self.epoch_ns = time.time_ns() if epoch_ns is None else int(epoch_ns)

    def now_ns(self) -> int:
        return self.epoch_ns + int((time.time_ns() - self.epoch_ns) * self.speed)

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        return super().sleep(seconds / self.speed, stop)


def make_clock(speed: float = 1.0, epoch_ns: int | None = None) -> Clock:
    return Clock() if speed == 1.0 else ScaledClock(speed, epoch_ns)
