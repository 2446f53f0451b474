"""Data pipeline throughput: `vdp shard` output through Ray Data, npy vs mp4, and the data wait of a tiny
training loop.

    python experiments/bench/data.py            # ~5 minutes on 2 cores
    python experiments/bench/data.py --quick    # smaller sets, for a smoke run

Prints Markdown tables (paste into experiments/bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch


def make_shards(root: Path, name: str, num_clips: int, frames: int, size: int, fmt: str) -> tuple[Path, float, dict]:
    from vdp_ray.data.shards import ShardOptions, read_manifest, shard

    out = root / name
    t0 = time.perf_counter()
    shard(
        ShardOptions(
            out=str(out),
            synthetic="moving-digits",
            num_clips=num_clips,
            frames=frames,
            size=(size, size),
            format=fmt,
            shard_size=64,
        ),
        log=lambda *_: None,
    )
    elapsed = time.perf_counter() - t0
    return out / "train", elapsed, read_manifest(out / "train")


def data_cfg(frames: int, size: int, channels: int = 1):
    from vdp_ray.config import load_config

    return load_config(
        None,
        [
            f"data.frames={frames}",
            f"data.size=[{size}, {size}]",
            f"data.channels={channels}",
            "data.context_frames=2",
            "diffusion.masks.context_max=4",
        ],
    ).data


def pipeline_rate(split: Path, frames: int, size: int, epochs: int = 2) -> tuple[float, float]:
    """(clips/s over whole epochs after the first batch, seconds to the first batch)."""
    from vdp_ray.data.pipeline import clip_dataset

    ds = clip_dataset(str(split), data_cfg(frames, size), train=True)
    t0 = time.perf_counter()
    first, clips = None, 0
    for _ in range(epochs):
        for batch in ds.iter_batches(batch_size=16, batch_format="numpy"):
            if first is None:
                first = time.perf_counter()
            else:
                clips += len(batch["clip"])
    return clips / (time.perf_counter() - first), first - t0


def training_wait(split: Path, experiment: str, steps: int) -> dict:
    """Run the experiment's model (plain PyTorch, AdamW) on batches from the pipeline; time spent waiting."""
    from vdp_ray.config import load_config
    from vdp_ray.data.pipeline import clip_dataset, epochs
    from vdp_ray.diffusion import make_diffusion, sample_frame_masks
    from vdp_ray.models import build_denoiser, build_vae

    cfg = load_config(f"experiments/{experiment}.yaml")
    stage = cfg.train.stages[0]
    model = build_vae(cfg) if stage == "vae" else build_denoiser(cfg)
    diffusion = make_diffusion(cfg.diffusion)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    it = epochs(
        clip_dataset(str(split), cfg.data, train=True).iterator(),
        batch_size=cfg.train.batch_size,
        shuffle_buffer=cfg.data.shuffle_buffer,
    )
    next(it)  # pipeline start-up is not a steady-state wait
    wait = compute = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        _, batch = next(it)
        t1 = time.perf_counter()
        x = batch["clip"]
        if stage == "vae":
            recon, post = model(x)
            loss = (recon - x).abs().mean() + cfg.vae.kl_weight * post.kl().mean()
        else:
            m = cfg.diffusion.masks
            masks = sample_frame_masks(
                x.shape[0], x.shape[2], m.probs(), (m.context_min, m.context_max), m.context_drop
            )
            loss = diffusion.training_losses(model, x, masks.mask)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        wait += t1 - t0
        compute += time.perf_counter() - t1
    clips = steps * cfg.train.batch_size
    return {
        "experiment": experiment,
        "wait": wait / (wait + compute),
        "consume": clips / compute,
        "step_s": (wait + compute) / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    import ray

    ray.init(address="local", logging_level="ERROR", log_to_driver=False)
    n_small, n_large, steps = (128, 32, 10) if args.quick else (512, 96, 40)
    print(f"# {os.cpu_count()} CPUs, torch {torch.__version__}, Ray {ray.__version__}; moving digits (1 channel)\n")
    print("| clips | format | bytes/clip | shard clips/s | pipeline clips/s | first batch s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for size in (64, 256):  # warm the worker processes (imports, digit sprites) outside the timings
            make_shards(root, f"warm{size}", 16, 4, size, "mp4")
        for frames, size, n in ((16, 64, n_small), (16, 256, n_large)):
            for fmt in ("npy", "mp4"):
                split, shard_s, manifest = make_shards(root, f"{fmt}{size}", n, frames, size, fmt)
                per_clip = sum(s["bytes"] for s in manifest["shards"]) / manifest["count"]
                rate, first = pipeline_rate(split, frames, size)
                print(
                    f"| {n} x {frames}x{size}x{size} | {fmt} | {per_clip / 1024:.1f} KiB | {n / shard_s:.0f} | "
                    f"{rate:.0f} | {first:.1f} |",
                    flush=True,
                )
        print("\n| experiment | step s | clips/s consumed by training | data wait | pipeline / consumption |")
        print("|---|---|---|---|---|")
        split, _, _ = make_shards(root, "tiny", 256, 8, 32, "npy")
        rate, _ = pipeline_rate(split, 8, 32)
        for experiment in ("tiny_unet", "tiny_vae"):
            r = training_wait(split, experiment, steps)
            print(
                f"| {experiment} | {r['step_s']:.2f} | {r['consume']:.1f} | {100 * r['wait']:.1f}% | "
                f"{rate / r['consume']:.1f}x ({rate:.0f} clips/s alone) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
