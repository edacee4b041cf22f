# The few verbs a newcomer needs. Each installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= examples/contactsync.yaml

.PHONY: up test lint format send clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

up: $(STAMP) ## run receiver + worker + reconciler + sandbox on an embedded default
	$(BIN)/contactsync --config $(CONFIG) up --sandbox

send: $(STAMP) ## sign and send examples/event.json to the running receiver
	$(BIN)/contactsync --config $(CONFIG) send --source website examples/event.json

test: $(STAMP) ## the whole test suite (real Redis, RabbitMQ, PostgreSQL when present)
	$(BIN)/python -m pytest

lint: $(STAMP) ## ruff (lint + format check) and mypy strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf .contactsync .pytest_cache .mypy_cache .ruff_cache

.PHONY: bench
bench: $(STAMP) ## the rate limit under a backlog, 1, 2 and 4 workers (needs Redis + PostgreSQL, ~4 min)
	$(BIN)/python -m ops.bench.ratelimit $(ARGS)

.PHONY: bench-compare
bench-compare: $(STAMP) ## contactsync against the obvious Celery implementation (needs Redis + PostgreSQL)
	$(BIN)/python -m ops.bench.compare $(ARGS)

.PHONY: bench-ingest
bench-ingest: $(STAMP) ## ingest speed: the receiver under gunicorn against a naive task.delay route, and a worker's CPU per command (needs Redis + PostgreSQL + wrk, ~5 min)
	$(BIN)/python -m ops.bench.ingest $(ARGS)

.PHONY: bench-publish
bench-publish: $(STAMP) ## the relay's CPU per task message, each way of writing it (needs redis-server, ~1 min)
	$(BIN)/python -m ops.bench.publish $(ARGS)

.PHONY: bench-server
bench-server: $(STAMP) ## the receiver's gunicorn worker class against gthread, on a trivial app (needs wrk, ~2 min)
	$(BIN)/python -m ops.bench.server $(ARGS)

.PHONY: chaos
chaos: $(STAMP) ## every fault scenario at a longer size, on dedicated Redis/PostgreSQL/RabbitMQ (~25 min)
	$(BIN)/python -m ops.chaos --scenario all --events 900 --seconds 90 $(ARGS)
