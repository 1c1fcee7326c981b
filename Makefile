# Two commands do everything on a fresh Debian machine, as root:
#   make demo   creates .venv, installs the project, runs the demo scenario
#   make test   installs the system packages the tests need, then ruff, mypy, pytest
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the integration tests start for real (broker, gpsd, ptys, SNMP tools).
SYSTEM_PACKAGES := mosquitto gpsd gpsd-clients socat snmp
export DEBIAN_FRONTEND := noninteractive

.PHONY: demo test lint bench sysdeps venv clean

venv: $(STAMP)

$(BIN)/python:
	@if ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then \
	  echo "installing python3-venv (Debian)"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv python3-pip >/dev/null; \
	fi
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,sumo]'
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

bench: venv
	$(BIN)/preemption bench all --json | tee bench.json

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis bench.json
