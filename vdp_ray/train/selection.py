"""Which weights a stage exports: the last (``train.select_by: last``), or the EMA weights at the validation that
scored best on ``train.select_by`` (``val/psnr_gain``: the preview's gain over the best baseline, higher is better;
``val/loss``: lower is better). A user with a few short videos overfits: the export is then the model from before
it did. The best weights live beside the run's checkpoints (``<run.dir>/best/<stage>/``) and survive restarts."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from ..export import load_state_dict, save_state_dict

WEIGHTS, SCORE = "ema.safetensors", "best.json"
LOWER_IS_BETTER = ("val/loss",)


def best_dir(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / "best" / stage


class Selection:
    """Rank 0 keeps the best EMA weights so far; every rank calls ``offer`` (the EMA gather is collective under
    ZeRO-3) with the same, broadcast validation metrics."""

    def __init__(self, metric: str, run_dir: str | Path, stage: str, rank: int, resumed: bool):
        self.metric, self.rank = metric, rank
        self.folder = best_dir(run_dir, stage)
        self.best: float | None = None
        if metric == "last":
            return
        if not resumed and rank == 0:  # a fresh start: a best from an earlier run in this folder is not ours
            shutil.rmtree(self.folder, ignore_errors=True)
        score = self.folder / SCORE
        if resumed and score.is_file():
            self.best = json.loads(score.read_text())["value"]

    def better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.metric in LOWER_IS_BETTER else value > self.best

    def offer(self, val: dict, step: int, ema, log) -> None:
        if self.metric == "last" or self.metric not in val or not self.better(float(val[self.metric])):
            return
        self.best = float(val[self.metric])
        weights = ema.state_dict(everywhere=False)
        if self.rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / (WEIGHTS + ".tmp")
            save_state_dict(weights, tmp)
            tmp.replace(self.folder / WEIGHTS)
            (self.folder / SCORE).write_text(json.dumps({"metric": self.metric, "value": self.best, "step": step}))
            log.line(f"best {self.metric} so far: {self.best:.4g} at step {step} (kept for the export)")


def selected_weights(run_dir: str | Path, stage: str, metric: str) -> tuple[dict | None, dict | None]:
    """The best weights a stage kept and their score, or (None, None) for ``last`` or when no validation scored."""
    folder = best_dir(run_dir, stage)
    if metric == "last" or not (folder / WEIGHTS).is_file() or not (folder / SCORE).is_file():
        return None, None
    return load_state_dict(folder / WEIGHTS), json.loads((folder / SCORE).read_text())
