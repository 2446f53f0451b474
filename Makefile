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

# The main job. Until `vdp demo` lands (issue 5) this runs what exists: moving-digits shards, then the
# tiny U-Net trained on them with Ray Train + DeepSpeed (a few minutes on two cores), then its export.
demo: setup
	$(BIN)/vdp shard --synthetic moving-digits --num-clips 1000 --frames 8 --size 32 32 \
		--out shards/moving_digits --split train=0.9,val=0.1
	$(BIN)/vdp train experiments/tiny_unet.yaml run.dir=runs/demo_unet train.max_steps=200
	@echo "demo OK: export in runs/demo_unet/export, TensorBoard: tensorboard --logdir runs/demo_unet/tb"

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

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
