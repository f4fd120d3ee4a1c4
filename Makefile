# gmb-sync-queue: every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUF := node_modules/.bin/buf

export DATABASE_URL ?= sqlite:///./var/gmbsync.db
# Tests and benchmarks need a real PostgreSQL; each test session makes its own database in it.
export TEST_DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/postgres

.PHONY: help install protos protos-check lint format typecheck test chaos bench run migrate postgres clean check-alerts

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## Create .venv and install the project with its dev tools.

$(BUF): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $(BUF)

protos: $(STAMP)  ## Regenerate gmbsync/ from protos/.
	$(PY) scripts/gen_protos.py

protos-check: protos  ## Fail if the committed generated code is stale.
	@git diff --exit-code --stat -- gmbsync || { echo "gmbsync/ is stale: run 'make protos' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- gmbsync)" || { echo "gmbsync/ has untracked generated files: run 'make protos' and commit"; exit 1; }

lint: $(STAMP) $(BUF)  ## ruff (lint and format) and buf lint.
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	cd protos && ../$(BUF) lint

typecheck: $(STAMP)  ## mypy over the project's packages (settings in pyproject.toml).
	$(VENV)/bin/mypy

format: $(STAMP)  ## Apply ruff's fixes and formatting.
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

check-alerts: $(STAMP)  ## promtool: the alert rules, their unit tests, the dashboard's queries.
	@scripts/ensure_promtool.sh
	promtool check rules deploy/prometheus/alerts.yml
	cd deploy/prometheus && promtool test rules alerts_test.yml
	$(PY) scripts/check_dashboard_queries.py

postgres:  ## Start the local PostgreSQL if it is not accepting connections.
	@scripts/ensure_postgres.sh

test: $(STAMP) postgres  ## Run the whole test suite against PostgreSQL (and SQLite where it applies).
	$(PY) -m pytest $(PYTEST_ARGS)

chaos: $(STAMP) postgres  ## Only the chaos suite (CHAOS_JOBS=1000 for a larger run; docs/chaos.md).
	$(PY) -m pytest tests/chaos $(PYTEST_ARGS)

bench: $(STAMP) postgres  ## Every queue/worker figure beside PostgreSQL's own limit (BENCH_ARGS=--quick).
	$(PY) -m benchmarks $(BENCH_ARGS)

migrate: $(STAMP)  ## Bring DATABASE_URL to the newest schema.
	$(PY) -m migrations

run: $(STAMP)  ## Run the whole system locally (SQLite by default; set DATABASE_URL for PostgreSQL).
	$(PY) -m scripts.run_local

clean:  ## Remove the virtualenv, caches and local databases.
	rm -rf $(VENV) node_modules var .pytest_cache .ruff_cache
