# edgeworker — `make` alone lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EDGEWORKER := $(BIN)/edgeworker
CONFIG ?= examples/edgeworker.toml
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv install run test lint migrate migrate-remove-current-task-id

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-32s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(VENV)/.installed ## Create .venv with edgeworker and the test tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: venv ## Install edgeworker (into .venv, for now)

run: venv ## Migrate the demo database and run the worker on examples/edgeworker.toml
	$(EDGEWORKER) --config $(CONFIG) migrate
	$(EDGEWORKER) --config $(CONFIG) status

test: venv ## Run the test suite (crash and power-cut smoke tests included)
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: venv ## Check the code with ruff
	$(BIN)/ruff check edgeworker tests

migrate: venv ## Apply pending migrations to the configured database (CONFIG=...)
	$(EDGEWORKER) --config $(CONFIG) migrate

migrate-remove-current-task-id: venv ## Apply migrations up to 003 (drops jobs.current_task_id)
	$(EDGEWORKER) --config $(CONFIG) migrate --to 3
