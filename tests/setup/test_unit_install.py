"""What a unit-only installation relies on, checked at run time in a fresh interpreter (import-linter checks
the source statically; this catches what is imported indirectly). The installation itself (a fresh venv
with only '.[unit]', its size and time) is measured by tools/unit-install-check.sh and tools/arm64-check.sh."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HUB_OR_LAB = ("scipy", "pandas", "statsmodels", "matplotlib", "fastapi", "uvicorn", "httpx", "amqtt",
              "cryptography", "tqdm")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd="/")


def test_dsp_ext_imports_no_serial():
    proc = _run("import dsp_ext, sys; assert 'serial' not in sys.modules, 'serial'")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("module", ["device.unit", "device.unit_cli", "dyadsync.setup"])
def test_unit_modules_import_nothing_of_the_hub_or_the_lab(module):
    """The unit daemon and the commands a unit runs load no hub or lab dependency."""
    proc = _run(f"import sys, {module}\n"
                f"bad = sorted(m for m in {HUB_OR_LAB!r} if m in sys.modules)\n"
                "assert not bad, bad\n")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_cli_works_where_only_the_unit_extra_is_installed():
    """With every hub and lab package made unimportable (as in a '.[unit]' venv), the CLI starts, `unit` and
    `setup` work, and a hub command says which extra to install."""
    code = f"""
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HUB_OR_LAB!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Absent())
from dyadsync.cli import main
assert main(["unit", "check-config", {str(REPO / "examples" / "unit-synthetic.toml")!r}]) == 0
try:
    main(["setup", "unit", "--help"])
except SystemExit as exc:
    assert exc.code == 0, exc.code
assert main(["demo"]) == 2
"""
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pip install 'dyadsync[hub,lab]'" in proc.stderr and "--credentials" in proc.stdout
