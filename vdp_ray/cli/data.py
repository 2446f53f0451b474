"""The data verbs: `vdp shard` (its parser generated from ``ShardOptions``), `vdp encode` (``EncodeOptions``) and
`vdp encode-text`."""

from __future__ import annotations

import sys

from ..data.latent_shards import EncodeOptions
from ..data.shards import ShardOptions
from ..options import declare, from_args


def add_shard(p) -> None:
    declare(
        p,
        ShardOptions,
        run_shard,
        "Cut videos (.mp4 .avi .mov .mkv .webm) or folders of frames into fixed-size clips and write them as "
        "WebDataset tar shards, one split per folder, each with a manifest.json.",
    )


def run_shard(args) -> int:
    from ..data.shards import ShardError, shard

    opts = from_args(ShardOptions, args)
    try:
        summary = shard(opts, log=lambda line: print(line, file=sys.stderr))
    except ShardError as exc:
        print(f"vdp shard: error: {exc}", file=sys.stderr)
        return 1 if opts.strict and "--strict" in str(exc) else 2
    splits = ", ".join(f"{name} {s['count']} clips in {s['shards']} shard(s)" for name, s in summary["splits"].items())
    print(f"wrote {splits} to {opts.out} in {summary['elapsed_s']:.1f}s")
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} source(s); reasons in {opts.out}/manifest.json:")
        for item in summary["skipped"]:
            print(f"  {item['path']}: {item['reason']}")
    return 0


def add_encode_text(p) -> None:
    p.description = (
        "Embeds every distinct caption of each split once with a local transformers text model (CLIP text model or "
        "T5 encoder; nothing is downloaded) and stores them in <split>/text/. Training with text.encoder set reads "
        "them from there."
    )
    p.add_argument("shards", nargs="+", help="a `vdp shard` output folder or split folders")
    p.add_argument("--encoder", required=True, help="local transformers model folder (config.json + weights)")
    p.add_argument("--max-tokens", type=int, default=77, help="caption tokens kept (default 77, as CLIP)")
    p.add_argument("--batch-size", type=int, default=64, help="captions per encoder call (default 64)")
    p.add_argument("--workers", type=int, default=1, help="encoder actors (default 1; a GPU each if any)")
    p.add_argument(
        "--make-encoder",
        action="store_true",
        help="first write a small randomly initialised CLIP text model with a word-level tokenizer over the "
        "shards' captions to --encoder (for CPU tests and demos; captions are told apart, with no prior "
        "meaning)",
    )
    p.set_defaults(func=run_encode_text)


def run_encode_text(args) -> int:
    from ..data.shards import ShardError
    from ..text import TextError, encode_text

    try:
        done = encode_text(
            args.shards,
            args.encoder,
            max_tokens=args.max_tokens,
            batch_size=args.batch_size,
            workers=args.workers,
            make_encoder=args.make_encoder,
            log=lambda line: print(line, file=sys.stderr),
        )
    except (TextError, ShardError) as exc:
        print(f"vdp encode-text: error: {exc}", file=sys.stderr)
        return 2
    for folder, s in done.items():
        print(
            f"{folder}: {s['captions']} caption(s) (with the null text), {s['dim']}-wide tokens, "
            f"{s['seconds']:.1f}s -> {folder}/text/"
        )
    return 0


def add_encode(p) -> None:
    declare(
        p,
        EncodeOptions,
        run_encode,
        "Encode clip shards once with a trained VAE export into latent shards (the posterior's mean and std in "
        "fp16, with a manifest naming the VAE): Ray Data decodes on CPU tasks and runs the encoder in an actor "
        "pool, a GPU each where the cluster has them. A DiT trains from them with data.train=OUT/train and "
        "vae.export=VAE, without running the encoder at every step.",
    )


def run_encode(args) -> int:
    from ..data.latent_shards import encode_latents
    from ..data.shards import ShardError

    opts = from_args(EncodeOptions, args)
    try:
        summary = encode_latents(opts, log=lambda line: print(line, file=sys.stderr))
    except ShardError as exc:
        print(f"vdp encode: error: {exc}", file=sys.stderr)
        return 2
    splits = ", ".join(f"{name} {s['clips']} clips" for name, s in summary["splits"].items())
    print(f"wrote latent shards ({splits}) of VAE {summary['vae_id']} to {opts.out} on {summary['device']}")
    return 0


PARSERS = {"shard": add_shard, "encode": add_encode, "encode-text": add_encode_text}
