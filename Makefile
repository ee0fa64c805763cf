# The two set-up commands of the README. Both create .venv on first use and install cordfuse into
# it; every pip call goes through constraints.txt so torch stays the pinned CPU/CUDA-agnostic 2.13.0.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast check install bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cordfuse demo --overwrite $(DEMO_ARGS)

# One pytest worker per core (at most 4), each on its share of the cores (tests/conftest.py); the
# tests that share a trained model or a prepared cohort run in one worker, which makes it once.
PARALLEL ?= -n auto --maxprocesses 4 --dist loadgroup

# Everything CI checks: format, lint, types, then every test tier and every docstring example.
test: check
	$(BIN)/python -m pytest -q $(PARALLEL) $(PYTEST_ARGS)

# The edit-test loop: the unit tier only (no pre-processing of cohorts, no training), < 1 min.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PARALLEL) $(PYTEST_ARGS)

check: $(STAMP)
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
