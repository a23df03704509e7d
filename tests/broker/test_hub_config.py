"""hub.toml errors carry file:line and the key like unit.toml; booleans are strict; duplicates are named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker.hub_config import load_hub_config
from core.errors import ConfigError

DOC = Path(__file__).resolve().parents[2] / "docs" / "hub.md"

HUB = """room = "room-a"
units = ["unit-a", "unit-b"]

[listener]
port = 1883

[tls]
port = 8883
require_certificate = false

[recorder]
db = "hub.sqlite"
"""


def _error(tmp_path, text: str) -> str:
    path = tmp_path / "hub.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_hub_config(path)
    return str(info.value)


def _line(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_documented_example_is_valid(tmp_path):
    example = re.search(r"```toml\n(.*?)```", DOC.read_text(), re.DOTALL).group(1)
    cfg_path = tmp_path / "hub.toml"
    cfg_path.write_text(example)
    cfg = load_hub_config(cfg_path)
    assert cfg.tls is not None and cfg.tls.require_certificate is False
    assert cfg.bridge is not None and cfg.bridge.password_file == Path("/etc/dyadsync/lab-bridge.password")


@pytest.mark.parametrize("old, new, key, expected", [
    ("require_certificate = false", 'require_certificate = "yes"', "tls.require_certificate", "valid boolean"),
    ("require_certificate = false", "require_certificate = 1", "tls.require_certificate", "valid boolean"),
    ("port = 1883", "port = 70000", "listener.port", "less than or equal to 65535"),
    ("port = 1883", 'port = "1883"', "listener.port", "valid integer"),
    ('db = "hub.sqlite"', 'db = "hub.sqlite"\nbatch_size = 0', "recorder.batch_size", "greater than or equal"),
])
def test_bad_values_carry_file_line_and_key(tmp_path, old, new, key, expected):
    text = HUB.replace(old, new, 1)
    msg = _error(tmp_path, text)
    line = _line(text, new.splitlines()[-1])
    assert f"{tmp_path / 'hub.toml'}:{line}: key '{key}': Input should be" in msg and expected in msg, msg


def test_unknown_key_right_after_a_header(tmp_path):
    text = HUB.replace("[listener]\n", "[listener]\nprot = 1\n")
    msg = _error(tmp_path, text)
    assert f"hub.toml:{_line(text, 'prot = 1')}: unknown key 'listener.prot'" in msg, msg


def test_duplicate_unit_is_named(tmp_path):
    text = HUB.replace('units = ["unit-a", "unit-b"]', 'units = ["unit-a", "unit-b", "unit-a"]')
    msg = _error(tmp_path, text)
    assert f"hub.toml:{_line(text, 'units =')}: key 'units'" in msg and "more than once: unit-a (" in msg, msg


def test_ids_with_a_trailing_newline_are_refused(tmp_path):
    msg = _error(tmp_path, HUB.replace('room = "room-a"', 'room = "room-a\\n"'))
    assert "hub.toml:1: key 'room'" in msg
