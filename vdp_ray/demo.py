"""`vdp demo`: the whole path on data made on the spot, in a bounded time.

moving digits -> WebDataset shards -> Ray Train + DeepSpeed (the packaged ``configs/demo.yaml``) -> export ->
`vdp evaluate` on held-out clips -> OUT/metrics.json, OUT/prediction.gif, OUT/prediction.png, a table.
Re-running with the same OUT reuses the shards and resumes (or skips) the training.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import load_config

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
DIGITS = (1, 2)  # digits per clip
VAL_FRACTION = 0.05
SAMPLING_KEYS = ("sampler", "sample_steps", "eta", "spacing", "guidance", "clip_x0")
EVAL_RESERVE_MIN = 2.5  # minutes kept back from training for start-up, export and evaluation


@dataclass
class DemoOptions:
    out: str = "runs/demo"
    minutes: float = 15.0
    clips: int = 4000
    eval_clips: int = 128
    overrides: list[str] = field(default_factory=list)


def _say(text: str) -> None:
    print(f"[vdp demo] {text}", file=sys.stderr, flush=True)


def _finished_export(cfg) -> Path | None:
    """The export of an earlier demo run that reached max_steps with the same model, data and diffusion."""
    from .export import Export

    path = Path(cfg.run.dir) / "export"
    try:
        export = Export(path)
    except (FileNotFoundError, ValueError):
        return None
    # sampling settings do not change the trained model: only what training depends on must match
    sampling = dict.fromkeys(SAMPLING_KEYS)
    same = (
        export.cfg.model == cfg.model
        and export.cfg.data == cfg.data
        and replace(export.cfg.diffusion, **sampling) == replace(cfg.diffusion, **sampling)
    )
    return path if same and export.meta.get("steps", 0) >= cfg.train.max_steps else None


def run_demo(opts: DemoOptions) -> dict:
    from .config import ConfigError
    from .data.shards import ShardOptions, read_manifest, shard
    from .evaluate import EvalOptions, evaluate, table
    from .models import build_denoiser, count_parameters
    from .train import fit

    start = time.time()
    out = Path(opts.out).resolve()
    shards = out / "shards"
    overrides = [f"run.dir={out / 'run'}", f"data.train={shards / 'train'}", f"data.val={shards / 'val'}"]
    cfg = load_config(DEMO_CONFIG, [*overrides, *opts.overrides])
    if opts.minutes <= EVAL_RESERVE_MIN:
        raise ConfigError(f"--minutes: {opts.minutes:g} leaves no time to train (keep > {EVAL_RESERVE_MIN:g})")
    val_clips = round(opts.clips * VAL_FRACTION)
    if val_clips < 1 or opts.eval_clips < 1:
        raise ConfigError(f"--clips {opts.clips} / --eval-clips {opts.eval_clips}: too few clips for a held-out split")
    d = cfg.data
    from .raytools import init_ray

    # one Ray for every step; more logical CPUs than cores so data tasks run beside the training workers
    init_ray(num_cpus=max(os.cpu_count() or 1, math.ceil(cfg.train.workers * cfg.train.cpus_per_worker) + 2))

    # 1. data (kept when a previous run made the same)
    want = {"frames": d.frames, "size": list(d.size), "clips": opts.clips, "digits": list(DIGITS)}
    stamp = shards / "demo.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        _say(f"shards: reusing {shards}")
    else:
        _say(f"shards: {opts.clips} moving-digits clips, {d.frames} frames of {d.size[0]}x{d.size[1]}, {DIGITS} digits")
        shard(
            ShardOptions(
                out=str(shards),
                synthetic="moving-digits",
                num_clips=opts.clips,
                frames=d.frames,
                size=tuple(d.size),
                digits=DIGITS,
                split={"train": 1 - VAL_FRACTION, "val": VAL_FRACTION},
                seed=0,
            ),
            log=_say,
        )
        stamp.write_text(json.dumps(want))
    val_count = read_manifest(str(shards / "val"))["count"]

    # 2. training, capped so the whole demo fits the budget
    if not any(o.startswith("train.max_minutes=") for o in opts.overrides):
        left = opts.minutes - (time.time() - start) / 60 - EVAL_RESERVE_MIN
        cfg.train.max_minutes = round(max(0.5, left), 2)
    net = build_denoiser(cfg)
    _say(
        f"training {cfg.model.family}/{cfg.model.preset} ({count_parameters(net) / 1e6:.2f}M parameters) for up to "
        f"{cfg.train.max_steps} steps or {cfg.train.max_minutes:g} min on {cfg.train.workers} Ray Train worker(s)"
    )
    train_start = time.time()
    export = _finished_export(cfg)
    reused = export is not None
    if reused:
        _say(f"training: {export} already holds {cfg.train.max_steps} steps of this config; reusing it")
    else:
        export = fit(cfg)[cfg.train.stages[-1]]
    train_minutes = (time.time() - train_start) / 60
    meta = json.loads((export / "meta.json").read_text())

    # 3. held-out evaluation
    k = d.context_frames
    _say(f"evaluating {min(opts.eval_clips, val_count)} held-out clips: {k} given -> {d.frames - k} predicted")
    metrics = evaluate(
        EvalOptions(
            checkpoint=str(export),
            shards=str(shards / "val"),
            context=k,
            future=d.frames - k,
            clips=opts.eval_clips,
            sampler=cfg.diffusion.sampler,  # the demo config's sampling, even for a reused export
            steps=cfg.diffusion.sample_steps,
            guidance=cfg.diffusion.guidance,
            workers=1,
            cpus_per_worker=2,
            seed=0,
            out=str(out),
        )
    )
    best = metrics["baseline"][metrics["best_baseline"]["psnr"]]
    metrics["demo"] = {
        "data": {
            "kind": "moving digits (deterministic)",
            "digits_per_clip": list(DIGITS),
            "frames": d.frames,
            "resolution": list(d.size),
            "channels": d.channels,
            "train_clips": opts.clips - val_count,
            "val_clips": val_count,
        },
        "horizon": {"context": k, "future": d.frames - k},
        "model": {
            "family": cfg.model.family,
            "preset": cfg.model.preset,
            "parameters": count_parameters(net),
            "prediction_type": cfg.diffusion.prediction_type,
            "schedule": cfg.diffusion.schedule,
            "zero_terminal_snr": cfg.diffusion.zero_terminal_snr,
        },
        "training": {
            "steps": meta.get("steps"),
            "max_steps": cfg.train.max_steps,
            "minutes": round(train_minutes, 2),
            "reused_export": reused,
            "workers": cfg.train.workers,
            "batch_per_worker": cfg.train.batch_size,
        },
        "target": {
            "psnr_gain_db": 2.0,
            "psnr_met": metrics["psnr"] >= best["psnr"] + 2.0,
            "ssim_met": metrics["ssim_gain"] > 0,
        },
        "total_minutes": round((time.time() - start) / 60, 2),
        "config": str(out / "run" / "config.yaml"),
        "export": str(export),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(table(metrics))
    tgt = metrics["demo"]["target"]
    print(
        f"\ntarget (PSNR >= best baseline + 2 dB, SSIM above best baseline): "
        f"{'met' if tgt['psnr_met'] and tgt['ssim_met'] else 'NOT met'} "
        f"(gain {metrics['psnr_gain']:+.2f} dB, SSIM {metrics['ssim_gain']:+.3f})"
    )
    print(f"{out}/metrics.json  {out}/prediction.gif  {out}/prediction.png  {out}/psnr_per_frame.png")
    print(f"export: {export}   TensorBoard: tensorboard --logdir {out / 'run' / 'tb'}")
    print(f"total {metrics['demo']['total_minutes']:.1f} min (training {train_minutes:.1f} min)")
    return metrics
