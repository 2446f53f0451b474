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
from dataclasses import dataclass
from pathlib import Path

from .config import load_config
from .options import arg

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
DIGITS = (1, 2)  # digits per clip
VAL_FRACTION = 0.05
TARGET = {"psnr_gain_db": 4.0, "ssim_gain": 0.10, "identity": 0.8}  # over the best baseline; identity: read right
EVAL_RESERVE_MIN = 2.5  # minutes kept back from training for start-up, export and evaluation


@dataclass
class DemoOptions:
    out: str = arg("runs/demo", "output folder; re-running resumes")
    minutes: float = arg(15.0, "total time budget")
    clips: int = arg(4000, "moving-digits clips to generate")
    eval_clips: int = arg(128, "held-out clips to score")
    verbose: bool = arg(False, "Ray's own output on the terminal (else in OUT/run/logs/ray.log)")
    overrides: list[str] = arg([], "dotted overrides of the demo config, e.g. train.max_steps=100", positional=True)


def _say(text: str) -> None:
    print(f"[vdp demo] {text}", file=sys.stderr, flush=True)


FINISHED = "demo_finished.json"  # in run.dir: the training ran to its end (max_steps or the time budget)


def _finished_export(cfg) -> Path | None:
    """The export of an earlier demo run whose training finished (all its steps, or its time budget) with the
    same model, data and diffusion."""
    from .export import Export

    path = Path(cfg.run.dir) / "export"
    try:
        export = Export(path)
    except (FileNotFoundError, ValueError):
        return None
    same = export.cfg.trained_part() == cfg.trained_part()  # sampling settings do not change the trained model
    trained = export.meta.get("trained_steps", export.meta.get("steps", 0))  # select_by may export an earlier step
    finished = (Path(cfg.run.dir) / FINISHED).is_file() or trained >= cfg.train.max_steps
    return path if same and finished else None


def run_demo(opts: DemoOptions) -> dict:
    """Data, training and evaluation in ``opts.minutes``; returns metrics.json's content (and prints the table)."""
    from .config import ConfigError
    from .raylog import ray_log
    from .raytools import init_ray

    start = time.time()
    out = Path(opts.out).resolve()
    shards = out / "shards"
    overrides = [f"run.dir={out / 'run'}", f"data.train={shards / 'train'}", f"data.val={shards / 'val'}"]
    cfg = load_config(DEMO_CONFIG, [*overrides, *opts.overrides])
    if opts.minutes <= EVAL_RESERVE_MIN:
        raise ConfigError(f"--minutes: {opts.minutes:g} leaves no time to train (keep > {EVAL_RESERVE_MIN:g})")
    if round(opts.clips * VAL_FRACTION) < 1 or opts.eval_clips < 1:
        raise ConfigError(f"--clips {opts.clips} / --eval-clips {opts.eval_clips}: too few clips for a held-out split")
    # one Ray for every step; more logical CPUs than cores so data tasks run beside the training workers
    cpus = max(os.cpu_count() or 1, math.ceil(cfg.train.workers * cfg.train.cpus_per_worker) + 2)
    init_ray(num_cpus=cpus, log=None if opts.verbose else ray_log(cfg.run.dir))

    val_count = _make_shards(cfg, opts, shards)
    if not any(o.startswith("train.max_minutes=") for o in opts.overrides):  # the training fits the budget
        left = opts.minutes - (time.time() - start) / 60 - EVAL_RESERVE_MIN
        cfg = cfg.updated({"train.max_minutes": round(max(0.5, left), 2)})
    export, training, params = _train(cfg)
    metrics = _evaluate(cfg, opts, export, shards, out)
    metrics["demo"] = _summary(cfg, opts, metrics, training, params, val_count)
    metrics["demo"].update(
        total_minutes=round((time.time() - start) / 60, 2), config=str(out / "run" / "config.yaml"), export=str(export)
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _report(metrics, out, export)
    return metrics


def _make_shards(cfg, opts: DemoOptions, shards: Path) -> int:
    """The demo's shards, kept when an earlier run made the same; returns the held-out clip count."""
    from .data.shards import ShardOptions, read_manifest, shard

    d = cfg.data
    want = {"frames": d.frames, "size": list(d.size), "clips": opts.clips, "digits": list(DIGITS), "meta": 2}
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
    return read_manifest(str(shards / "val"))["count"]


def _train(cfg) -> tuple[Path, dict, int]:
    """Train (or reuse an earlier run's finished export of the same model); the export, what happened, and the
    model's parameter count."""
    from .models import build_denoiser, count_parameters
    from .train import fit

    params = count_parameters(build_denoiser(cfg))
    _say(
        f"training {cfg.model.family}/{cfg.model.preset} ({params / 1e6:.2f}M parameters) for up to "
        f"{cfg.train.max_steps} steps or {cfg.train.max_minutes:g} min on {cfg.train.workers} Ray Train worker(s)"
    )
    train_start = time.time()
    export = _finished_export(cfg)
    reused = export is not None
    if reused:
        _say(f"training: {export} already holds a finished training of this config; reusing it")
    else:
        (Path(cfg.run.dir) / FINISHED).unlink(missing_ok=True)
        export = fit(cfg)[cfg.train.stages[-1]]
        (Path(cfg.run.dir) / FINISHED).write_text(json.dumps({"export": str(export)}))
    meta = json.loads((export / "meta.json").read_text())
    minutes = round((time.time() - train_start) / 60, 2)
    return (
        export,
        {
            "steps": meta.get("trained_steps", meta.get("steps")),
            "exported_step": meta.get("steps"),
            "selected_by": meta.get("selected_by"),
            "max_steps": cfg.train.max_steps,
            "minutes": minutes,
            "reused_export": reused,
            "workers": cfg.train.workers,
            "batch_per_worker": cfg.train.batch_size,
        },
        params,
    )


def _evaluate(cfg, opts: DemoOptions, export: Path, shards: Path, out: Path) -> dict:
    """`vdp evaluate` on the held-out split with the demo config's sampling (even for a reused export)."""
    from .evaluate import EvalOptions, evaluate

    k, frames = cfg.data.context_frames, cfg.data.frames
    _say(f"evaluating up to {opts.eval_clips} held-out clips: {k} given -> {frames - k} predicted")
    s = cfg.sampling
    return evaluate(
        EvalOptions(
            checkpoint=str(export),
            shards=str(shards / "val"),
            context=k,
            future=frames - k,
            clips=opts.eval_clips,
            sampler=s.sampler,
            steps=s.steps,
            guidance=s.guidance,
            workers=1,
            cpus_per_worker=2,
            seed=0,
            out=str(out),
        )
    )


def _summary(cfg, opts: DemoOptions, metrics: dict, training: dict, params: int, val_count: int) -> dict:
    """metrics.json's "demo" block: the data, the horizon, the model, the training and the target."""
    d, k = cfg.data, cfg.data.context_frames
    best = metrics["baseline"][metrics["best_baseline"]["psnr"]]
    return {
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
            "parameters": params,
            "prediction_type": cfg.diffusion.prediction_type,
            "schedule": cfg.diffusion.schedule,
            "zero_terminal_snr": cfg.diffusion.zero_terminal_snr,
            "objective": cfg.diffusion.objective,
            "anchor": cfg.diffusion.anchor,
            "motion_kernel": cfg.diffusion.motion_kernel,
            "sampler": f"{cfg.sampling.sampler} x {cfg.sampling.steps}",
        },
        "training": training,
        "target": {  # issue 17's: sharp digits that keep their identity, at the default sampler
            "psnr_gain_db": TARGET["psnr_gain_db"],
            "psnr_met": metrics["psnr"] >= best["psnr"] + TARGET["psnr_gain_db"],
            "ssim_gain": TARGET["ssim_gain"],
            "ssim_met": metrics["ssim_gain"] >= TARGET["ssim_gain"],
            "identity": TARGET["identity"],
            "identity_met": (metrics.get("identity") or 0.0) >= TARGET["identity"],
        },
    }


def _report(metrics: dict, out: Path, export: Path) -> None:
    from .evaluate import table

    print(table(metrics))
    demo = metrics["demo"]
    tgt = demo["target"]
    met = tgt["psnr_met"] and tgt["ssim_met"] and tgt["identity_met"]
    identity = metrics.get("identity")
    print(
        f"\ntarget (PSNR >= best baseline + {tgt['psnr_gain_db']:g} dB, SSIM >= best baseline + {tgt['ssim_gain']:g}, "
        f"identity >= {tgt['identity']:g}): {'met' if met else 'NOT met'} (gain {metrics['psnr_gain']:+.2f} dB, "
        f"SSIM {metrics['ssim_gain']:+.3f}, identity {'n/a' if identity is None else f'{identity:.2f}'})"
    )
    print(f"{out}/metrics.json  {out}/prediction.gif  {out}/prediction.png  {out}/psnr_per_frame.png")
    from .export import Export, provenance

    print(f"export: {export} ({provenance(Export(export).meta)})")
    print(f"TensorBoard: tensorboard --logdir {out / 'run' / 'tb'}")
    print(f"total {demo['total_minutes']:.1f} min (training {demo['training']['minutes']:.1f} min)")
