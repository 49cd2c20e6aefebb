# The two commands of the README: `make run` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run cluster test lint unit bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,fast]'
	@touch $(STAMP)

setup: $(STAMP)

## Start the worker with deploy/governor.yaml (a bundled nats-server on loopback when no URL is given).
## ARGS="--nats-url nats://..." or ARGS="--config my.yaml" to change either.
run: $(STAMP)
	$(BIN)/governor run --config deploy/governor.yaml $(ARGS)

## A three-node NATS cluster and two governors on loopback (data and logs in .cluster/), to try failover by hand.
## ARGS="--metrics-port-base 9190" or ARGS="--config my.yaml" to change either.
cluster: $(STAMP)
	$(BIN)/governor cluster $(ARGS)

## Lint, type-check and run every test (unit, property, integration against a real nats-server).
test: $(STAMP)
	$(BIN)/ruff check worker schemas tests
	$(BIN)/ruff format --check worker schemas tests
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check worker schemas tests
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/governor bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
