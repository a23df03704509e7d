"""Status LED: a small state machine shown on one LED, with sysfs LED class, libgpiod v2 and null backends.

States and patterns (on ms / off ms; solid = always on):

=============  ============  =================================================
state          pattern       meaning
=============  ============  =================================================
booting        250 / 250     starting up, not yet connected
idle           100 / 2900    ready, no session running
recording      solid         a session is running and data reaches the broker
buffering      500 / 500     broker unreachable or backlog: data kept in the outbox
sensor_fault   100 / 100     a sensor is missing or failing (session continues)
fatal          50 / 50       the unit cannot work (bad config, disk error)
=============  ============  =================================================

The displayed state is the most severe condition that holds (fatal > sensor_fault > buffering >
recording > idle > booting), computed by :func:`resolve_state`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Protocol

from core.errors import ConfigError, DyadsyncError
from core.vocab import LED_STATES

logger = logging.getLogger(__name__)

STATES = LED_STATES
PATTERNS: dict[str, tuple[int, int] | None] = {
    "booting": (250, 250),
    "idle": (100, 2900),
    "recording": None,  # solid on
    "buffering": (500, 500),
    "sensor_fault": (100, 100),
    "fatal": (50, 50),
}


class LedError(DyadsyncError, OSError):
    """An LED backend could not be driven."""


def resolve_state(*, fatal: bool = False, sensor_fault: bool = False, buffering: bool = False,
                  recording: bool = False, ready: bool = True) -> str:
    """The state the LED should show for the current conditions (most severe wins)."""
    if fatal:
        return "fatal"
    if sensor_fault:
        return "sensor_fault"
    if buffering:
        return "buffering"
    if recording:
        return "recording"
    return "idle" if ready else "booting"


class LedBackend(Protocol):
    def show(self, pattern: tuple[int, int] | None) -> None: ...

    def close(self) -> None: ...


class NullLed:
    """No LED (containers, CI). Remembers the last pattern for inspection."""

    def __init__(self) -> None:
        self.pattern: tuple[int, int] | None | str = "unset"

    def show(self, pattern: tuple[int, int] | None) -> None:
        self.pattern = pattern

    def close(self) -> None:
        pass


class SysfsLed:
    """Linux LED class: ``<root>/<name>/{brightness,max_brightness,trigger,delay_on,delay_off}``.

    Solid: ``trigger`` = ``none`` then ``brightness`` = max. Blinking: ``trigger`` = ``timer`` (the kernel
    then creates ``delay_on``/``delay_off``) and the two delays in ms. ``close()`` turns the LED off.
    """

    def __init__(self, root: Path | str, name: str) -> None:
        self.dir = Path(root) / name
        if not (self.dir / "brightness").exists():
            raise LedError(f"LED {name!r} not found: {self.dir / 'brightness'} does not exist")
        try:
            self.max = int((self.dir / "max_brightness").read_text().strip())
        except (OSError, ValueError):
            self.max = 1

    def _write(self, attr: str, value: str) -> None:
        try:
            (self.dir / attr).write_text(value + "\n")
        except OSError as exc:
            raise LedError(f"cannot write {self.dir / attr}: {exc}") from exc

    def show(self, pattern: tuple[int, int] | None) -> None:
        if pattern is None:
            self._write("trigger", "none")
            self._write("brightness", str(self.max))
        else:
            self._write("trigger", "timer")
            self._write("delay_on", str(pattern[0]))
            self._write("delay_off", str(pattern[1]))

    def close(self) -> None:
        self._write("trigger", "none")
        self._write("brightness", "0")


class GpiodLed:
    """libgpiod v2 (``gpiod`` from PyPI): one output line, blinked by a small thread.

    ``gpiod_module`` defaults to ``import gpiod``; tests pass a stand-in with the same v2 API
    (``request_lines``, ``LineSettings``, ``line.Direction``, ``line.Value``).
    """

    def __init__(self, chip: str, line: int, *, active_low: bool = False, gpiod_module: Any = None) -> None:
        if gpiod_module is None:
            try:
                import gpiod as gpiod_module  # type: ignore[no-redef]
            except ImportError as exc:
                raise ConfigError("leds.backend = 'gpiod' needs the 'gpiod' package (pip install 'dyadsync[gpio]')") from exc
        self._g = gpiod_module
        self.line = line
        settings = self._g.LineSettings(direction=self._g.line.Direction.OUTPUT, active_low=active_low,
                                        output_value=self._g.line.Value.INACTIVE)
        try:
            self._req = self._g.request_lines(chip, consumer="dyadsync-unit", config={line: settings})
        except OSError as exc:
            raise LedError(f"cannot request GPIO line {line} on {chip}: {exc}") from exc
        self._pattern: tuple[int, int] | None = (0, 1)
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="led-gpiod", daemon=True)
        self._thread.start()

    def _set(self, on: bool) -> None:
        self._req.set_value(self.line, self._g.line.Value.ACTIVE if on else self._g.line.Value.INACTIVE)

    def _run(self) -> None:
        on = False
        while not self._stop.is_set():
            pattern = self._pattern
            if pattern is None:
                self._set(True)
                self._changed.wait()
            else:
                on = not on
                self._set(on)
                self._changed.wait((pattern[0] if on else pattern[1]) / 1000.0)
            self._changed.clear()

    def show(self, pattern: tuple[int, int] | None) -> None:
        self._pattern = pattern
        self._changed.set()

    def close(self) -> None:
        self._stop.set()
        self._changed.set()
        self._thread.join(2)
        self._set(False)
        self._req.release()


class StatusLed:
    """Holds the current state and drives a backend only on changes; backend errors are logged once."""

    def __init__(self, backend: LedBackend) -> None:
        self.backend = backend
        self.state: str | None = None
        self.history: list[str] = []
        self._lock = threading.Lock()
        self._failed = False

    def set(self, state: str) -> None:
        if state not in PATTERNS:
            raise ValueError(f"unknown LED state {state!r}; one of {STATES}")
        with self._lock:
            if state == self.state:
                return
            self.state = state
            self.history.append(state)
            try:
                self.backend.show(PATTERNS[state])
                self._failed = False
            except LedError as exc:
                if not self._failed:
                    logger.error("status LED: %s", exc)
                self._failed = True

    def close(self) -> None:
        try:
            self.backend.close()
        except LedError as exc:
            logger.warning("status LED close: %s", exc)


def make_led(cfg: Any) -> StatusLed:
    """Build the status LED from a :class:`device.config.LedConfig`."""
    if cfg.backend == "sysfs":
        return StatusLed(SysfsLed(cfg.sysfs_root, cfg.name))
    if cfg.backend == "gpiod":
        return StatusLed(GpiodLed(cfg.gpio_chip, cfg.gpio_line, active_low=cfg.active_low))
    return StatusLed(NullLed())
