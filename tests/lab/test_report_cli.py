"""``dyadsync report`` loads only what the report needs: the other commands' modules (unit daemon, hub,
simulators) are not imported, and matplotlib not before the figures; ``dyadsync --help`` still lists every
command."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO


def test_report_command_loads_only_its_own_module():
    code = """
import sys
from dyadsync.cli import main
try:
    main(["report", "--help"])
except SystemExit as exc:
    assert exc.code == 0, exc.code
bad = sorted(m for m in ("hil.demo", "device.unit_cli", "broker.hub_cli", "dyadsync.setup", "matplotlib")
             if m in sys.modules)
assert not bad, bad
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--surrogates" in proc.stdout


def test_top_level_help_lists_every_command():
    proc = subprocess.run([sys.executable, "-m", "dyadsync", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("demo", "unit", "hub", "session", "lab", "hil", "report", "study", "setup"):
        assert name in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "dyadsync", "nosuch"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'nosuch'" in bad.stderr and "report" in bad.stderr
