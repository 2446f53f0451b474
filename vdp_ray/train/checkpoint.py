"""The checkpoint format, in one place: what a rank saves, how a run resumes, and how an export is made from it.

A checkpoint folder (one per `train.checkpoint_every` steps, merged by Ray Train from every rank's files):

    ds/                   DeepSpeed's files (model and optimizer state, one shard per rank)
    ema.safetensors       the EMA weights (rank 0): what an export ships
    rng_rank<N>.pt        rank N's random streams: CPU, its CUDA device, NumPy, Python (randomness.py; tensors and
                          plain values only, loaded with weights_only=True)
    trainer_state.json    stage, step, epoch, EMA updates, the stage's extra results, the world size, and the
                          SHA-256 of every other file (all ranks'), checked before anything is loaded
    config.yaml           the resolved config of the stage

DeepSpeed's files are pickles: a checkpoint folder is a trust boundary (only training should write it; servers
get exports, which are safetensors and YAML/JSON). The digests catch a damaged or partly replaced checkpoint.

Every rank saves into its own temporary folder and then calls ``ray.train.report`` with it (a barrier); Ray
moves the files into the run's storage, so a checkpoint is either complete or absent.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..config import Config
from ..export import load_state_dict, save_state_dict, write_export
from .randomness import rng_state, seed_rank, set_rng_state

DS_TAG = "ds"  # DeepSpeed's tag inside each checkpoint folder
STATE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
CONFIG = "config.yaml"


class CheckpointError(RuntimeError):
    """A folder that is not a checkpoint of ours; the message names what is missing."""


@dataclass(frozen=True)
class Progress:
    """Where a stage is: what a checkpoint records and a resume continues from."""

    step: int
    epoch: int
    extra: dict  # the stage's own results so far (the VAE's latent scale factor)


def save(engine, ema, cfg: Config, stage: str, progress: Progress, metrics: dict, rank: int) -> None:
    """Every rank saves its DeepSpeed shard into its own folder; Ray merges them into one checkpoint."""
    import ray.train
    from ray.train import Checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="vdp-ckpt-"))
    try:
        engine.save_checkpoint(str(tmp), tag=DS_TAG)
        torch.save(rng_state(engine.device), tmp / f"rng_rank{rank}.pt")
        averaged = ema.state_dict(everywhere=False)  # every rank calls it: under ZeRO-3 rank 0 gathers partitions
        if rank == 0:
            save_state_dict(averaged, tmp / EMA_FILE)
            cfg.save(tmp / CONFIG)
        digests = _all_digests(tmp)
        if rank == 0:
            world = dist.get_world_size() if dist.is_initialized() else 1
            state = {
                "stage": stage,
                "step": progress.step,
                "epoch": progress.epoch,
                "ema_updates": ema.updates,
                "extra": progress.extra,
                "world_size": world,
                "digests": digests,
            }
            (tmp / STATE).write_text(json.dumps(state))
        ray.train.report({"step": progress.step, **metrics}, checkpoint=Checkpoint.from_directory(str(tmp)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def restore(engine, ema, cfg: Config, world: int, rank: int, log) -> Progress | None:
    """Resume from Ray Train's latest checkpoint of this run, if there is one: engine, EMA, this rank's random
    streams, step, epoch and the stage's extra results. None for a fresh start (the caller seeds the streams)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return None
    with checkpoint.as_directory() as directory:
        directory = Path(directory)
        state = json.loads((directory / STATE).read_text())
        verify(directory, state)
        step, epoch = state["step"], state["epoch"]
        _load_engine(engine, directory, state, cfg, world, step, log)
        ema.load(load_state_dict(directory / EMA_FILE), state["ema_updates"])
        rng = directory / f"rng_rank{rank}.pt"
        if rng.is_file():
            set_rng_state(torch.load(rng, weights_only=True), engine.device)
        else:  # a rank the checkpoint had no state for (the run grew): streams of its own
            seed_rank(cfg.run.seed, rank, step)
        return Progress(step, epoch, state.get("extra", {}))


def _digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _all_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file this rank wrote, merged over all ranks (one collective)."""
    mine = {str(p.relative_to(folder)): _digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    if not dist.is_initialized():
        return mine
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return {k: v for part in gathered for k, v in part.items()}


def verify(directory: Path, state: dict, only: tuple[str, ...] | None = None) -> None:
    """Every file the checkpoint recorded (or the ``only`` ones) is there with its digest; CheckpointError naming
    the first that is not. Checkpoints written before digests were recorded pass."""
    for name, digest in (state.get("digests") or {}).items():
        if only is not None and name not in only:
            continue
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{directory}: {name} is missing (the checkpoint is incomplete)")
        if _digest(path) != digest:
            raise CheckpointError(
                f"{directory}: {name} does not match its digest in {STATE} (damaged or replaced "
                "since training wrote it): not loading it"
            )


def _load_engine(engine, directory: Path, state: dict, cfg: Config, world: int, step: int, log) -> None:
    """Resume the DeepSpeed engine. ZeRO partitions the optimizer state per worker and DeepSpeed cannot
    re-partition it for another worker count: then the model weights are loaded (consolidated from the
    shards for ZeRO-3) and the optimizer starts fresh; step, epoch, EMA and RNG continue as in any resume (and
    the learning rate with the step: the loop sets it from the step). Said in one log line."""
    saved = state.get("world_size") or len(list(directory.glob("rng_rank*.pt")))
    if saved == world or cfg.train.zero_stage == 0:
        engine.load_checkpoint(str(directory), tag=DS_TAG, load_module_strict=True)
        return
    log.line(
        f"checkpoint of step {step} was written by {saved} worker(s), resuming on {world}: ZeRO's optimizer state "
        "is partitioned per worker and cannot be re-partitioned, so training continues from the checkpoint's "
        "model weights with a fresh optimizer (step, LR schedule, EMA and data continue)"
    )
    if cfg.train.zero_stage == 3:
        import deepspeed
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        weights = get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=DS_TAG)
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=0):
            if not dist.is_initialized() or dist.get_rank() == 0:
                engine.module.load_state_dict(weights, strict=True)
        # leaving the block re-partitioned the loaded weights; the optimizer's fp32 master partitions (what the
        # next step writes back into the module) must follow, or the first step reverts to the initial weights
        engine.optimizer.refresh_fp32_params()
    else:
        engine.load_checkpoint(
            str(directory),
            tag=DS_TAG,
            load_module_strict=True,
            load_module_only=True,
            load_optimizer_states=False,
            load_lr_scheduler_states=False,
        )
        if hasattr(engine.optimizer, "refresh_fp32_params"):  # the optimizer's fp32 copy of the loaded weights
            engine.optimizer.refresh_fp32_params()


def export_checkpoint(
    checkpoint_dir: str | Path,
    export_dir: str | Path,
    cfg: Config | None = None,
    selected: tuple[dict, dict] | None = None,
) -> Path:
    """An export from a checkpoint folder of ours (any ZeRO stage): its EMA weights (or ``selected``: the weights
    train.select_by kept and their score), no DeepSpeed needed. The stage decides what the export's config records
    (the VAE its measured scale factor)."""
    from ..config import load_config
    from ..fsutil import check_no_overlap
    from .stages import STAGE_CLASSES

    checkpoint_dir = Path(checkpoint_dir)
    check_no_overlap(export_dir, [("the checkpoint", checkpoint_dir)])  # an export never replaces what it reads
    for name in (EMA_FILE, STATE, CONFIG):
        if not (checkpoint_dir / name).is_file():
            raise CheckpointError(f"{checkpoint_dir}: not a vdp_ray checkpoint (missing {name})")
    state = json.loads((checkpoint_dir / STATE).read_text())
    verify(checkpoint_dir, state, only=(EMA_FILE, CONFIG))  # what an export is made of
    stage = state["stage"]
    cfg = STAGE_CLASSES[stage].exported_config(cfg or load_config(checkpoint_dir / CONFIG), state.get("extra", {}))
    meta = {"steps": state["step"], "epoch": state["epoch"], "scale_factor": cfg.vae.scale_factor}
    if selected is not None:
        weights, score = selected
        meta.update(steps=score["step"], trained_steps=state["step"], selected_by=score)
    else:
        weights = load_state_dict(checkpoint_dir / EMA_FILE)
    return write_export(export_dir, cfg, stage, weights, meta)
