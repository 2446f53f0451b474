"""Failure: the drills that prove recovery works (``train.fault``), and stopping cleanly on a non-finite loss."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch


def poisoned(loss: torch.Tensor, cfg, step: int) -> torch.Tensor:
    """The ``nan`` drill: from train.fault_step on, the loss is NaN (as a diverged run's would be)."""
    if cfg.train.fault == "nan" and step + 1 >= cfg.train.fault_step:
        return loss * float("nan")
    return loss


def inject(cfg, run_dir: Path, stage: str, step: int, rank: int) -> None:
    """The ``raise`` / ``kill`` drills: rank 0 fails or dies once at train.fault_step (a marker file makes it once,
    so the restarted group gets past it)."""
    if rank != 0 or cfg.train.fault not in ("raise", "kill") or step != cfg.train.fault_step:
        return
    marker = run_dir / f".fault-{stage}-{cfg.train.fault}-{step}"
    if marker.exists():
        return
    marker.touch()
    if cfg.train.fault == "raise":
        raise RuntimeError(f"injected failure at step {step} (train.fault=raise)")
    os.kill(os.getpid(), signal.SIGKILL)


def stop_non_finite(log, stage: str, step: int) -> None:
    """Say why the stage stops, where the driver reads it (logs/<stage>-status.json); the last good checkpoint
    stays the run's latest."""
    message = (
        f"non-finite loss at step {step + 1} of the {stage} stage: stopped; the last good checkpoint is kept. "
        "Lower train.lr, raise train.warmup_steps, or check the data."
    )
    log.status({"status": "non_finite", "step": step + 1, "message": message})
    log.line(message)
    log.close()
