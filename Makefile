# invoice-sync: every target sets up .venv first, so a fresh clone needs only Python 3.11+.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test lint format demo bench sandbox clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## make test: the whole suite on the real broker, PostgreSQL and the sandbox.
test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

## make lint: ruff (lint + format check) and strict mypy on worker/.
lint: $(STAMP)
	$(BIN)/ruff check worker tests bench
	$(BIN)/ruff format --check worker tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix worker tests bench
	$(BIN)/ruff format worker tests bench

## make demo: embedded broker + sandbox + demo events + the worker, then a summary line.
demo: $(STAMP)
	$(BIN)/invoice-sync demo

## make bench: throughput/latency ratios against baselines measured in the same run.
bench: $(STAMP)
	$(BIN)/python bench/run.py

sandbox: $(STAMP)
	$(BIN)/invoice-sync sandbox

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache *.egg-info
