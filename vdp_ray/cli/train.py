"""The config-centred verbs: `vdp train`, `vdp tune`, `vdp export`, `vdp models`, `vdp keys`."""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import describe_keys, load_config
from ..raylog import ray_log

# Reference inputs for `vdp models` (batch 1): pixel clips for the U-Net and the VAE, and the latents
# of a 16x256x256 clip under the seed VAE (8x spatial, 4x temporal, 4 channels) for the DiT.
REFERENCE_INPUT = {"unet3d": (3, 16, 64, 64), "vae": (3, 16, 256, 256), "dit": (4, 4, 32, 32)}
VERBOSE = (
    "Ray's own output (the Train controller, every checkpoint report, Ray Data) on the terminal as Ray prints "
    "it; without this flag it goes to {where} and the terminal shows our progress lines, warnings and errors"
)


def add_train(p) -> None:
    p.add_argument("config", help="experiment YAML, e.g. experiments/tiny_unet.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 train.workers=2")
    p.add_argument("--dry-run", action="store_true", help="validate and print the resolved config, start nothing")
    p.add_argument("--verbose", action="store_true", help=VERBOSE.format(where="RUN_DIR/logs/ray.log"))
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        print(cfg.to_yaml(), end="")
        print(f"# config OK: stages {list(cfg.train.stages)}; nothing started (--dry-run)", file=sys.stderr)
        return 0
    from ..fsutil import OutputError
    from ..train import TrainingError, fit

    try:
        exports = fit(cfg, verbose=args.verbose)
    except OutputError as exc:  # refused before anything started (another run holds the folder)
        print(f"vdp train: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"vdp train: {exc}", file=sys.stderr)
        if not args.verbose:
            print(f"vdp train: Ray's own output is in {ray_log(Path(cfg.run.dir).resolve())}", file=sys.stderr)
        return 1
    from ..export import Export, provenance

    for stage, path in exports.items():
        print(f"{stage}: export in {path}: {provenance(Export(path).meta)}")
    return 0


def add_tune(p) -> None:
    p.description = (
        "Run the trials of a sweep file (a base experiment config + a search space over dotted keys), each a real "
        "training run, and write results.csv, results.md, best.yaml, best_export/ and metric.png into the sweep "
        "folder. Re-running the same command resumes an interrupted sweep."
    )
    p.add_argument("sweep", help="sweep YAML, e.g. experiments/sweep_schedule_prediction.yaml")
    p.add_argument("overrides", nargs="*", help="fixed config values for every trial, e.g. train.max_steps=100")
    p.add_argument("--dir", help="sweep folder (default: dir: in the sweep file, else runs/sweeps/NAME)")
    p.add_argument("--restart", action="store_true", help="discard what the sweep folder holds and start over")
    p.add_argument("--dry-run", action="store_true", help="check the sweep and list its trials, start nothing")
    p.add_argument("--verbose", action="store_true", help=VERBOSE.format(where="the sweep folder's logs/ray.log"))
    p.set_defaults(func=run_tune)


def run_tune(args) -> int:
    from ..tune import describe_trials, load_sweep, sweep

    spec = load_sweep(args.sweep, args.overrides)
    if args.dry_run:
        print(describe_trials(spec, args.dir))
        return 0
    result = sweep(spec, folder=args.dir, restart=args.restart, verbose=args.verbose)
    if result.unfinished:
        print(
            f"vdp tune: interrupted with {result.unfinished} of {result.total} trial(s) to run; run the same "
            "command to resume",
            file=sys.stderr,
        )
        return 130
    if result.best is None:
        print(f"vdp tune: no trial reported {result.metric}; see {result.folder / 'results.md'}", file=sys.stderr)
        return 1
    print(
        f"best: {result.best.trial} {result.metric} {result.best.value:.4f} -> {result.best_yaml}"
        + (f", export {result.best_export}" if result.best_export else "")
    )
    return 0


def add_export(p) -> None:
    p.add_argument("--checkpoint", required=True, help="a Ray checkpoint folder of a vdp run (any ZeRO stage)")
    p.add_argument("--out", required=True, help="export folder to write")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from ..fsutil import OutputError
    from ..train import CheckpointError, export_checkpoint

    try:
        path = export_checkpoint(args.checkpoint, args.out)
    except (CheckpointError, OutputError) as exc:
        print(f"vdp export: {exc}", file=sys.stderr)
        return 2
    print(f"export in {path}")
    return 0


def add_models(p) -> None:
    p.add_argument("--family", choices=sorted(REFERENCE_INPUT), help="only this family")
    p.add_argument("--config", help="instead of the presets: the models of this experiment config")
    p.add_argument("overrides", nargs="*", help="dotted overrides for --config")
    p.set_defaults(func=run_models)


def run_models(args) -> int:
    import torch

    from ..models import CLASSES, PRESETS, count_parameters, forward_flops

    rows = _config_models(args) if args.config else []
    for family, presets in ({} if args.config else PRESETS).items():
        if args.family and family != args.family:
            continue
        shape = REFERENCE_INPUT[family]
        for name, kwargs in presets.items():
            if kwargs.get("fold_frames"):  # a window folded into channels: the reference clip's frames
                kwargs = {**kwargs, "fold_frames": shape[1]}
            with torch.device("meta"):
                rows.append((family, name, CLASSES[family](in_channels=shape[0], **kwargs), shape))
    print(f"{'family':<8} {'preset':<7} {'params':>10} {'input (C,T,H,W)':<20} {'fwd GFLOPs':>11}")
    for family, name, model, shape in rows:
        x = torch.zeros(1, *shape, device="meta")
        inputs = (x,) if family == "vae" else (x, torch.zeros(1, shape[1], device="meta"), None)
        flops = forward_flops(model, *inputs)
        print(f"{family:<8} {name:<7} {count_parameters(model) / 1e6:>9.2f}M {shape!s:<20} {flops / 1e9:>11.2f}")
    return 0


def _config_models(args) -> list[tuple]:
    """(family, preset, model, input shape) of an experiment config's denoiser and VAE."""
    from ..models import build_denoiser, build_vae

    cfg = load_config(args.config, args.overrides)
    c, t, (h, w) = cfg.data.channels, cfg.data.frames, cfg.data.size
    vae = build_vae(cfg)
    den_shape = (c, t, h, w) if cfg.model.family == "unet3d" else vae.latent_shape(t, h, w)
    rows = [(cfg.model.family, cfg.model.preset, build_denoiser(cfg), den_shape)]
    if "vae" in cfg.train.stages or cfg.model.family == "dit":
        rows.append(("vae", cfg.vae.preset, vae, (c, t, h, w)))
    return rows


def add_keys(p) -> None:
    p.add_argument("prefix", nargs="?", default="", help="only keys starting with this, e.g. train.")
    p.set_defaults(func=run_keys)


def run_keys(args) -> int:
    for key, tp, default, help_text in describe_keys():
        if key.startswith(args.prefix):
            print(f"{key:<34} {default:<14} {tp}\n{'':<34} {help_text}")
    return 0


PARSERS = {"train": add_train, "tune": add_tune, "export": add_export, "models": add_models, "keys": add_keys}
