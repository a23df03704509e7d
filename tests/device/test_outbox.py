"""Durable outbox: ordering, ack-before-delete, quota policy, and kill -9 at random moments."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from broker import store, wire
from broker.recorder import Recorder
from device.link import Link
from device.outbox import Outbox, OutMsg

from .outbox_child import SESSION, STREAM, block_for

ROOT = Path(__file__).resolve().parents[2]


def test_put_pending_delete_and_state_are_atomic(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    ids = box.put([OutMsg("t/a", b"1", "feat"), OutMsg("t/b", b"22", "metric")], state={"next_seq": 2})
    assert ids == sorted(ids) and len(ids) == 2
    assert [q.topic for q in box.pending()] == ["t/a", "t/b"]
    assert box.get_state("next_seq") == 2
    assert box.acknowledge([ids[0]]) == 1
    assert box.acknowledge([ids[0]]) == 0  # a second PUBACK for the same row changes nothing
    assert box.depth == 1
    box.close()
    again = Outbox(tmp_path / "o.sqlite")  # reopened: depth and byte count come back from disk
    assert again.depth == 1 and again.bytes_queued == len(b"22") + len("t/b")
    assert [q.payload for q in again.pending()] == [b"22"]


def test_acknowledged_data_stays_as_resend_tail_then_expires(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", keep_acked_s=0.3)
    ids = box.put([OutMsg("t/raw", b"r", "raw"), OutMsg("t/feat", b"f", "feat"), OutMsg("t/m", b"m", "metric"),
                   OutMsg("t/status", b"s", "status", retain=True), OutMsg("t/ack", b"a", "ack")])
    assert box.acknowledge(ids) == 5
    assert box.depth == 0 and box.bytes_queued == 0 and box.pending() == []
    # data kinds stay for the resend; the retained status and the command ack are gone at their PUBACK
    assert [q.topic for q in box.acked_tail()] == ["t/raw", "t/feat", "t/m"]
    box.close()
    again = Outbox(tmp_path / "o.sqlite", keep_acked_s=0.3)  # the tail survives a restart, not as queued
    assert again.depth == 0 and [q.topic for q in again.acked_tail()] == ["t/raw", "t/feat", "t/m"]
    assert again.acknowledge([ids[0]]) == 0  # the resent copy's PUBACK refreshes, counts nothing
    time.sleep(0.35)
    new = again.put([OutMsg("t/raw", b"r2", "raw")])
    again.acknowledge(new)  # the next acknowledgement purges what is older than keep_acked_s
    assert [q.payload for q in again.acked_tail()] == [b"r2"]
    assert Outbox(tmp_path / "o2.sqlite", keep_acked_s=0).acknowledge(
        Outbox(tmp_path / "o2.sqlite").put([OutMsg("t", b"x", "raw")])) == 1
    assert Outbox(tmp_path / "o2.sqlite").acked_tail() == []  # keep_acked_s = 0: deleted at the PUBACK


def test_outbox_without_the_tail_column_is_upgraded(tmp_path):
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript(
        "CREATE TABLE outbox(id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,"
        " qos INTEGER NOT NULL, retain INTEGER NOT NULL, kind TEXT NOT NULL, size INTEGER NOT NULL,"
        " created_ns INTEGER NOT NULL);"
        "INSERT INTO outbox(topic, payload, qos, retain, kind, size, created_ns) VALUES('t', x'01', 1, 0, 'raw', 2, 0);")
    con.close()
    box = Outbox(db)
    assert box.depth == 1 and [q.payload for q in box.pending()] == [b"\x01"]
    assert box.integrity_check() == "ok"


def test_quota_counts_queued_bytes_and_evicts_the_resend_tail_first(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", quota_bytes=1000)
    box.acknowledge(box.put([OutMsg("r", b"x" * 399, "raw") for _ in range(2)]))  # 800 bytes of tail
    box.put([OutMsg("f", b"y" * 499, "feat") for _ in range(2)])  # the tail is not queued: these fit
    assert box.counters() == {} and len(box.acked_tail()) == 2 and box.bytes_queued == 1000
    box.put([OutMsg("m", b"z" * 99, "metric")])  # over quota: the tail goes first, then the oldest feature
    assert box.acked_tail() == [] and [q.kind for q in box.pending()] == ["feat", "metric"]
    assert box.counters() == {"dropped_feat": 1}


def test_quota_drops_oldest_raw_then_features_never_metrics(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", quota_bytes=1000)
    box.put([OutMsg("r", b"x" * 199, "raw") for _ in range(3)])  # 600 bytes
    box.put([OutMsg("f", b"y" * 199, "feat") for _ in range(2)])  # 1000 bytes: full
    box.put([OutMsg("m", b"z" * 299, "metric")])  # needs 300: the two oldest raw go
    kinds = [q.kind for q in box.pending()]
    assert kinds == ["raw", "feat", "feat", "metric"]
    assert box.counters() == {"dropped_raw": 2}
    box.put([OutMsg("m", b"z" * 399, "metric")])  # raw then the oldest feature go
    assert [q.kind for q in box.pending()] == ["feat", "metric", "metric"]
    assert box.counters() == {"dropped_raw": 3, "dropped_feat": 1}
    ids = box.put([OutMsg("r", b"x" * 999, "raw")])  # a raw block that cannot fit is refused, counted
    assert ids == [0]
    assert box.counters()["dropped_raw"] == 4
    assert box.bytes_queued <= 1000 + 400  # only never-dropped kinds may exceed the quota
    assert box.integrity_check() == "ok"


def test_link_publishes_in_order_and_deletes_only_on_puback(tmp_path, mosquitto, room_auth, mqtt_client):
    sub, _ = mqtt_client(*room_auth.service_user("recorder"))
    sub.subscribe("dyadsync/v1/room-a/unit-a/#", qos=1)
    time.sleep(0.3)
    box = Outbox(tmp_path / "o.sqlite")
    topic = wire.feat_topic("room-a", "unit-a", STREAM)
    box.put([OutMsg(topic, wire.encode_block(block_for(s), SESSION), "feat") for s in range(200)])
    link = Link(box, host=mosquitto.host, port=mosquitto.port, client_id="dyadsync-unit-room-a-unit-a",
                username="unit-a", password=room_auth.units["unit-a"], max_inflight=7).start()
    try:
        assert link.flush(20), link.stats()
        assert sub.collector.wait_for(200)
        seqs = [wire.decode_block(m.payload)[0].seq for m in sub.collector.messages]
        assert seqs == list(range(200))
        assert box.depth == 0
    finally:
        link.stop()


def test_link_buffers_through_broker_outage(tmp_path, mosquitto, room_auth):
    """Messages queued while the broker is down are delivered after it comes back; none acked early."""
    rec = Recorder(tmp_path / "hub.sqlite", "room-a", mosquitto.host, mosquitto.port,
                   *room_auth.service_user("recorder")).start()
    box = Outbox(tmp_path / "o.sqlite")
    topic = wire.feat_topic("room-a", "unit-a", STREAM)
    link = Link(box, host=mosquitto.host, port=mosquitto.port, client_id="dyadsync-unit-room-a-unit-a",
                username="unit-a", password=room_auth.units["unit-a"], reconnect_min_s=0.1,
                reconnect_max_s=0.5).start()
    try:
        assert link.wait_connected(10)
        box.put([OutMsg(topic, wire.encode_block(block_for(s), SESSION), "feat") for s in range(50)])
        assert link.flush(10)
        mosquitto.stop()
        box.put([OutMsg(topic, wire.encode_block(block_for(s), SESSION), "feat") for s in range(50, 120)])
        time.sleep(0.5)
        assert box.depth == 70  # nothing deleted without a PUBACK
        mosquitto.start()
        assert link.flush(30), link.stats()
    finally:
        link.stop()
    deadline = time.monotonic() + 20
    con = store.connect(tmp_path / "hub.sqlite", readonly=True)
    while time.monotonic() < deadline and store.stored_counts(con, "unit-a")["feat"] < 120:
        time.sleep(0.1)
    rec.stop()
    assert store.stored_counts(con, "unit-a")["feat"] == 120
    assert store.gaps(con, SESSION) == []


@pytest.mark.parametrize("keep_acked_s", [30.0, 0.0])
def test_resend_tail_survives_a_broker_killed_before_the_recorder_had_it(tmp_path, room_auth, keep_acked_s):
    """Mosquitto PUBACKs, then is SIGKILLed before its next autosave with the messages still queued for the
    (away) recorder: with the resend tail every message reaches the hub; without it (keep_acked_s = 0,
    the control) they are lost, which shows the fault is real."""
    from broker.mosquitto import MosquittoProcess, write_broker_files

    files = write_broker_files(tmp_path / "broker", room_auth)
    files.conf.write_text(files.conf.read_text().replace("autosave_interval 5", "autosave_interval 3600"))
    broker = MosquittoProcess(files).start()
    hub = tmp_path / "hub.sqlite"
    rec_user = room_auth.service_user("recorder")
    link = None
    try:
        rec = Recorder(hub, "room-a", broker.host, broker.port, *rec_user).start()  # returns once subscribed
        rec.stop()  # the recorder is away; its persistent session queues for it
        broker.stop()  # a clean stop saves that session to disk
        broker.start()
        box = Outbox(tmp_path / "o.sqlite", keep_acked_s=keep_acked_s)
        topic = wire.feat_topic("room-a", "unit-a", STREAM)
        link = Link(box, host=broker.host, port=broker.port, client_id="dyadsync-unit-room-a-unit-a",
                    username="unit-a", password=room_auth.units["unit-a"], reconnect_min_s=0.1,
                    reconnect_max_s=0.5).start()
        assert link.wait_connected(10)
        box.put([OutMsg(topic, wire.encode_block(block_for(s), SESSION), "feat") for s in range(40)])
        assert link.flush(10), link.stats()  # all PUBACKed: the broker holds them in memory only
        broker.kill()
        broker.start()
        deadline = time.monotonic() + 10
        while link.stats().get("connects", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert link.stats().get("connects", 0) >= 2
        box.put([OutMsg(topic, wire.encode_block(block_for(s), SESSION), "feat") for s in range(40, 50)])
        assert link.flush(10), link.stats()
        time.sleep(0.5)
        rec = Recorder(hub, "room-a", broker.host, broker.port, *rec_user).start()
        want = 50 if keep_acked_s else 10
        con = store.connect(hub, readonly=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and store.stored_counts(con, "unit-a")["feat"] < want:
            time.sleep(0.1)
        time.sleep(0.5)  # let any further copies land (none may be stored twice)
        rec.stop()
        seqs = [r[0] for r in con.execute("SELECT seq FROM blocks WHERE unit='unit-a' ORDER BY seq")]
        con.close()
    finally:
        if link is not None:
            link.stop()
        broker.stop()
    if keep_acked_s:
        assert seqs == list(range(50)), seqs
        assert link.stats()["resent"] >= 40
    else:
        assert seqs == list(range(40, 50)), seqs  # the 40 acknowledged before the kill are gone


def _run_child(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "tests.device.outbox_child", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill9_at_random_moments_loses_and_duplicates_nothing(tmp_path, mosquitto, room_auth):
    total = 1500
    db = tmp_path / "unit.sqlite"
    hub = tmp_path / "hub.sqlite"
    rec = Recorder(hub, "room-a", mosquitto.host, mosquitto.port, *room_auth.service_user("recorder")).start()
    rng = random.Random(1234)
    base = ["--db", str(db), "--host", mosquitto.host, "--port", str(mosquitto.port), "--user", "unit-a",
            "--password", room_auth.units["unit-a"], "--room", "room-a", "--total", str(total)]
    starts = []
    try:
        for i in range(8):
            child = _run_child([*base, "--seed", str(i)])
            first = child.stdout.readline()  # "START <seq>": the child is publishing from here on
            if first.startswith("START"):
                starts.append(int(first.split()[1]))
            time.sleep(rng.uniform(0.0, 0.6))  # the kill lands at a random moment while it publishes
            child.send_signal(signal.SIGKILL)
            child.communicate(10)
        child = _run_child([*base, "--seed", "99"])
        out, err = child.communicate(120)
        assert child.returncode == 0 and "DONE" in out, err[-2000:]
    finally:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            con = store.connect(hub, readonly=True)
            n = store.stored_counts(con, "unit-a")["feat"]
            con.close()
            if n >= total:
                break
            time.sleep(0.1)
        rec.stop()
    assert any(0 < s < total for s in starts), f"no kill landed mid-stream: restarts began at {starts}"
    con = store.connect(hub, readonly=True)
    rows = con.execute("SELECT seq, data FROM blocks WHERE unit='unit-a' AND stream=? AND session=? ORDER BY seq",
                       (STREAM, SESSION)).fetchall()
    assert [r[0] for r in rows] == list(range(total))  # every committed block, exactly once after dedup
    for seq, data in rows:
        np.testing.assert_array_equal(np.frombuffer(data, "<f4"), block_for(seq).values)
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert check.execute("SELECT COUNT(*) FROM outbox WHERE acked_ns IS NULL").fetchone()[0] == 0
    check.close()


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_outbox_reopens_after_kill_with_integrity(tmp_path, sync):
    """A writer killed mid-transaction leaves a consistent file (no torn rows, counters agree)."""
    db = tmp_path / "o.sqlite"
    code = (
        "import sys; from device.outbox import Outbox, OutMsg\n"
        f"b = Outbox({str(db)!r}, synchronous={sync!r})\n"
        "i = 0\n"
        "while True:\n"
        "    b.put([OutMsg('t', bytes(1000), 'raw')] * 10, state={'n': i + 10}); i += 10\n"
        "    print(i, flush=True)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    for _ in range(30):
        p.stdout.readline()
    p.kill()
    p.wait(5)
    box = Outbox(db)
    assert box.integrity_check() == "ok"
    assert box.depth == box.get_state("n")  # rows and the counter committed together
