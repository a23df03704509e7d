"""Console and session-record fixtures: a real Mosquitto (tests/conftest.py), the hub recorder, and a real
unit with simulated sensors (as tests/device does), all torn down afterwards."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from broker import store
from broker.recorder import Recorder
from device.config import load_config
from device.unit import Unit
from tests.device.conftest import SENSORS_BOTH, Console, console, unit_toml  # noqa: F401  (fixtures)


def wait(pred, timeout_s: float = 30.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


class RunningUnit:
    def __init__(self, unit: Unit) -> None:
        self.unit = unit
        self.stop = threading.Event()
        self.thread = threading.Thread(target=unit.run, args=(self.stop, False), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@dataclass
class Room:
    db: object
    recorder: Recorder
    console: Console
    unit: RunningUnit

    def con(self):
        return store.connect(self.db, readonly=True)

    def settled(self) -> bool:
        """Everything the broker delivered so far is stored (the recorder's queue is empty)."""
        return wait(lambda: self.recorder.pending() == 0, 10)


@pytest.fixture
def room(tmp_path, mosquitto, room_auth, unit_toml):  # noqa: F811
    """The hub recorder, the console (svc-console) and unit-a (four synthetic sensors, real time) in room-a."""
    rec = Recorder(tmp_path / "hub.sqlite", "room-a", mosquitto.host, mosquitto.port,
                   *room_auth.service_user("recorder")).start()
    con = Console(mosquitto.host, mosquitto.port, *room_auth.service_user("console"))
    unit = RunningUnit(Unit(load_config(unit_toml(sensors=SENSORS_BOTH))))
    try:
        assert con.wait_status("unit-a", lambda s: s.state == "idle"), con.status
        yield Room(tmp_path / "hub.sqlite", rec, con, unit)
    finally:
        unit.close()
        con.close()
        rec.stop()
