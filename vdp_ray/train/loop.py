"""The training loop every Ray Train worker runs, for every stage (vae, unet3d, dit), precision and scale.

It depends only on its ``config`` argument: the driver's resolved config, the stage, the run folder (and a test's
failure drill, ``faults.Drill``, never part of the config). The device comes from Ray, the process group from Ray
(DeepSpeed reuses it), the data from Ray Data shards. What is trained is the stage's business (``stages.py``), the
checkpoint format ``checkpoint.py``'s, the decisions all ranks must share ``collectives.py``'s and what people see
``runlog.py``'s; this file only sequences them.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..config import Config
from ..data.pipeline import BadClips, epochs
from ..latent import LatentBatch
from ..pixels import to_model_range
from . import checkpoint, faults
from .collectives import broadcast_from_rank0, mean_across, rank0_value, step_flags
from .ema import EMA
from .engine import build_engine, configure_device, lr_ratio, resolve_precision, set_lr, stage_settings
from .randomness import seed_rank
from .runlog import RankZeroLog, record_placement
from .selection import Selection
from .stages import make_stage

PREVIEW_CLIPS = 8  # training clips rank 0 previews before there is a validation (without data.val)


@dataclass
class Worker:
    """What one rank trains with: built once by ``start`` and read by the loop."""

    cfg: Config
    name: str  # the stage
    run_dir: Path
    rank: int
    world: int
    device: torch.device
    precision: str
    dtype: torch.dtype  # what the network runs in
    log: RankZeroLog
    stage: object  # a stages.Stage
    ema: EMA
    engine: object  # the DeepSpeed engine
    batch_size: int
    max_steps: int
    bad: BadClips | None = None  # the clips this rank skipped (set by the loop)
    drill: faults.Drill | None = None  # a failure made on purpose (tests and benches; never a config key)


def start(config: dict) -> Worker:
    """This rank's device, precision, stage, EMA and DeepSpeed engine, from the driver's ``config``."""
    import deepspeed
    import ray.train
    import ray.train.torch

    # Rebuilding the driver's config validates it again here; nothing below changes it.
    cfg = Config.from_dict(config["cfg"])
    name, run_dir = config["stage"], Path(config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    configure_device(device, cfg.train)
    precision, note = resolve_precision(cfg.train.precision, device.type)
    log = RankZeroLog(run_dir, name, rank)
    if note:
        log.line(note)
    record_placement(run_dir, name, rank, world, device, log)

    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank (the streams are seeded per rank later)
    stage = make_stage(cfg, name, device)
    own = stage_settings(cfg, name)
    engine, ema = build_engine(stage, cfg, name, world, precision, deepspeed.initialize)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    return Worker(
        cfg,
        name,
        run_dir,
        rank,
        world,
        device,
        precision,
        dtype,
        log,
        stage,
        ema,
        engine,
        own.batch_size,
        own.max_steps,
        drill=faults.Drill.from_dict(config.get("drill")),
    )


def train_loop_per_worker(config: dict) -> None:
    import ray.train

    w = start(config)
    cfg, log, engine, device = w.cfg, w.log, w.engine, w.device
    # A worker group restarted by Ray (a failure, an elastic resize) lands here again: the last checkpoint, if
    # any, brings back the weights, the EMA, the optimizer and every random stream, so the run goes on as if
    # uninterrupted.
    resumed = checkpoint.restore(engine, w.ema, cfg, w.world, w.rank, log)  # every stream where it was saved
    if resumed is None:
        seed_rank(cfg.run.seed, w.rank)  # different masks, timesteps and noise on every rank
    else:
        log.line(f"resumed {w.name} from step {resumed.step} (epoch {resumed.epoch})")
    progress = resumed or checkpoint.Progress(step=0, epoch=0, extra={})
    step, epoch, extra = progress.step, progress.epoch, progress.extra

    # unreadable clips are counted per rank and named where they were met; too many stop every rank together
    w.bad = BadClips(cfg.data.max_bad_fraction, log.line if w.rank == 0 else _rank_line(w))
    train_iter = epochs(
        ray.train.get_dataset_shard("train"),
        batch_size=w.batch_size,
        shuffle_buffer=cfg.data.shuffle_buffer,
        start_epoch=epoch,
        pin_memory=device.type == "cuda",
        bad=w.bad,
    )
    val_shard = ray.train.get_dataset_shard("val") if cfg.data.val else None
    # without validation clips there is nothing to choose by: the export is the last EMA weights
    preview = Preview(w.stage, w.ema, device, cfg.train.preview_clips)
    selection = Selection(
        cfg.train.select_by if cfg.data.val else "last", w.run_dir, w.name, w.rank, resumed is not None
    )
    if resumed is None and selection.metric == "val/psnr_gain" and w.stage.untrained_is_candidate:
        # the untrained model is a candidate too (an anchored model starts as its anchor), so a run whose training
        # never beats it on the validation clips exports it rather than something worse
        selection.offer(_validate_and_preview(w, 0, w.max_steps, val_shard, preview), 0, w.ema, log)
    tally = LogTally()
    total, run_start, start_step = w.max_steps, time.perf_counter(), step
    metrics: dict = {}

    limit, used = cfg.train.max_minutes, 0.0  # the fraction of the time budget spent, as rank 0's clock says
    peak = stage_settings(cfg, w.name).lr
    while step < total:
        # one schedule whether the run ends by steps or by time; set from the step, so a resume needs no state
        set_lr(engine, peak * lr_ratio(step, w.max_steps, cfg.train.warmup_steps, cfg.train.min_lr_ratio, used))
        stepped = _optimizer_step(w, train_iter, tally, preview, step)
        if stepped is None:  # diverged: every rank stopped, the last checkpoint kept
            return
        epoch = stepped
        step += 1
        w.ema.update(engine.module)
        faults.inject(w.drill, w.run_dir, w.name, step, w.rank)  # a test's failure drill (no-op otherwise)
        if limit is not None and step < total:
            # rank 0's clock decides for everyone: ranks that disagreed on the last step would wait forever in
            # each other's collectives
            used = rank0_value((time.perf_counter() - run_start) / (60 * limit), device)
            if used > 1:
                log.line(f"train.max_minutes={limit:g} reached at step {step}: finishing the stage here")
                total = step  # this step becomes the last: validated, checkpointed, exported

        # the only host reads of a step's numbers happen here, every log_every steps
        if step % cfg.train.log_every == 0 or step == total:
            metrics = tally.metrics(step, epoch, engine, w.world, device, w.precision)
            metrics.update({k: mean_across(v, device) for k, v in w.stage.step_metrics().items()})
            metrics["skipped_clips"] = round(mean_across(w.bad.bad, device) * w.world)  # over all ranks so far
            rate = (step - start_step) / (time.perf_counter() - run_start)
            eta = (total - step) / rate if rate > 0 else None
            if limit is not None:  # the clock ends it first when that comes first
                eta = min(eta if eta is not None else math.inf, max(0.0, 60 * limit * (1 - used)))
            log.metrics(metrics, total, eta=eta)
            tally = LogTally()
        val = _validate_and_preview(w, step, total, val_shard, preview)
        if val:
            selection.offer(val, step, w.ema, log)
        if step == total:  # the stage's own results (the VAE's latent scale factor), with the EMA weights
            batches = (on_device(b, device) for _, b in train_iter)
            results, note = w.stage.finish(preview.ema_model, batches, w.world, lambda v: mean_across(v, device))
            extra = {**extra, **results}
            if note:
                log.line(note)
        # ray.train.report is a barrier: every rank calls it the same number of times, in the same order
        if step % cfg.train.checkpoint_every == 0 or step == total:
            checkpoint.save(
                engine, w.ema, cfg, w.name, checkpoint.Progress(step, epoch, extra), {**metrics, **val}, w.rank
            )
        elif val:  # Tune's schedulers see every validation, not only the checkpointed ones
            ray.train.report({"step": step, **metrics, **val})
    log.close()


def _optimizer_step(w: Worker, train_iter, tally: LogTally, preview: Preview, step: int) -> int | None:
    """One optimizer step over train.grad_accum micro-batches (DeepSpeed steps the optimizer on the last one);
    the epoch it ended in, or None when the run diverged and this rank stopped with the others.

    A non-finite loss means the run diverged, in every precision: fp16's loss scaler deals with overflowing
    gradients, not with a loss that is already inf/NaN (it would skip steps down to its minimum scale and
    raise, burning the run's restarts). The check is one collective per optimizer step, before the update
    (DeepSpeed's gradient clipping syncs there anyway); losses stay on the device until the log step."""
    engine, device, cfg = w.engine, w.device, w.cfg
    losses = torch.zeros((), device=device)  # their sum is finite only if every one is
    for micro in range(cfg.train.grad_accum):
        t0 = time.perf_counter()
        epoch, batch = next(train_iter)
        clips = on_device(batch, device)
        tally.wait += time.perf_counter() - t0
        weight = batch.get("weight", 1.0)  # 0.0: a batch with no readable clip (pipeline.epochs)
        if weight:
            preview.offer_training_clips(clips, batch["caption"])
        loss = faults.poisoned(w.stage.loss(engine, clips, batch["caption"], w.dtype), w.drill, step)
        if weight != 1.0:  # a batch with no readable clip still takes its step (every rank must), teaching nothing
            loss = loss * weight
        losses = losses + loss.detach().float()
        if micro == cfg.train.grad_accum - 1:
            # one collective answers both questions for every rank, so all of them stop at the same step
            mine = w.bad is not None and w.bad.too_many()
            finite, too_many_bad = step_flags(losses, mine)
            if too_many_bad:  # every rank stops at this step; the rank that met them named each bad clip
                faults.stop_run(
                    w.log,
                    w.name,
                    step,
                    w.bad.message() if mine else "too many unreadable clips on another rank (each is named in the log)",
                )
                return None
            if not finite:
                faults.stop_non_finite(w.log, w.name, step)
                return None
        engine.backward(loss)
        try:  # DeepSpeed updates the weights only on the last micro-batch of train.grad_accum
            engine.step()
        except Exception as exc:
            if not faults.is_loss_scale_exhausted(exc):
                raise
            faults.stop_non_finite(w.log, w.name, step, reason="the fp16 loss scale reached its minimum")
            return None
        if micro == cfg.train.grad_accum - 1 and not _finite_gradients(engine, w.precision):
            # the same on every rank (the norm is global); stopped before anything is checkpointed
            faults.stop_non_finite(w.log, w.name, step, reason="non-finite gradients (of a finite loss)")
            return None
        if weight:
            tally.add(loss, clips.shape[0])
    return epoch


def _finite_gradients(engine, precision: str) -> bool:
    """Whether the step's global gradient norm (DeepSpeed's, all ranks) is finite. fp16's loss scaler skips an
    overflowing step by design (and gives up at its minimum scale: handled above), so only fp32 / bf16 ask."""
    if precision == "fp16":
        return True
    norm = engine.get_global_grad_norm()
    return norm is None or math.isfinite(float(norm))


def _rank_line(w: Worker):
    """Another rank's notes: to its stdout (forwarded by Ray to the driver's terminal, raylog.py), not to rank 0's
    run log."""

    def line(text: str) -> None:
        print(f"[vdp {w.name} rank {w.rank}] {text}", file=sys.__stdout__, flush=True)

    return line


def _validate_and_preview(w: Worker, step: int, total: int, val_shard, preview: Preview) -> dict:
    """At validation steps: the validation loss (all ranks) and the preview (rank 0), as every rank's val/*."""
    cfg = w.cfg
    if not (step % cfg.train.val_every == 0 or step == total):
        return {}
    # every rank validates (under ZeRO-3 each forward is a collective); only rank 0 samples the preview
    report = _validate(w.stage, w.engine, val_shard, cfg, w.batch_size, w.dtype, w.device, preview)
    if step % cfg.train.preview_every == 0 or step == total:
        # every rank, whatever its own clips: under ZeRO-3 rank 0 gathers the partitions, a collective
        model = preview.ema_model(everywhere=False)
        if w.rank == 0 and preview.clips is not None:
            image, scores = preview.run(model)
            w.log.image("preview", image, step)
            report.update(scores)
    report = broadcast_from_rank0(report)  # the same numbers on every rank: the same export choice everywhere
    w.log.scalars({f"val/{k}": v for k, v in report.items()}, step)
    return {f"val/{k}": v for k, v in report.items()}


class LogTally:
    """Losses, clips and data-wait time since the last logged step."""

    def __init__(self):
        self.losses: list[torch.Tensor] = []  # on the device: read once, at the log step (no sync per step)
        self.clips, self.wait, self.start = 0, 0.0, time.perf_counter()

    def add(self, loss: torch.Tensor, clips: int) -> None:
        self.losses.append(loss.detach().float())
        self.clips += clips

    def metrics(self, step: int, epoch: int, engine, world: int, device, precision: str) -> dict:
        elapsed = time.perf_counter() - self.start
        loss = torch.stack(self.losses).mean().item() if self.losses else float("nan")  # nan: no readable clip
        m = {
            "step": step,
            "epoch": epoch,
            "loss": mean_across(loss, device),
            "lr": engine.get_lr()[0],
            "clips_per_s": self.clips * world / elapsed,
            "workers": world,
            "data_wait": self.wait / elapsed,
        }
        grad_norm = engine.get_global_grad_norm()
        if grad_norm is not None:
            m["grad_norm"] = float(grad_norm)
        if precision == "fp16":
            m["loss_scale"] = float(engine.optimizer.cur_scale)
            m["skipped_steps"] = int(engine.skipped_steps)
        return m


class Preview:
    """The clips rank 0 previews (training clips until the first validation, validation clips after) and the
    EMA weights in a plain copy of the network (never a deepcopy of the engine's module: ZeRO-3's hooks on it
    must not come along)."""

    def __init__(self, stage, ema: EMA, device, validation_clips: int):
        self.stage, self.ema, self.device = stage, ema, device
        self.clips = self.captions = None
        self.from_validation = False
        self.limit = validation_clips  # train.preview_clips
        self._batches: list = []  # the first validation's clips, while it runs
        self._copy = None

    def offer_training_clips(self, clips, captions: list[str]) -> None:
        if self.clips is None:
            self.clips, self.captions = self.stage.pixels(clips[:PREVIEW_CLIPS]), captions[:PREVIEW_CLIPS]

    def offer_validation_clips(self, clips, captions: list[str]) -> None:
        """The first validation's batches, up to ``limit`` clips: every preview from then on scores these."""
        need = self.limit - sum(len(c) for c, _ in self._batches)
        if not self.from_validation and need > 0:
            self._batches.append((self.stage.pixels(clips[:need]), list(captions[:need])))

    def validation_done(self) -> None:
        if not self.from_validation and self._batches:
            self.clips = torch.cat([c for c, _ in self._batches])
            self.captions = [c for _, caps in self._batches for c in caps]
            self.from_validation, self._batches = True, []

    def ema_model(self, everywhere: bool = True):
        """The network with the EMA weights. Every rank calls it (a collective under ZeRO-3); with
        ``everywhere=False`` only rank 0 gets the network (the others None, and no copy of it)."""
        weights = self.ema.state_dict(everywhere)
        if not weights or (not everywhere and dist.is_initialized() and dist.get_rank() != 0):
            return None
        if self._copy is None:
            self._copy = self.stage.new_model().to(self.device)
        self._copy.load_state_dict(weights)
        return self._copy.eval()

    def run(self, model) -> tuple[np.ndarray, dict]:
        return self.stage.preview(model, self.clips, self.captions)


def on_device(batch: dict, device):
    """A batch's clips on ``device``: uint8 pixels -> float in [-1, 1] (the bytes travel, the floats are made
    there), or latent shards' fp16 posteriors -> a LatentBatch in fp32."""
    if "latent" in batch:
        posterior = batch["latent"].to(device, non_blocking=True).float()
        return LatentBatch(posterior[:, 0], posterior[:, 1])
    return to_model_range(batch["clip"].to(device, non_blocking=True))


@torch.no_grad()
def _validate(stage, engine, val_shard, cfg: Config, batch_size: int, dtype, device, preview: Preview) -> dict:
    """The validation loss (fixed timesteps, all ranks); the first validation batch becomes the preview's."""
    if val_shard is None:
        return {}
    engine.eval()  # no dropout: validation losses comparable from one validation to the next
    losses = []
    batches = epochs(val_shard, batch_size=batch_size, drop_last=False, max_epochs=1)
    for i, (_, batch) in enumerate(batches):
        if i >= cfg.train.val_batches:
            break
        clips = on_device(batch, device)
        loss = stage.val_loss(engine, clips, batch["caption"], dtype)  # every batch: a collective under ZeRO-3
        if batch.get("weight", 1.0):  # a batch with no readable clip counts for nothing
            preview.offer_validation_clips(clips, batch["caption"])
            losses.append(loss)
    preview.validation_done()
    engine.train()
    return {"loss": mean_across(np.mean(losses) if losses else float("nan"), device)}
