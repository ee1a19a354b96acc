# margin keeper — two commands for a newcomer: `make demo` and `make test`.
# First use sets up everything from pinned lock files: .venv from requirements.lock (pip, hashes checked),
# node_modules from package-lock.json (npm ci: anvil/forge/cast 1.7.1 and solcjs), then builds the contracts.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
FORGE := node_modules/.bin/forge
PYTEST_ARGS ?= -n 2

.PHONY: all setup check-prereqs demo lint test test-unit test-python test-contracts abis bench wheel clean distclean

all: setup

check-prereqs:
	@if [ -z "$(PYTHON)" ]; then echo "error: Python 3.11 or newer is required: install python3.11 (https://www.python.org/downloads/)"; exit 1; fi
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || { echo "error: $(PYTHON) is $$($(PYTHON) -V 2>&1); Python 3.11 or newer is required: install python3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	@command -v node >/dev/null || { echo "error: Node.js 20 is required (for anvil, forge and solc from npm): install it from https://nodejs.org/"; exit 1; }
	@command -v npm >/dev/null || { echo "error: npm is required (it comes with Node.js 20): install Node.js from https://nodejs.org/"; exit 1; }

$(VENV)/.stamp: requirements.lock pyproject.toml | check-prereqs
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(VPY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

node_modules/.stamp: package.json package-lock.json | check-prereqs
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

contracts/out/.stamp: node_modules/.stamp foundry.toml $(wildcard contracts/src/*.sol) $(wildcard contracts/test/*.sol)
	$(FORGE) build --offline
	@touch $@

setup: $(VENV)/.stamp node_modules/.stamp contracts/out/.stamp

demo: setup
	$(VENV)/bin/keeper demo

# Lint: ruff (rules and line length in pyproject.toml), the formatter's check, mypy (strict on the pure core).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: setup lint
	$(FORGE) test --offline
	$(VPY) -m pytest $(PYTEST_ARGS)

# The fast loop: everything that needs no anvil, builds no wheel and is not a long replay (tests marked `chain`,
# `packaging` or `slow` deselected): the core, the service against the in-memory adapter, configuration, the CLI's
# bad-input paths, the replays on the 14 h crash window. `make test` runs every test, the wheel build and install
# (tests/test_wheel.py, marker `packaging`) and the 48 h replays (marker `slow`) included.
# Bytecode is cached even where the environment says not to (PYTHONDONTWRITEBYTECODE, e.g. in containers): without
# the cache each xdist worker rewrites and compiles every test module again, ~2.5 s of CPU a worker.
test-unit: $(VENV)/.stamp
	PYTHONDONTWRITEBYTECODE= $(VPY) -m pytest $(PYTEST_ARGS) -m "not chain and not packaging and not slow"

test-contracts: setup
	$(FORGE) test --offline -vv

test-python: setup
	$(VPY) -m pytest $(PYTEST_ARGS)

# Regenerate abis/ from the build (commit the result; tests/test_abis.py fails when they drift).
abis: setup
	$(VPY) scripts/export_abis.py

bench: setup
	$(VPY) scripts/bench_reads.py
	$(VPY) scripts/bench_risk.py

# The wheel carries abis/ and the compiled contracts devchain deploys (copied by setup.py's build step).
wheel: setup
	rm -rf build
	$(VPY) -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w dist .

clean:
	rm -rf contracts/out contracts/cache .pytest_cache .keeper build dist .mypy_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) node_modules
