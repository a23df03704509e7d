"""Fixtures: an emulated firmware on a real pty and a SerialLink on it, always torn down."""

from __future__ import annotations

import math
import time

import pytest

from firmware_bridge.clock import ClockMapper
from firmware_bridge.link import SerialLink
from hil.emulators.firmware import EmulatedChannel, FirmwareEmulator


def dyad_channels(eda_frame: int = 8, ppg_frame: int = 25) -> list[EmulatedChannel]:
    """Therapist and client EDA at 32 Hz (µS, 1e-4 µS per count) and PPG at 100 Hz (counts)."""
    return [
        EmulatedChannel(0, "therapist", "eda", 32.0, "uS", lambda t: 5.0 + 2.0 * math.sin(0.1 * t), 1e-4, 0.0, eda_frame),
        EmulatedChannel(1, "client", "eda", 32.0, "uS", lambda t: 8.0 + math.cos(0.07 * t), 1e-4, 0.0, eda_frame),
        EmulatedChannel(2, "therapist", "ppg", 100.0, "counts", lambda t: 50000 + 3000 * math.sin(7.5 * t), 1.0, 0.0, ppg_frame),
        EmulatedChannel(3, "client", "ppg", 100.0, "counts", lambda t: 60000 + 2500 * math.sin(6.9 * t), 1.0, 0.0, ppg_frame),
    ]


def make_link(emu: FirmwareEmulator, **kw) -> SerialLink:
    """A link whose real-time constants are scaled to the emulator's speed."""
    s = emu.speed
    args = dict(
        clock=ClockMapper(nominal_ns_per_us=1000.0 / s, half_life_s=max(1.0, 60.0 / s)),
        ping_interval_s=min(0.5, 2.0 / s),
        handshake_timeout_s=max(0.3, 5.0 / s),
        silence_timeout_s=max(0.5, 8.0 / s),  # generous: a starved emulator thread is not an unplug
        backoff_initial_s=0.005,
        backoff_max_s=min(1.0, 0.5 / s),
    )
    args.update(kw)
    return SerialLink(emu.path, **args)


def wait_sim(emu: FirmwareEmulator, t_s: float, timeout_real_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_real_s
    while emu.sim_time() < t_s:
        if time.monotonic() > deadline:
            raise TimeoutError(f"emulator did not reach simulated t={t_s}")
        time.sleep(min(0.05, max(0.001, (t_s - emu.sim_time()) / emu.speed)))


@pytest.fixture
def emulator_factory(tmp_path):
    made: list = []

    def make(channels=None, **kw) -> FirmwareEmulator:
        emu = FirmwareEmulator(channels or dyad_channels(), tmp_path, **kw)
        made.append(emu)
        return emu.start()

    yield make
    for emu in made:
        emu.stop()


@pytest.fixture
def link_factory():
    made: list = []

    def make(emu, **kw) -> SerialLink:
        link = make_link(emu, **kw)
        made.append(link)
        return link.start()

    yield make
    for link in made:
        link.stop()
