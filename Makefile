# Serving UI — `make run` starts the product, `make test` runs every test.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
PIP_QUIET := 2>&1 | { grep -v "^WARNING: Location" || true; }
# Run apt-get directly as root, through sudo otherwise.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help run test test-fast lint format bench install system-deps browser-deps clean

help:
	@echo "make run    install everything and start the product (web, gateway, worker, beat)"
	@echo "make test   install what the tests need and run the whole suite"
	@echo "make lint   ruff check and format check"
	@echo "make bench  front door, replica, replica start and batching benchmarks (PASS/MISS)"

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "Installing Python packages into $(VENV)/ …"
	@$(PY) -m pip install --quiet --upgrade pip $(PIP_QUIET)
	@$(PY) -m pip install --quiet -e '.[test,examples]' $(PIP_QUIET)
	@touch $@

install: $(VENV)/.installed

system-deps:
	@command -v redis-server >/dev/null || { echo "Installing redis-server …"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server >/dev/null; }
	@command -v bwrap >/dev/null || { echo "Installing bubblewrap (the replicas' sandbox) …"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq bubblewrap >/dev/null; }

browser-deps:
	@command -v chromium >/dev/null || { echo "Installing chromium …"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

run: install system-deps
	$(PY) manage.py run_product

test: install system-deps browser-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

test-fast: install system-deps
	$(VENV)/bin/pytest -m "not browser and not examples and not reliability"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install system-deps
	$(PY) manage.py bench
	$(PY) manage.py bench_provisioning
	$(PY) manage.py bench_batching

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
