"""`dyadsync session start|stop|mark|list` as real processes, with the console credentials `hub init` wrote,
against a real unit (simulated sensors) and the recorder: per-unit answers, refusals with reasons, a unit
that does not answer, codes checked before anything is sent."""

from __future__ import annotations

import subprocess
import sys

from broker import store
from broker.recorder import Recorder
from device.config import load_config
from device.unit import Unit
from tests.broker.test_hub_cli import _toml
from tests.device.conftest import SENSORS_BOTH

from .conftest import RunningUnit, wait


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dyadsync", "session", *args], capture_output=True, text=True,
                          timeout=120)


def test_session_commands_from_the_cli(hub_factory, tmp_path):
    cfg, layout, proc = hub_factory(name="hub")
    conf = _toml(cfg.out_dir, proc, 1)
    subprocess.run([sys.executable, "-m", "dyadsync", "hub", "init", "-c", str(conf)], check=True, timeout=60,
                   capture_output=True)
    proc.stop()
    proc.start()
    unit_toml = tmp_path / "unit-a.toml"
    unit_toml.write_text(
        f'room = "room-a"\nunit = "unit-a"\ndata_dir = "{tmp_path / "data-a"}"\n[broker]\n'
        f'url = "mqtt://{proc.host}:{proc.port}"\nusername = "unit-a"\n'
        f'password = "{layout.auth.units["unit-a"]}"\nreconnect_min_s = 0.1\nreconnect_max_s = 1.0\n'
        f'[clock]\ncheck = "assume_synced"\n[watchdog]\nstatus_interval_s = 2\n{SENSORS_BOTH}')
    db = cfg.out_dir / "hub.sqlite"
    rec = Recorder(db, "room-a", proc.host, proc.port, *layout.auth.service_user("recorder")).start()
    unit = RunningUnit(Unit(load_config(unit_toml)))
    try:
        # the config names unit-a and unit-b; unit-b is not running: said clearly, exit status 1
        r = _run("start", "-c", str(conf), "-t", "T01", "-k", "C07", "-s", "cli-s1", "--timeout", "3")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "unit-a: accepted" in r.stdout and "unit-b: NO ANSWER" in r.stdout
        assert "only unit-a record this session" in r.stdout
        one = ["-c", str(conf), "--units", "unit-a"]
        r = _run("start", *one, "-t", "T02", "-k", "C07", "-s", "cli-s1")
        assert r.returncode == 1 and "unit-a: REFUSED: session 'cli-s1' is running with therapist 'T01'" in r.stdout
        r = _run("start", *one, "-t", "Anna Muster", "-k", "C07")
        assert r.returncode == 2 and "not a pseudonymous code" in r.stderr, r.stderr
        r = _run("mark", *one, "first", "imagery")
        assert r.returncode == 0 and "marker 'first imagery'" in r.stdout and "unit-a: accepted" in r.stdout
        assert wait(lambda: len(store.session_markers(store.connect(db, readonly=True), "cli-s1")) == 1, 20)
        r = _run("list", *one)
        assert r.returncode == 0, r.stderr
        assert "unit-a       recording" in r.stdout and "cli-s1" in r.stdout
        r = _run("stop", *one)
        assert r.returncode == 0 and "stop cli-s1:" in r.stdout and "unit-a: accepted" in r.stdout
        r = _run("stop", *one)  # nothing runs any more
        assert r.returncode == 2 and "no unit reports a running session" in r.stderr
        r = _run("start", *one, "-t", "T03", "-k", "C08", "-s", "cli-s1")  # an id the hub already holds
        assert r.returncode == 2 and "already recorded" in r.stderr
        assert wait(lambda: rec.pending() == 0, 10)
        r = _run("list", *one)
        line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("cli-s1"))
        cols = line.split()
        assert cols[1:3] == ["T01", "C07"] and cols[-2:] == ["1", "1"], line  # 1 marker, 1 refused command
    finally:
        unit.close()
        rec.stop()
