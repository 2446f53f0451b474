"""Small training runs for the tests: a config on the session's digit shards, and readers of what a run wrote."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Short, frequent everything: a 2-worker run of a few dozen steps logs, validates and checkpoints often.
QUICK = (
    "train.workers=2",
    "train.cpus_per_worker=0.5",
    "train.batch_size=4",
    "train.log_every=5",
    "train.val_every=10",
    "train.checkpoint_every=10",
    "train.preview_every=1000",
    "train.warmup_steps=5",
    "train.val_batches=1",
    "sampling.steps=5",
)


def train_config(experiment: str, digits: Path, run_dir: Path, *overrides: str):
    """experiments/EXPERIMENT.yaml on the digit shards, writing to RUN_DIR (its name is the run's name)."""
    from vdp_ray.config import load_config

    base = [
        f"data.train={digits / 'train'}",
        f"data.val={digits / 'val'}",
        f"run.dir={run_dir}",
        f"run.name={run_dir.name}",
        *QUICK,
    ]
    return load_config(ROOT / "experiments" / f"{experiment}.yaml", [*base, *overrides])


def logged(run_dir: Path, stage: str) -> list[dict]:
    """The stage's metric rows (logs/STAGE.jsonl), one per logged step."""
    return [json.loads(line) for line in (run_dir / "logs" / f"{stage}.jsonl").read_text().splitlines()]


def checkpoints(run_dir: Path, name: str) -> list[Path]:
    """Ray Train's checkpoint folders of the run named NAME (RUN-STAGE), oldest first."""
    return sorted(p for p in (run_dir / "ray" / name).glob("checkpoint_*") if p.is_dir())


def last_checkpoint(run_dir: Path, name: str) -> Path:
    return checkpoints(run_dir, name)[-1]


def trainer_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())
