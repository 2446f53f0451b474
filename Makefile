# Common tasks. Everything runs inside .venv, built from pyproject.toml with the pins in constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --no-cache-dir -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The main job: moving digits -> shards -> Ray Train + DeepSpeed -> predictions -> metrics + GIF, within
# 15 minutes on two CPU cores. Outputs in runs/demo (metrics.json, prediction.gif, prediction.png).
demo: setup
	$(BIN)/vdp demo --out runs/demo

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
	$(BIN)/python experiments/bench/data.py
	$(BIN)/python experiments/bench/train.py
	test -d runs/demo/run/export && $(BIN)/python experiments/bench/sampling.py || echo "sampling bench: run make demo first"
	test -d runs/demo/run/export && $(BIN)/python experiments/bench/serve.py || echo "serve bench: run make demo first"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
