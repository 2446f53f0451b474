"""Our config -> a DeepSpeed config; precision chosen for the device at hand; each stage's own settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("vdp_ray.train")


def resolve_precision(requested: str, device_type: str) -> tuple[str, str | None]:
    """The precision to train in, and a one-line note when it differs from the request.

    fp16 needs a GPU (or a CPU with AVX512-FP16/AMX: DeepSpeed's CPU accelerator refuses it otherwise);
    without it we fall back to fp32, which beats bf16 on AVX2 CPUs where bf16 is emulated.
    """
    from deepspeed.accelerator import get_accelerator

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


def deepspeed_config(cfg, stage: str, world_size: int, precision: str) -> dict:
    t = cfg.train
    own = stage_settings(cfg, stage)
    lr, steps, batch = own.lr, own.max_steps, own.batch_size
    ds = {
        "train_micro_batch_size_per_gpu": batch,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": batch * t.grad_accum * world_size,
        "gradient_clipping": t.grad_clip,
        "steps_per_print": 10**9,  # our own progress lines instead
        "wall_clock_breakdown": False,
        "zero_optimization": _zero(t.zero_stage, overlap=precision == "fp16"),
        # torch's AdamW: DeepSpeed's fused Adam would JIT-compile C++ on first use
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
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": steps,
                "warmup_num_steps": min(t.warmup_steps, max(steps - 1, 0)),
                "warmup_min_ratio": 0.0,
                "warmup_type": "linear",
                "cos_min_ratio": t.min_lr_ratio,
            },
        },
    }
    if precision == "fp16":
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                      "hysteresis": 2, "min_loss_scale": 1}  # fmt: skip
    elif precision == "bf16":
        ds["bf16"] = {"enabled": True}
    return ds


BUCKET = 200_000_000  # elements per gradient-reduce / all-gather bucket: big messages, bounded memory


def _zero(stage: int, overlap: bool) -> dict:
    """ZeRO settings with explicit communication buckets. Overlapping communication with the backward pass
    pays on GPUs (NCCL on its own stream; fp16 means a GPU here: CPUs without fp16 fall back to fp32)."""
    zero: dict = {"stage": stage}
    if stage in (1, 2):
        zero.update(reduce_bucket_size=BUCKET, allgather_bucket_size=BUCKET, contiguous_gradients=True,
                    overlap_comm=overlap)  # fmt: skip
    elif stage == 3:
        zero.update(reduce_bucket_size=BUCKET, stage3_prefetch_bucket_size=BUCKET // 4, contiguous_gradients=True,
                    overlap_comm=overlap)  # fmt: skip
    return zero
