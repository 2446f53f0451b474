"""The verbs that use a trained export: `vdp predict` (read frames, run one Predictor task, write the video and
the strip), `vdp evaluate` and `vdp demo`. Parsers come from ``PredictOptions``, ``EvalOptions``, ``DemoOptions``."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..options import REQUIRED, OptionError, arg, declare, from_args
from ..request import SAMPLING, Request
from ..vocab import INFERENCE_PRECISIONS, VIDEO_OUTPUTS


@dataclass
class PredictOptions(Request):
    """`vdp predict`: a ``Request`` (its task, the task's fields and the sampling ones, as the HTTP API's) of an
    export, from an input file, written to OUT."""

    checkpoint: str = arg(REQUIRED, "an export folder (run.dir/export)")
    out: str = arg(REQUIRED, "output video: OUT.gif or OUT.mp4 (+ OUT.png, OUT.json)")
    input: str | None = arg(None, "a video file (.mp4 .avi .mov .mkv .webm .gif) or a folder of frames")
    start: int = arg(0, "first input frame to use")
    device: str = arg("auto", "auto (CUDA if present), cpu, cuda, cuda:1 ...", group=SAMPLING)
    precision: str = arg(
        "auto",
        "auto (the export's training precision on CUDA, fp32 on CPUs), fp16, bf16, fp32",
        choices=INFERENCE_PRECISIONS,
        group=SAMPLING,
    )

    def check(self) -> None:
        if Path(self.out).suffix.lower() not in VIDEO_OUTPUTS:
            raise OptionError("out", f"{self.out}: expected a .gif or .mp4 file name")
        for name in ("steps", "context", "future", "between", "frames", "batch"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise OptionError(name, f"must be a positive integer, got {value}")
        if self.start < 0:
            raise OptionError("start", f"must be >= 0, got {self.start}")
        if self.task != "generate" and not self.input:
            raise OptionError("input", f"needed for --task {self.task} (a video file or a folder of frames)")


def add_predict(p) -> None:
    declare(
        p,
        PredictOptions,
        run_predict,
        "Predict the frames that follow a video's first --context frames (rolling out past the model's window when "
        "--future is longer), or --task generate / interpolate / refine. Writes OUT (.gif or .mp4: the given frames "
        "then the made ones) and OUT's stem + .png (a strip with the truth below when the input has it).",
    )


def run_predict(args) -> int:
    from ..media import MediaError
    from ..predict import PredictError

    try:
        lines = predict(from_args(PredictOptions, args))
    except (PredictError, MediaError) as exc:
        print(f"vdp predict: error: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0


def predict(o: PredictOptions) -> list[str]:
    """`vdp predict`: returns the lines to print; raises PredictError / MediaError naming the problem."""
    from ..media import read_frames
    from ..pixels import fit_frames, is_grey
    from ..predict import PredictError, Predictor
    from ..progress import Progress

    o.check()
    p = Predictor.from_export(o.checkpoint, device=o.device, precision=o.precision)
    if (o.prompt is not None or o.text_guidance is not None) and p.text is None:
        raise PredictError(f"--prompt: {o.checkpoint} was trained without text (no text.encoder)")
    kw = {**o.sampling(), "seed": o.seed, "prompt": o.prompt}
    settings = p.settings(**o.sampling())

    def load(count: int | None) -> tuple[np.ndarray, float | None]:
        frames, fps = read_frames(o.input, o.start, count)
        if (frames.shape[1:3] != p.size or frames.shape[-1] != p.channels) and o.resize:
            frames = fit_frames(frames, p.size, p.channels)
        elif frames.shape[-1] != p.channels and p.channels == 1 and is_grey(frames):
            frames = frames[..., :1]  # grey stored as RGB (e.g. our own GIF/MP4 outputs): lossless
        return frames, fps

    def progress_for(windows: int | None) -> None:
        """Sampling steps as periodic lines (with ETA) on stderr: a 1000-step DDPM roll-out takes a while."""
        bar = Progress(windows * settings.steps if windows else None, "sampling steps")
        kw["progress"] = lambda i, n: bar.update(1)

    t0 = time.perf_counter()
    made, given, truth, shown, fps, frames = _run_task(o, p, kw, load, progress_for)
    seconds = time.perf_counter() - t0
    _write(o, p, made, given, truth, shown, fps, frames)
    record = {
        "task": o.task,
        "input": o.input,
        "start": o.start,
        "made_frames": int(made.shape[-4]),
        "model": p.model_id,
        "seconds": round(seconds, 2),
        "sampler": settings.sampler,
        "steps": settings.steps,
        "guidance": settings.guidance,
        "seed": o.seed,
    }
    if p.text is not None:
        record.update(prompt=o.prompt or "", text_guidance=settings.text_guidance)
    out = Path(o.out)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    return [f"{o.task}: {record['made_frames']} frame(s) in {seconds:.1f}s -> {out} (strip {out.with_suffix('.png')})"]


def _run_task(o: PredictOptions, p, kw: dict, load, progress_for) -> tuple:
    """(made, given, truth, shown, fps, input frames) of one task."""
    from ..predict import PredictError

    if o.task == "predict":
        k = o.context or p.cfg.data.context_frames
        n = o.future or max(1, p.window - min(k, p.max_context))
        progress_for(p.windows("predict", future=n, context=k))
        frames, fps = load(k + n)
        if len(frames) < k:
            raise PredictError(
                f"--input {o.input}: {len(frames)} frame(s) from --start {o.start}; --context {k} needs {k}"
            )
        context, truth = frames[:k], (frames[k:] if len(frames) > k else None)
        made = p.predict(context, n, **kw)
        return made, context, truth, np.concatenate([context, made]), fps, frames
    if o.task == "generate":
        length = o.frames or p.window
        progress_for(p.windows("generate", frames=length))
        made = p.generate(length, batch=o.batch, **kw)
        shown = np.concatenate(list(made), axis=2) if made.ndim == 5 else made  # clips side by side
        return made, None, None, shown, None, None
    if o.task == "interpolate":
        end = p.temporal_compression  # first and last are one latent frame each
        between = o.between or (p.window - 2 * end)
        span = between + 2 * end
        frames, fps = load(span)
        if len(frames) < span:
            raise PredictError(
                f"--input {o.input}: {len(frames)} frame(s) from --start {o.start}; --between "
                f"{between} needs {span} (first, {between} between, last)"
            )
        progress_for(1)
        first, last = frames[:end], frames[-end:]
        made = p.interpolate(first if end > 1 else first[0], last if end > 1 else last[0], between, **kw)
        return made, first, frames[end:-end], np.concatenate([first, made, last]), fps, frames
    frames, fps = load(o.frames or p.window)  # refine
    progress_for(None)
    made = p.refine(frames, o.strength, **kw)
    return made, None, frames, made, fps, frames


def _write(o: PredictOptions, p, made, given, truth, shown, fps, frames) -> None:
    """OUT.gif|mp4 (what was given, then what was made) and OUT.png (the strip, with the truth below)."""
    from ..media import side_by_side, strip, write_png, write_video

    out = Path(o.out)
    write_video(out, shown, fps=o.fps or fps or 4.0)
    png = out.with_suffix(".png")
    if o.task == "predict":
        write_png(png, side_by_side(given, made, truth))
    elif o.task == "generate":
        write_png(png, strip([(f"clip {i}", c) for i, c in enumerate(made if made.ndim == 5 else [made])]))
    else:
        below = np.concatenate([given, truth, frames[-p.temporal_compression :]]) if given is not None else truth
        write_png(png, strip([("made", shown), ("input", below)]))


def add_evaluate(p) -> None:
    from ..evaluate import EvalOptions

    declare(
        p,
        EvalOptions,
        run_evaluate,
        "Score predicted frames only, per future frame and averaged, against three baselines on the same clips; "
        "clips stream through Ray Data into Predictor actors. Writes OUT/metrics.json (stamped with the protocol), "
        "OUT/psnr_per_frame.png, OUT/prediction.gif and OUT/prediction.png.",
    )


def run_evaluate(args) -> int:
    from ..evaluate import EvalOptions, EvaluationError, evaluate, table
    from ..predict import PredictError

    opts = from_args(EvalOptions, args)
    try:
        metrics = evaluate(opts)
    except (EvaluationError, PredictError) as exc:
        print(f"vdp evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(table(metrics))
    print(f"metrics in {opts.out}/metrics.json; curve psnr_per_frame.png; previews prediction.gif / .png")
    return 0


def add_demo(p) -> None:
    from ..demo import DemoOptions

    declare(
        p,
        DemoOptions,
        run_demo,
        "The whole path on synthetic data, no input needed: makes moving-digits shards, trains the demo model on an "
        "embedded Ray within a time budget, predicts held-out clips and scores them against the baselines. Writes "
        "OUT/metrics.json, OUT/prediction.gif and OUT/prediction.png.",
    )


def run_demo(args) -> int:
    from ..demo import DemoOptions
    from ..demo import run_demo as demo
    from ..train import TrainingError

    try:
        demo(from_args(DemoOptions, args))
    except TrainingError as exc:
        print(f"vdp demo: {exc}", file=sys.stderr)
        return 1
    return 0


PARSERS = {"predict": add_predict, "evaluate": add_evaluate, "demo": add_demo}
