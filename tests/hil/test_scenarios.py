"""HIL scenarios end to end: Mosquitto, the hub recorder and the unit daemon(s) as separate processes on the
simulated room, scored against the simulator's truth. The short variants run by default (3 simulated
minutes at 25x each, ~30 s wall); the full-length ones (10 minutes, 60-s broker outage) and the short
ones that must run slower (serial firmware and I2C polling keep up with only a few x real time) are
marked slow."""

from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from broker.mosquitto import find_mosquitto
from hil.scenarios import Runner, ScenarioError, catalogue, missing_requirements, run_scenario, score

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed (make test installs it)")

# Scenarios that do not pass reliably in this build, with the precise reason (not strict: the misses depend
# on machine load; remove an entry once it passes under load).
KNOWN_FAILURES: dict[str, str] = {}


def _params(short: bool):
    out = []
    for name, s in catalogue(short).items():
        if short and name == "room-basic-sim":
            continue  # run (once, shared with the tamper tests) by test_room_basic_sim_scores
        marks = []
        missing = missing_requirements(s)
        if missing:
            marks.append(pytest.mark.skip(reason=f"needs {', '.join(missing)}"))
        elif name in KNOWN_FAILURES:
            # not strict: the remaining misses depend on machine load (they pass on a quiet machine)
            marks.append(pytest.mark.xfail(reason=KNOWN_FAILURES[name], strict=False))
        if not short or s.session_s / s.speed + 25 > 60:  # wall: session at speed + ~25 s start/stop/score
            marks.append(pytest.mark.slow)
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.fixture(scope="module")
def basic_run():
    """One short room-basic-sim run shared by the tamper tests, in the runner's default work directory (a private
    temporary directory, mode 0700: as root, CI's case, Mosquitto must not drop to a user that cannot read it)."""
    s = catalogue(short=True)["room-basic-sim"]
    runner = Runner(s)
    try:
        yield runner.run()
    finally:
        shutil.rmtree(runner.workdir, ignore_errors=True)


def test_room_basic_sim_scores(basic_run):
    rep = score(basic_run)
    print(rep.table())
    assert rep.passed, rep.table()
    cats = {s.category for s in rep.scores}
    assert cats == {"completeness", "time", "science", "health"}
    assert stat.S_IMODE(basic_run.workdir.stat().st_mode) == 0o700
    conf = (basic_run.workdir / "broker" / "mosquitto.conf").read_text()
    assert ("\nuser root\n" in conf) == (os.geteuid() == 0) and "\nuser " not in conf.replace("\nuser root\n", "")


@pytest.fixture
def taken_port():
    """A loopback port something else already listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_runner_stops_at_once_when_the_broker_cannot_start(taken_port):
    """Mosquitto cannot listen (the port is taken): the run stops within seconds with Mosquitto's own words and
    keeps its work directory, instead of running the whole scenario and failing in the scorer."""
    done = threading.Event()
    result: dict = {}

    def run():
        try:
            result["report"] = run_scenario("room-basic-sim", short=True, broker_port=taken_port)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            result["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(10), "the runner did not stop within 10 s of a broker that could not start"
    exc = result.get("error")
    assert isinstance(exc, ScenarioError), result
    msg = str(exc)
    assert "Error: Address already in use" in msg and f"port {taken_port}" in msg, msg
    kept = re.search(r"work directory kept: (\S+)", msg)
    assert kept and os.path.isdir(kept.group(1)), msg
    assert "Address already in use" in (Path(kept.group(1)) / "broker" / "mosquitto.log").read_text()
    shutil.rmtree(kept.group(1))


def test_cli_names_the_broker_error_and_the_kept_workdir(taken_port, tmp_path):
    out = subprocess.run([sys.executable, "-m", "dyadsync", "hil", "run", "room-basic-sim", "--short",
                          "--broker-port", str(taken_port), "--workdir", str(tmp_path / "w")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "mosquitto exited with status 1" in out.stderr and "Address already in use" in out.stderr, out.stderr
    assert f"work directory kept: {tmp_path / 'w'}" in out.stderr
    assert "Traceback" not in out.stderr


def _tampered(basic_run, tmp_path, sql: list[str]):
    db = tmp_path / "hub.sqlite"
    shutil.copy(basic_run.db_path, db)
    for ext in ("-wal", "-shm"):
        src = basic_run.db_path.with_name(basic_run.db_path.name + ext)
        if src.exists():
            shutil.copy(src, db.with_name(db.name + ext))
    con = sqlite3.connect(db)
    for q in sql:
        con.execute(q)
    con.commit()
    con.close()
    return score(replace(basic_run, db_path=db))


def test_score_misses_a_lost_feature_block_and_metric(basic_run, tmp_path):
    rep = _tampered(basic_run, tmp_path, [
        "DELETE FROM blocks WHERE kind='feat' AND stream='client/eda' AND seq=40",
        "DELETE FROM metrics WHERE name='sync_eda' AND seq=17",
    ])
    failed = {s.name for s in rep.failed()}
    assert "unit-a feature blocks" in failed
    assert "unit-a sync_eda" in failed
    assert not rep.passed


def test_score_misses_feature_blocks_lost_at_the_end(basic_run, tmp_path):
    """A stream may end early by TAIL_BLOCKS blocks (counted on its own block grid), not more."""
    # the last 6 s before the stop (and what the unit sent after it: on a loaded machine the stop arrives late)
    cut = basic_run.stop_ns - 6_000_000_000
    rep = _tampered(basic_run, tmp_path, [f"DELETE FROM blocks WHERE kind='feat' AND stream='client/eda' AND t0_ns >= {cut}"])
    feat = next(s for s in rep.scores if s.name == "unit-a feature blocks")
    assert not feat.passed and "client/eda" in feat.detail, feat


def test_science_leaves_out_windows_that_touch_lost_data(basic_run, tmp_path):
    """Features lost for 3 s inside the therapist-led segment: the windows reaching into the hole are left out
    of the science score (and counted), the loss itself is a completeness miss."""
    rep0 = score(basic_run)
    sci0 = next(s for s in rep0.scores if s.category == "science" and "therapist_led" in s.name)
    con = sqlite3.connect(basic_run.db_path)
    (s0,) = con.execute("SELECT MIN(seq) FROM blocks WHERE kind='feat' AND stream='therapist/eda'").fetchone()
    con.close()
    hole = (s0 + 174, s0 + 176)  # ~174-177 s of the session, near the end of the therapist-led segment (90-180 s)
    rep = _tampered(basic_run, tmp_path, [f"DELETE FROM blocks WHERE kind='feat' AND stream='therapist/eda' AND "
                                          f"seq BETWEEN {hole[0]} AND {hole[1]}"])
    sci = next(s for s in rep.scores if s.category == "science" and "therapist_led" in s.name)
    assert "touching lost data left out" in sci.detail, sci
    n0, n = int(sci0.detail.split(" windows")[0]), int(sci.detail.split(" windows")[0])
    # the windows whose span (window ± lag, 50 s) meets the hole are gone, the earlier ones are still scored
    assert 15 <= n <= n0 - 5 and sci.passed, (sci0.detail, sci.detail)
    assert not next(s for s in rep.scores if s.name == "unit-a feature blocks").passed


def test_score_misses_a_lost_raw_block(basic_run, tmp_path):
    rep = _tampered(basic_run, tmp_path, ["DELETE FROM blocks WHERE kind='raw' AND stream='therapist/ppg' AND seq=30"])
    assert {s.name for s in rep.failed()} >= {"unit-a raw samples"}


def test_score_misses_misaligned_client(basic_run, tmp_path):
    """The client's raw PPG stamped 20 ms late at the hub: the time score must see it."""
    rep = _tampered(basic_run, tmp_path, ["UPDATE blocks SET t0_ns = t0_ns + 20000000 WHERE kind='raw' AND "
                                          "stream='client/ppg'"])
    t = next(s for s in rep.scores if s.category == "time")
    assert not t.passed, t
    assert "20." in t.value or "19." in t.value, t.value


def test_score_misses_a_wrong_leader(basic_run, tmp_path):
    """Global-maximum lags with the wrong sign in the therapist-led segment (the leader rule reads them): the
    science score must miss."""
    rep = _tampered(basic_run, tmp_path, [
        "UPDATE metrics SET values_json = json_set(values_json, '$.max_lag_s', "
        "-json_extract(values_json, '$.max_lag_s')) WHERE name='sync_eda'"])
    sci = [s for s in rep.scores if s.category == "science" and "therapist_led" in s.name]
    assert sci and not any(s.passed for s in sci)


@pytest.mark.parametrize("name", _params(short=True))
def test_scenario_short(name, tmp_path):
    rep = run_scenario(name, short=True, workdir=tmp_path)
    print(rep.table())
    assert rep.passed, rep.table()


@pytest.mark.parametrize("name", _params(short=False))
def test_scenario_full(name, tmp_path):
    rep = run_scenario(name, short=False, workdir=tmp_path)
    print(rep.table())
    assert rep.passed, rep.table()


def test_cli_list_and_unknown_scenario():
    out = subprocess.run([sys.executable, "-m", "dyadsync", "hil", "list"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    for name in catalogue():
        assert name in out.stdout
    bad = subprocess.run([sys.executable, "-m", "dyadsync", "hil", "run", "no-such-room"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2
    assert "unknown scenario 'no-such-room'" in bad.stderr


def test_lost_blocks_are_injected_exactly():
    """The simulated sensor drops exactly the listed blocks (a sequence gap) and flags contact loss."""
    from device.clock import ScaledClock
    from hil.wiring import HilSpec, SimulatedSensor

    spec = HilSpec(sim={"seed": 3, "duration_s": 60, "events": [
        {"stream": "client/eda", "kind": "contact_loss", "start_s": 1.0, "end_s": 2.0}]},
        t0_ns=time.time_ns(), drops={"client/eda": [[0.5, 2]]}, block_s=0.125)
    sim = spec.simulator()
    spec.t0_ns = time.time_ns()
    clock = ScaledClock(100.0, spec.t0_ns)
    src = SimulatedSensor("c-eda", "client/eda", 32.0, clock, sim, spec.t0_ns, block_s=0.125,
                          dropped=spec.dropped_blocks("client/eda", 32.0))
    blocks = []
    while len(blocks) < 20:
        blocks += src.read(0.5)
    seqs = [b.seq for b in blocks]
    assert spec.dropped_blocks("client/eda", 32.0) == {4, 5}
    assert 4 not in seqs and 5 not in seqs and 3 in seqs and 6 in seqs
    assert src.lost_blocks == 2
    for b in blocks:
        k = np.arange(b.n) + b.seq * 4
        np.testing.assert_allclose(b.values, sim.value_at("client/eda", k / 32.0).astype(np.float32))
        assert b.t0_ns == spec.t0_ns + round(b.seq * 4 * 1e9 / 32.0)
        lost_contact = 1.0 <= (b.seq * 4 + 3) / 32.0 and b.seq * 4 / 32.0 < 2.0
        assert bool(b.flags & 0x2) == lost_contact, (b.seq, b.flags)


def test_bad_spec_is_a_clear_error(tmp_path, monkeypatch):
    from core.errors import ConfigError
    from hil.wiring import SPEC_ENV, HilSpec, find_spec

    p = tmp_path / "spec.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        HilSpec.read(p)
    p.write_text('{"version": 99}')
    with pytest.raises(ConfigError, match="version 99"):
        HilSpec.read(p)
    monkeypatch.setenv(SPEC_ENV, str(tmp_path / "missing.json"))

    class Cfg:
        data_dir = tmp_path

    with pytest.raises(ConfigError, match="no HIL spec"):
        find_spec(Cfg())
