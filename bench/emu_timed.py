"""``hardware.factory`` for ``bench_unit.py --emulated``: the hil register-level I2C emulators of
``tests/device/emu_hw.py``, with the CPU time spent *inside* the emulated bus counted.

On a Raspberry Pi the work behind an smbus2 call is done by the sensor chips and the kernel's I2C driver;
here the emulators compute every register, FIFO sample and ADS1115 conversion in Python, in the unit's own
process and threads. To report the unit's own cost beside the whole process, every call into the emulated
bus adds its thread CPU time (``time.thread_time``, so sleeps and waits are not counted) to a total that a
daemon thread writes to ``$DYADSYNC_EMU_CPU_FILE`` once a second (its own CPU time counted in
the total too: it is the benchmark's meter, not the unit).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from tests.device import emu_hw

_lock = threading.Lock()
_total_s = 0.0


class TimedBus:
    """Proxy of an emulated smbus2-like bus: the same methods, with their CPU time counted."""

    def __init__(self, bus: object) -> None:
        self._bus = bus

    def __getattr__(self, name: str):
        attr = getattr(self._bus, name)
        if not callable(attr):
            return attr

        def timed(*args, **kwargs):
            global _total_s
            t0 = time.thread_time()
            try:
                return attr(*args, **kwargs)
            finally:
                dt = time.thread_time() - t0
                with _lock:
                    _total_s += dt

        self.__dict__[name] = timed  # one wrapper per method, so the proxy itself costs the unit little
        return timed


def emulator_cpu_s() -> float:
    with _lock:
        return _total_s


def _writer(path: Path) -> None:
    """Once a second; this thread's own CPU time (benchmark instrumentation, not the unit) is added too."""
    global _total_s
    while True:
        t0 = time.thread_time()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{emulator_cpu_s():.6f}\n")
        os.replace(tmp, path)
        time.sleep(1.0)
        with _lock:
            _total_s += time.thread_time() - t0


class TimedEmuHardware(emu_hw.EmuHardware):
    def __init__(self, cfg, clock) -> None:
        super().__init__(cfg, clock)
        self._timed = TimedBus(self.bus)
        out = os.environ.get("DYADSYNC_EMU_CPU_FILE")
        if out:
            threading.Thread(target=_writer, args=(Path(out),), name="emu-cpu", daemon=True).start()

    def i2c_bus(self, number: int):
        super().i2c_bus(number)  # the same checks
        return self._timed


def make(cfg, clock) -> TimedEmuHardware:
    return TimedEmuHardware(cfg, clock)
