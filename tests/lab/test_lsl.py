"""Lab Streaming Layer with real pylsl outlets and inlets on this machine, a real Mosquitto and the hub recorder:
what LSL carries equals what the hub stored, stamps are the mapped dyadsync stamps, markers go both ways."""

from __future__ import annotations

import math
import secrets
import time

import numpy as np
import pytest

pylsl = pytest.importorskip("pylsl", reason="the 'lsl' extra (pylsl) is part of the test extra")

from broker import store, wire  # noqa: E402
from broker.auth import RoomAuth  # noqa: E402
from broker.console import RoomConsole  # noqa: E402
from broker.recorder import Recorder  # noqa: E402
from firmware_bridge.block import SampleBlock  # noqa: E402
from lab.lsl import LslBridge, LslMarkerInlet, measure_offset_s  # noqa: E402

from ..broker.helpers import ack, client, close, publish_all, wait  # noqa: E402
from ..conftest import UNITS, ctrl_c_works  # noqa: E402

GRID_NS = 250_000_000
# LSL discovery is machine-wide: a room name and marker source ids of this run only, so two test runs on one
# machine (or a lab's real room) never resolve each other's streams.
_RUN = secrets.token_hex(3)
ROOM = f"room-lsl{_RUN}"


@pytest.fixture
def room_auth() -> RoomAuth:
    return RoomAuth.generate(ROOM, UNITS, partners={"unit-a": "unit-b"})


def _accepts_commands(unit_client, unit: str = "unit-a") -> None:
    """This stand-in unit accepts every command, as a real unit running the session does: the hub records a
    command only once a unit accepted it."""
    def on_message(client, userdata, msg) -> None:
        try:
            cmd = wire.Command.decode(msg.payload)
        except wire.WireError:
            return
        client.publish(*ack(unit, cmd.id, room=ROOM), qos=1)

    unit_client.on_message = on_message
    unit_client.subscribe(wire.cmd_topic(ROOM), qos=1)


def _inlet(source_id: str) -> pylsl.StreamInlet:
    found = pylsl.resolve_byprop("source_id", source_id, timeout=15)
    assert found, f"no LSL stream {source_id}"
    inlet = pylsl.StreamInlet(found[0], max_buflen=60)
    inlet.open_stream(timeout=15)
    return inlet


def _pull(inlet: pylsl.StreamInlet, n: int, timeout_s: float = 20.0) -> tuple[list, list]:
    values, stamps = [], []
    deadline = time.monotonic() + timeout_s
    while len(values) < n and time.monotonic() < deadline:
        sample, ts = inlet.pull_sample(timeout=0.5)
        if sample is not None:
            values.append(sample)
            stamps.append(ts)
    return values, stamps


def _blocks(stream: str, t0_ns: int, seqs: range, rng) -> list[SampleBlock]:
    return [SampleBlock(stream, s, t0_ns + s * 1_000_000_000, 4.0,
                        (rng.standard_normal(4) * 2 + (70 if stream.endswith("hr") else 5)).astype(np.float32))
            for s in seqs]


def test_lsl_streams_equal_the_hub_and_markers_go_both_ways(mosquitto, room_auth, tmp_path):
    host, port = mosquitto.host, mosquitto.port
    db = tmp_path / "hub.sqlite"
    rec = Recorder(db, ROOM, host, port, *room_auth.service_user("recorder")).start()
    bridge = LslBridge(host, port, ROOM, *room_auth.service_user("recorder")).start()
    console = RoomConsole(host, port, ROOM, *room_auth.service_user("console"))
    unit = client(host, port, "unit-a", room_auth.units["unit-a"])
    _accepts_commands(unit)
    inlets: list = []
    lab_inlet = None
    try:
        # the mapping: LSL time = UTC - offset, offset measured from this machine's clocks
        assert abs(bridge.offset_s - measure_offset_s(pylsl.local_clock)) < 0.5
        session = "lsl-s1"
        t0 = time.time_ns() // GRID_NS * GRID_NS
        console.send("start", session, time_ns=t0, participants={"therapist": "T05", "client": "C11"})
        assert wait(lambda: bridge.session == session and ("markers",) in bridge.outlets)
        markers_in = _inlet(f"dyadsync/{ROOM}/markers")
        inlets.append(markers_in)

        rng = np.random.default_rng(5)
        streams = ["therapist/eda", "client/eda", "therapist/hr", "client/hr"]

        def metric(k: int) -> wire.Metric:
            vals = {"r0": float(rng.uniform(-1, 1)), "inphase_lag_s": 0.25 * k, "therapist_led": None if k == 3
                    else float(rng.normal())}
            return wire.Metric(session, k, "sync_eda", t0 + k * 10**9, t0 + (k + 30) * 10**9, vals)

        # phase 1: one block per stream and one metric create the outlets; the inlets connect
        first = [(wire.feat_topic(ROOM, "unit-a", st), wire.encode_block(b, session))
                 for st in streams for b in _blocks(st, t0, range(0, 1), rng)]
        first.append((wire.metric_topic(ROOM, "unit-a", "sync_eda"), metric(0).encode()))
        publish_all(unit, first)
        assert wait(lambda: len(bridge.outlets) == 6), bridge.outlets.keys()
        feat_in = {st: _inlet(f"dyadsync/{ROOM}/unit-a/feat/{st}") for st in streams}
        metric_in = _inlet(f"dyadsync/{ROOM}/unit-a/metric/sync_eda")
        inlets += [*feat_in.values(), metric_in]
        desc = feat_in["client/eda"].info(timeout=10).desc()
        assert desc.child("channels").child("channel").child_value("unit") == "microsiemens"
        assert desc.child("dyadsync").child_value("participant") == "C11"
        assert desc.child("dyadsync").child_value("session") == session
        assert metric_in.info(timeout=10).desc().child("channels").child("channel").child_value("label") == "r0"

        # phase 2: what the inlets must see
        rest = [(wire.feat_topic(ROOM, "unit-a", st), wire.encode_block(b, session))
                for st in streams for b in _blocks(st, t0, range(1, 11), rng)]
        rest += [(wire.metric_topic(ROOM, "unit-a", "sync_eda"), metric(k).encode()) for k in range(1, 8)]
        publish_all(unit, rest)
        assert wait(lambda: rec.counts["stored_feat"] == 44 and rec.counts["stored_metric"] == 8), dict(rec.counts)

        con = store.connect(db, readonly=True)
        worst = 0.0
        for st in streams:
            values, stamps = _pull(feat_in[st], 40)
            t_ns, stored, _ = store.read_stream(con, session, st)
            assert len(values) == 40
            np.testing.assert_array_equal(np.asarray(values, np.float32).ravel(), stored[4:])  # the hub's values
            mapped = t_ns[4:] / 1e9 - bridge.offset_s
            worst = max(worst, float(np.max(np.abs(np.asarray(stamps) - mapped))))
        assert worst < 1e-3, worst
        rows, stamps = _pull(metric_in, 7)
        names = bridge.outlets[("metric", "unit-a", "sync_eda")].dyadsync_names
        live = list(store.read_metrics(con, session, "sync_eda"))[1:]
        assert len(rows) == len(live) == 7
        for row, ts, (_seq, ws, _we, vals) in zip(rows, stamps, live, strict=True):
            assert abs(ts - (ws / 1e9 - bridge.offset_s)) < 1e-3
            for k, v in vals.items():
                got = row[names.index(k)]
                assert (math.isnan(v) and math.isnan(got)) or got == v, (k, v, got)
        con.close()

        # markers, dyadsync -> LSL: a console marker arrives on the marker outlet at its mapped time
        t_mark = time.time_ns()
        console.send("marker", session, label="role play", time_ns=t_mark)
        got, ts = _pull(markers_in, 1)
        assert got == [["role play"]] and abs(ts[0] - (t_mark / 1e9 - bridge.offset_s)) < 1e-3

        # markers, LSL -> dyadsync: a lab marker stream (as PsychoPy would publish it) becomes a session marker
        lab_out = pylsl.StreamOutlet(pylsl.StreamInfo("PsychoPy", "Markers", 1, 0, "string", f"psychopy-test-{_RUN}"))
        lab_inlet = LslMarkerInlet(console, lambda: bridge.session, prop="source_id", value=f"psychopy-test-{_RUN}",
                                   offset_s=bridge.offset_s).start()
        assert wait(lambda: lab_out.have_consumers())
        t_lsl = pylsl.local_clock()
        lab_out.push_sample(["stimulus on"], t_lsl)
        con = store.connect(db, readonly=True)

        def stored_marker():
            return con.execute("SELECT label, time_ns, session FROM markers WHERE label='stimulus on'").fetchone()

        assert wait(stored_marker), lab_inlet.sent
        label, t_ns, sess = stored_marker()
        con.close()
        assert sess == session and abs(t_ns / 1e9 - bridge.offset_s - t_lsl) < 1e-3
        back, ts = _pull(markers_in, 1)  # and the bridge publishes it on the room's marker stream
        assert back == [["stimulus on"]] and abs(ts[0] - t_lsl) < 1e-3
        # after the stop command a lab marker belongs to no session: dropped and counted, not stored
        console.send("stop", session)
        assert wait(lambda: bridge.session is None)
        lab_out.push_sample(["too late"], pylsl.local_clock())
        assert wait(lambda: lab_inlet.dropped == 1) and len(lab_inlet.sent) == 1
    finally:
        if lab_inlet is not None:
            lab_inlet.stop()
        for i in inlets:
            i.close_stream()
        close(unit)
        console.close()
        bridge.stop()
        rec.stop()


def test_lab_lsl_command_end_to_end(mosquitto, room_auth, tmp_path):
    """`dyadsync lab lsl` as a process with the hub's credentials files: a console marker comes out on LSL, a
    lab LSL marker goes into the session (and out again); Ctrl-C stops it cleanly."""
    import signal
    import subprocess
    import sys

    from .conftest import REPO

    def creds(name: str, user: str, password: str):
        path = tmp_path / f"{name}.toml"
        path.write_text(f'room = "{ROOM}"\n[broker]\nurl = "mqtt://{mosquitto.host}:{mosquitto.port}"\n'
                        f'username = "{user}"\npassword = "{password}"\n')
        return str(path)

    lab_out = pylsl.StreamOutlet(pylsl.StreamInfo("PsychoPy", "Markers", 1, 0, "string", f"psychopy-cli-{_RUN}"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dyadsync", "lab", "lsl", "--credentials",
         creds("recorder", *room_auth.service_user("recorder")), "--markers-from", f"source_id=psychopy-cli-{_RUN}",
         "--console-credentials", creds("console", *room_auth.service_user("console"))],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_works)
    console = RoomConsole(mosquitto.host, mosquitto.port, ROOM, *room_auth.service_user("console"))
    inlet = None
    try:
        assert wait(lambda: lab_out.have_consumers(), 30), "the command did not open the lab marker stream"
        console.send("start", "cli-s1", participants={"therapist": "T01", "client": "C01"})
        inlet = _inlet(f"dyadsync/{ROOM}/markers")
        console.send("marker", "cli-s1", label="from the console")
        got, _ = _pull(inlet, 1)
        assert got == [["from the console"]]
        lab_out.push_sample(["from psychopy"], pylsl.local_clock())
        got, _ = _pull(inlet, 1)
        assert got == [["from psychopy"]]
    finally:
        if inlet is not None:
            inlet.close_stream()
        console.close()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert "LSL time = UTC -" in out and "'markers': 3" in out, out
