"""The hub's session records follow the units and can be trusted (issue 15, point 3), through a real broker,
a real unit and the real recorder: codes and start time are written once, a command no unit accepted
creates nothing, marker times are checked against the hub's clock, refused commands are bad commands."""

from __future__ import annotations

import re
import time

from broker import store
from tests.broker.helpers import ack, client, close, publish_all

from .conftest import wait

UNITS = ["unit-a"]


def _state(room, cid: str) -> tuple[str, str | None] | None:
    con = room.con()
    try:
        return store.command_state(con, "room-a", cid)
    finally:
        con.close()


def _decided(room, cid: str, timeout_s: float = 20) -> tuple[str, str | None]:
    assert wait(lambda: (_state(room, cid) or ("pending",))[0] != "pending", timeout_s), _state(room, cid)
    return _state(room, cid)


def test_start_with_other_codes_is_refused_and_never_rewrites(room):
    c = room.console
    first = c.start("s-codes", "T01", "C01", UNITS)
    assert first.ok, first.describe()
    assert _decided(room, first.cid) == ("accepted", None)
    again = c.start("s-codes", "T01", "C01", UNITS)  # a repetition with the same codes: accepted, changes nothing
    assert again.ok
    other = c.start("s-codes", "T02", "C99", UNITS)
    assert not other.ok and other.refused["unit-a"].startswith("session 's-codes' is running with therapist 'T01'")
    assert "other codes" in other.refused["unit-a"]
    state, reason = _decided(room, other.cid)
    assert state == "refused" and "other codes" in reason
    assert c.wait_status("unit-a", lambda s: s.session == "s-codes")
    room.settled()
    con = room.con()
    meta = store.get_session(con, "s-codes")
    assert (meta["therapist_code"], meta["client_code"]) == ("T01", "C01")
    assert meta["started_ns"] == first.time_ns  # not the repetition's time
    assert store.session_summary(con, "s-codes")["quality"]["bad_commands"] == 1
    con.close()
    assert c.stop("s-codes", UNITS).ok


def test_hub_keeps_codes_even_when_a_unit_accepts_other_codes(room, mosquitto, room_auth):
    """A unit without the rule (older software) accepts the second start: the hub still rejects it."""
    old_unit = client(mosquitto.host, mosquitto.port, "unit-b", room_auth.units["unit-b"])
    try:
        c = room.console
        first = c.command("start", "s-old", ["unit-b"], participants={"therapist": "T01", "client": "C01"},
                          timeout_s=0.1)
        publish_all(old_unit, [ack("unit-b", first.cid)])
        assert _decided(room, first.cid)[0] == "accepted"
        t_first = store.get_session(room.con(), "s-old")["started_ns"]
        second = c.command("start", "s-old", ["unit-b"], participants={"therapist": "T09", "client": "C09"},
                           timeout_s=0.1, time_ns=t_first + 10**9)
        publish_all(old_unit, [ack("unit-b", second.cid)])
        # unit-a (with the rule) refuses it, unit-b (without) accepts it: the hub's rule rejects it for good
        assert wait(lambda: (_state(room, second.cid) or ("",))[0] == "rejected"), _state(room, second.cid)
        state, reason = _state(room, second.cid)
        assert "recorded with therapist 'T01'" in reason
        meta = store.get_session(room.con(), "s-old")
        assert (meta["therapist_code"], meta["client_code"], meta["started_ns"]) == ("T01", "C01", t_first)
    finally:
        close(old_unit)


def test_refused_start_creates_no_session(room):
    c = room.console
    assert c.start("s-run", "T01", "C01", UNITS).ok
    refused = c.start("s-other", "T02", "C02", UNITS)  # another session while one runs: the unit says no
    assert refused.refused == {"unit-a": "session 's-run' is running; stop it first"}
    assert _decided(room, refused.cid)[0] == "refused"
    assert c.stop("s-run", UNITS).ok
    room.settled()
    con = room.con()
    assert store.get_session(con, "s-other") is None
    assert [s["session"] for s in store.list_sessions(con)] == ["s-run"]
    assert store.command_counts(con, "s-other")["bad"] == 1
    con.close()


def test_stop_without_start_creates_no_session(room):
    r = room.console.stop("s-never", UNITS)
    assert not r.ok and "no session 's-never' is running" in r.refused["unit-a"]
    assert _decided(room, r.cid)[0] == "refused"
    room.settled()
    con = room.con()
    assert store.get_session(con, "s-never") is None and store.count_sessions(con) == 0
    con.close()


def test_marker_an_hour_in_the_past_is_rejected(room):
    c = room.console
    assert c.start("s-mark", "T01", "C01", UNITS).ok
    now = time.time_ns()
    old = c.command("marker", "s-mark", UNITS, label="an hour ago", time_ns=now - 3600 * 10**9)
    zero = c.command("marker", "s-mark", UNITS, label="epoch", time_ns=0)
    good = c.mark("s-mark", "rupture", UNITS)
    assert old.ok and zero.ok and good.ok  # the unit takes markers as they come; the hub checks their time
    state, reason = _decided(room, old.cid)
    # the reason gives the offset from the hub's clock when the hub received it (later than `now` on a busy machine)
    m = re.fullmatch(r"marker time is (-\d+\.\d) s from the hub's clock \(allowed: ±10 s\)", reason or "")
    assert state == "rejected" and m and -3660 < float(m.group(1)) <= -3600, reason
    assert _decided(room, zero.cid)[0] == "rejected"
    assert _decided(room, good.cid) == ("accepted", None)
    assert c.stop("s-mark", UNITS).ok
    room.settled()
    con = room.con()
    summary = store.session_summary(con, "s-mark")
    assert summary["markers"] == [{"id": good.cid, "label": "rupture", "time_ns": good.time_ns}]
    assert {r["id"] for r in summary["refused_commands"]} == {old.cid, zero.cid}
    assert summary["quality"]["bad_commands"] == 2
    con.close()


def test_burst_of_malformed_commands_counts_bad_commands_not_losses(room):
    c = room.console
    assert c.start("s-burst", "T01", "C01", UNITS).ok
    junk = [b"\xff\x00 not json", b"{}", b'{"schema":1,"id":"j","cmd":"explode","session":"s-burst","time_ns":1}',
            b'{"schema":2}', b"[1,2,3]", b"x" * 70000]
    burst = [junk[i % len(junk)] for i in range(60)]
    for payload in burst:
        c.send_raw(payload)
    # the unit answers each one with a NACK and keeps working
    assert c.wait_status("unit-a", lambda s: s.dropped.get("bad_commands", 0) >= len(burst) - 10, 30), \
        c.status["unit-a"].dropped
    assert c.mark("s-burst", "after the burst", UNITS).ok
    assert wait(lambda: room.recorder.counts["bad_commands"] == len(burst)), dict(room.recorder.counts)
    assert c.stop("s-burst", UNITS).ok
    assert c.wait_status("unit-a", lambda s: s.session is None and s.dropped.get("bad_commands", 0) == len(burst))
    room.settled()
    con = room.con()
    counters = store.counters(con)
    assert counters["bad_commands"] == len(burst) and counters.get("malformed", 0) == 0
    q = store.session_summary(con, "s-burst")["quality"]
    assert q["hub_bad_commands"] == len(burst)
    assert q["unit_reported_dropped"] == 0  # the unit's bad_commands counter is not a loss
    assert [m["label"] for m in store.session_markers(con, "s-burst")] == ["after the burst"]
    con.close()


def test_console_account_reads_only_what_it_needs(mosquitto, room_auth):
    """svc-console: reads status/ack/metric/feat of its room, writes cmd; no raw data, no unit topics."""
    unit = client(mosquitto.host, mosquitto.port, "unit-a", room_auth.units["unit-a"])
    con = client(mosquitto.host, mosquitto.port, *room_auth.service_user("console"))
    rec = client(mosquitto.host, mosquitto.port, *room_auth.service_user("recorder"))
    got: list[str] = []
    rec_got: list[str] = []
    con.on_message = lambda cl, ud, msg: got.append(msg.topic)
    rec.on_message = lambda cl, ud, msg: rec_got.append(msg.topic)
    try:
        for t in ("dyadsync/v1/room-a/#", "dyadsync/v1/other/#"):
            con.subscribe(t, qos=1)
        rec.subscribe("dyadsync/v1/room-a/#", qos=1)
        time.sleep(0.3)
        pre = "dyadsync/v1/room-a/unit-a"
        readable = [f"{pre}/status", f"{pre}/ack", f"{pre}/metric/sync_eda", f"{pre}/feat/client/eda"]
        hidden = [f"{pre}/raw/client/eda"]
        publish_all(unit, [(t, b"{}") for t in readable + hidden])
        publish_all(con, [("dyadsync/v1/room-a/cmd", b"{}"), (f"{pre}/status", b"forged"),
                          ("dyadsync/v1/other/cmd", b"{}")])
        assert wait(lambda: len(rec_got) >= len(readable) + len(hidden) + 1, 10)
        time.sleep(0.3)
        assert sorted(got) == sorted(readable)
        assert "dyadsync/v1/room-a/cmd" in rec_got and rec_got.count(f"{pre}/status") == 1
    finally:
        close(unit, con, rec)

