"""`dyadsync demo` end to end, as a user runs it: a separate process, with Mosquitto and without it."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys

from broker.mosquitto import find_mosquitto


def _run(args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "dyadsync", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_help_lists_subcommands():
    out = _run(["--help"])
    assert out.returncode == 0, out.stderr
    assert "demo" in out.stdout
    demo = _run(["demo", "--help"])
    assert demo.returncode == 0
    for option in ("--minutes", "--speed", "--broker", "--data-dir", "--seed"):
        assert option in demo.stdout


def _check_summary(stdout: str, db) -> None:
    rows = dict(re.findall(r"^\s+(raw|feat|metric|total)\s+(\d+\s+\d+)", stdout, re.M))
    assert set(rows) == {"raw", "feat", "metric", "total"}, stdout
    for kind, pair in rows.items():
        sent, stored = map(int, pair.split())
        assert sent == stored > 0, (kind, sent, stored)
    assert "stored every message" in stdout
    con = sqlite3.connect(db)
    (n_sessions,) = con.execute("SELECT COUNT(*) FROM sessions WHERE therapist_code='T01' AND stopped_ns IS NOT NULL").fetchone()
    assert n_sessions == 1
    (n_raw,) = con.execute("SELECT COUNT(*) FROM blocks WHERE kind='raw'").fetchone()
    assert n_raw == int(rows["raw"].split()[1])


def test_demo_without_mosquitto_uses_embedded_broker(tmp_path):
    env = dict(os.environ, DYADSYNC_MOSQUITTO="none")  # as on a machine where it is not installed
    out = _run(["demo", "--minutes", "1.5", "--speed", "300", "--broker", "auto", "--quiet",
                "--data-dir", str(tmp_path)], env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "broker: embedded" in out.stdout
    _check_summary(out.stdout, tmp_path / "hub.sqlite")


def test_demo_with_mosquitto(tmp_path):
    assert find_mosquitto(), "make test installs mosquitto"
    out = _run(["demo", "--minutes", "1.5", "--speed", "300", "--broker", "mosquitto", "--quiet",
                "--data-dir", str(tmp_path)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "broker: mosquitto" in out.stdout
    _check_summary(out.stdout, tmp_path / "hub.sqlite")
