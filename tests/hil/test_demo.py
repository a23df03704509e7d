"""`dyadsync demo` end to end, as a user runs it: a separate process, with Mosquitto (as root, as CI runs) and
without it (as a normal user); the messages the hub stores are the real unit daemon's (its outbox, its pipeline);
a unit that cannot start stops the demo at once with the unit's own words."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from broker import store, wire
from broker.mosquitto import find_mosquitto
from device import __version__ as unit_version
from device.outbox import Outbox
from hil.demo import UNIT, unit_data_dir


def _run(args, env=None, timeout=300, cwd=None, prefix=()):
    return subprocess.run([*prefix, sys.executable, "-m", "dyadsync", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def test_help_lists_subcommands():
    out = _run(["--help"])
    assert out.returncode == 0, out.stderr
    assert "demo" in out.stdout
    demo = _run(["demo", "--help"])
    assert demo.returncode == 0
    for option in ("--minutes", "--speed", "--broker", "--data-dir", "--seed", "--therapist", "--client", "--wiring"):
        assert option in demo.stdout


def _check_summary(stdout: str, db, therapist: str = "T01", client: str = "C01") -> str:
    """The table says stored == sent for every kind; returns the session id the last line names."""
    rows = dict(re.findall(r"^\s+(raw|feat|metric|total)\s+(\d+\s+\d+)", stdout, re.M))
    assert set(rows) == {"raw", "feat", "metric", "total"}, stdout
    for kind, pair in rows.items():
        sent, stored = map(int, pair.split())
        assert sent == stored > 0, (kind, sent, stored)
    assert "stored every message" in stdout
    con = sqlite3.connect(db)
    (n_sessions,) = con.execute("SELECT COUNT(*) FROM sessions WHERE therapist_code=? AND client_code=? AND "
                                "stopped_ns IS NOT NULL", (therapist, client)).fetchone()
    assert n_sessions == 1
    (n_raw,) = con.execute("SELECT COUNT(*) FROM blocks WHERE kind='raw'").fetchone()
    assert n_raw == int(rows["raw"].split()[1])
    con.close()
    m = re.search(r"^\s+dyadsync report (\S+) --db (\S+) --out (\S+)$", stdout, re.M)
    assert m, stdout[-800:]
    assert m.group(2) == str(db)
    return m.group(1)


def _as_normal_user(data_dir) -> tuple[str, ...]:
    """A command prefix that runs the demo as user ``nobody`` when the tests run as root (CI), else nothing.

    The venv's interpreter may live under /root (pyenv, mode 0700): the process keeps CAP_DAC_READ_SEARCH,
    which lets it read files, nothing more; it is uid nobody for everything else (what it may write, which
    user Mosquitto runs as)."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run the demo as a normal user")
    shutil.chown(data_dir, "nobody")
    prefix = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=+dac_read_search",
              "--ambient-caps=+dac_read_search", "--")
    probe = subprocess.run([*prefix, sys.executable, "-c", "import os; print(os.geteuid())"], capture_output=True,
                           text=True, timeout=60)
    if probe.returncode != 0 or probe.stdout.strip() == "0":
        pytest.skip(f"cannot run as nobody here: {probe.stderr.strip()[:200]}")
    return prefix


def test_demo_as_a_normal_user_without_mosquitto(tmp_path):
    """`make demo` on a machine without Mosquitto, run by a normal user: the embedded broker; the options of a
    multi-dyad simulated study (codes, seed) reach the hub."""
    data = tmp_path / "demo"
    data.mkdir()
    prefix = _as_normal_user(data)
    env = dict(os.environ, DYADSYNC_MOSQUITTO="none", HOME=str(data))  # as on a machine where it is not installed
    out = _run(["demo", "--minutes", "1.5", "--speed", "300", "--broker", "auto", "--quiet", "--therapist", "T07",
                "--client", "C-12", "--seed", "4", "--data-dir", str(data)], env=env, prefix=prefix, cwd=data)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "broker: embedded" in out.stdout
    assert "seed 4" in out.stdout
    session = _check_summary(out.stdout, data / "hub.sqlite", "T07", "C-12")
    if prefix:
        outbox = unit_data_dir(data, session) / f"unit-{UNIT}.sqlite"
        assert (data / "hub.sqlite").stat().st_uid == outbox.stat().st_uid != 0


def _assert_hub_holds_the_units_outbox(data_dir, session: str) -> None:
    """What the hub stored is what the unit daemon queued: every raw and feature block (samples, times,
    sequence numbers) and every metric equal a row of the unit's durable outbox (device.outbox, filled by
    device.pipeline), nothing more; the statuses carry the unit's version and its configured sensor names."""
    ob = Outbox(unit_data_dir(data_dir, session) / f"unit-{UNIT}.sqlite")
    try:
        assert not ob.pending(), "the unit left messages unsent"
        tail = ob.acked_tail()
    finally:
        ob.close()
    blocks: dict[tuple[str, str], list] = {}
    metrics: dict[tuple[str, int], dict] = {}
    for q in tail:
        if q.kind in ("raw", "feat"):
            b, s = wire.decode_block(q.payload)
            if s == session:
                blocks.setdefault((q.kind, b.stream), []).append(b)
        elif q.kind == "metric":
            m = wire.Metric.decode(q.payload)
            if m.session == session:
                metrics[(m.name, m.seq)] = m.values
    con = store.connect(data_dir / "hub.sqlite", readonly=True)
    try:
        assert {(k, s) for k, s in blocks} == {(k, f"{r}/{sig}") for k in ("raw",) for r in ("therapist", "client")
                                              for sig in ("eda", "ppg")} | {
            ("feat", f"{r}/{c}") for r in ("therapist", "client") for c in ("eda", "hr")}
        assert sum(store.stored_counts(con, UNIT, session).values()) == sum(map(len, blocks.values())) + len(metrics)
        for (kind, stream), bs in blocks.items():
            bs.sort(key=lambda b: b.seq)
            assert [b.seq for b in bs] == list(range(len(bs))), (kind, stream)
            t, v, _ = store.read_stream(con, session, stream, kind, unit=UNIT)
            ours_t = np.concatenate([b.t0_ns + np.round(np.arange(b.n) * (1e9 / b.rate_hz)).astype(np.int64)
                                     for b in bs])
            np.testing.assert_array_equal(v, np.concatenate([b.values for b in bs]), err_msg=f"{kind} {stream}")
            np.testing.assert_array_equal(t, ours_t, err_msg=f"{kind} {stream}")
        names = {n for n, _ in metrics}
        assert names == {"sync_eda", "sync_hr", "regulation"}  # regulation epochs: only the unit's pipeline
        for name in names:
            hub = {seq: vals for seq, _ws, _we, vals in store.read_metrics(con, session, name, unit=UNIT)}
            assert set(hub) == {seq for n, seq in metrics if n == name}, name
            for seq, vals in hub.items():
                ours = metrics[(name, seq)]
                assert set(vals) == set(ours) and all(
                    (np.isnan(vals[k]) and np.isnan(ours[k] if ours[k] is not None else np.nan)) or vals[k] == ours[k]
                    for k in vals), (name, seq)
    finally:
        con.close()
    raw = sqlite3.connect(data_dir / "hub.sqlite")
    statuses = [json.loads(p) for (p,) in raw.execute("SELECT payload FROM status WHERE unit=?", (UNIT,))]
    raw.close()
    assert statuses and all(s["version"] == unit_version for s in statuses)
    assert any(set(s.get("sensors", {})) == {"t-eda", "t-ppg", "c-eda", "c-ppg"} for s in statuses)
    assert any(s["state"] == "recording" and s.get("session") == session for s in statuses)


def test_demo_with_mosquitto_runs_the_unit_daemon(tmp_path):
    assert find_mosquitto(), "make test installs mosquitto"
    out = _run(["demo", "--minutes", "1.5", "--speed", "300", "--broker", "mosquitto", "--quiet",
                "--data-dir", str(tmp_path)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "broker: mosquitto" in out.stdout
    session = _check_summary(out.stdout, tmp_path / "hub.sqlite")
    if os.geteuid() == 0:  # Mosquitto kept root: the files in a private directory stay readable to it
        assert "\nuser root\n" in (tmp_path / "broker" / "mosquitto.conf").read_text()
    _assert_hub_holds_the_units_outbox(tmp_path, session)
    assert f"session {session} started" in (tmp_path / f"unit-{UNIT}.log").read_text()
    # the simulator's truth segments are session markers at the hub (the report draws them)
    from hil.demo import demo_schedule

    con = store.connect(tmp_path / "hub.sqlite", readonly=True)
    try:
        labels = [m["label"] for m in store.session_markers(con, session)]
    finally:
        con.close()
    assert labels == [f"truth: {g.mode.replace('_', '-')}" + (f", lag {g.lag_s:g} s" if g.lag_s else "")
                      for g in demo_schedule(90)], labels


def test_demo_stops_at_once_when_the_unit_cannot_start(tmp_path):
    """The unit process exits at start-up (its hardware provider finds no simulator spec): the demo stops
    with the unit's own error and its log's path, not a timeout or a traceback of a later stage."""
    env = dict(os.environ, DYADSYNC_MOSQUITTO="none", DYADSYNC_HIL_SPEC=str(tmp_path / "no-such-spec.json"))
    out = _run(["demo", "--minutes", "1", "--speed", "300", "--quiet", "--data-dir", str(tmp_path / "d")], env=env,
               timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"unit {UNIT} exited with status 2" in out.stderr, out.stderr
    assert "no HIL spec" in out.stderr and "no-such-spec.json" in out.stderr
    assert str(tmp_path / "d" / f"unit-{UNIT}.log") in out.stderr
    assert "Traceback" not in out.stderr


def test_the_demo_stops_only_when_the_hub_holds_the_units_features_to_the_end(tmp_path):
    """A unit that fell behind (loaded machine, high --speed) ends its session when the stop arrives: the demo
    first waits until the hub's database holds every feature stream up to the planned end, less the seconds
    computed late by design (HR waits for later beats)."""
    from broker.wire import SampleBlock
    from hil.demo import _features_reach
    from hil.room import RoomProcesses
    from hil.scenarios.scoring import TAIL_BLOCKS

    db = tmp_path / "hub.sqlite"
    con = store.connect(db)
    end_ns = 100 * 10**9

    def feed(stream: str, last_s: int, first_s: int = 0) -> None:  # 1-s feature blocks [first_s, last_s)
        for seq in range(first_s, last_s):
            b = SampleBlock(stream, seq, seq * 10**9, 4.0, np.zeros(4, dtype=np.float32))
            store.insert_block(con, "unit1", "feat", b, "s1", 0, "demo-room")
        con.commit()

    for role in ("therapist", "client"):
        feed(f"{role}/eda", 100)
    feed("therapist/hr", 100)
    feed("client/hr", 100 - TAIL_BLOCKS["hr"] - 3)  # the client's HR is 3 s short of what the wait needs
    procs = RoomProcesses(tmp_path, "demo-room")
    assert _features_reach(procs, db, "s1", end_ns, 0.6) is False
    feed("client/hr", 100 - TAIL_BLOCKS["hr"], first_s=100 - TAIL_BLOCKS["hr"] - 3)
    assert _features_reach(procs, db, "s1", end_ns, 0.6) is True
    assert _features_reach(procs, db, "s2", end_ns, 0.6) is False  # a session without features: no end reached
    con.close()
