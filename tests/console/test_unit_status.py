"""`dyadsync unit status` for people: times as dates and ages, each sensor's state, every counter explained."""

from __future__ import annotations

import re

from device.config import load_config
from device.unit import Unit
from dyadsync.cli import main

from .conftest import SENSORS_BOTH, RunningUnit


def test_unit_status_is_human_readable(unit_toml, console, capsys):
    path = unit_toml(sensors=SENSORS_BOTH)
    run = RunningUnit(Unit(load_config(path)))
    try:
        assert console.wait_status("unit-a", lambda s: s.state == "idle")
        console.send_raw(b"not a command")  # one refused command: a counter
        assert console.start("s-status", "T01", "C07", ["unit-a"]).ok
        assert console.wait_status("unit-a", lambda s: s.state == "recording" and s.dropped.get("bad_commands"))
        capsys.readouterr()
        assert main(["unit", "status", "--config", path]) == 0
        out = capsys.readouterr().out
    finally:
        run.close()
    assert re.search(r"session:\s+s-status \(open\) since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d .*s ago\); therapist T01, "
                     r"client C07; 0 markers", out), out
    assert re.search(r"last status: recording at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", out), out
    for sensor in ("t-eda", "t-ppg", "c-eda", "c-ppg"):
        assert re.search(rf"^\s+{sensor}\s+ok$", out, re.M), out
    assert re.search(r"^\s+bad_commands\s+1  commands refused", out, re.M), out
    assert "clock:       synchronised" in out or "clock:       unknown" in out
    assert "time_ns" not in out and "{" not in out  # no raw dicts or nanoseconds
    assert main(["unit", "status", "--config", path]) == 0
    assert "offline (the unit stopped) at" in capsys.readouterr().out
