"""Shared fixtures: a real Mosquitto on a free loopback port with the project's generated config,
MQTT client factories, temp data dirs. Every fixture tears down what it started."""

from __future__ import annotations

import signal
import threading

import paho.mqtt.client as mqtt
import pytest

from broker.auth import RoomAuth
from broker.mosquitto import MosquittoProcess, child_broker_user, find_mosquitto, write_broker_files
from broker.mqtt import client_id, make_client

ROOM = "room-a"
UNITS = ["unit-a", "unit-b"]


@pytest.fixture
def room_auth() -> RoomAuth:
    return RoomAuth.generate(ROOM, UNITS, partners={"unit-a": "unit-b"})


@pytest.fixture
def mosquitto(tmp_path, room_auth):
    """A running Mosquitto for ``room_auth`` (anonymous denied, ACL applied); stopped afterwards."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: `make test` installs Debian's mosquitto package")
    files = write_broker_files(tmp_path / "broker", room_auth)
    proc = MosquittoProcess(files).start()
    try:
        yield proc
    finally:
        proc.stop()


class Collector:
    """Collects messages received by a paho client; wait_for(n) blocks until n have arrived."""

    def __init__(self) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._cond = threading.Condition()

    def on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout_s: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.messages) >= n, timeout_s)


@pytest.fixture
def mqtt_client(mosquitto):
    """Factory: ``mqtt_client(username, password, protocol=MQTTv311)`` -> (connected client, reason code).

    Clients are disconnected at teardown."""
    clients: list[mqtt.Client] = []

    def make(username: str | None, password: str | None, protocol=mqtt.MQTTv311, wait: bool = True):
        connected = threading.Event()
        result: dict = {}
        def on_connect(client, userdata, flags, reason_code, properties):
            result["rc"] = reason_code
            connected.set()

        collector = Collector()
        c = make_client(client_id("test"), username=username, password=password, protocol=protocol,
                        on_connect=on_connect, on_message=collector.on_message)
        c.collector = collector
        c.connect(mosquitto.host, mosquitto.port)
        c.loop_start()
        clients.append(c)
        if wait:
            assert connected.wait(10), "no CONNACK from mosquitto"
        return c, result.get("rc")

    yield make
    for c in clients:
        c.disconnect()
        c.loop_stop()


# ======================================================================================================
# broker/hub fixtures (owned by the hub work; keep other packages' fixtures in their own blocks)
# ======================================================================================================
@pytest.fixture
def hub_factory(tmp_path):
    """Factory: ``hub_factory(**config)`` runs ``hub init`` on free ports, starts Mosquitto on the generated
    conf and returns ``(cfg, layout, proc)``. Everything started is stopped at teardown."""
    from broker.hub_config import parse_hub_config
    from broker.hub_init import init_hub
    from broker.mosquitto import free_port

    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: `make test` installs Debian's mosquitto package")
    procs: list[MosquittoProcess] = []

    def make(name: str = "hub", start: bool = True, **overrides):
        data = {"room": ROOM, "units": list(UNITS), "partners": {"unit-a": "unit-b"},
                "out_dir": str(tmp_path / name), "listener": {"host": "127.0.0.1", "port": free_port()}}
        data.update(overrides)
        cfg = parse_hub_config(data)
        layout = init_hub(cfg, run_as_user=child_broker_user())  # Mosquitto stays whoever runs the tests
        proc = MosquittoProcess(layout.broker)
        if start:
            proc.start()
        procs.append(proc)
        return cfg, layout, proc

    yield make
    for p in procs:
        p.stop()


def ctrl_c_works() -> None:
    """``preexec_fn`` for a child the test stops with SIGINT, as an operator's Ctrl-C would: a pytest-xdist
    worker ignores SIGINT, and an ignored signal stays ignored across exec (Python then installs no
    KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
