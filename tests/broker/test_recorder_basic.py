"""The recorder against a real Mosquitto: stores, deduplicates, counts malformed messages, survives them."""

from __future__ import annotations

import json
import time

import numpy as np

from broker import store, wire
from broker.recorder import Recorder
from firmware_bridge.block import SampleBlock

from ..conftest import ROOM


def _wait(pred, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_recorder_stores_dedups_and_rejects(tmp_path, mosquitto, room_auth, mqtt_client):
    db = tmp_path / "hub.sqlite"
    user, pw = room_auth.service_user("recorder")
    unit, _ = mqtt_client("unit-a", room_auth.units["unit-a"])
    with Recorder(db, ROOM, mosquitto.host, mosquitto.port, user, pw) as rec:
        topic = wire.feat_topic(ROOM, "unit-a", "client/eda")
        blocks = [SampleBlock("client/eda", seq, 1_000_000_000 * seq, 4.0, np.arange(4, dtype=np.float32) + seq)
                  for seq in range(10)]
        for b in blocks + blocks[3:6]:  # three redeliveries
            unit.publish(topic, wire.encode_block(b, "s1"), qos=1).wait_for_publish(5)
        unit.publish(topic, b"DYSB-garbage", qos=1).wait_for_publish(5)
        unit.publish(wire.metric_topic(ROOM, "unit-a", "sync_eda"), b'{"schema": 99}', qos=1).wait_for_publish(5)
        m = wire.Metric(session="s1", seq=0, name="sync_eda", window_start_ns=0, window_end_ns=30, values={"r0": 0.5})
        unit.publish(wire.metric_topic(ROOM, "unit-a", "sync_eda"), m.encode(), qos=1).wait_for_publish(5)
        assert _wait(lambda: rec.counts["stored_feat"] == 10 and rec.counts["malformed"] == 2
                     and rec.counts["stored_metric"] == 1 and rec.counts["duplicate"] == 3), dict(rec.counts)
    con = store.connect(db, readonly=True)
    assert store.stored_counts(con, "unit-a", "s1") == {"raw": 0, "feat": 10, "metric": 1}
    t, v, rate = store.read_stream(con, "s1", "client/eda")
    assert rate == 4.0 and v.size == 40
    np.testing.assert_array_equal(v[4:8], np.arange(4, dtype=np.float32) + 1)
    assert store.counters(con)["malformed"] == 2
    reasons = [r for (r,) in con.execute("SELECT reason FROM rejects")]
    assert any("magic" in r or "truncated" in r for r in reasons) and any("schema" in r for r in reasons)
    _, _, _, values = next(iter(store.read_metrics(con, "s1", "sync_eda")))
    assert values == {"r0": 0.5}
    assert store.gaps(con) == []
    json.dumps(store.counters(con))
