"""Every example config in the repository runs: unit configs through `dyadsync unit run`'s own loader, as a
real unit process against a real Mosquitto (configs that name hardware via `dyadsync hil unit`, which loads
them with the same loader and serves their sensors from the emulators); hub configs through `setup hub`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from broker.console import RoomConsole
from device.config import load_config

from .conftest import make_pi_root, run_setup

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.toml"))
UNIT_EXAMPLES = [p for p in EXAMPLES if p.name.startswith("unit")]
HUB_EXAMPLES = [p for p in EXAMPLES if p.name.startswith("hub")]


def test_examples_are_classified():
    assert UNIT_EXAMPLES and HUB_EXAMPLES
    assert set(UNIT_EXAMPLES) | set(HUB_EXAMPLES) == set(EXAMPLES), "an example that no test loads"


def _needs_hardware(cfg) -> bool:
    return cfg.hardware.mode == "real" and any(s.kind != "synthetic" for s in cfg.sensors)


@pytest.mark.parametrize("example", UNIT_EXAMPLES, ids=lambda p: p.name)
def test_unit_example_runs_against_a_broker(example, tmp_path, mosquitto, room_auth):
    """The example as shipped, with only its broker address and password file pointed at the test broker
    (and its status interval shortened)."""
    cfg = load_config(example)
    pw = tmp_path / "unit.password"
    pw.write_text(room_auth.units[cfg.unit] + "\n")
    text = example.read_text()
    text, n_url = re.subn(r'(?m)^url = "mqtts?://[^"]+"', f'url = "mqtt://{mosquitto.host}:{mosquitto.port}"', text)
    text, n_pw = re.subn(r'(?m)^password_file = "[^"]+"', f'password_file = "{pw}"', text)
    assert n_url == 1 and n_pw == 1, "the example's [broker] table should have one url and one password_file"
    # a status every second instead of every 30 s, so the test sees 'all sensors ok' without waiting
    text, n_st = re.subn(r"(?m)^status_interval_s = .*$", "status_interval_s = 1", text)
    if not n_st:
        text += "\n[watchdog]\nstatus_interval_s = 1\n"
    conf = tmp_path / example.name
    conf.write_text(text)
    data = tmp_path / "data"
    if _needs_hardware(cfg):
        argv = ["hil", "unit", "--config", str(conf), "--data-dir", str(data)]
    else:
        argv = ["unit", "run", "--config", str(conf), "--data-dir", str(data)]
    log = open(tmp_path / "unit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "dyadsync", *argv], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path)
    try:
        with RoomConsole(mosquitto.host, mosquitto.port, cfg.room, *room_auth.service_user("console")) as con:
            want = {s.name for s in cfg.sensors}
            ok = False
            for _ in range(90):  # up to ~90 s, but no longer than the unit process lives
                ok = con.wait_status([cfg.unit], lambda s: s.state == "idle" and set(s.sensors) == want
                                     and all(v == "ok" for v in s.sensors.values()), timeout_s=1)
                if ok or proc.poll() is not None:
                    break
            assert ok, f"{example.name}: status {con.status.get(cfg.unit)}; log:\n{(tmp_path / 'unit.log').read_text()[-3000:]}"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, (tmp_path / "unit.log").read_text()[-3000:]
            assert con.wait_status([cfg.unit], lambda s: s.state == "offline", timeout_s=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.parametrize("example", HUB_EXAMPLES, ids=lambda p: p.name)
def test_hub_example_sets_up_a_hub(example, tmp_path, capsys, need_root):
    root = make_pi_root(tmp_path / "hub", act_led=False)
    rc, out = run_setup(capsys, "hub", "--root", str(root), "--config", str(example))
    assert rc == 0, out
    assert (root / "etc/dyadsync/hub.toml").read_text() == example.read_text()
    assert (root / "etc/dyadsync/hub/units/unit-a/credentials.toml").exists()
