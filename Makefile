# ktstr-ci: `make run` starts the service, `make test` sets up and runs the tests.
# Both set up everything they need on a fresh Debian 12 machine (root):
# Debian packages, a virtualenv in .venv, and the service state in var/.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_PACKAGES := ktstr_steps launcher master workers settings
# Packages the pipeline, the tests and the real-kernel build need.
APT_PKGS := git make gcc libc6-dev binutils flex bison bc libelf-dev libssl-dev dwarves \
	xz-utils curl iproute2 postgresql linux-source-6.12 procps \
	chromium chromium-driver
# pytest selection: FAST=1 skips the real-kernel build (minutes); CI runs everything.
PYTEST_ARGS ?=
ifeq ($(FAST),1)
PYTEST_ARGS += -m "not realkernel"
endif

.PHONY: help deps venv bytecode setup test lint run stop status bench soak clean webui-assets screenshots

help:
	@echo "make run    start master + one worker per LLC group (web UI on :8010)"
	@echo "make stop   stop what make run started"
	@echo "make status master, supervisord, workers (pid, CPUs, connected, restarts)"
	@echo "make test   set up and run the tests (FAST=1 skips the real-kernel build)"
	@echo "make lint   ruff"
	@echo "make bench  benchmarks under bench/ (service vs plain make; matrix cache hits; reuse; fixed cost per step)"
	@echo "make screenshots  the kernel build pages in headless Chromium, as PNGs in artifacts/screenshots/"
	@echo "make webui-assets  re-fetch Chart.js (webui-assets/package-lock.json) into master/webui/static/"
	@echo "make soak   pushes with random kill -9 of workers, holders, the master (SOAK_SECONDS=600)"

# Install missing Debian packages only; no apt-get when all are present.
deps:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "ktstr-ci: installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.stamp

# Every worker phase is a fresh `ktstr-ci` process: with bytecode compiled ahead it
# skips compiling the project's modules each time (hosts that set
# PYTHONDONTWRITEBYTECODE, as this one does, never cache it). Stale files are
# recompiled in memory, never trusted; compileall rewrites only changed modules.
bytecode: venv
	$(PY) -m compileall -q -j0 $(PY_PACKAGES)

setup: deps venv bytecode

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -ra --durations=25 $(PYTEST_ARGS) tests

lint: venv
	$(VENV)/bin/ruff check .

run: setup
	$(PY) -m launcher start

stop: venv
	$(PY) -m launcher stop

status: venv
	$(PY) -m launcher status

bench: setup
	$(PY) bench/run.py
	$(PY) bench/matrix_bench.py
	$(PY) bench/reuse_bench.py
	$(PY) bench/step_floor_bench.py

# Bounded: SOAK_SECONDS (default 600); prints faults survived / tried and rows lost.
soak: setup
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) var
	find $(PY_PACKAGES) -name __pycache__ -type d -prune -exec rm -rf {} +

# Chart.js, exactly as locked in webui-assets/package-lock.json, into the web UI plugin's
# static files (the built file and its licence are committed; this re-creates them).
webui-assets:
	cd webui-assets && npm ci --ignore-scripts --no-audit --no-fund
	cp webui-assets/node_modules/chart.js/dist/chart.umd.min.js master/webui/static/chart.umd.min.js
	cp webui-assets/node_modules/chart.js/LICENSE.md master/webui/static/chart.js.LICENSE.md

# The kernel build pages of a real master with real builds, in headless Chromium.
SCREENSHOT_DIR ?= artifacts/screenshots
screenshots: setup
	KTSTR_CI_SCREENSHOTS=$(abspath $(SCREENSHOT_DIR)) $(VENV)/bin/python -m pytest -q tests/test_webui_browser.py
	@echo "screenshots in $(SCREENSHOT_DIR)/"
