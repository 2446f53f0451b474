# Common tasks. Everything runs inside .venv, built from pyproject.toml with the pins in constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all test-cluster test-fast gpu-check lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --no-cache-dir -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The main job: moving digits -> shards -> Ray Train + DeepSpeed -> predictions -> metrics + GIF, within
# 15 minutes on two CPU cores. Outputs in runs/demo (metrics.json, prediction.gif, prediction.png).
demo: setup
	$(BIN)/vdp demo --out runs/demo

# Test tiers (markers in pyproject.toml): `make test` is the README's command, everything but the `cluster`
# tier, under 12 minutes on two cores; `make test-all` adds the tests that start Ray processes of their own.
test: setup
	$(BIN)/python -m pytest -m "not cluster"

test-all: setup
	$(BIN)/python -m pytest

test-cluster: setup
	$(BIN)/python -m pytest -m cluster

test-fast: setup
	$(BIN)/python -m pytest -m "not ray and not train and not cluster" -x -q

# The whole GPU path on one CUDA GPU in about ten minutes (fp16/bf16 training with ZeRO-2, a kill and resume, the
# Predictor in every precision, vdp evaluate and vdp serve on the GPU, clips/s and MFU). Exits 2 without CUDA.
gpu-check: setup
	$(BIN)/python experiments/bench/gpu_check.py

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
