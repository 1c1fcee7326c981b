# Two commands do everything on a fresh Debian machine, as root:
#   make demo   creates .venv, installs the project, runs the demo scenario
#   make test   installs the system packages the tests need, then ruff, mypy, pytest
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the integration tests start for real (broker, gpsd, ptys, SNMP tools).
SYSTEM_PACKAGES := mosquitto gpsd gpsd-clients socat snmp snmpd
export DEBIAN_FRONTEND := noninteractive

# The compiled build of the per-fix hot path (setup.py, preemption/service/hotpath.py): the
# wheel a deployment installs with PREEMPTION_COMPILE=1, unpacked into build/compiled
# with links to the sources' config/ and tests/data/ (bundled scenarios and logs), and
# run with PYTHONPATH in front of the development install. Rebuilt when a source changes.
COMPILED := build/compiled
PY_SOURCES := $(shell find preemption routes gps sim signal_adapters -name '*.py') setup.py pyproject.toml
# Tests import the compiled packages first: "append" keeps pytest from putting the
# source tree in front of them.
COMPILED_PYTEST := PYTHONPATH=$(COMPILED) PREEMPTION_EXPECT_COMPILED=1 $(BIN)/pytest \
	--import-mode=append -p no:cacheprovider

.PHONY: demo test test-compiled lint bench compiled sysdeps venv clean

venv: $(STAMP)

$(BIN)/python:
	@if ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then \
	  echo "installing python3-venv (Debian)"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv python3-pip >/dev/null; \
	fi
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,sumo]'
	@touch $@

compiled: $(COMPILED)/.built

# mypyc needs a C compiler and the Python headers.
$(COMPILED)/.built: $(PY_SOURCES) | $(STAMP)
	@if ! command -v gcc >/dev/null || [ ! -e "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ]; then \
	  echo "installing gcc and python3-dev (Debian) for the compiled build"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev python3-dev >/dev/null; \
	fi
	rm -rf $(COMPILED) build/wheel
	PREEMPTION_COMPILE=1 $(BIN)/python -m pip wheel -q --no-deps -w build/wheel .
	$(BIN)/python -m zipfile -e build/wheel/preemption-*.whl $(COMPILED)
	@# Its entry points come from the development install, which names the same modules.
	rm -rf $(COMPILED)/preemption-*.dist-info
	ln -s ../../config $(COMPILED)/config
	mkdir $(COMPILED)/tests && ln -s ../../../tests/data $(COMPILED)/tests/data
	@touch $@

sysdeps:
	@missing=""; \
	for pkg in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "install ok installed" \
	    || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

demo: venv
	$(BIN)/preemption demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: sysdeps venv lint
	$(BIN)/python -m pytest -q --durations=5
	$(MAKE) --no-print-directory test-compiled

# The whole suite again, on the compiled build (the 100-run sweep is the same
# simulation either way and takes longest, so it runs once, above).
test-compiled: sysdeps compiled
	$(COMPILED_PYTEST) -q --ignore=tests/test_sim_sweep.py tests

# The compiled build is what a deployment runs; bench-python.json has the match
# benchmark of the pure-Python modules for comparison.
bench: sysdeps compiled
	PYTHONPATH=$(COMPILED) $(BIN)/preemption bench all --json | tee bench.json
	$(BIN)/preemption bench match --json | tee bench-python.json
	PYTHONPATH=$(COMPILED) $(BIN)/preemption bench soak --minutes 10 --json | tee bench-soak.json

clean:
	rm -rf $(VENV) build .mypy_cache .pytest_cache .ruff_cache .hypothesis bench.json bench-python.json bench-soak.json
