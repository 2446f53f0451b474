"""The `vdp` command line: a thin layer over the library's functions."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, describe_keys, load_config

# Verbs whose issue has not landed yet: they say so and exit non-zero instead of pretending.
PLANNED = {
    "shard": "videos or frame folders -> WebDataset clip shards",
    "predict": "future frames from a video with a trained export",
    "evaluate": "PSNR/SSIM of predictions against baselines",
    "demo": "synthetic data -> shards -> train -> predict -> metrics + GIF",
    "tune": "Ray Tune sweeps over config keys",
    "serve": "Ray Serve HTTP predictor",
}

# Reference inputs for `vdp models` (batch 1): pixel clips for the U-Net and the VAE, and the latents
# of a 16x256x256 clip under the seed VAE (8x spatial, 4x temporal, 4 channels) for the DiT.
REFERENCE_INPUT = {"unet3d": (3, 16, 64, 64), "vae": (3, 16, 256, 256), "dit": (4, 4, 32, 32)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vdp",
        description="Train and serve video diffusion models that predict the future of a video, on Ray.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    train = sub.add_parser("train", help="train a model from an experiment config (Ray Train + DeepSpeed)")
    train.add_argument("config", help="experiment YAML, e.g. experiments/tiny_unet.yaml")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 train.workers=2")
    train.add_argument("--dry-run", action="store_true", help="validate and print the resolved config, start nothing")

    for verb, what in PLANNED.items():
        p = sub.add_parser(verb, help=f"{what} (not built yet)", add_help=True)
        p.add_argument("args", nargs=argparse.REMAINDER)

    models = sub.add_parser("models", help="parameter counts and forward FLOPs of every model preset")
    models.add_argument("--family", choices=sorted(REFERENCE_INPUT), help="only this family")
    models.add_argument("--config", help="instead of the presets: the models of this experiment config")
    models.add_argument("overrides", nargs="*", help="dotted overrides for --config")

    keys = sub.add_parser("keys", help="every config key with its type, default and meaning")
    keys.add_argument("prefix", nargs="?", default="", help="only keys starting with this, e.g. train.")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _dispatch(argv)
    except BrokenPipeError:  # `vdp keys | head`
        return 0


def _dispatch(argv: list[str] | None) -> int:
    parser = build_parser()
    # Overrides may come before or after flags (`--dry-run train.lr=1e-4`), and litgpt-style
    # `--train.lr=1e-4` works too: anything left over that looks like key=value is an override.
    args, extra = parser.parse_known_args(argv)
    overrides = [e for e in extra if "=" in e and "." in e.split("=", 1)[0]]
    rest = [e for e in extra if e not in overrides]
    if rest or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(rest or overrides)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        if args.verb == "train":
            return _train(args)
        if args.verb == "models":
            return _models(args)
        if args.verb == "keys":
            return _keys(args)
    except ConfigError as exc:
        print(f"vdp {args.verb}: config error: {exc}", file=sys.stderr)
        return 2
    print(
        f"vdp {args.verb}: not built yet ({PLANNED[args.verb]}); it lands with its issue. "
        "See README.md for what works today.",
        file=sys.stderr,
    )
    return 2


def _train(args) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        print(cfg.to_yaml(), end="")
        print(f"# config OK: stages {cfg.train.stages}; nothing started (--dry-run)", file=sys.stderr)
        return 0
    print("vdp train: the config is valid, but distributed training is not built yet; use --dry-run.", file=sys.stderr)
    return 2


def _models(args) -> int:
    import torch

    from .models import CLASSES, PRESETS, build_denoiser, build_vae, count_parameters, forward_flops

    rows = []
    if args.config:
        cfg = load_config(args.config, args.overrides)
        c, t, (h, w) = cfg.data.channels, cfg.data.frames, cfg.data.size
        vae = build_vae(cfg)
        latent = vae.latent_shape(t, h, w)
        den = build_denoiser(cfg)
        den_shape = (c, t, h, w) if cfg.model.family == "unet3d" else latent
        rows.append((cfg.model.family, cfg.model.preset, den, den_shape))
        if "vae" in cfg.train.stages or cfg.model.family == "dit":
            rows.append(("vae", cfg.vae.preset, vae, (c, t, h, w)))
    else:
        for family, presets in PRESETS.items():
            if args.family and family != args.family:
                continue
            shape = REFERENCE_INPUT[family]
            for name, kwargs in presets.items():
                with torch.device("meta"):
                    model = CLASSES[family](in_channels=shape[0], **kwargs)
                rows.append((family, name, model, shape))

    print(f"{'family':<8} {'preset':<7} {'params':>10} {'input (C,T,H,W)':<20} {'fwd GFLOPs':>11}")
    for family, name, model, shape in rows:
        x = torch.zeros(1, *shape, device="meta")
        if family == "vae":
            flops = forward_flops(model, x)
        else:
            flops = forward_flops(model, x, torch.zeros(1, shape[1], device="meta"), None)
        print(f"{family:<8} {name:<7} {count_parameters(model) / 1e6:>9.2f}M {shape!s:<20} {flops / 1e9:>11.2f}")
    return 0


def _keys(args) -> int:
    for key, tp, default, help_text in describe_keys():
        if key.startswith(args.prefix):
            print(f"{key:<34} {default:<14} {tp}\n{'':<34} {help_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
