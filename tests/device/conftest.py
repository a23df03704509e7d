"""Device test helpers: unit config files on the test broker, a console client that sends commands."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from broker import wire
from broker.console import RoomConsole

SENSORS_BOTH = """
[[sensors]]
name = "t-eda"
kind = "synthetic"
role = "therapist"
signal = "eda"
[[sensors]]
name = "t-ppg"
kind = "synthetic"
role = "therapist"
signal = "ppg"
[[sensors]]
name = "c-eda"
kind = "synthetic"
role = "client"
signal = "eda"
[[sensors]]
name = "c-ppg"
kind = "synthetic"
role = "client"
signal = "ppg"
"""


@pytest.fixture
def unit_toml(tmp_path, mosquitto, room_auth):
    """Factory: write a unit config for ``unit`` on the test broker; returns its path."""

    def make(unit: str = "unit-a", sensors: str = SENSORS_BOTH, extra: str = "", speed: float = 1.0,
             data_dir=None, epoch_ns: int | None = None, hardware: str = "") -> str:
        path = tmp_path / f"{unit}.toml"
        data = data_dir or (tmp_path / f"data-{unit}")
        path.write_text(
            f'room = "room-a"\nunit = "{unit}"\ndata_dir = "{data}"\n'
            f'[broker]\nurl = "mqtt://{mosquitto.host}:{mosquitto.port}"\nusername = "{unit}"\n'
            f'password = "{room_auth.units[unit]}"\nreconnect_min_s = 0.1\nreconnect_max_s = 1.0\n'
            f'[clock]\ncheck = "assume_synced"\n[hardware]\nspeed = {speed}\n'
            + (f"sim_epoch_ns = {epoch_ns}\n" if epoch_ns is not None else "") + hardware +
            f"[watchdog]\nstatus_interval_s = 2\n{extra}\n{sensors}"
        )
        return str(path)

    return make


class Console(RoomConsole):
    """The room console (svc-console) of room-a, with the per-unit waits these tests use."""

    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        super().__init__(host, port, "room-a", user, password)

    def send(self, cmd: str, session: str, *, cid: str | None = None, **kw) -> str:
        return super().send(cmd, session, cid=cid or f"c-{uuid.uuid4().hex[:8]}", **kw)

    def wait_ack(self, cid: str, unit: str = "unit-a", n: int = 1, timeout_s: float = 20) -> list[wire.Ack]:
        with self.cond:
            self.cond.wait_for(lambda: len([a for a in self.acks if a.id == cid and a.unit == unit]) >= n, timeout_s)
            return [a for a in self.acks if a.id == cid and a.unit == unit]

    def wait_status(self, unit: str, pred, timeout_s: float = 20) -> wire.Status | None:  # type: ignore[override]
        with self.cond:
            self.cond.wait_for(lambda: unit in self.status and pred(self.status[unit]), timeout_s)
            s = self.status.get(unit)
            return s if s is not None and pred(s) else None


@pytest.fixture
def console(mosquitto, room_auth):
    c = Console(mosquitto.host, mosquitto.port, *room_auth.service_user("console"))
    yield c
    c.close()


def start_cmd(console: Console, session: str, **kw) -> str:
    return console.send("start", session, participants={"therapist": "T01", "client": "C01"}, **kw)


def decode(payload: bytes) -> dict:
    return json.loads(payload)


def wait(pred, timeout_s: float = 30.0, step: float = 0.05) -> bool:
    """Wait on a condition with a generous deadline (never a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


class RunningUnit:
    """A :class:`device.unit.Unit` running in a thread; ``close`` stops it and checks it ended."""

    def __init__(self, unit) -> None:
        self.unit = unit
        self.stop = threading.Event()
        self.thread = threading.Thread(target=unit.run, args=(self.stop, False), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
