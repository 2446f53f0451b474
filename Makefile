# Common tasks. Everything runs inside .venv, built from pyproject.toml with the pins in constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The main job. Until `vdp demo` lands (issue 5) this is a smoke check of what exists: the model zoo
# and a validated experiment config.
demo: setup
	$(BIN)/vdp models
	$(BIN)/vdp train experiments/tiny_dit.yaml --dry-run > /dev/null
	@echo "demo smoke check OK: models build, experiment configs validate"

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" -x -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python experiments/bench/models.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
