# Serving UI — `make run` starts the product, `make test` runs every test.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

# `make run VENV=<dir>` runs with a Python environment built elsewhere (another checkout's,
# CI's): nothing is installed into it, and this checkout's code is what runs, as every
# process starts in this directory, which comes first on Python's import path.
VENV := .venv
PY := $(VENV)/bin/python
PIP_QUIET := 2>&1 | { grep -v "^WARNING: Location" || true; }
# Run apt-get directly as root, through sudo otherwise.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help run run-cluster test test-sqlite test-postgres test-sqlite-parallel test-sqlite-serial \
	test-postgres-parallel test-postgres-serial test-fast smoke lint format bench install \
	system-deps browser-deps clean

help:
	@echo "make run    install everything and start the product (web, gateway, worker, beat)"
	@echo "make run-cluster  the same with replicas on a 2-node Ray cluster, PostgreSQL and an"
	@echo "            MLflow tracking server, all on this machine (loopback only)"
	@echo "make test   install what the tests need, lint, and run the suite on SQLite and on"
	@echo "            PostgreSQL: both in parallel on pytest-xdist workers, then the serial tests"
	@echo "make test-sqlite / test-postgres  one database's run (parallel, then serial tests)"
	@echo "make test-sqlite-parallel / test-sqlite-serial / test-postgres-parallel /"
	@echo "            test-postgres-serial  one phase of one database's run"
	@echo "make test-fast  without the browser, example, reliability and cluster tests"
	@echo "make smoke  make run and make run-cluster from fresh clones, as root and as an"
	@echo "            ordinary user: up, a model enabled and scoring, Ctrl-C stops everything"
	@echo "make lint   ruff check and format check"
	@echo "make format apply ruff's formatting and fixes"
	@echo "make bench  front door, replica, replica start, batching, noisy neighbour and"
	@echo "            Ray-placed replica benchmarks (PASS/MISS)"
	@echo "make install       the Python environment in .venv (every other target builds it)"
	@echo "make system-deps   redis-server, bubblewrap and postgresql (apt-get, as root or sudo)"
	@echo "make browser-deps  chromium for the browser tests (apt-get)"
	@echo "make clean  remove .venv, var/ and the tools' caches"

# uv installs what pip would, in a fraction of the time; it reads no pip configuration, so
# a wheel directory given to pip (PIP_FIND_LINKS, e.g. a CPU-only torch) is passed on.
PIP_WHEEL_DIRS = $(PIP_FIND_LINKS) $(shell python3 -m pip config get global.find-links 2>/dev/null)
UV_FIND_LINKS = $(foreach dir,$(sort $(PIP_WHEEL_DIRS)),--find-links $(dir))

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "Installing Python packages into $(VENV)/ …"
	@$(PY) -m pip install --quiet --upgrade pip uv $(PIP_QUIET)
	@$(PY) -m uv pip install --quiet --python $(PY) $(UV_FIND_LINKS) -e '.[test,examples,cluster]'
	@touch $@

ifeq ($(VENV),.venv)
install: $(VENV)/.installed
else
install:
	@$(PY) -c 'import importlib.metadata as m; m.version("serving-ui")' 2>/dev/null || { \
		echo "VENV=$(VENV): no Python environment with serving-ui installed there" \
			"(make install builds one in its checkout's .venv)"; exit 1; }
endif

system-deps:
	@command -v redis-server >/dev/null || { echo "Installing redis-server …"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server >/dev/null; }
	@command -v bwrap >/dev/null || { echo "Installing bubblewrap (the replicas' sandbox) …"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq bubblewrap >/dev/null; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "Installing postgresql …"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; }

browser-deps:
	@command -v chromium >/dev/null || { echo "Installing chromium …"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

run: install system-deps
	$(PY) manage.py run_product

run-cluster: install system-deps
	$(PY) manage.py run_cluster

# The suite runs on SQLite, the embedded default, all but the 2-node Ray cluster tests
# (`make run-cluster` runs on PostgreSQL). On PostgreSQL (SERVING_TEST_DB=postgres: the run
# starts its own server on 127.0.0.1) it runs again, the cluster tests included, without
# the tests marked `any_database`: those whose subject does not depend on the database
# engine (the sandbox, the wire format, the UI in a browser, the plugin's client, the
# example models), which run once.
# Each database's run has two phases: the tests in parallel on TEST_WORKERS pytest-xdist
# workers (each with its own Redis, Celery worker, web server, data directory and
# database), then the tests marked `serial` (the latency guards, the example models, the Ray
# cluster) alone. Most tests wait on processes, so `make test` runs the two databases'
# parallel phases at once, then the serial phases one after the other (README.md has the
# timings).
TEST_WORKERS := 3
PYTEST_PARALLEL := $(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile
PYTEST_SERIAL := $(VENV)/bin/pytest -p no:xdist
SQLITE_TESTS := not cluster
POSTGRES_TESTS := not any_database
POSTGRES := SERVING_TEST_DB=postgres

test: install system-deps browser-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@echo "SQLite and PostgreSQL in parallel (each one's output when it ends), then the serial tests"
	$(MAKE) --no-print-directory -j2 --output-sync=target test-sqlite-parallel test-postgres-parallel
	$(MAKE) --no-print-directory test-sqlite-serial
	$(MAKE) --no-print-directory test-postgres-serial

test-sqlite: test-sqlite-parallel
	$(MAKE) --no-print-directory test-sqlite-serial

test-postgres: test-postgres-parallel
	$(MAKE) --no-print-directory test-postgres-serial

test-sqlite-parallel: install system-deps browser-deps
	$(PYTEST_PARALLEL) -m "not serial and $(SQLITE_TESTS)"

test-sqlite-serial: install system-deps browser-deps
	$(PYTEST_SERIAL) -m "serial and $(SQLITE_TESTS)"

test-postgres-parallel: install system-deps browser-deps
	$(POSTGRES) $(PYTEST_PARALLEL) -m "not serial and $(POSTGRES_TESTS)"

test-postgres-serial: install system-deps browser-deps
	$(POSTGRES) $(PYTEST_SERIAL) -m "serial and $(POSTGRES_TESTS)"

test-fast: install system-deps
	$(PYTEST_PARALLEL) -m "not browser and not examples and not reliability and not cluster"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# After `make test` (CI runs both): the two ways users start the product, end to end, from
# fresh clones that reuse this environment (tests/smoke/smoke.py says what is checked).
# SMOKE_ARGS: e.g. --only root, --targets run, --keep, --setting NAME=VALUE.
smoke: install system-deps
	$(PY) tests/smoke/smoke.py --venv $(VENV) $(SMOKE_ARGS)

bench: install system-deps
	$(PY) manage.py bench
	$(PY) manage.py bench_provisioning
	$(PY) manage.py bench_batching
	$(PY) manage.py bench_limits
	$(PY) manage.py bench_cluster

clean:
	rm -rf .venv var .pytest_cache .ruff_cache
