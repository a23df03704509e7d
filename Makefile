# dyadsync: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYX := $(wildcard dsp_ext/*.pyx dsp_ext/*.pxd)
SPEED ?= 60
MINUTES ?= 10

.PHONY: demo demo-live test test-long lint bench mosquitto chromium systools clean

# A virtual environment with the package (editable, Cython kernels compiled) and runtime dependencies.
$(VENV)/.installed: pyproject.toml setup.py $(PYX)
	@bash tools/ensure-venv.sh $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[unit,hub,lab]'
	touch $@

# The same plus the test extra and the real recordings used for validation (installed without their deps).
$(VENV)/.installed-test: pyproject.toml setup.py $(PYX)
	@bash tools/ensure-venv.sh $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps systole==0.3.1 heartpy==1.2.7 pyphysio==4.10.0 biopeaks==1.4.1
	touch $@ $(VENV)/.installed

mosquitto:
	@bash tools/ensure-system-package.sh mosquitto mosquitto

chromium:
	@bash tools/ensure-system-package.sh chromium chromium
	@bash tools/ensure-system-package.sh chromedriver chromium-driver

# Tools the tests call as a lab or an IT person would: Debian's sqlite3 (integrity check of the hub database),
# systemd-analyze and udevadm (the unit files and udev rule that `dyadsync setup` writes).
systools:
	@bash tools/ensure-system-package.sh sqlite3 sqlite3
	@bash tools/ensure-system-package.sh systemd-analyze systemd
	@bash tools/ensure-system-package.sh udevadm udev

demo: $(VENV)/.installed
	$(VENV)/bin/dyadsync demo --minutes $(MINUTES) --speed $(SPEED)

# The simulated room kept running in real time with the room console page (docs/operator.md).
demo-live: $(VENV)/.installed
	$(VENV)/bin/dyadsync demo --live --minutes 60

# Two pytest workers (pytest-xdist), each test file on one worker: most tests wait on simulated rooms.
test: $(VENV)/.installed-test mosquitto chromium systools
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -m "not slow" -n 2 --dist loadfile

test-long: $(VENV)/.installed-test mosquitto
	$(PY) -m pytest -m slow

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

bench: $(VENV)/.installed-test mosquitto
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf build dist *.egg-info dsp_ext/*.c dsp_ext/*.so
