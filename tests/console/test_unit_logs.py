"""A unit that cannot reach its broker, or that its broker refuses, says so at the default log level."""

from __future__ import annotations

import logging

from broker.mosquitto import free_port
from device.config import load_config
from device.unit import Unit

from .conftest import RunningUnit, wait

SENSOR = '[[sensors]]\nname = "t-eda"\nkind = "synthetic"\nrole = "therapist"\nsignal = "eda"\n'


def _unit(tmp_path, port: int, password: str) -> Unit:
    path = tmp_path / "u.toml"
    path.write_text(f'room = "room-a"\nunit = "unit-a"\ndata_dir = "{tmp_path / "data"}"\n[broker]\n'
                    f'url = "mqtt://127.0.0.1:{port}"\nusername = "unit-a"\npassword = "{password}"\n'
                    f'reconnect_min_s = 0.1\nreconnect_max_s = 0.5\n[clock]\ncheck = "assume_synced"\n{SENSOR}')
    return Unit(load_config(path))


def _warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_unreachable_broker_is_logged(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    port = free_port()
    run = RunningUnit(_unit(tmp_path, port, "x"))
    try:
        assert wait(lambda: f"cannot reach the broker at 127.0.0.1:{port}" in _warnings(caplog), 20), \
            _warnings(caplog)
    finally:
        run.close()


def test_refused_by_broker_is_logged(tmp_path, mosquitto, caplog):
    caplog.set_level(logging.WARNING)
    run = RunningUnit(_unit(tmp_path, mosquitto.port, "wrong password"))
    try:
        assert wait(lambda: f"broker 127.0.0.1:{mosquitto.port} refused the connection" in _warnings(caplog), 20), \
            _warnings(caplog)
    finally:
        run.close()
