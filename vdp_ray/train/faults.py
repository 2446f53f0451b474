"""Failure: the drills that prove recovery works (a ``Drill``), and stopping cleanly on a non-finite loss."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# How often Ray Train's controller polls its workers (Ray's default is 2 s): the end of a stage and a dead
# worker are noticed that much later, and a report is registered only at a poll. fit() sets it unless set.
HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_S = 1.0

DRILLS = ("raise", "kill", "nan", "nan_grad")


@dataclass(frozen=True)
class Drill:
    """A failure made on purpose at optimizer step ``step``, to prove that recovery works: ``raise`` (rank 0
    raises once), ``kill`` (rank 0 is SIGKILLed once), ``nan`` (the loss is NaN from then on, as a diverged
    run's), ``nan_grad`` (the loss stays finite, its gradients are NaN). Tests and benches hand one to
    ``fit(cfg, drill=...)``, which passes it to the workers beside the config: it is no config key, so it
    never reaches `vdp keys`, a saved config or an export."""

    kind: str
    step: int = 1

    def __post_init__(self):
        if self.kind not in DRILLS:
            raise ValueError(f"drill {self.kind!r}: expected one of {list(DRILLS)}")
        if self.step < 1:
            raise ValueError(f"drill step {self.step}: steps count from 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> Drill | None:
        return cls(**values) if values else None


class _NanGradient(torch.autograd.Function):
    """The identity forward, NaN gradients backward: a finite loss whose update would destroy the weights."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def poisoned(loss: torch.Tensor, drill: Drill | None, step: int) -> torch.Tensor:
    """The ``nan`` drill: from the drill's step on, the loss is NaN (as a diverged run's would be); ``nan_grad``:
    the loss stays finite and its gradients are NaN."""
    if drill is None or step + 1 < drill.step:
        return loss
    if drill.kind == "nan":
        return loss * float("nan")
    if drill.kind == "nan_grad":
        return _NanGradient.apply(loss)
    return loss


def inject(drill: Drill | None, run_dir: Path, stage: str, step: int, rank: int) -> None:
    """The ``raise`` / ``kill`` drills: rank 0 fails or dies once at the drill's step (a marker file makes it
    once, so the restarted group gets past it)."""
    if drill is None or rank != 0 or drill.kind not in ("raise", "kill") or step != drill.step:
        return
    marker = run_dir / f".fault-{stage}-{drill.kind}-{step}"
    if marker.exists():
        return
    marker.touch()
    if drill.kind == "raise":
        raise RuntimeError(f"injected failure at step {step} (drill: raise)")
    # Ray Train's controller registers a reported checkpoint when it next polls the workers (every
    # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S); a rank killed before that poll takes its report along and the group
    # resumes from the checkpoint before. A real crash may do so too (and loses only steps); the drill waits
    # two polls so that it tests recovery from the latest checkpoint, not the poll's timing.
    time.sleep(2 * float(os.environ.get(HEALTH_CHECK_ENV, HEALTH_CHECK_S)))
    os.kill(os.getpid(), signal.SIGKILL)


def is_loss_scale_exhausted(exc: BaseException) -> bool:
    """DeepSpeed's fp16 loss scaler gave up: every step overflowed down to its minimum scale (a diverged run)."""
    return "loss scale" in str(exc).lower() and "minimum" in str(exc).lower()


def stop_run(log, stage: str, step: int, reason: str) -> None:
    """Stop the stage for ``reason`` (what the driver raises as the run's error); the last checkpoint is kept."""
    message = f"{reason}; the {stage} stage stopped at step {step + 1}, the last good checkpoint is kept"
    log.status({"status": "stopped", "step": step + 1, "message": message})
    log.line(message)
    log.close()


def stop_non_finite(log, stage: str, step: int, reason: str = "non-finite loss") -> None:
    """Say why the stage stops, where the driver reads it (logs/<stage>-status.json); the last good checkpoint
    stays the run's latest."""
    message = (
        f"{reason} at step {step + 1} of the {stage} stage: stopped; the last good checkpoint is kept. "
        "Lower train.lr, raise train.warmup_steps, or check the data."
    )
    log.status({"status": "non_finite", "step": step + 1, "message": message})
    log.line(message)
    log.close()
