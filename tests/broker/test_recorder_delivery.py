"""Recorder against the generated hub config: duplicated, reordered and malformed deliveries."""

from __future__ import annotations

import random
import time

import numpy as np

from broker import store, wire
from broker.recorder import Recorder

from ..conftest import ROOM
from .helpers import T0_NS, ack, client, close, make_blocks, publish_all, start_cmd, wait


def test_duplicated_reordered_malformed(hub_factory, tmp_path):
    cfg, layout, proc = hub_factory()
    db = tmp_path / "hub.sqlite"
    auth = layout.auth
    a = client(proc.host, proc.port, "unit-a", auth.units["unit-a"])
    b = client(proc.host, proc.port, "unit-b", auth.units["unit-b"])
    console = client(proc.host, proc.port, *auth.service_user("console"))
    rec = Recorder(db, ROOM, proc.host, proc.port, *auth.service_user("recorder")).start()
    try:
        publish_all(console, [(wire.cmd_topic(ROOM), start_cmd("s1").encode())])
        publish_all(a, [ack("unit-a", "s1-start")] * 2)  # the unit accepted it (and the answer came twice)
        blocks = make_blocks("client/eda", 32.0, 40, 32)
        sent = [b for b in blocks if b.seq not in (17, 18, 30)]  # three blocks lost before the hub
        deliveries = sent + random.Random(1).sample(sent, 12)  # twelve redeliveries
        random.Random(2).shuffle(deliveries)  # and out of order
        topic = wire.raw_topic(ROOM, "unit-a", "client/eda")
        publish_all(a, [(topic, wire.encode_block(blk, "s1")) for blk in deliveries])
        metric_topic = wire.metric_topic(ROOM, "unit-a", "sync_eda")
        metrics = [wire.Metric("s1", k, "sync_eda", T0_NS + k * 10**9, T0_NS + (k + 30) * 10**9,
                               {"r0": 0.1 * k, "peak_z": float("nan")}) for k in range(5)]
        publish_all(a, [(metric_topic, m.encode()) for m in metrics + metrics[:2]])
        status = wire.Status(unit="unit-a", state="recording", time_ns=T0_NS + 5, session="s1",
                             dropped={"client/eda": 3})
        publish_all(a, [(wire.status_topic(ROOM, "unit-a"), status.encode())] * 2)
        t_mark = time.time_ns()
        marker = wire.Command(id="m1", cmd="marker", session="s1", time_ns=t_mark, label="rupture")
        publish_all(console, [(wire.cmd_topic(ROOM), marker.encode())] * 2)
        publish_all(a, [ack("unit-a", "m1")])
        bad = [
            (topic, b"\x00garbage"),
            (topic, wire.encode_block(blocks[0], "s1")[:-3]),  # truncated
            (topic, b"DYSB\x02" + wire.encode_block(blocks[0], "s1")[5:]),  # unknown version
            (wire.raw_topic(ROOM, "unit-a", "client/ppg"), wire.encode_block(blocks[0], "s1")),  # stream mismatch
            (topic, wire.encode_block(blocks[0], "")),  # no session
            (metric_topic, b'{"schema": 1, "session": "s1"}'),
            (metric_topic, b"\xff\xfe not json"),
        ]
        publish_all(a, bad)
        # unit-b speaks for unit-a inside its own topic: counted as unauthorized, not stored.
        forged = wire.Status(unit="unit-a", state="fatal", time_ns=T0_NS + 9)
        publish_all(b, [(wire.status_topic(ROOM, "unit-b"), forged.encode())])
        assert wait(lambda: rec.counts["malformed"] == len(bad) and rec.counts["unauthorized"] == 1
                    and rec.counts["stored_raw"] == len(sent) and rec.counts["stored_metric"] == 5
                    and rec.counts["stored_cmd"] == 2), dict(rec.counts)
        assert wait(lambda: rec.counts["duplicate"] == 12 + 2 + 1 + 1 + 1), dict(rec.counts)
    finally:
        rec.stop()
        close(a, b, console)

    con = store.connect(db, readonly=True)
    seqs = [s for (s,) in con.execute("SELECT seq FROM blocks WHERE session='s1' ORDER BY seq")]
    assert seqs == sorted(b.seq for b in sent)
    t, v, rate = store.read_stream(con, "s1", "client/eda", kind="raw")
    np.testing.assert_array_equal(v, np.concatenate([b.values for b in sent]))
    assert [(g.after_seq, g.missing) for g in store.gaps(con, "s1")] == [(16, 2), (29, 1)]
    c = store.counters(con)
    assert c["malformed"] == len(bad) and c["unauthorized"] == 1 and c["duplicate"] == 17
    assert con.execute("SELECT COUNT(*) FROM rejects").fetchone()[0] == len(bad) + 1
    summary = store.session_summary(con, "s1")
    assert summary["therapist_code"] == "T01" and summary["client_code"] == "C07"
    q = summary["quality"]
    assert q["gaps"] == 2 and q["missing_blocks"] == 3 and q["unit_reported_dropped"] == 3
    assert q["hub_malformed"] == len(bad) and q["hub_unauthorized"] == 1 and q["flagged_blocks"] == 1
    assert summary["markers"] == [{"id": "m1", "label": "rupture", "time_ns": t_mark}]
    assert summary["metrics"] == [{"unit": "unit-a", "name": "sync_eda", "count": 5, "missing": 0}]
    unit_row = con.execute("SELECT last_state, last_session FROM units WHERE unit='unit-a'").fetchone()
    assert unit_row == ("recording", "s1")
    assert con.execute("SELECT COUNT(*) FROM status").fetchone()[0] == 1
