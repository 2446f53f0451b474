"""Our config -> a DeepSpeed config; precision chosen for the device at hand; each stage's own settings."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

log = logging.getLogger("vdp_ray.train")


def resolve_precision(requested: str, device_type: str) -> tuple[str, str | None]:
    """The precision to train in, and a one-line note when it differs from the request.

    fp16 (the default) is a GPU precision: on a CPU it trains in fp32, the same on every CPU (DeepSpeed accepts
    fp16 on CPUs with AVX512-FP16/AMX, where it ran ~100x slower than fp32 here, and refuses it elsewhere).
    bf16 on a CPU is kept where DeepSpeed supports it (asked for explicitly), else fp32.
    """
    from deepspeed.accelerator import get_accelerator

    if requested == "fp16" and device_type == "cpu":
        return "fp32", "precision: fp16 is a GPU precision (slow or unsupported on CPUs); training in fp32 on this cpu"
    if requested == "fp16" and not get_accelerator().is_fp16_supported():
        return "fp32", f"precision: fp16 is not supported on this {device_type} device; training in fp32 instead"
    if requested == "bf16" and not get_accelerator().is_bf16_supported():
        return "fp32", f"precision: bf16 is not supported on this {device_type} device; training in fp32 instead"
    return requested, None


# Settings a stage may have of its own: stage -> {train.* key: the stage's key that replaces it when set}.
# One table for the loop (``stage_settings``) and for sweeps (which train.* keys a VAE stage does not read).
STAGE_KEYS = {"vae": {"train.lr": "vae.lr", "train.max_steps": "vae.max_steps", "train.batch_size": "vae.batch_size"}}


@dataclass(frozen=True)
class StageSettings:
    lr: float
    max_steps: int
    batch_size: int  # clips per worker per step


def stage_settings(cfg, stage: str) -> StageSettings:
    """The learning rate, steps and batch of ``stage``: its own keys where set (``STAGE_KEYS``), else train.*."""
    own = STAGE_KEYS.get(stage, {})

    def value(key: str):
        replacement = own.get(key)
        mine = _get(cfg, replacement) if replacement else None
        return mine if mine is not None else _get(cfg, key)

    return StageSettings(value("train.lr"), value("train.max_steps"), value("train.batch_size"))


def _get(cfg, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def configure_device(device, train) -> None:
    """Per-process settings for the rank's device. CPU: as many threads as Ray reserved (torch would use every
    core in every rank). CUDA: TF32 matmuls and convolutions (fp32 parts of the step, ~8x the fp32 rate on
    Ampere and later, at bf16-like mantissa) and cuDNN's autotuner (our shapes are fixed per stage)."""
    import torch

    if device.type == "cpu":
        torch.set_num_threads(max(1, int(train.cpus_per_worker)))
    elif device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = train.tf32
        torch.backends.cudnn.allow_tf32 = train.tf32
        torch.backends.cudnn.benchmark = True


def build_engine(stage, cfg, name: str, world: int, precision: str, initialize):
    """The DeepSpeed engine of ``stage.model`` (``initialize`` is ``deepspeed.initialize``) and the EMA of its
    weights, made after the engine has placed them on its device (and, for ZeRO-3, partitioned them): an EMA
    copied from the model before would stay on the CPU while the weights move to the GPU."""
    from .ema import EMA

    model = stage.model
    if cfg.train.activation_checkpointing:
        if not hasattr(model, "checkpointing"):
            raise ValueError(f"train.activation_checkpointing: the {name} stage's network has no blocks to checkpoint")
        model.checkpointing = True
    params = [p for p in model.parameters() if p.requires_grad]
    on_gpu = getattr(stage, "device", None) is not None and stage.device.type == "cuda"
    ds = deepspeed_config(cfg, name, world, precision, sum(p.numel() for p in params), overlap=on_gpu)
    engine, *_ = initialize(model=model, model_parameters=params, config=ds)
    if cfg.train.compile:
        engine.compile()  # torch.compile of the wrapped module, DeepSpeed's hooks kept outside the graph
    return engine, EMA.of_engine(engine, cfg.train.ema_decay, zero3=cfg.train.zero_stage == 3)


def deepspeed_config(
    cfg, stage: str, world_size: int, precision: str, num_params: int | None = None, overlap: bool | None = None
) -> dict:
    """``num_params``: the trained parameters, which size the communication buckets (default: the largest);
    ``overlap``: communication on its own stream during the backward pass (default: with fp16, i.e. a GPU)."""
    t = cfg.train
    overlap = precision == "fp16" if overlap is None else overlap
    own = stage_settings(cfg, stage)
    lr, batch = own.lr, own.batch_size
    ds = {
        "train_micro_batch_size_per_gpu": batch,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": batch * t.grad_accum * world_size,
        "gradient_clipping": t.grad_clip,
        "steps_per_print": 10**9,  # our own progress lines instead
        "wall_clock_breakdown": False,
        "zero_optimization": _zero(t.zero_stage, overlap=overlap, bucket=bucket_size(num_params)),
        # torch's AdamW: DeepSpeed's fused Adam would JIT-compile C++ on first use. No "scheduler": the loop sets
        # the learning rate before every step (``lr_ratio``), whether the run ends by steps or by time
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": lr,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": t.weight_decay,
                "torch_adam": True,
            },
        },
    }
    if precision == "fp16":
        ds["fp16"] = {
            "enabled": True,
            "loss_scale": 0,
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        }
    elif precision == "bf16":
        ds["bf16"] = {"enabled": True}
    return ds


def lr_ratio(step: int, total: int, warmup: int, min_ratio: float, used: float = 0.0) -> float:
    """The factor on the peak learning rate for the update after ``step`` optimizer steps: the one schedule of
    every run, whether it ends by steps or by the clock. A linear warm-up over ``warmup`` updates (the first at
    1/warmup, none without a warm-up), then a cosine down to ``min_ratio`` at the end of the run: update
    ``total``, or under train.max_minutes the moment ``used`` (the fraction of the time budget spent) reaches 1,
    whichever comes first. So a run stopped by the clock still ends on a decayed learning rate instead of
    mid-schedule at nearly the peak.

    Without a time cap, ``lr_ratio(s)`` after the warm-up is DeepSpeed's WarmupCosineLR at its iteration s (what
    runs bounded by steps used before; tests/train/test_engine.py pins it), which DeepSpeed applied one update
    later: its start and linear warm-up spent the first two updates at a learning rate of 0."""
    warmup = min(warmup, max(total - 1, 0))  # the last update is the cosine's: at least one step of decay
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, max((step - warmup + 1) / max(1, total - warmup), used))
    return max(0.0, min_ratio + (1.0 - min_ratio) * (1.0 + math.cos(math.pi * progress)) / 2)


def set_lr(engine, lr: float) -> None:
    """The learning rate of every parameter group, as DeepSpeed's own schedulers set it."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


MAX_BUCKET = 200_000_000  # elements per gradient-reduce / all-gather bucket at most: bounded memory
MIN_BUCKET = 2_000_000  # and at least: smaller messages do not fill the links
BUCKETS_PER_PASS = 8  # communication overlaps the backward pass only when there is more than one bucket


def bucket_size(num_params: int | None) -> int:
    """Bucket elements for a model of ``num_params``: about BUCKETS_PER_PASS buckets per backward pass, so the
    reduction of the last layers' gradients runs while the first layers' are computed (one bucket the size of
    the model would wait for the whole backward pass)."""
    if num_params is None:
        return MAX_BUCKET
    return int(min(MAX_BUCKET, max(MIN_BUCKET, num_params // BUCKETS_PER_PASS)))


def _zero(stage: int, overlap: bool, bucket: int = MAX_BUCKET) -> dict:
    """ZeRO settings with explicit communication buckets. Overlapping communication with the backward pass
    pays on GPUs (NCCL on its own stream)."""
    zero: dict = {"stage": stage}
    if stage in (1, 2):
        zero.update(
            reduce_bucket_size=bucket, allgather_bucket_size=bucket, contiguous_gradients=True, overlap_comm=overlap
        )
    elif stage == 3:
        zero.update(
            reduce_bucket_size=bucket,
            stage3_prefetch_bucket_size=bucket,
            contiguous_gradients=True,
            overlap_comm=overlap,
        )
    return zero
