#!/usr/bin/env bash
# The unit-only installation, measured: a fresh venv, only the unit extra, nothing of the hub or the lab.
#
#   tools/unit-install-check.sh [WORKDIR]     (default /tmp/dyadsync-unit-install; PYTHON=python3.11 to choose)
#
# 1. `pip install '.[unit]'` from the source tree (compiles the six Cython kernels here);
# 2. `pip wheel` once, then `pip install --only-binary=:all: dyadsync-*.whl[unit]` into a second fresh venv:
#    the way a Pi installs (docs/install.md) -- no compiler needed;
# each: install time, venv size, what got installed, and the checks
#   python -c "import device.unit"                                          (the unit daemon imports)
#   none of scipy pandas statsmodels matplotlib fastapi uvicorn installed
#   python -c "import dsp_ext, sys; assert 'serial' not in sys.modules"    (the kernels need no hardware)
# Not part of `make test` (it builds and downloads: minutes, not seconds).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/dyadsync-unit-install}
PYTHON=${PYTHON:-python3}
rm -rf "$WORK" && mkdir -p "$WORK/src"
# build from a clean copy of the tree (tracked and new files, no build/ leftovers, no generated .c or .so)
(cd "$REPO" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"
SRC=$WORK/src

check() {
    local venv=$1
    "$venv/bin/python" - <<'EOF'
import importlib.util
import device.unit  # noqa: F401
heavy = [m for m in ("scipy", "pandas", "statsmodels", "matplotlib", "fastapi", "uvicorn") if importlib.util.find_spec(m)]
assert not heavy, f"installed in a unit venv: {heavy}"
print("  import device.unit: OK; none of scipy pandas statsmodels matplotlib fastapi uvicorn")
EOF
    "$venv/bin/python" -c "import dsp_ext, sys; assert 'serial' not in sys.modules; print('  import dsp_ext without serial: OK')"
    "$venv/bin/dyadsync" setup --help >/dev/null && echo "  dyadsync setup: available"
    echo "  packages: $("$venv/bin/pip" list --format=freeze 2>/dev/null | grep -v '^\(pip\|setuptools\)=' | tr '\n' ' ')"
}

cd "$WORK"
echo "== 1. pip install '.[unit]' (source build) with $($PYTHON --version)"
$PYTHON -m venv src-venv
t0=$(date +%s.%N)
src-venv/bin/pip install -q "$SRC[unit]"
t1=$(date +%s.%N)
printf '  install: %.0f s; venv: %s MB\n' "$(echo "$t1 - $t0" | bc)" "$(du -sm src-venv | cut -f1)"
(cd / && check "$WORK/src-venv")

echo "== 2. a wheel built once, installed without a compiler"
t0=$(date +%s.%N)
src-venv/bin/pip wheel -q --no-deps -w dist "$SRC"
t1=$(date +%s.%N)
WHEEL=$(ls dist/dyadsync-*.whl)
printf '  wheel build: %.0f s; %s: %s kB\n' "$(echo "$t1 - $t0" | bc)" "$(basename "$WHEEL")" "$(du -sk "$WHEEL" | cut -f1)"
$PYTHON -m venv whl-venv
t0=$(date +%s.%N)
whl-venv/bin/pip install -q --only-binary=:all: "$WORK/$WHEEL[unit]"
t1=$(date +%s.%N)
printf '  install from the wheel: %.0f s; venv: %s MB\n' "$(echo "$t1 - $t0" | bc)" "$(du -sm whl-venv | cut -f1)"
(cd / && check "$WORK/whl-venv")
echo "  largest: $(du -sm whl-venv/lib/python3*/site-packages/* | sort -rn | head -5 | awk '{print $2":"$1"MB"}' | xargs -n1 basename | tr '\n' ' ')"

echo "== 3. the same without pip and setuptools inside the venv (installed with the system's pip --python)"
$PYTHON -m venv --without-pip lean-venv
t0=$(date +%s.%N)
$PYTHON -m pip --python lean-venv/bin/python install -q --only-binary=:all: "$WORK/$WHEEL[unit]"
t1=$(date +%s.%N)
printf '  install: %.0f s; venv: %s MB\n' "$(echo "$t1 - $t0" | bc)" "$(du -sm lean-venv | cut -f1)"
