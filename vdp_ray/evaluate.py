"""`vdp evaluate`: future-frame PSNR / SSIM of an export on held-out shards, against the baselines.

Protocol: each clip's first ``context`` frames are given, the next ``future`` frames are predicted
(``samples`` draws per clip) and scored frame by frame on predicted frames only. The same clips are scored
for the baselines copy_last, context_mean and blank (metrics.baselines), and a model is judged against the
best of them. Clips stream through Ray Data into a pool of Predictor actors, so a large evaluation spreads
over a cluster the way training does.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .metrics import BASELINES, baselines, psnr, ssim
from .options import REQUIRED, arg
from .pixels import clips_to_model, clips_to_uint8, to_model_range
from .request import SAMPLING, PredictFields, Sampling
from .vocab import INFERENCE_PRECISIONS

KEEP_CLIPS = 4  # predictions kept for the GIF and the strip


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked; the message names the option."""


@dataclass
class EvalOptions(Sampling, PredictFields):
    """`vdp evaluate`: the protocol (a prediction's fields and the sampling, as `vdp predict`'s), the held-out
    shards and how the work spreads."""

    checkpoint: str = arg(REQUIRED, "an export folder (run.dir/export)")
    shards: str = arg(REQUIRED, "held-out shards: a folder, a glob, a tar or a URI")
    clips: int = arg(64, "clips to score")
    samples: int = arg(
        1, "draws per clip: metrics average them; with more than one, best-of-K is reported too", aliases=("--best-of",)
    )
    workers: int = arg(1, "Predictor actors")
    cpus_per_worker: float = arg(2.0, "CPUs per actor (its threads; a GPU each when the cluster has them)")
    batch_size: int = arg(16, "clips per batch")
    out: str | None = arg(None, "output folder", cli_default="eval")
    device: str = arg("auto", "auto (a GPU per actor when the Ray cluster has GPUs), cpu, cuda", group=SAMPLING)
    precision: str = arg(
        "auto",
        "auto (the export's training precision on GPUs, fp32 on CPUs), fp16, bf16, fp32",
        choices=INFERENCE_PRECISIONS,
        group=SAMPLING,
    )

    def __post_init__(self):
        if self.seed is None:  # an evaluation is always reproducible
            self.seed = 0


def score(pred: torch.Tensor, truth: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per (clip, frame) PSNR and SSIM of float clips (N, C, F, H, W) in [-1, 1]."""
    return psnr(pred, truth).numpy(), ssim(pred, truth).numpy()


class ClipScorer:
    """A Ray Data actor: a Predictor on this worker's device, scoring batches of clips."""

    def __init__(
        self,
        checkpoint: str,
        context: int,
        future: int,
        samples: int,
        sample_kw: dict,
        seed: int,
        device: str = "cpu",
        threads: int = 1,
        precision: str = "auto",
    ):
        from .predict import Predictor

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.p = Predictor.from_export(checkpoint, device=device, precision=precision)
        self.context, self.future, self.samples = context, future, samples
        self.sample_kw, self.seed = sample_kw, seed

    def __call__(self, batch: dict) -> dict:
        clips = to_model_range(np.array(batch["clip"]))  # uint8 (B, C, T, H, W) -> float in [-1, 1]
        k, f = self.context, self.future
        u8 = clips_to_uint8(clips)  # (B, T, H, W, C)
        ctx, truth = clips[:, :, :k], clips[:, :, k : k + f]
        draws_p, draws_s, first = [], [], None
        text = {}
        if self.p.text is not None:  # a text model is prompted with each clip's (first) caption
            captions = batch.get("caption", [""] * len(clips))
            text = {"prompt": [str(c) for c in captions]}
        t0 = time.perf_counter()
        for s in range(self.samples):
            # one batched call per draw, seeded by (seed, first clip of the batch, draw): batches are fixed
            # (ordered execution, fixed batch size), so the same command gives the same numbers
            seed = _clip_seed(self.seed, str(batch["key"][0]), s)
            pred_u8 = self.p.predict(u8[:, :k], f, context=k, seed=seed, **self.sample_kw, **text)
            if first is None:
                first = pred_u8
            pred = clips_to_model(pred_u8)
            p_, s_ = score(pred, truth)
            draws_p.append(p_)
            draws_s.append(s_)
        seconds = (time.perf_counter() - t0) / (len(clips) * self.samples)
        draws_p, draws_s = np.stack(draws_p), np.stack(draws_s)  # (S, B, F)
        best = draws_p.mean(-1).argmax(0)  # per clip, the draw with the best mean PSNR
        idx = np.arange(len(clips))
        out = {
            "key": np.asarray(batch["key"]),
            "psnr": draws_p.mean(0),
            "ssim": draws_s.mean(0),
            "best_psnr": draws_p[best, idx],
            "best_ssim": draws_s[best, idx],
            "seconds": np.full(len(clips), seconds),
            "context_u8": u8[:, :k],
            "truth_u8": u8[:, k : k + f],
            "pred_u8": first,
        }
        for name, guess in baselines(ctx, f).items():
            p_, s_ = score(guess, truth)
            out[f"{name}_psnr"], out[f"{name}_ssim"] = p_, s_
        if "meta" in batch:
            out.update(identity(batch["meta"], u8[:, k - 1], first[:, -1], u8[:, k + f - 1], k + f - 1, self.p.size))
        return out


def identity(metas, copied: np.ndarray, predicted: np.ndarray, truth: np.ndarray, frame: int, size) -> dict:
    """Moving digits: whether each digit of the last predicted frame reads as the right digit where it truly is
    (``digit_reader``), per clip. Counted over the digits the reader gets right in the true frame (an occluded digit
    cannot be judged); NaN for clips without digit positions (other data). Also for copy_last (the last given frame
    read at the future positions) and the reader's accuracy on the true frames."""
    from .data.digit_reader import digit_reader

    cols = {"identity": [], "copy_last_identity": [], "reader_accuracy": []}
    for i, raw in enumerate(metas):
        meta = json.loads(raw) if raw else {}
        track, labels = meta.get("track_yx"), meta.get("digits")
        if not track or frame >= len(track) or not labels or not meta.get("size"):
            for v in cols.values():
                v.append(np.nan)
            continue
        scale = size[0] / meta["size"][0]
        reader = digit_reader(size[0])
        where = [(y * scale, x * scale) for y, x in track[frame]]
        labels = np.asarray(labels)
        readable = reader.read_at(truth[i], where) == labels
        cols["reader_accuracy"].append(readable.mean())
        for name, frames in (("identity", predicted), ("copy_last_identity", copied)):
            hits = (reader.read_at(frames[i], where) == labels) & readable
            cols[name].append(hits.sum() / readable.sum() if readable.any() else np.nan)
    return {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}


def _clip_seed(seed: int, key: str, sample: int) -> int:
    import zlib

    return (seed * 1_000_003 + zlib.crc32(key.encode()) * 31 + sample) % (2**63)


@dataclass(frozen=True)
class Plan:
    """An evaluation checked before any Ray work: the export, the protocol and the shards."""

    predictor: object
    context: int
    future: int
    settings: object  # the resolved SamplingConfig
    paths: list[str]
    data_cfg: object


def plan(opts: EvalOptions) -> Plan:
    """Every option checked (an EvaluationError names the flag) before Ray starts."""
    from .data.pipeline import check_shards, list_shards
    from .latent import LatentFrameError
    from .predict import PredictError, Predictor

    p = Predictor.from_export(opts.checkpoint, device="cpu")
    k = p.cfg.data.context_frames if opts.context is None else opts.context
    f = (p.window - k) if opts.future is None else opts.future
    for name, value in (
        ("--context", k),
        ("--future", f),
        ("--clips", opts.clips),
        ("--samples", opts.samples),
        ("--workers", opts.workers),
        ("--batch-size", opts.batch_size),
    ):
        if value <= 0:
            raise EvaluationError(f"{name}: must be a positive integer, got {value}")
    if p.text is None and opts.text_guidance not in (None, 1.0):
        raise EvaluationError(f"--text-guidance: {opts.checkpoint} was trained without text (no text.encoder)")
    try:
        settings = p.settings(**opts.sampling())
        p.latent.latent_frames(k, "--context")
    except PredictError as e:
        raise EvaluationError(f"--{e}") from None
    except LatentFrameError as e:
        raise EvaluationError(str(e)) from None
    data_cfg = replace(p.cfg.data, frames=k + f, hflip=False, crop_scale=1.0)
    try:
        paths = list_shards(opts.shards)
        check_shards(paths, data_cfg)
    except Exception as exc:
        raise EvaluationError(f"--shards {opts.shards}: {exc}") from None
    return Plan(p, k, f, settings, paths, data_cfg)


def evaluate(opts: EvalOptions) -> dict:
    """Run the protocol; returns the metrics dict (and writes metrics.json, curve and previews to opts.out)."""
    from .data.pipeline import clip_dataset
    from .progress import Progress
    from .raytools import PlacementError, cluster_has_gpus, gpu_placement, init_ray

    pl = plan(opts)
    init_ray(num_cpus=max(2, math.ceil(opts.workers * opts.cpus_per_worker) + 1))
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    # Leave a CPU for reading and decoding (actors holding every CPU starve Ray Data's tasks); the actors
    # still run cpus_per_worker threads, the reservation is only Ray's bookkeeping.
    total = ray.cluster_resources().get("CPU", 1.0)
    reserve = min(opts.cpus_per_worker, max(0.25, (total - 1) / opts.workers))
    DataContext.get_current().execution_options.preserve_order = True  # fixed batches: the same numbers each run
    try:  # decided from the cluster (the driver may be a head node without a GPU), and reserved where used
        device, gpus = gpu_placement(opts.device, None, cluster_has_gpus)
    except PlacementError as exc:
        raise EvaluationError(str(exc)) from None
    scorer = {
        "checkpoint": str(opts.checkpoint),
        "context": pl.context,
        "future": pl.future,
        "samples": opts.samples,
        "sample_kw": opts.sampling(),
        "seed": opts.seed,
        "device": device,
        "threads": int(max(1, opts.cpus_per_worker)),
        "precision": opts.precision,
    }
    ds = clip_dataset(pl.paths, pl.data_cfg, train=False, with_meta=True).limit(opts.clips)
    ds = ds.map_batches(
        ClipScorer,
        fn_constructor_kwargs=scorer,
        batch_size=opts.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=opts.workers),
        num_cpus=reserve,
        num_gpus=gpus,
    )
    rows: dict[str, list] = {}
    kept: list[tuple] = []
    start, bar = time.perf_counter(), Progress(opts.clips, "clips evaluated")
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        n = len(batch["key"])
        for key, v in batch.items():
            if not key.endswith("_u8") and key != "meta":
                rows.setdefault(key, []).append(np.asarray(v))
        kept += [
            (batch["context_u8"][i], batch["pred_u8"][i], batch["truth_u8"][i])
            for i in range(min(n, KEEP_CLIPS - len(kept)))
        ]
        bar.update(n)
    if not rows:
        raise EvaluationError(f"--shards {opts.shards}: no clips with {pl.context + pl.future} frames to evaluate")
    cols = {key: np.concatenate(v) for key, v in rows.items()}
    metrics = summarize(cols, pl, opts, time.perf_counter() - start)
    metrics["protocol"].update({"device": device, "gpus_per_actor": gpus, "precision": opts.precision})
    if opts.out:
        write_outputs(Path(opts.out), metrics, kept)
    return metrics


def summarize(cols: dict, pl: Plan, opts: EvalOptions, wall: float) -> dict:
    def stat(prefix: str) -> dict:
        ps, ss = cols[f"{prefix}psnr"], cols[f"{prefix}ssim"]
        return {
            "psnr": round(float(ps.mean()), 3),
            "ssim": round(float(ss.mean()), 4),
            "per_frame": {"psnr": np.round(ps.mean(0), 3).tolist(), "ssim": np.round(ss.mean(0), 4).tolist()},
        }

    model = stat("")
    base = {name: stat(f"{name}_") for name in BASELINES}
    best_p = max(base, key=lambda n: base[n]["psnr"])
    best_s = max(base, key=lambda n: base[n]["ssim"])
    p, k, f, s = pl.predictor, pl.context, pl.future, pl.settings
    metrics = {
        "psnr": model["psnr"],
        "ssim": model["ssim"],
        "per_frame": model["per_frame"],
        "baseline": base,
        "best_baseline": {"psnr": best_p, "ssim": best_s},
        "psnr_gain": round(model["psnr"] - base[best_p]["psnr"], 3),
        "ssim_gain": round(model["ssim"] - base[best_s]["ssim"], 4),
        "protocol": {
            "context": k,
            "future": f,
            "clips": len(cols["psnr"]),
            "samples_per_clip": opts.samples,
            "sampler": s.sampler,
            "steps": s.steps,
            "guidance": s.guidance,
            "seed": opts.seed,
            "resolution": list(p.size),
            "channels": p.channels,
            "shards": str(opts.shards),
            "prompts": "each clip's first caption (none: the null text)" if p.text is not None else None,
            "text_guidance": s.text_guidance if p.text is not None else None,
            "metric_notes": "mean over clips of per-frame PSNR (dB, peak 255) and SSIM (11x11 Gaussian, sigma 1.5) "
            "on predicted frames only; samples averaged per clip",
        },
        "model": p.info(),
        "seconds_per_clip": round(float(cols["seconds"].mean()), 4),
        "wall_seconds": round(wall, 1),
    }
    if "identity" in cols and np.isfinite(cols["identity"]).any():
        mean = lambda key: round(float(np.nanmean(cols[key])), 4)
        metrics["identity"] = mean("identity")
        metrics["baseline"]["copy_last"]["identity"] = mean("copy_last_identity")
        metrics["identity_reader_accuracy"] = mean("reader_accuracy")
        metrics["protocol"]["identity_notes"] = (
            "moving digits: fraction of digits in the last predicted frame that the digit reader (logistic regression "
            "on scikit-learn's digits) reads correctly at their true positions, among those it reads correctly in "
            "the true frame (identity_reader_accuracy); the first draw per clip"
        )
    if opts.samples > 1:
        metrics["best_of"] = {"k": opts.samples, **stat("best_")}
        metrics["best_of"].pop("per_frame")
    return metrics


def write_outputs(out: Path, metrics: dict, kept: list[tuple]) -> None:
    from .media import animation, plot_curves, side_by_side, write_png, write_video

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    curves = {"model": metrics["per_frame"]["psnr"]}
    curves.update({n: b["per_frame"]["psnr"] for n, b in metrics["baseline"].items()})
    pr = metrics["protocol"]
    plot_curves(
        out / "psnr_per_frame.png",
        curves,
        "future frame",
        "PSNR (dB)",
        f"{pr['clips']} clips, {pr['context']} -> {pr['future']} frames, {pr['sampler']}-{pr['steps']}",
    )
    if kept:
        strips = [side_by_side(*clip) for clip in kept]
        width = max(s.shape[1] for s in strips)
        pad = [np.pad(s, ((0, 6), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips]
        write_png(out / "prediction.png", np.concatenate(pad)[:-6])
        anims = [animation(*clip) for clip in kept]
        gap = np.full((anims[0].shape[0], 6, anims[0].shape[2], 3), 255, np.uint8)
        frames = anims[0]
        for a in anims[1:]:
            frames = np.concatenate([frames, gap, a], axis=1)
        write_video(out / "prediction.gif", frames, fps=4)


def table(metrics: dict) -> str:
    """The summary as a Markdown table: model and baselines, best baseline marked (and digit identity where the
    clips are moving digits)."""
    ident = "identity" in metrics
    cell = lambda d: f" {d['identity']:.2f} |" if ident and "identity" in d else (" |" if ident else "")
    head = "| | PSNR (dB) | SSIM |" + (" identity |" if ident else "")
    lines = [
        head,
        "|---|---:|---:|" + ("---:|" if ident else ""),
        f"| model | {metrics['psnr']:.2f} | {metrics['ssim']:.3f} |" + cell(metrics),
    ]
    for name, b in metrics["baseline"].items():
        mark = " (best)" if name == metrics["best_baseline"]["psnr"] else ""
        lines.append(f"| {name}{mark} | {b['psnr']:.2f} | {b['ssim']:.3f} |" + cell(b))
    lines.append(f"| gain over best | {metrics['psnr_gain']:+.2f} | {metrics['ssim_gain']:+.3f} |" + cell({}))
    if "best_of" in metrics:
        bo = metrics["best_of"]
        lines.append(f"| best of {bo['k']} (oracle) | {bo['psnr']:.2f} | {bo['ssim']:.3f} |" + cell({}))
    return "\n".join(lines)
