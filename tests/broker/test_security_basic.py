"""The generated Mosquitto configuration keeps strangers out and units in their own topics."""

from __future__ import annotations

import paho.mqtt.client as mqtt

from broker import wire

from ..conftest import ROOM


def test_anonymous_and_wrong_password_refused(mqtt_client):
    _, rc = mqtt_client(None, None)
    assert rc is not None and rc.is_failure, rc
    _, rc = mqtt_client("unit-a", "not-the-password")
    assert rc is not None and rc.is_failure, rc


def test_unit_confined_to_own_topics(mqtt_client, room_auth):
    rec, rc = mqtt_client(*room_auth.service_user("recorder"))
    assert not rc.is_failure
    rec.subscribe(f"dyadsync/v1/{ROOM}/#", qos=1)
    a, _ = mqtt_client("unit-a", room_auth.units["unit-a"], protocol=mqtt.MQTTv5)
    b, _ = mqtt_client("unit-b", room_auth.units["unit-b"])
    b.subscribe(wire.raw_topic(ROOM, "unit-a", "client/eda"), qos=1)  # not allowed: B must not read A's raw data
    b.subscribe(wire.feat_topic(ROOM, "unit-a", "client/eda"), qos=1)  # not allowed either (A is not B's partner)
    import time

    time.sleep(0.3)
    forged = a.publish(wire.status_topic(ROOM, "unit-b"), b"forged", qos=1)
    forged.wait_for_publish(5)
    own = a.publish(wire.raw_topic(ROOM, "unit-a", "client/eda"), b"x", qos=1)
    own.wait_for_publish(5)
    feat = a.publish(wire.feat_topic(ROOM, "unit-a", "client/eda"), b"y", qos=1)
    feat.wait_for_publish(5)
    assert rec.collector.wait_for(2, 5)
    time.sleep(0.3)
    topics = [m.topic for m in rec.collector.messages]
    assert wire.raw_topic(ROOM, "unit-a", "client/eda") in topics
    assert wire.status_topic(ROOM, "unit-b") not in topics
    assert b.collector.messages == []
