"""The `vdp` command line: a thin layer over the library's functions.

Each verb lives in a module of this package with its parser (generated from the library's options dataclass
where there is one, so the command's defaults are the library's) and its handler, bound with
``set_defaults(func=...)``. Only the invoked verb's module is imported: `vdp --help` stays instant and a verb
pulls in torch or Ray only when it needs them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..config import ConfigError
from ..options import OptionError, flag_of

# verb: (module in this package, one line for `vdp --help`), in the order --help lists them
VERBS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a model from an experiment config (Ray Train + DeepSpeed)"),
    "shard": ("data", "videos, frame folders or synthetic moving digits -> WebDataset clip shards"),
    "predict": ("predict", "future frames (or new clips, in-betweens, refinements) with a trained export"),
    "evaluate": ("predict", "PSNR/SSIM of an export's predictions on shards, against copy_last / context_mean / blank"),
    "demo": ("predict", "moving digits -> shards -> train (Ray Train + DeepSpeed) -> predict -> metrics + GIF"),
    "tune": ("train", "Ray Tune sweep over config keys (ASHA early stopping) -> results table, best.yaml, best export"),
    "serve": ("serve", "HTTP API + browser page for an export (Ray Serve): predict, generate, interpolate, refine"),
    "export": ("train", "make an export (EMA weights + config) from a training checkpoint"),
    "models": ("train", "parameter counts and forward FLOPs of every model preset"),
    "encode": (
        "data",
        "clip shards -> latent shards of a trained VAE (Ray Data, a GPU actor pool where there are GPUs)",
    ),
    "encode-text": ("data", "caption embeddings of shards with a local text encoder (Ray Data), stored beside them"),
    "keys": ("train", "every config key with its type, default and meaning"),
}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``verb``'s arguments are filled in (all of them with verb="*", for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="vdp", description="Train and serve video diffusion models that predict the future of a video, on Ray."
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, (module, text) in VERBS.items():
        p = sub.add_parser(name, help=text, description=text)
        if verb in (name, "*"):
            importlib.import_module(f"{__name__}.{module}").PARSERS[name](p)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _dispatch(sys.argv[1:] if argv is None else list(argv))
    except BrokenPipeError:  # `vdp keys | head`
        return 0


def _dispatch(argv: list[str]) -> int:
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(verb if verb in VERBS else None)
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
        return args.func(args)
    except ConfigError as exc:
        print(f"vdp {args.verb}: config error: {exc}", file=sys.stderr)
        return 2
    except OptionError as exc:
        owner = getattr(args, "options_class", None)
        name = flag_of(owner, exc.field) if owner else f"--{exc.field.replace('_', '-')}"
        print(f"vdp {args.verb}: {name}: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
