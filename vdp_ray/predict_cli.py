"""`vdp predict`: read frames, run one Predictor task, write the video and the strip."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .media import MediaError, read_frames, side_by_side, strip, write_png, write_video
from .predict import PredictError, Predictor, fit_frames
from .progress import Progress

OUT_EXTS = (".gif", ".mp4")


def run(args) -> list[str]:
    """Returns the lines to print; raises PredictError / MediaError with a message naming the problem."""
    out = Path(args.out)
    if out.suffix.lower() not in OUT_EXTS:
        raise PredictError(f"--out {out}: expected a .gif or .mp4 file name")
    for name in ("steps", "context", "future", "between", "frames", "batch"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise PredictError(f"--{name}: must be a positive integer, got {value}")
    if args.start < 0:
        raise PredictError(f"--start: must be >= 0, got {args.start}")
    p = Predictor.from_export(args.checkpoint, device=args.device)
    kw = {"sampler": args.sampler, "steps": args.steps, "guidance": args.guidance, "seed": args.seed}
    prompt, text_guidance = getattr(args, "prompt", None), getattr(args, "text_guidance", None)
    if prompt is not None or text_guidance is not None:
        if p.text_encoder is None:
            raise PredictError(f"--prompt: {args.checkpoint} was trained without text (no text.encoder)")
        kw.update(prompt=prompt, text_guidance=text_guidance)
    if args.task != "generate" and not args.input:
        raise PredictError(f"--input: needed for --task {args.task} (a video file or a folder of frames)")

    def load(count: int | None) -> tuple[np.ndarray, float | None]:
        frames, fps = read_frames(args.input, args.start, count)
        if (frames.shape[1:3] != p.size or frames.shape[-1] != p.channels) and args.resize:
            frames = fit_frames(frames, p.size, p.channels)
        elif frames.shape[-1] != p.channels and frames.shape[-1] == 3 and p.channels == 1 and _is_gray(frames):
            frames = frames[..., :1]  # grey stored as RGB (e.g. our own GIF/MP4 outputs): lossless
        return frames, fps

    steps = args.steps or p.cfg.diffusion.sample_steps

    def progress_for(windows: int | None) -> None:
        """Sampling steps as periodic lines (with ETA) on stderr: a 1000-step DDPM roll-out takes a while."""
        bar = Progress(windows * steps if windows else None, "sampling steps")
        kw["progress"] = lambda i, n: bar.update(1)

    t0 = time.perf_counter()
    truth = None
    if args.task == "predict":
        k = args.context or p.cfg.data.context_frames
        n = args.future or max(1, p.window - min(k, p.max_context))
        c = max(p.tc, min(k, p.max_context) // p.tc * p.tc)
        progress_for(-(-n // max(1, p.window - c)))
        frames, fps = load(k + n)
        if len(frames) < k:
            raise PredictError(
                f"--input {args.input}: {len(frames)} frame(s) from --start {args.start}; --context {k} needs {k}"
            )
        context = frames[:k]
        truth = frames[k:] if len(frames) > k else None
        made = p.predict(context, n, **kw)
        given, shown = context, np.concatenate([context, made])
    elif args.task == "generate":
        fps = None
        progress_for(1 + max(0, -(-((args.frames or p.window) - p.window) // max(1, p.window - p.max_context))))
        made = p.generate(args.frames or p.window, batch=args.batch, **kw)
        given = None
        shown = np.concatenate(list(made), axis=2) if made.ndim == 5 else made  # clips side by side
    elif args.task == "interpolate":
        between = args.between or (p.window - 2 * p.tc)
        span = between + 2 * p.tc
        frames, fps = load(span)
        if len(frames) < span:
            raise PredictError(
                f"--input {args.input}: {len(frames)} frame(s) from --start {args.start}; "
                f"--between {between} needs {span} (first, {between} between, last)"
            )
        progress_for(1)
        first, last = frames[: p.tc], frames[-p.tc :]
        truth = frames[p.tc : -p.tc]
        made = p.interpolate(first if p.tc > 1 else first[0], last if p.tc > 1 else last[0], between, **kw)
        given = first
        shown = np.concatenate([first, made, last])
    else:  # refine
        count = args.frames or p.window
        frames, fps = load(count)
        progress_for(None)
        made = p.refine(frames, args.strength, **kw)
        given, truth, shown = None, frames, made
    seconds = time.perf_counter() - t0

    write_video(out, shown, fps=args.fps or fps or 4.0)
    png = out.with_suffix(".png")
    if args.task == "predict":
        write_png(png, side_by_side(given, made, truth))
    elif args.task == "generate":
        write_png(png, strip([(f"clip {i}", c) for i, c in enumerate(made if made.ndim == 5 else [made])]))
    else:
        rows = [
            ("made", shown),
            ("input", np.concatenate([given, truth, frames[-p.tc :]]) if given is not None else truth),
        ]
        write_png(png, strip(rows))
    d = p.cfg.diffusion
    record = {
        "task": args.task,
        "input": args.input,
        "start": args.start,
        "made_frames": int(made.shape[-4]),
        "model": p.model_id,
        "seconds": round(seconds, 2),
        "sampler": args.sampler or d.sampler,
        "steps": steps,
        "guidance": d.guidance if args.guidance is None else args.guidance,
        "seed": args.seed,
    }
    if p.text_encoder is not None:
        record["prompt"] = prompt or ""
        record["text_guidance"] = p.cfg.text.guidance if text_guidance is None else text_guidance
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    return [f"{args.task}: {record['made_frames']} frame(s) in {seconds:.1f}s -> {out} (strip {png})"]


def _is_gray(frames: np.ndarray) -> bool:
    return bool((frames[..., 0] == frames[..., 1]).all() and (frames[..., 1] == frames[..., 2]).all())


__all__ = ["MediaError", "run"]
