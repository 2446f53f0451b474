"""The `vdp` command line: a thin layer over the library's functions."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, describe_keys, load_config

# Verbs whose issue has not landed yet: they say so and exit non-zero instead of pretending.
PLANNED: dict[str, str] = {}

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

    shard = sub.add_parser(
        "shard",
        help="videos, frame folders or synthetic moving digits -> WebDataset clip shards",
        description="Cut videos (.mp4 .avi .mov .mkv .webm) or folders of frames into fixed-size clips and "
        "write them as WebDataset tar shards, one split per folder, each with a manifest.json.",
    )
    src = shard.add_argument_group("what to shard (one of)")
    src.add_argument(
        "--source", nargs="+", default=[], metavar="PATH", help="video files or folders of them / of frame folders"
    )
    src.add_argument("--dataset", metavar="YAML", help="a YOLO-style dataset.yaml with train/val/test paths")
    src.add_argument("--synthetic", choices=["moving-digits"], help="generate the embedded moving-digits data set")
    shard.add_argument("--out", required=True, help="output folder: OUT/<split>/shard-*.tar + manifest.json")
    shard.add_argument("--frames", type=int, help="frames per clip (default 16, or context+future of the dataset.yaml)")
    shard.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="frame size (default 64 64)")
    shard.add_argument("--stride", type=int, help="source frames between clip starts (default: one clip, no overlap)")
    shard.add_argument("--interval", type=int, help="take every I-th source frame (default 1)")
    shard.add_argument("--split", help="split by source video, e.g. train=0.9,val=0.1 (default: all train)")
    shard.add_argument("--shard-size", type=int, default=256, help="clips per shard (default 256)")
    shard.add_argument(
        "--resize",
        choices=["crop", "pad", "stretch"],
        default="crop",
        help="keep aspect by centre crop (default), pad, or stretch",
    )
    shard.add_argument("--grayscale", action="store_true", help="store one channel (moving digits always do)")
    shard.add_argument(
        "--format",
        choices=["npy", "mp4"],
        default="npy",
        help="clip encoding: npy (lossless, default) or mp4 (H.264, ~10x smaller)",
    )
    shard.add_argument(
        "--captions",
        metavar="FILE",
        help="captions per video: CSV (video,caption), JSON {video: caption(s)} or MSR-VTT annotation JSON; "
        "sidecar clip.txt files beside the videos are always read",
    )
    shard.add_argument("--seed", type=int, default=0, help="split assignment, clip order and synthetic content")
    shard.add_argument(
        "--strict", action="store_true", help="fail (exit 1) on any unreadable, corrupt or too-short source"
    )
    synth = shard.add_argument_group("moving digits")
    synth.add_argument("--num-clips", type=int, default=1000, help="clips to generate (default 1000)")
    synth.add_argument(
        "--digits", type=int, nargs=2, default=(1, 3), metavar=("MIN", "MAX"), help="digits per clip (default 1 3)"
    )
    synth.add_argument("--stochastic", action="store_true", help="redraw velocities at random bounces")

    _add_predict(sub)
    _add_evaluate(sub)
    demo = sub.add_parser(
        "demo",
        help="moving digits -> shards -> train (Ray Train + DeepSpeed) -> predict -> metrics + GIF",
        description="The whole path on synthetic data, no input needed: makes moving-digits shards, trains the "
        "demo model on an embedded Ray within a time budget, predicts held-out clips and scores them against "
        "the baselines. Writes OUT/metrics.json, OUT/prediction.gif and OUT/prediction.png.",
    )
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo); re-running resumes")
    demo.add_argument("--minutes", type=float, default=15.0, help="total time budget (default 15)")
    demo.add_argument("--clips", type=int, default=4000, help="moving-digits clips to generate (default 4000)")
    demo.add_argument("--eval-clips", type=int, default=128, help="held-out clips to score (default 128)")
    demo.add_argument("overrides", nargs="*", help="dotted overrides of the demo config, e.g. train.max_steps=100")

    tune = sub.add_parser(
        "tune",
        help="Ray Tune sweep over config keys (ASHA early stopping) -> results table, best.yaml, best export",
        description="Run the trials of a sweep file (a base experiment config + a search space over dotted keys), "
        "each a real training run, and write results.csv, results.md, best.yaml, best_export/ and metric.png "
        "into the sweep folder. Re-running the same command resumes an interrupted sweep.",
    )
    tune.add_argument("sweep", help="sweep YAML, e.g. experiments/sweep_schedule_prediction.yaml")
    tune.add_argument("overrides", nargs="*", help="fixed config values for every trial, e.g. train.max_steps=100")
    tune.add_argument("--dir", help="sweep folder (default: dir: in the sweep file, else runs/sweeps/NAME)")
    tune.add_argument("--restart", action="store_true", help="discard what the sweep folder holds and start over")
    tune.add_argument("--dry-run", action="store_true", help="check the sweep and list its trials, start nothing")

    srv = sub.add_parser(
        "serve",
        help="HTTP API + browser page for an export (Ray Serve): predict, generate, interpolate, refine",
        description="Serve an export over HTTP on Ray Serve: POST /v1/predict|generate|interpolate|refine, "
        "GET /v1/model, /healthz, API docs at /docs and a browser page at /. Without RAY_ADDRESS it starts "
        "an embedded Ray; with it, it deploys to that cluster.",
    )
    srv.add_argument("--checkpoint", required=True, help="an export folder (runs/x/export)")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; 0.0.0.0 = all)")
    srv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    scale = srv.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, default=1, help="model replicas (default 1)")
    scale.add_argument("--autoscale", metavar="MIN:MAX", help="autoscale model replicas between MIN and MAX")
    srv.add_argument("--api-key-env", metavar="NAME", help="require the key held in this environment variable")
    srv.add_argument("--device", default="auto", help="auto (CUDA when a replica has a GPU), cpu, cuda")
    srv.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs per model replica (default 1)")
    srv.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per model replica (default 0)")
    srv.add_argument("--max-batch-size", type=int, default=8, help="requests per batched call (1 = off; default 8)")
    srv.add_argument("--batch-wait-ms", type=float, default=100.0, help="wait to fill a batch (default 100 ms)")
    srv.add_argument("--timeout", type=float, default=120.0, help="per-request time limit in s (default 120)")
    srv.add_argument("--max-upload-mb", type=float, default=32.0, help="largest request body (default 32 MB)")
    srv.add_argument("--max-frames", type=int, default=256, help="most frames in or out per request (default 256)")

    for verb, what in PLANNED.items():
        p = sub.add_parser(verb, help=f"{what} (not built yet)", add_help=True)
        p.add_argument("args", nargs=argparse.REMAINDER)

    export = sub.add_parser("export", help="make an export (EMA weights + config) from a training checkpoint")
    export.add_argument("--checkpoint", required=True, help="a Ray checkpoint folder of a vdp run (any ZeRO stage)")
    export.add_argument("--out", required=True, help="export folder to write")

    models = sub.add_parser("models", help="parameter counts and forward FLOPs of every model preset")
    models.add_argument("--family", choices=sorted(REFERENCE_INPUT), help="only this family")
    models.add_argument("--config", help="instead of the presets: the models of this experiment config")
    models.add_argument("overrides", nargs="*", help="dotted overrides for --config")

    text = sub.add_parser(
        "encode-text",
        help="caption embeddings of shards with a local text encoder (Ray Data), stored beside the shards",
        description="Embeds every distinct caption of each split once with a local transformers text model "
        "(CLIP text model or T5 encoder; nothing is downloaded) and stores them in <split>/text/. Training with "
        "text.encoder set reads them from there.",
    )
    text.add_argument("shards", nargs="+", help="a `vdp shard` output folder or split folders")
    text.add_argument("--encoder", required=True, help="local transformers model folder (config.json + weights)")
    text.add_argument("--max-tokens", type=int, default=77, help="caption tokens kept (default 77, as CLIP)")
    text.add_argument("--batch-size", type=int, default=64, help="captions per encoder call (default 64)")
    text.add_argument("--workers", type=int, default=1, help="encoder actors (default 1; a GPU each if any)")
    text.add_argument(
        "--make-encoder",
        action="store_true",
        help="first write a small randomly initialised CLIP text model with a word-level tokenizer over the "
        "shards' captions to --encoder (for CPU tests and demos; captions are told apart, with no prior meaning)",
    )

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
        if args.verb == "export":
            return _export(args)
        if args.verb == "shard":
            return _shard(args)
        if args.verb == "models":
            return _models(args)
        if args.verb == "keys":
            return _keys(args)
        if args.verb == "predict":
            return _predict(args)
        if args.verb == "evaluate":
            return _evaluate(args)
        if args.verb == "demo":
            return _demo(args)
        if args.verb == "tune":
            return _tune(args)
        if args.verb == "serve":
            return _serve(args)
        if args.verb == "encode-text":
            return _encode_text(args)
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
    from .train import TrainingError, fit

    try:
        exports = fit(cfg)
    except TrainingError as exc:
        print(f"vdp train: {exc}", file=sys.stderr)
        return 1
    for stage, path in exports.items():
        print(f"{stage}: export in {path}")
    return 0


def _tune(args) -> int:
    from .tune import describe_trials, load_sweep, sweep

    spec = load_sweep(args.sweep, args.overrides)
    if args.dry_run:
        print(describe_trials(spec, args.dir))
        return 0
    result = sweep(spec, folder=args.dir, restart=args.restart)
    if result.unfinished:
        print(f"vdp tune: interrupted with {result.unfinished} of {result.total} trial(s) to run; run the same "
              "command to resume", file=sys.stderr)  # fmt: skip
        return 130
    if result.best is None:
        print(f"vdp tune: no trial reported {result.metric}; see {result.folder / 'results.md'}", file=sys.stderr)
        return 1
    print(f"best: {result.best.trial} {result.metric} {result.best.value:.4f} -> {result.best_yaml}"
          + (f", export {result.best_export}" if result.best_export else ""))  # fmt: skip
    return 0


def _serve(args) -> int:
    from .serve.api import Limits

    autoscale = None
    if args.autoscale:
        lo, _, hi = args.autoscale.partition(":")
        if not (lo.isdigit() and hi.isdigit() and 0 < int(lo) <= int(hi)):
            print(f"vdp serve: --autoscale: expected MIN:MAX with 0 < MIN <= MAX, got {args.autoscale!r}",
                  file=sys.stderr)  # fmt: skip
            return 2
        autoscale = (int(lo), int(hi))
    for name in ("replicas", "max_batch_size", "max_frames", "port"):
        if getattr(args, name) < 1:
            print(f"vdp serve: --{name.replace('_', '-')}: must be at least 1", file=sys.stderr)
            return 2
    from .serve.app import ServeOptions, serve_forever

    options = ServeOptions(
        export=args.checkpoint, host=args.host, port=args.port, replicas=args.replicas, autoscale=autoscale,
        api_key_env=args.api_key_env, device=args.device, cpus_per_replica=args.cpus_per_replica,
        gpus_per_replica=args.gpus_per_replica, max_batch_size=args.max_batch_size,
        batch_wait_s=args.batch_wait_ms / 1000, timeout_s=args.timeout,
        limits=Limits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_frames=args.max_frames),
    )  # fmt: skip
    try:
        serve_forever(options, ready=lambda url: print(f"vdp serve: {url} (API docs {url}docs); Ctrl-C stops",
                                                       flush=True))  # fmt: skip
    except (ValueError, FileNotFoundError) as exc:
        print(f"vdp serve: {exc}", file=sys.stderr)
        return 2
    return 0


def _export(args) -> int:
    from .train import TrainingError, export_checkpoint

    try:
        path = export_checkpoint(args.checkpoint, args.out)
    except TrainingError as exc:
        print(f"vdp export: {exc}", file=sys.stderr)
        return 2
    print(f"export in {path}")
    return 0


def _shard(args) -> int:
    from .data.shards import ShardError, ShardOptions, parse_split, shard

    try:
        opts = ShardOptions(
            out=args.out, sources=args.source, frames=args.frames, size=tuple(args.size) if args.size else None,
            stride=args.stride, interval=args.interval, split=parse_split(args.split) if args.split else None,
            dataset=args.dataset, shard_size=args.shard_size, resize=args.resize, grayscale=args.grayscale,
            seed=args.seed, strict=args.strict, format=args.format, synthetic=args.synthetic,
            num_clips=args.num_clips, digits=tuple(args.digits), stochastic=args.stochastic, captions=args.captions,
        )  # fmt: skip
        summary = shard(opts, log=lambda line: print(line, file=sys.stderr))
    except ShardError as exc:
        print(f"vdp shard: error: {exc}", file=sys.stderr)
        return 1 if args.strict and "--strict" in str(exc) else 2
    splits = ", ".join(f"{name} {s['count']} clips in {s['shards']} shard(s)" for name, s in summary["splits"].items())
    print(f"wrote {splits} to {args.out} in {summary['elapsed_s']:.1f}s")
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} source(s); reasons in {args.out}/manifest.json:")
        for item in summary["skipped"]:
            print(f"  {item['path']}: {item['reason']}")
    return 0


def _encode_text(args) -> int:
    from .data.shards import ShardError
    from .text import TextError, encode_text

    for flag, value in (("--max-tokens", args.max_tokens), ("--batch-size", args.batch_size),
                        ("--workers", args.workers)):  # fmt: skip
        if value < 1:
            print(f"vdp encode-text: {flag} must be >= 1, got {value}", file=sys.stderr)
            return 2
    try:
        done = encode_text(args.shards, args.encoder, max_tokens=args.max_tokens, batch_size=args.batch_size,
                           workers=args.workers, make_encoder=args.make_encoder,
                           log=lambda line: print(line, file=sys.stderr))  # fmt: skip
    except (TextError, ShardError) as exc:
        print(f"vdp encode-text: error: {exc}", file=sys.stderr)
        return 2
    for folder, s in done.items():
        print(f"{folder}: {s['captions']} caption(s) (with the null text), {s['dim']}-wide tokens, "
              f"{s['seconds']:.1f}s -> {folder}/text/")  # fmt: skip
    return 0


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


def _add_sampling(p) -> None:
    g = p.add_argument_group("sampling (defaults: the export's diffusion.* settings)")
    g.add_argument("--sampler", choices=["ddpm", "ddim", "dpm++"], help="ddpm, ddim, or dpm++ (the fast solver)")
    g.add_argument("--steps", type=int, help="sampling steps (e.g. 1000 for ddpm, 50 ddim, 20 dpm++)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance on the context (1 = off)")
    g.add_argument("--seed", type=int, default=0, help="noise seed (default 0; same seed, same frames)")
    g.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1 ...")


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="future frames (or new clips, in-betweens, refinements) with a trained export",
        description="Predict the frames that follow a video's first --context frames (rolling out past the "
        "model's window when --future is longer), or --task generate / interpolate / refine. Writes OUT "
        "(.gif or .mp4: the given frames then the made ones) and OUT's stem + .png (a strip with the truth "
        "below when the input has it).",
    )
    p.add_argument("--checkpoint", required=True, help="an export folder (run.dir/export)")
    p.add_argument("--input", help="a video file (.mp4 .avi .mov .mkv .webm .gif) or a folder of frames")
    p.add_argument("--task", choices=["predict", "generate", "interpolate", "refine"], default="predict")
    p.add_argument("--context", type=int, help="given frames (default: the export's data.context_frames)")
    p.add_argument("--future", type=int, help="frames to predict (default: the rest of the model's window)")
    p.add_argument("--start", type=int, default=0, help="first input frame to use (default 0)")
    p.add_argument("--between", type=int, help="interpolate: frames to make between two input frames")
    p.add_argument("--frames", type=int, help="generate / refine: clip length (default: the model's window)")
    p.add_argument("--batch", type=int, default=1, help="generate: clips to make (default 1)")
    p.add_argument("--strength", type=float, default=0.5, help="refine: noise level in (0, 1] (default 0.5)")
    p.add_argument("--resize", action="store_true", help="centre-crop and resize input to the model's frame size")
    p.add_argument("--fps", type=float, help="output frame rate (default: the input's, else 4)")
    p.add_argument("--out", required=True, help="output video: OUT.gif or OUT.mp4")
    p.add_argument("--prompt", help="text-conditioned models: what the clip shows (e.g. 'a 3 moving left')")
    p.add_argument("--text-guidance", type=float, help="guidance scale on the prompt (default: the export's "
                   "text.guidance; 1 = off)")  # fmt: skip
    _add_sampling(p)


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="PSNR/SSIM of an export's predictions on shards, against copy_last / context_mean / blank",
        description="Score predicted frames only, per future frame and averaged, against three baselines on the "
        "same clips; clips stream through Ray Data into Predictor actors. Writes OUT/metrics.json (stamped with "
        "the protocol), OUT/psnr_per_frame.png, OUT/prediction.gif and OUT/prediction.png.",
    )
    p.add_argument("--checkpoint", required=True, help="an export folder (run.dir/export)")
    p.add_argument("--shards", required=True, help="held-out shards: a folder, a glob, a tar or a URI")
    p.add_argument("--context", type=int, help="given frames (default: the export's data.context_frames)")
    p.add_argument("--future", type=int, help="predicted frames (default: the rest of the model's window)")
    p.add_argument("--clips", type=int, default=64, help="clips to score (default 64)")
    p.add_argument(
        "--samples",
        "--best-of",
        dest="samples",
        type=int,
        default=1,
        help="draws per clip: metrics average them; with more than one, best-of-K is reported too",
    )
    p.add_argument("--workers", type=int, default=1, help="Predictor actors (default 1)")
    p.add_argument("--cpus-per-worker", type=float, default=2.0, help="CPUs per actor (default 2)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per batch (default 16)")
    p.add_argument("--out", default="eval", help="output folder (default eval)")
    _add_sampling(p)


def _predict(args) -> int:
    from .media import MediaError
    from .predict import PredictError
    from .predict_cli import run

    try:
        lines = run(args)
    except (PredictError, MediaError) as exc:
        print(f"vdp predict: error: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0


def _evaluate(args) -> int:
    from .evaluate import EvalOptions, EvaluationError, evaluate, table
    from .predict import PredictError

    opts = EvalOptions(
        checkpoint=args.checkpoint, shards=args.shards, context=args.context, future=args.future, clips=args.clips,
        samples=args.samples, sampler=args.sampler, steps=args.steps, guidance=args.guidance, seed=args.seed,
        workers=args.workers, cpus_per_worker=args.cpus_per_worker, batch_size=args.batch_size, out=args.out,
        device=args.device,
    )  # fmt: skip
    try:
        metrics = evaluate(opts)
    except (EvaluationError, PredictError) as exc:
        print(f"vdp evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(table(metrics))
    print(f"metrics in {args.out}/metrics.json; curve psnr_per_frame.png; previews prediction.gif / .png")
    return 0


def _demo(args) -> int:
    from .demo import DemoOptions, run_demo
    from .train import TrainingError

    try:
        run_demo(DemoOptions(out=args.out, minutes=args.minutes, clips=args.clips, eval_clips=args.eval_clips,
                             overrides=args.overrides))  # fmt: skip
    except TrainingError as exc:
        print(f"vdp demo: {exc}", file=sys.stderr)
        return 1
    return 0


def _keys(args) -> int:
    for key, tp, default, help_text in describe_keys():
        if key.startswith(args.prefix):
            print(f"{key:<34} {default:<14} {tp}\n{'':<34} {help_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
