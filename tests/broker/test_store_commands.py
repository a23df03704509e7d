"""Command decisions in a real SQLite file, in every arrival order the recorder can see."""

from __future__ import annotations

import time

from broker import store, wire

NOW = time.time_ns()


def _start(cid: str, session: str = "s1", t: str = "T01", c: str = "C01", time_ns: int = NOW) -> wire.Command:
    return wire.Command(id=cid, cmd="start", session=session, time_ns=time_ns,
                        participants={"therapist": t, "client": c})


def _ack(cid: str, unit: str, ok: bool = True, error: str | None = None, time_ns: int = NOW) -> wire.Ack:
    return wire.Ack(id=cid, unit=unit, ok=ok, time_ns=time_ns, error=error)


def test_ack_before_command_and_nack_then_ok(tmp_path):
    con = store.connect(tmp_path / "hub.sqlite")
    with con:
        assert store.log_ack(con, _ack("c1", "unit-a"), "room-a", NOW) == (True, None)  # command not seen yet
        c = _start("c1")
        assert store.log_command(con, "room-a", c, c.encode(), NOW + 1) == (True, "accepted")
        assert store.get_session(con, "s1")["therapist_code"] == "T01"
        m = wire.Command(id="m1", cmd="marker", session="s1", time_ns=NOW, label="x")
        assert store.log_command(con, "room-a", m, m.encode(), NOW) == (True, None)  # pending: nobody answered
        assert store.log_ack(con, _ack("m1", "unit-a", False, "busy"), "room-a", NOW) == (True, "refused")
        assert store.command_state(con, "room-a", "m1") == ("refused", "unit-a: busy")
        assert store.session_markers(con, "s1") == []
        assert store.log_ack(con, _ack("m1", "unit-b"), "room-a", NOW) == (True, "accepted")  # one unit took it
        assert [x["label"] for x in store.session_markers(con, "s1")] == ["x"]
        assert store.log_ack(con, _ack("m1", "unit-b"), "room-a", NOW) == (False, None)  # a redelivered answer
        assert store.command_counts(con, "s1") == {"pending": 0, "accepted": 2, "refused": 0, "rejected": 0,
                                                   "bad": 0}


def test_start_and_stop_written_once(tmp_path):
    con = store.connect(tmp_path / "hub.sqlite")
    with con:
        first = _start("c1", time_ns=NOW)
        store.insert_command(con, "room-a", first, first.encode(), NOW)
        again = _start("c2", time_ns=NOW + 5 * 10**9)  # same codes, later: nothing changes
        assert store.insert_command(con, "room-a", again, again.encode(), NOW + 5)
        other = _start("c3", t="T09", time_ns=NOW + 9 * 10**9)
        assert not store.insert_command(con, "room-a", other, other.encode(), NOW + 9)
        for i, t in enumerate((NOW + 60 * 10**9, NOW + 90 * 10**9)):
            stop = wire.Command(id=f"stop{i}", cmd="stop", session="s1", time_ns=t)
            store.insert_command(con, "room-a", stop, stop.encode(), t)
        meta = store.get_session(con, "s1")
        assert (meta["therapist_code"], meta["started_ns"], meta["stopped_ns"]) == ("T01", NOW, NOW + 60 * 10**9)


def test_marker_reference_is_the_earliest_answer(tmp_path):
    """A recorder catching up late still judges a marker by when the units acknowledged it."""
    con = store.connect(tmp_path / "hub.sqlite")
    late = NOW + 3600 * 10**9  # the recorder was down for an hour
    with con:
        m = wire.Command(id="m1", cmd="marker", session="s1", time_ns=NOW, label="on time")
        store.log_command(con, "room-a", m, m.encode(), late)
        assert store.log_ack(con, _ack("m1", "unit-a", time_ns=NOW + 20_000_000), "room-a", late)[1] == "accepted"
        bad = wire.Command(id="m2", cmd="marker", session="s1", time_ns=NOW - 11 * 10**9, label="11 s early")
        store.log_command(con, "room-a", bad, bad.encode(), NOW)
        assert store.log_ack(con, _ack("m2", "unit-a"), "room-a", NOW)[1] == "rejected"
        assert "-11.0 s from the hub's clock" in store.command_state(con, "room-a", "m2")[1]
