"""Console and session-record fixtures: a real Mosquitto (tests/conftest.py), the hub recorder, and a real
unit with simulated sensors (as tests/device does), all torn down afterwards."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from broker import store
from broker.recorder import Recorder
from device.config import load_config
from device.unit import Unit
from tests.device.conftest import (  # noqa: F401  (fixtures and shared helpers)
    SENSORS_BOTH,
    Console,
    RunningUnit,
    console,
    unit_toml,
    wait,
)


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
