"""The unit daemon end to end on a real Mosquitto: sessions from commands, acks and NACKs, raw and feature
streams and metrics at the hub, retained status, resume after a crash, clean shutdown."""

from __future__ import annotations

import time

import numpy as np
import pytest

from broker import store
from broker.recorder import Recorder
from device.config import load_config
from device.unit import Unit

from .conftest import RunningUnit, start_cmd, wait


@pytest.fixture
def recorder(tmp_path, mosquitto, room_auth):
    rec = Recorder(tmp_path / "hub.sqlite", "room-a", mosquitto.host, mosquitto.port,
                   *room_auth.service_user("recorder")).start()
    yield rec
    rec.stop()


def _hub(tmp_path):
    return store.connect(tmp_path / "hub.sqlite", readonly=True)


def _wait(pred, timeout_s=30.0, step=0.1):
    return wait(pred, timeout_s, step)


Running = RunningUnit


def test_session_streams_acks_and_status(tmp_path, unit_toml, console, recorder):
    cfg = load_config(unit_toml(speed=8.0))
    run = Running(Unit(cfg))
    try:
        assert console.wait_status("unit-a", lambda s: s.state == "idle"), console.status
        cid = start_cmd(console, "s1")
        [ack] = console.wait_ack(cid)
        assert ack.ok and ack.error is None
        assert console.wait_status("unit-a", lambda s: s.state == "recording" and s.session == "s1")
        # 8x simulated time: ~70 s of session (two regulation epochs) in ~9 s
        con = _hub(tmp_path)
        assert _wait(lambda: len(list(store.read_metrics(con, "s1", "regulation"))) >= 2, 60)
        mid = console.send("marker", "s1", label="imagery segment begins")
        assert console.wait_ack(mid)[0].ok
        # NACKs: another session while one runs; stop of an unknown session; garbage
        other = start_cmd(console, "s2")
        [nack] = console.wait_ack(other)
        assert not nack.ok and "s1" in nack.error
        bad_stop = console.send("stop", "nope")
        assert not console.wait_ack(bad_stop)[0].ok
        console.send_raw(b'{"schema":1,"id":"junk-1","cmd":"explode","session":"s1","time_ns":1}')
        [junk] = console.wait_ack("junk-1")
        assert not junk.ok and "explode" in junk.error
        console.send_raw(b"\xff\x00 not json")
        assert console.wait_ack("invalid")[0].ok is False
        stop = console.send("stop", "s1")
        assert console.wait_ack(stop)[0].ok
        assert console.wait_status("unit-a", lambda s: s.state == "idle" and s.session is None)
    finally:
        run.close()
    assert console.wait_status("unit-a", lambda s: s.state == "offline")
    con = _hub(tmp_path)
    assert _wait(lambda: recorder.pending() == 0)
    time.sleep(0.5)
    counts = store.stored_counts(con, "unit-a", "s1")
    assert counts["raw"] > 4 * 30 and counts["feat"] > 4 * 30, counts
    assert store.gaps(con, "s1") == []
    for stream, rate in (("therapist/eda", 32.0), ("client/ppg", 100.0)):
        t, v, r = store.read_stream(con, "s1", stream, kind="raw", unit="unit-a")
        assert r == rate and v.size > 30 * rate
        assert (abs(t[1:] - t[:-1] - 1e9 / rate) < 1e6).all()  # raw blocks are contiguous
    for stream in ("therapist/eda", "client/eda", "therapist/hr", "client/hr"):
        t, v, r = store.read_stream(con, "s1", stream, kind="feat", unit="unit-a")
        assert r == 4.0 and (t % 250_000_000 == 0).all()
        finite = v[~(v != v)]
        assert finite.size > 0.8 * v.size, stream
    _, _, hr = store.read_stream(con, "s1", "therapist/hr", unit="unit-a")
    hr_v = store.read_stream(con, "s1", "therapist/hr", unit="unit-a")[1]
    assert 50 < float(hr_v[hr_v == hr_v].mean()) < 90  # synthetic pulse runs at 70 +- 9 bpm
    reg = list(store.read_metrics(con, "s1", "regulation", unit="unit-a"))
    assert reg[0][0] == 0 and reg[1][0] == 1
    assert reg[1][3]["therapist_n_beats"] > 20
    # the clean synthetic pulse: beats the quality index left out are counted and few
    assert 0 <= reg[1][3]["therapist_n_invalid_beats"] <= 0.1 * reg[1][3]["therapist_n_beats"]
    for channel in ("eda", "hr"):
        sync = list(store.read_metrics(con, "s1", f"sync_{channel}", unit="unit-a"))
        assert len(sync) >= 10, channel
        assert [r[0] for r in sync] == list(range(len(sync)))  # window index, no gaps
        assert all(r[2] - r[1] == 30 * 10**9 for r in sync)
    # the synthetic client follows the therapist 2 s later: tau > 0 (therapist leads) at about +2 s
    lags = sorted(r[3]["inphase_lag_s"] for r in store.read_metrics(con, "s1", "sync_eda", unit="unit-a"))
    assert abs(lags[len(lags) // 2] - 2.0) <= 0.5, lags
    acks = dict(((u, c), ok) for u, c, ok in con.execute("SELECT unit, cmd_id, ok FROM acks"))
    assert acks[("unit-a", cid)] == 1 and acks[("unit-a", other)] == 0



PARTNER_A = """
[[sensors]]
name = "t-eda"
kind = "synthetic"
role = "therapist"
signal = "eda"
"""
PARTNER_B = PARTNER_A.replace("t-eda", "c-eda").replace("therapist", "client")


def test_two_unit_room_partner_feature_stream(tmp_path, unit_toml, console, recorder):
    """unit-a measures the therapist, unit-b the client; unit-a correlates with unit-b's 4 Hz features."""
    dsp = '[dsp]\nwin_s = 8\nlag_s = 3\nchannels = ["eda"]\n'
    cfg_a = load_config(unit_toml("unit-a", PARTNER_A, dsp + '[dyad]\npartner = "unit-b"\n', speed=4.0))
    cfg_b = load_config(unit_toml("unit-b", PARTNER_B, dsp + "[dyad]\ncompute = false\n", speed=4.0))
    from device.clock import ScaledClock

    clock = ScaledClock(4.0)  # one simulated time line for both units
    a, b = Running(Unit(cfg_a, clock=clock)), Running(Unit(cfg_b, clock=clock))
    try:
        for u in ("unit-a", "unit-b"):
            assert console.wait_status(u, lambda s: s.state == "idle")
        cid = start_cmd(console, "s-pair")
        assert console.wait_ack(cid, "unit-a")[0].ok and console.wait_ack(cid, "unit-b")[0].ok
        con = _hub(tmp_path)
        assert _wait(lambda: len(list(store.read_metrics(con, "s-pair", "sync_eda", unit="unit-a"))) >= 12, 60)
        assert a.unit.pipeline.partner_blocks > 0
        stop = console.send("stop", "s-pair")
        assert console.wait_ack(stop, "unit-a")[0].ok
    finally:
        a.close()
        b.close()
    con = _hub(tmp_path)
    assert list(store.read_metrics(con, "s-pair", "sync_eda", unit="unit-b")) == []  # compute = false
    assert store.stored_counts(con, "unit-b", "s-pair")["feat"] > 0
    rows = list(store.read_metrics(con, "s-pair", "sync_eda", unit="unit-a"))
    finite = [r[3]["inphase_lag_s"] for r in rows if r[3]["inphase_lag_s"] == r[3]["inphase_lag_s"]]
    assert len(finite) >= 8
    finite.sort()
    assert abs(finite[len(finite) // 2] - 2.0) <= 0.5, finite


@pytest.mark.parametrize("mode", ["grouped", "control", "tick"])
def test_raw_and_feature_messages_are_committed_together(tmp_path, unit_toml, console, recorder, monkeypatch,
                                                         mode):
    """Raw and feature messages wait at most ``COMMIT_EVERY_S`` for one outbox commit (one fsync) with the
    others; a metric is committed in the pass that made it; nothing held is lost at shutdown. The control
    (``COMMIT_EVERY_S = 0``) commits every pass that made a message: more commits for the same messages.
    With the worker's tick (``WORK_TICK_S``) it makes at most one pass per tick instead of one per event (the
    sources hand out blocks four times faster here, at 4x simulated speed)."""
    # the unit runs at 4x simulated speed and the two intervals are seconds of its clock: set them to 4x the
    # real-time defaults, so that in real seconds they are the defaults
    speed = 4.0
    every_s = Unit.COMMIT_EVERY_S if mode == "grouped" else 0.0
    tick_s = Unit.WORK_TICK_S if mode == "tick" else 0.0
    monkeypatch.setattr(Unit, "COMMIT_EVERY_S", every_s * speed)
    monkeypatch.setattr(Unit, "WORK_TICK_S", tick_s * speed)
    unit = Unit(load_config(unit_toml(speed=speed)))
    passes: list[float] = []
    made: dict[int, tuple[float, str]] = {}
    alive: list = []
    commits: list[list[int]] = []
    commit_log: list[tuple[float, set[str]]] = []
    delays: dict[str, list[float]] = {"raw": [], "feat": [], "metric": []}
    drain, put = unit.pipeline.drain, unit.outbox.put

    def drain_stamped():
        msgs = drain()
        if unit.pipeline.session is not None:
            passes.append(time.monotonic())
        alive.extend(msgs)  # ids stay unique while the messages live
        for m in msgs:
            made[id(m)] = (time.monotonic(), m.kind)
        return msgs

    def put_recorded(msgs, state=None, counters=None):
        now = time.monotonic()
        commits.append([id(m) for m in msgs if id(m) in made])
        commit_log.append((now, {m.kind for m in msgs}))
        for m in msgs:
            if id(m) in made and m.kind in delays:
                delays[m.kind].append(now - made[id(m)][0])
        return put(msgs, state=state, counters=counters)

    unit.pipeline.drain = drain_stamped
    unit.outbox.put = put_recorded
    run = Running(unit)
    try:
        assert console.wait_status("unit-a", lambda s: s.state == "idle"), console.status
        start_cmd(console, "s1")
        assert _wait(lambda: len(delays["metric"]) >= 3, 60.0), {k: len(v) for k, v in delays.items()}
    finally:
        t_stop = time.monotonic()  # the clean stop commits what is held at once
        run.close()
    committed = [i for c in commits for i in c]
    assert sorted(committed) == sorted(made) and len(set(committed)) == len(committed)  # all, once
    assert max(delays["metric"]) < 0.05  # committed in the pass that made it
    assert max(delays["raw"] + delays["feat"]) < every_s + 0.3  # + one worker pass (0.25 s at most)
    # commits of raw/feature messages only (no metric, status or ack made them urgent): at most one per
    # COMMIT_EVERY_S when grouped; without grouping one per pass that made data (often < 0.2 s apart)
    data_only = [t for t, kinds in commit_log if kinds and kinds <= {"raw", "feat"} and t < t_stop]
    gaps = np.diff(data_only)
    assert gaps.size > 5, data_only
    if mode == "grouped":
        assert gaps.min() >= every_s - 0.01, np.sort(gaps)[:5]
    else:
        assert np.mean(gaps < 0.2) > 0.3, np.sort(gaps)[:10]
    per_s = (len(passes) - 1) / (passes[-1] - passes[0])
    if mode == "tick":
        assert per_s <= 1.0 / tick_s + 2.0, per_s
    else:
        assert per_s > 40.0, per_s  # ~160 blocks a second, a pass for (nearly) each
