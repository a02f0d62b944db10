# The two set-up commands of the README: `make run` and `make test`. Each makes its own
# virtual environment in .venv (Python >= 3.10 and pip are all a fresh machine needs);
# `make test` also installs Debian's postgresql package when it can (root or sudo) and
# no PostgreSQL server is there (scripts/ensure-postgres).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## install, then bring up the embedded stack and open the dashboard
	$(BIN)/gpuboard up $(ARGS)

test: $(STAMP)  ## install, then run the whole test suite
	scripts/ensure-postgres  # PostgreSQL's server for the tests' PostgreSQL variants
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests flows bench scripts
	$(BIN)/ruff format --check src tests flows bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
