"""``dyadsync unit check-config|status`` through the real console-script entry point."""

from __future__ import annotations

from pathlib import Path

from dyadsync.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "unit.toml"


def test_check_config_ok(capsys):
    assert main(["unit", "check-config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "therapist-eda: ads1115 therapist/eda @ 32 Hz" in out


def test_check_config_reports_bad_and_unknown_keys(tmp_path, capsys):
    bad = tmp_path / "unit.toml"
    text = EXAMPLE.read_text().replace("lag_s = 10", "lag_s = -1\nlag_seconds = 10")
    bad.write_text(text)
    assert main(["unit", "check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    line = text.splitlines().index("lag_s = -1") + 1
    assert f"{bad}:{line}: key 'dsp.lag_s'" in err and "found -1" in err
    assert "unknown key 'dsp.lag_seconds'" in err


def test_status_without_database(tmp_path, capsys):
    cfg = tmp_path / "unit.toml"
    cfg.write_text(EXAMPLE.read_text().replace('data_dir = "/var/lib/dyadsync"', f'data_dir = "{tmp_path}"'))
    assert main(["unit", "status", "--config", str(cfg)]) == 1
    assert "has not run yet" in capsys.readouterr().err
