"""The layers of docs/architecture.md hold: import-linter's contracts pass on the tree and fail on a
deliberate upward import; the light packages import nothing heavy at run time."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "dsp_ext", "firmware_bridge", "broker", "device", "lab", "hil", "dyadsync")
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--config", str(tree / "pyproject.toml"), "--no-cache"], cwd=tree,
                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=300)


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(ROOT / "pyproject.toml", tree)
    for p in PACKAGES:
        shutil.copytree(ROOT / p, tree / p, ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.c"))
    return tree


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (the test extra)")
def test_layer_contracts_hold_and_catch_an_upward_import(tmp_path):
    tree = _copy(tmp_path)
    ok = _lint(tree)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "broken" not in ok.stdout.lower().replace("0 broken", "")
    # a deliberate violation: the DSP layer imports the unit
    grid = tree / "dsp_ext" / "grid.py"
    grid.write_text(grid.read_text() + "\nimport device.unit  # noqa: E402,F401  (deliberate layer violation)\n")
    bad = _lint(tree)
    assert bad.returncode != 0
    assert "dsp_ext.grid -> device.unit" in bad.stdout


def test_dsp_and_wire_import_nothing_heavy():
    code = ("import sys, dsp_ext.synchrony, dsp_ext.ppg, dsp_ext.eda, dsp_ext.hrv, broker.wire, broker.mqtt; "
            "heavy = {'serial', 'smbus2', 'scipy', 'pandas', 'fastapi', 'uvicorn', 'amqtt', 'cryptography', "
            "'matplotlib', 'statsmodels', 'httpx'} & {m.split('.')[0] for m in sys.modules}; "
            "print(sorted(heavy)); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_unit_imports_no_hub_or_lab_dependency():
    code = ("import sys, device.unit; "
            "heavy = {'scipy', 'pandas', 'fastapi', 'uvicorn', 'amqtt', 'cryptography', 'matplotlib', "
            "'statsmodels', 'httpx', 'lab', 'hil'} & {m.split('.')[0] for m in sys.modules}; "
            "print(sorted(heavy)); sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(("expected", "t0", "rate", "n"), [
    (0, 0, 100.0, 0), (0, 4_999_999, 100.0, 0), (0, 5_000_001, 100.0, 1), (0, 30_000_000, 100.0, 3),
    (0, -5_000_001, 100.0, -1), (0, -4_999_999, 100.0, 0), (1e18, 1e18 + 250e6, 4.0, 1),
])
def test_samples_between_is_the_one_contiguity_rule(expected, t0, rate, n):
    from core.vocab import samples_between

    assert samples_between(expected, t0, rate) == n
