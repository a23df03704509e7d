"""The embedded broker (used by the demo where Mosquitto is not installed) enforces the same accounts."""

from __future__ import annotations

import threading
import time

import pytest

from broker import wire
from broker.auth import RoomAuth
from broker.embedded import EmbeddedBroker
from broker.mqtt import client_id, make_client


@pytest.fixture
def embedded(tmp_path):
    auth = RoomAuth.generate("room-e", ["unit-a", "unit-b"])
    broker = EmbeddedBroker(tmp_path, auth).start()
    try:
        yield broker, auth
    finally:
        broker.stop()


def _client(broker, user, password):
    got: list = []
    rc: list = []
    done = threading.Event()
    c = make_client(client_id("t"), username=user or None, password=password,
                    on_connect=lambda cl, u, f, reason, p: (rc.append(reason), done.set()),
                    on_message=lambda cl, u, m: got.append(m.topic))
    c.connect(broker.host, broker.port)
    c.loop_start()
    done.wait(10)
    return c, rc, got


def test_embedded_refuses_strangers_and_confines_units(embedded):
    broker, auth = embedded
    clients = []
    try:
        c, rc, _ = _client(broker, None, None)
        clients.append(c)
        time.sleep(0.3)
        assert not rc or rc[0].is_failure
        c, rc, _ = _client(broker, "unit-a", "wrong")
        clients.append(c)
        time.sleep(0.3)
        assert not rc or rc[0].is_failure
        rec, rc, got = _client(broker, *auth.service_user("recorder"))
        clients.append(rec)
        assert rc and not rc[0].is_failure
        rec.subscribe("dyadsync/v1/room-e/#", qos=1)
        a, rc, _ = _client(broker, "unit-a", auth.units["unit-a"])
        clients.append(a)
        assert rc and not rc[0].is_failure
        time.sleep(0.3)
        a.publish(wire.status_topic("room-e", "unit-b"), b"forged", qos=1)
        a.publish(wire.raw_topic("room-e", "unit-a", "client/eda"), b"mine", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert wire.raw_topic("room-e", "unit-a", "client/eda") in got
        assert wire.status_topic("room-e", "unit-b") not in got
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
