"""The DiT stage from latent shards (`vdp encode`) vs encoding on the fly, at the tiny and the seed VAE sizes.

    python experiments/bench/encode.py [--steps 30]   # ~6 minutes on 2 cores

For each VAE size (random weights: speed only): moving-digits shards (8 frames of 32x32), `vdp encode` into
latent shards (its clips/s), then the tiny DiT trained for --steps on 1 worker (1 CPU) three ways: (a) encoding
every batch (train.latent_cache_mb=0), (b) with the in-memory latent cache (the CPU default), (c) from the latent
shards. Prints a Markdown table of training clips/s (the first logged window, start-up, left out).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def train_rate(cfg, run: Path, steps: int, **changes) -> float:
    from vdp_ray.train import fit

    never = 10**6  # no validation, preview or intermediate checkpoint: time the training steps
    fit(
        cfg.updated(
            {
                "run.dir": str(run),
                "run.name": run.name,
                "train.workers": 1,
                "train.cpus_per_worker": 1,
                "train.max_steps": steps,
                "train.log_every": max(1, steps // 5),
                "train.val_every": never,
                "train.checkpoint_every": never,
                "train.preview_every": never,
                "data.val": None,
                "train.stages": ["dit"],
                **{k.replace("__", "."): v for k, v in changes.items()},
            }
        )
    )
    rows = [json.loads(line) for line in (run / "logs" / "dit.jsonl").read_text().splitlines()][1:]
    return sum(r["clips_per_s"] for r in rows) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--sizes", default="tiny,seed", help="VAE presets, comma-separated")
    args = parser.parse_args()

    from vdp_ray.config import load_config
    from vdp_ray.data.latent_shards import EncodeOptions, encode_latents
    from vdp_ray.data.shards import ShardOptions, shard
    from vdp_ray.export import write_export
    from vdp_ray.models import build_vae
    from vdp_ray.raytools import init_ray

    init_ray(num_cpus=4)
    print(f"# torch {torch.__version__}, {args.steps} steps, batch 8, 1 worker x 1 CPU, fp32\n")
    print(
        "| VAE | encoder params | vdp encode clips/s | (a) on the fly | (b) latent cache | (c) latent shards "
        "| (c)/(a) | (c)/(b) |\n|---|---|---|---|---|---|---|---|"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = tmp / "digits"
        shard(
            ShardOptions(
                out=str(shards),
                synthetic="moving-digits",
                num_clips=args.clips,
                frames=8,
                size=(32, 32),
                split={"train": 1.0},
            ),
            log=lambda *_: None,
        )
        # the seed VAE compresses time 4x: its given frames come in fours
        frames = {
            "tiny": [],
            "seed": ["data.context_frames=4", "diffusion.masks.context_min=4", "diffusion.masks.context_max=4"],
        }
        for size in args.sizes.split(","):
            cfg = load_config(
                ROOT / "experiments" / "tiny_dit.yaml",
                [
                    f"vae.preset={size}",
                    "vae.scale_factor=1.0",
                    f"data.train={shards / 'train'}",
                    "train.batch_size=8",
                    "train.precision=fp32",
                    *frames.get(size, []),
                ],
            )
            torch.manual_seed(0)
            vae = build_vae(cfg)
            export = write_export(tmp / f"vae-{size}", cfg, "vae", vae.state_dict(), {"steps": 0})
            cfg = cfg.updated({"vae.export": str(export)})
            start = time.perf_counter()
            summary = encode_latents(
                EncodeOptions(
                    shards=str(shards / "train"), vae=str(export), out=str(tmp / f"latents-{size}"), batch_size=16
                ),
                log=lambda *_: None,
            )
            encoded = summary["splits"]["train"]["clips"] / (time.perf_counter() - start)
            a = train_rate(cfg, tmp / f"fly-{size}", args.steps, train__latent_cache_mb=0)
            b = train_rate(cfg, tmp / f"cache-{size}", args.steps)
            c = train_rate(cfg, tmp / f"shards-{size}", args.steps, data__train=str(tmp / f"latents-{size}" / "train"))
            params = sum(p.numel() for p in vae.encoder.parameters()) / 1e6
            row = [size, f"{params:.2f}M", f"{encoded:.1f}", f"{a:.1f}", f"{b:.1f}", f"{c:.1f}", f"{c / a:.2f}"]
            print("| " + " | ".join([*row, f"{c / b:.2f}"]) + " |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
