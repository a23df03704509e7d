"""Unit config: the annotated example validates; bad lines name the file, key and line; unknown keys fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from device.config import load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "unit.toml"

MINIMAL = """
room = "room-a"
unit = "unit-a"
[broker]
username = "unit-a"
password = "pw"
[[sensors]]
name = "t-eda"
kind = "synthetic"
role = "therapist"
signal = "eda"
"""


def test_example_config_is_valid():
    cfg = load_config(EXAMPLE)
    assert cfg.room == "room-a" and cfg.unit == "unit-a"
    assert [s.stream for s in cfg.sensors] == ["therapist/eda", "therapist/ppg", None]
    assert cfg.sensors[0].mux_channel == 0 and cfg.sensors[0].address == 0x48
    assert cfg.broker.host == "hub.local" and cfg.broker.port == 1883


def test_minimal_config_defaults():
    cfg = parse_config(MINIMAL)
    assert cfg.dsp.win_s == 30 and cfg.dsp.lag_s == 10 and cfg.sensors[0].rate_hz == 32
    assert cfg.leds.backend == "none" and cfg.hardware.mode == "real"


def _error(text: str, path: str = "unit.toml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path)
    return str(info.value)


def test_unknown_keys_are_reported_with_line():
    text = MINIMAL.replace('password = "pw"', 'password = "pw"\npasword = "oops"') + "\n[dsp]\nwindow_s = 30\n"
    msg = _error(text)
    assert "unknown key 'broker.pasword'" in msg and "unit.toml:7:" in msg
    assert "unknown key 'dsp.window_s'" in msg


def test_bad_value_names_key_expected_and_found():
    msg = _error(MINIMAL + "\n[dsp]\nlag_s = -3\n")
    assert "key 'dsp.lag_s'" in msg and "greater than or equal to 0" in msg and "found -3" in msg
    msg = _error(MINIMAL.replace('kind = "synthetic"', 'kind = "ads1116"'))
    assert "key 'sensors[0].kind'" in msg and "'ads1115'" in msg and "found 'ads1116'" in msg


def test_errors_in_second_sensor_point_at_its_line():
    text = MINIMAL + '\n[[sensors]]\nname = "c-eda"\nkind = "synthetic"\nrole = "patient"\nsignal = "eda"\n'
    msg = _error(text)
    assert "sensors[1].role" in msg and "found 'patient'" in msg
    line = text.splitlines().index('role = "patient"') + 1
    assert f"unit.toml:{line}:" in msg


def test_cross_field_rules():
    assert "exactly one of 'password' or 'password_file'" in _error(MINIMAL.replace('password = "pw"', ""))
    dup = MINIMAL + '\n[[sensors]]\nname = "t-eda2"\nkind = "synthetic"\nrole = "therapist"\nsignal = "eda"\n'
    assert "same stream" in _error(dup)
    assert "needs 'url'" in _error(MINIMAL + '\n[[sensors]]\nname = "fw"\nkind = "serial"\n')
    assert "needs 'factory'" in _error(MINIMAL + '\n[hardware]\nmode = "emulated"\n')
    assert "missing required key 'room'" in _error(MINIMAL.replace('room = "room-a"', ""))
    assert "mqtt://" in _error(MINIMAL.replace('password = "pw"', 'password = "pw"\nurl = "http://x"'))


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("room = [\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad)


def test_key_right_after_its_table_header_is_on_its_own_line():
    """The line search must not let a header's newline count as the key's leading whitespace."""
    text = MINIMAL + "\n[dsp]\nlag_s = -3\n[outbox]\n  keep_acked_s = -1\n"
    msg = _error(text)
    lines = text.splitlines()
    assert f"unit.toml:{lines.index('lag_s = -3') + 1}: key 'dsp.lag_s'" in msg
    assert f"unit.toml:{lines.index('  keep_acked_s = -1') + 1}: key 'outbox.keep_acked_s'" in msg
    first = MINIMAL.replace('\nroom = "room-a"', 'room = "Room A"')  # a key on line 1
    assert "unit.toml:1: key 'room'" in _error(first)


def test_keys_in_inline_tables_and_table_rules_point_at_their_line():
    text = MINIMAL.replace('kind = "synthetic"\nrole = "therapist"\nsignal = "eda"',
                           'kind = "ads1115"\nrole = "therapist"\ngsr = { supply_v = 3.3, calibration_v = -1 }')
    msg = _error(text)
    assert f"unit.toml:{text.splitlines().index('gsr = { supply_v = 3.3, calibration_v = -1 }') + 1}: " \
           "key 'sensors[0].gsr.calibration_v'" in msg
    msg = _error(MINIMAL.replace('password = "pw"', ""))  # a rule of the [broker] table: its header's line
    assert f"unit.toml:{MINIMAL.splitlines().index('[broker]') + 1}: key 'broker'" in msg


@pytest.mark.parametrize("table, key, value, expected", [
    ("dsp", "publish_raw", '"yes"', "valid boolean"), ("dsp", "publish_raw", "1", "valid boolean"),
    ("dyad", "compute", '"false"', "valid boolean"), ("leds", "active_low", '"no"', "valid boolean"),
    ("clock", "flag_unknown", "0", "valid boolean"), ("broker", "keepalive_s", '"30"', "valid integer"),
    ("dsp", "peak_window", "5.0", "valid integer"),
])
def test_values_are_strict(table, key, value, expected):
    if table == "broker":
        text = MINIMAL.replace('password = "pw"', f'password = "pw"\n{key} = {value}')
    else:
        text = MINIMAL + f"\n[{table}]\n{key} = {value}\n"
    msg = _error(text)
    line = text.splitlines().index(f"{key} = {value}") + 1
    assert f"unit.toml:{line}: key '{table}.{key}': Input should be a {expected}" in msg, msg


def test_real_booleans_paths_and_int_for_float_still_accepted():
    text = MINIMAL.replace('unit = "unit-a"', 'unit = "unit-a"\ndata_dir = "/tmp/x"')
    cfg = parse_config(text + "\n[dsp]\npublish_raw = false\nwin_s = 20\n[dyad]\ncompute = true\n")
    assert cfg.dsp.publish_raw is False and cfg.dsp.win_s == 20.0 and cfg.dyad.compute is True
    assert cfg.data_dir == Path("/tmp/x")
