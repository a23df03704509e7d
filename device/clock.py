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
    """Simulated UTC time running ``speed`` times real time.

    ``ScaledClock(speed, epoch_ns)``: ``now = epoch + (wall - epoch) * speed`` (default epoch: now). Every
    process given the same epoch (``hardware.sim_epoch_ns``, ``--sim-epoch-ns``) shares one simulated time
    line, also across restarts; the epoch should be a recent wall time (a future epoch runs backwards
    from it). ``ScaledClock(speed, start_ns=T)``: simulated time is ``T`` at construction, for
    single-process simulations that want an arbitrary start.
    """

    def __init__(self, speed: float = 1.0, epoch_ns: int | None = None, *, start_ns: int | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed!r}")
        if epoch_ns is not None and start_ns is not None:
            raise ValueError("give epoch_ns or start_ns, not both")
        self.speed = float(speed)
        wall = time.time_ns()
        self.epoch_ns = wall if epoch_ns is None else int(epoch_ns)
        self._wall_anchor_ns = self.epoch_ns
        if start_ns is not None:  # sim time start_ns now
            self.epoch_ns = int(start_ns)
            self._wall_anchor_ns = wall

    def now_ns(self) -> int:
        return self.epoch_ns + int((time.time_ns() - self._wall_anchor_ns) * self.speed)

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        return super().sleep(seconds / self.speed, stop)


def make_clock(speed: float = 1.0, epoch_ns: int | None = None) -> Clock:
    return Clock() if speed == 1.0 else ScaledClock(speed, epoch_ns)
