"""The training loop every Ray Train worker runs, for every stage (vae, unet3d, dit), precision and scale.

It depends only on its ``config`` argument: the config dict, the stage and the run folder. The device
comes from Ray, the process group from Ray (DeepSpeed reuses it), the data from Ray Data shards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..config import Config
from ..data.pipeline import epochs
from ..export import Export, load_state_dict, save_state_dict
from ..progress import format_duration
from .ema import EMA
from .engine import deepspeed_config, resolve_precision, stage_batch, stage_steps
from .tasks import DiffusionTask, VAETask

DS_TAG = "ds"  # DeepSpeed's tag inside each Ray checkpoint folder
STATE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
STATUS = "status.json"
PREVIEW_CLIPS = 8  # validation clips rank 0 samples at each preview: val/psnr, val/psnr_gain


def make_task(cfg: Config, stage: str, device: torch.device):
    if stage == "vae":
        return VAETask(cfg, device)
    vae = None
    if stage == "dit":
        export = Export(cfg.vae.export)
        vae = export.model()
        cfg.vae.scale_factor = export.cfg.vae.scale_factor
    return DiffusionTask(cfg, device, vae)


def train_loop_per_worker(config: dict) -> None:
    import deepspeed
    import ray.train
    import ray.train.torch

    cfg = Config.from_dict(config["cfg"])
    stage, run_dir = config["stage"], Path(config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    precision, note = resolve_precision(cfg.train.precision, device.type)
    log = RankZeroLog(run_dir, stage, rank)
    if note:
        log.line(note)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)

    _record_placement(run_dir, stage, rank, world, device, log)
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    task = make_task(cfg, stage, device)
    ema = EMA(task.model, cfg.train.ema_decay)
    engine, *_ = deepspeed.initialize(
        model=task.model,
        model_parameters=[p for p in task.model.parameters() if p.requires_grad],
        config=deepspeed_config(cfg, stage, world, precision),
    )
    zero3 = cfg.train.zero_stage == 3
    total = stage_steps(cfg, stage)
    step, epoch, extra_state = 0, 0, {}

    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            state = json.loads((Path(directory) / STATE).read_text())
            step, epoch = state["step"], state["epoch"]
            _load_engine(engine, Path(directory), state, cfg, world, step, log)
            ema.load(load_state_dict(Path(directory) / EMA_FILE), state["ema_updates"])
            rng = Path(directory) / f"rng_rank{rank}.pt"
            if rng.is_file():
                torch.set_rng_state(torch.load(rng, weights_only=True)["torch"])
            extra_state = state.get("extra", {})
        log.line(f"resumed {stage} from step {step} (epoch {epoch})")
    else:
        torch.manual_seed(cfg.run.seed * 7919 + rank)  # different masks and noise on every rank

    train_iter = epochs(ray.train.get_dataset_shard("train"), batch_size=stage_batch(cfg, stage),
                        shuffle_buffer=cfg.data.shuffle_buffer, start_epoch=epoch)  # fmt: skip
    val_shard = ray.train.get_dataset_shard("val") if cfg.data.val else None
    preview_clips, preview_captions, previewing_val = None, None, False
    window_loss, window_clips, window_wait, window_start = [], 0, 0.0, time.perf_counter()
    run_start, start_step = time.perf_counter(), step
    metrics: dict = {}

    while step < total:
        for _ in range(cfg.train.grad_accum):
            t0 = time.perf_counter()
            epoch, batch = next(train_iter)
            clips = batch["clip"].to(device, non_blocking=True)
            window_wait += time.perf_counter() - t0
            if preview_clips is None:  # until the first validation: training clips
                preview_clips, preview_captions = clips[:PREVIEW_CLIPS].float(), batch["caption"][:PREVIEW_CLIPS]
            loss, _ = task.loss(engine, clips, dtype, captions=batch["caption"])
            if cfg.train.fault == "nan" and step + 1 >= cfg.train.fault_step:
                loss = loss * float("nan")
            if not _all_finite(loss) and precision != "fp16":
                _stop_non_finite(run_dir, stage, step, rank, log)
                return
            engine.backward(loss)
            engine.step()
            window_loss.append(loss.detach().float().item())
            window_clips += clips.shape[0]
        step += 1
        _update_ema(ema, engine.module, zero3)
        _inject_fault(cfg, run_dir, stage, step, rank)
        limit = cfg.train.max_minutes
        if limit is not None and step < total and _out_of_time(run_start, limit, device):
            log.line(f"train.max_minutes={cfg.train.max_minutes:g} reached at step {step}: finishing the stage here")
            total = step  # this step becomes the last: validated, checkpointed, exported

        if step % cfg.train.log_every == 0 or step == total:
            elapsed = time.perf_counter() - window_start
            metrics = {
                "step": step,
                "epoch": epoch,
                "loss": _mean_across(np.mean(window_loss), device),
                "lr": engine.get_lr()[0],
                "clips_per_s": window_clips * world / elapsed,
                "workers": world,
                "data_wait": window_wait / elapsed,
            }
            if getattr(task, "cache", None) is not None:
                metrics["latent_cache_hits"] = _mean_across(task.cache.take_hit_rate() or 0.0, device)
            grad_norm = engine.get_global_grad_norm()
            if grad_norm is not None:
                metrics["grad_norm"] = float(grad_norm)
            if precision == "fp16":
                metrics["loss_scale"] = float(engine.optimizer.cur_scale)
                metrics["skipped_steps"] = int(engine.skipped_steps)
            rate = (step - start_step) / (time.perf_counter() - run_start)
            log.metrics(metrics, total, eta=(total - step) / rate if rate > 0 else None)
            window_loss, window_clips, window_wait, window_start = [], 0, 0.0, time.perf_counter()

        report: dict = {}
        if step % cfg.train.val_every == 0 or step == total:
            losses, first_val = _validate(task, engine, val_shard, cfg, stage, dtype, device)
            report.update(losses)
            if first_val is not None and not previewing_val:  # from now on previews show validation clips
                preview_clips, previewing_val = first_val[0][:PREVIEW_CLIPS].to(device).float(), True
                preview_captions = first_val[1][:PREVIEW_CLIPS]
            if rank == 0 and (step % cfg.train.preview_every == 0 or step == total) and preview_clips is not None:
                report.update(_preview(task, ema, cfg, stage, device, preview_clips, preview_captions, log, step))
            report = _broadcast(report, device)
            log.scalars({f"val/{k}": v for k, v in report.items()}, step)
        if step == total and stage == "vae":
            extra_state["scale_factor"] = _measure_scale(task, ema, cfg, train_iter, device, rank, world)
            log.line(f"latent scale factor {extra_state['scale_factor']:.4f} (1 / std of training latents)")
        if step % cfg.train.checkpoint_every == 0 or step == total:
            _save_and_report(engine, ema, cfg, stage, step, epoch, extra_state, {**metrics, **_prefix(report)}, rank)
        elif report:
            ray.train.report({"step": step, **metrics, **_prefix(report)})
    log.close()


# --------------------------------------------------------------------------------------------- helpers
def _load_engine(engine, directory: Path, state: dict, cfg: Config, world: int, step: int, log) -> None:
    """Resume the DeepSpeed engine. ZeRO partitions the optimizer state per worker and DeepSpeed cannot
    re-partition it for another worker count: then the model weights are loaded (consolidated from the
    shards for ZeRO-3), the optimizer starts fresh and the LR schedule is moved to ``step``; step, epoch, EMA
    and RNG continue as in any resume. Said in one log line."""
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
    else:
        engine.load_checkpoint(str(directory), tag=DS_TAG, load_module_strict=True, load_module_only=True,
                               load_optimizer_states=False, load_lr_scheduler_states=False)  # fmt: skip
        if hasattr(engine.optimizer, "refresh_fp32_params"):  # the optimizer's fp32 copy of the loaded weights
            engine.optimizer.refresh_fp32_params()
    if engine.lr_scheduler is not None:
        engine.lr_scheduler.step(step - 1)  # the schedule's position after `step` optimizer steps


def _record_placement(run_dir: Path, stage: str, rank: int, world: int, device, log) -> None:
    """Which node and device every rank runs on: one log line and logs/<stage>-workers.json (rank 0)."""
    import socket

    import ray

    me = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
          "ip": ray.util.get_node_ip_address(), "pid": os.getpid(), "device": str(device)}  # fmt: skip
    everyone = [me]
    if dist.is_initialized():
        everyone = [None] * world
        dist.all_gather_object(everyone, me)
    if rank == 0:
        nodes = sorted({w["node_id"] for w in everyone})
        log.line(f"{world} worker(s) on {len(nodes)} node(s): " + ", ".join(
            f"rank {w['rank']} -> node {nodes.index(w['node_id'])} ({w['device']})" for w in everyone))  # fmt: skip
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (run_dir / "logs" / f"{stage}-workers.json").write_text(json.dumps(everyone, indent=1))


def _prefix(report: dict) -> dict:
    return {f"val/{k}": v for k, v in report.items()}


def _all_finite(loss: torch.Tensor) -> bool:
    """Every rank agrees: one non-finite loss anywhere stops them all at the same step."""
    # on the loss' device: NCCL (GPU) collectives refuse CPU tensors
    flag = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=loss.device)
    if dist.is_initialized():
        dist.all_reduce(flag)
    return flag.item() == 0


def _out_of_time(start: float, minutes: float, device) -> bool:
    """Rank 0's clock decides for everyone, so all ranks stop at the same step."""
    flag = torch.tensor([1.0 if time.perf_counter() - start > 60 * minutes else 0.0], device=device)
    if dist.is_initialized():
        dist.broadcast(flag, src=0)
    return flag.item() > 0


def _mean_across(value: float, device) -> float:
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.item()


def _broadcast(report: dict, device) -> dict:
    if not dist.is_initialized():
        return report
    box = [report]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def _update_ema(ema: EMA, module, zero3: bool) -> None:
    if zero3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            ema.update(module)
    else:
        ema.update(module)


def _inject_fault(cfg: Config, run_dir: Path, stage: str, step: int, rank: int) -> None:
    """Fault-tolerance drills (train.fault): fail or die once at train.fault_step (a marker file makes it
    once, so the restarted group gets past it)."""
    if rank != 0 or cfg.train.fault not in ("raise", "kill") or step != cfg.train.fault_step:
        return
    marker = run_dir / f".fault-{stage}-{cfg.train.fault}-{step}"
    if marker.exists():
        return
    marker.touch()
    if cfg.train.fault == "raise":
        raise RuntimeError(f"injected failure at step {step} (train.fault=raise)")
    os.kill(os.getpid(), signal.SIGKILL)


def _stop_non_finite(run_dir: Path, stage: str, step: int, rank: int, log) -> None:
    message = (
        f"non-finite loss at step {step + 1} of the {stage} stage: stopped; the last good checkpoint is kept. "
        "Lower train.lr, raise train.warmup_steps, or check the data."
    )
    if rank == 0:
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        status = {"status": "non_finite", "step": step + 1, "message": message}
        (run_dir / "logs" / f"{stage}-{STATUS}").write_text(json.dumps(status))
    log.line(message)
    log.close()


@torch.no_grad()
def _validate(task, engine, val_shard, cfg: Config, stage, dtype, device) -> tuple[dict, torch.Tensor | None]:
    """The validation loss (fixed timesteps, all ranks) and this rank's first validation batch (clips, captions)."""
    if val_shard is None:
        return {}, None
    engine.eval()
    losses, first = [], None
    batches = epochs(val_shard, batch_size=stage_batch(cfg, stage), drop_last=False, max_epochs=1)
    for i, (_, batch) in enumerate(batches):
        if i >= cfg.train.val_batches:
            break
        first = (batch["clip"], batch["caption"]) if first is None else first
        losses.append(task.val_loss(engine, batch["clip"].to(device), dtype, captions=batch["caption"]))
    engine.train()
    return {"loss": _mean_across(np.mean(losses) if losses else float("nan"), device)}, first


def _ema_model(task, ema: EMA, device):
    """A plain (never DeepSpeed-wrapped) copy of the network holding the EMA weights, for previews."""
    if getattr(task, "ema_copy", None) is None:
        task.ema_copy = task.new_model()  # not a deepcopy: ZeRO-3 hooks on task.model must not come along
    task.ema_copy.load_state_dict(ema.state_dict())
    return task.ema_copy.to(device).eval()


def _preview(task, ema, cfg, stage, device, clips, captions, log, step) -> dict:
    """Rank 0: a strip (truth | output) and metrics on a couple of validation clips, with EMA weights."""
    model = _ema_model(task, ema, device)
    steps = min(cfg.diffusion.sample_steps, 25)
    if stage == "vae":
        image, metrics = task.preview(model, clips)
    else:
        image, metrics = task.preview(model, clips, steps, captions=captions)
    log.image("preview", image, step)
    return metrics


@torch.no_grad()
def _measure_scale(task, ema, cfg, train_iter, device, rank, world) -> float:
    """1 / std of the latents of training clips (Rombach et al. 2022, sec. 4.3.2), from the EMA VAE."""
    model = _ema_model(task, ema, device)
    stds = []
    for _ in range(max(1, 64 // (stage_batch(cfg, "vae") * world))):
        _, batch = next(train_iter)
        stds.append(task.latent_std(model, batch["clip"].to(device)).item())
    return 1.0 / _mean_across(float(np.mean(stds)), device)


def _save_and_report(engine, ema, cfg, stage, step, epoch, extra_state, metrics, rank) -> None:
    """Every rank saves its DeepSpeed shard into its own folder; Ray merges them into one checkpoint."""
    import ray.train
    from ray.train import Checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="vdp-ckpt-"))
    try:
        engine.save_checkpoint(str(tmp), tag=DS_TAG)
        torch.save({"torch": torch.get_rng_state()}, tmp / f"rng_rank{rank}.pt")
        if rank == 0:
            save_state_dict(ema.state_dict(), tmp / EMA_FILE)
            state = {"stage": stage, "step": step, "epoch": epoch, "ema_updates": ema.updates, "extra": extra_state,
                     "world_size": dist.get_world_size() if dist.is_initialized() else 1}  # fmt: skip
            (tmp / STATE).write_text(json.dumps(state))
            cfg.save(tmp / "config.yaml")
        ray.train.report({"step": step, **metrics}, checkpoint=Checkpoint.from_directory(str(tmp)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class RankZeroLog:
    """Progress lines, TensorBoard and a JSONL of metrics, written by rank 0 only."""

    def __init__(self, run_dir: Path, stage: str, rank: int):
        self.enabled = rank == 0
        self.stage = stage
        self.writer = None
        self.jsonl = None
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            (run_dir / "logs").mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(run_dir / "tb" / stage))
            self.jsonl = open(run_dir / "logs" / f"{stage}.jsonl", "a")  # noqa: SIM115 (closed in close())
            self.text = open(run_dir / "logs" / f"{stage}.log", "a")  # noqa: SIM115 (closed in close())

    def line(self, text: str) -> None:
        if self.enabled:
            # To the process' own stdout: Ray Train V2 re-routes plain print() through a logger that can
            # echo each line twice.
            print(f"[vdp {self.stage}] {text}", file=sys.__stdout__, flush=True)
            self.text.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
            self.text.flush()

    def metrics(self, m: dict, total: int, eta: float | None) -> None:
        if not self.enabled:
            return
        parts = [f"step {m['step']}/{total}", f"loss {m['loss']:.4f}", f"lr {m['lr']:.2e}",
                 f"{m['clips_per_s']:.1f} clips/s", f"data-wait {100 * m['data_wait']:.0f}%"]  # fmt: skip
        if "latent_cache_hits" in m:
            parts.append(f"latent cache {100 * m['latent_cache_hits']:.0f}%")
        if "loss_scale" in m:
            parts.append(f"loss-scale {m['loss_scale']:.0f} (skipped {m['skipped_steps']})")
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        self.line(" | ".join(parts))
        self.scalars({f"train/{k}": v for k, v in m.items() if k not in ("step", "epoch")}, m["step"], echo=False)
        self.jsonl.write(json.dumps({"time": time.time(), **m}) + "\n")
        self.jsonl.flush()

    def scalars(self, values: dict, step: int, echo: bool = True) -> None:
        if self.enabled:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
            if values and echo:
                self.line(" | ".join(f"{k} {v:.4f}" for k, v in values.items()))

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        if self.enabled:
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.jsonl.close()
            self.text.close()
            self.enabled = False
