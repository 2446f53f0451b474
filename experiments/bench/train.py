"""Training throughput: a plain PyTorch loop vs vdp_ray (Ray Train + DeepSpeed) with 1 and 2 workers.

    python experiments/bench/train.py             # ~12 minutes on 2 cores
    python experiments/bench/train.py --steps 10  # quicker, noisier

For each model: (a) one process, plain PyTorch + AdamW, one thread; (b) vdp_ray, 1 worker with one thread;
(c) vdp_ray, 2 workers with one thread each (data parallel over the 2 cores). Same model, same global
batch, fp32, moving-digits clips. (b)/(a) is the framework's overhead, (c)/(b) its scaling.
Prints a Markdown table (paste into experiments/bench/RESULTS.md) with the machine's matmul rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from models import matmul_gflops

from vdp_ray.config import load_config
from vdp_ray.diffusion import make_diffusion, sample_frame_masks
from vdp_ray.export import write_export
from vdp_ray.models import build_denoiser, build_vae, forward_flops

ROOT = Path(__file__).resolve().parents[2]
# name, experiment, overrides, global batch
CASES = [
    ("unet tiny", "tiny_unet", ["model.preset=tiny"], 8),
    ("unet small", "tiny_unet", ["model.preset=small"], 2),
    ("dit tiny", "tiny_dit", ["model.preset=tiny"], 8),
    ("dit S", "tiny_dit", ["model.preset=S"], 8),
]


def plain_loop(cfg, batch: int, steps: int, clips: torch.Tensor) -> float:
    """Clips/s of a single-process loop: masks, diffusion loss, backward, AdamW."""
    torch.set_num_threads(1)
    model = build_denoiser(cfg)
    vae = build_vae(cfg).eval() if cfg.model.family == "dit" else None
    diffusion = make_diffusion(cfg.diffusion)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    m = cfg.diffusion.masks
    tc = cfg.vae.temporal_compression if vae is not None else 1
    times = []
    for i in range(steps + 2):
        x = clips[torch.randint(0, len(clips), (batch,))]
        t0 = time.perf_counter()
        if vae is not None:
            with torch.no_grad():
                x = vae.encode(x).sample()
        mask = sample_frame_masks(batch, x.shape[2], m.probs(), (m.context_min // tc, m.context_max // tc), 0.1).mask
        loss = diffusion.training_losses(model, x, mask)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return batch / (sum(times) / len(times))


def vdp_run(cfg, run_dir: Path, workers: int, batch: int, steps: int) -> float:
    from vdp_ray.train import fit

    never = 10**6  # no validation, preview or intermediate checkpoint: time the training steps
    train = {
        "workers": workers,
        "cpus_per_worker": 1,
        "batch_size": batch // workers,
        "max_steps": steps,
        "log_every": max(1, steps // 4),
        "val_every": never,
        "checkpoint_every": never,
        "preview_every": never,
        "stages": [cfg.model.family],
    }
    overrides = {"run": {"dir": str(run_dir), "name": run_dir.name}, "train": train}
    values = cfg.to_dict()
    for section, items in overrides.items():
        values[section].update(items)
    values["data"]["val"] = None
    fit(type(cfg).from_dict(values))
    logged = [json.loads(x) for x in (run_dir / "logs" / f"{cfg.model.family}.jsonl").read_text().splitlines()]
    rates = [m["clips_per_s"] for m in logged[1:]]  # the first window holds start-up
    return sum(rates) / len(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    import ray

    from vdp_ray.data.shards import ShardOptions, shard

    ray.init(address="local", num_cpus=4, logging_level="ERROR", log_to_driver=False)
    peak = matmul_gflops()
    print(f"# torch {torch.__version__}, Ray {ray.__version__}, fp32, matmul {peak:.0f} GFLOP/s, {args.steps} steps\n")
    print(
        "| model | params | GFLOP/clip (fwd+bwd) | (a) plain clips/s | (b) vdp 1 worker | (c) vdp 2 workers "
        "| (b)/(a) | (c)/(b) | (c) GFLOP/s | % of matmul |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shard(
            ShardOptions(out=str(tmp / "digits"), synthetic="moving-digits", num_clips=256, frames=8, size=(32, 32)),
            log=lambda *_: None,
        )
        clips = torch.rand(64, 1, 8, 32, 32) * 2 - 1
        for name, experiment, overrides, batch in CASES:
            cfg = load_config(
                ROOT / "experiments" / f"{experiment}.yaml",
                [*overrides, f"data.train={tmp / 'digits' / 'train'}", "data.val=null"],
            )
            if cfg.model.family == "dit":  # a VAE export to encode with (random weights: speed only)
                vae_dir = tmp / f"vae-{name.replace(' ', '_')}"
                vae = build_vae(cfg)
                write_export(vae_dir, cfg, "vae", vae.state_dict(), {"steps": 0})
                values = cfg.to_dict()
                values["vae"]["export"] = str(vae_dir)
                values["vae"]["scale_factor"] = 1.0
                cfg = type(cfg).from_dict(values)
            model = build_denoiser(cfg)
            shape = (1, *((cfg.data.channels, 8, 32, 32) if cfg.model.family == "unet3d" else (4, 4, 8, 8)))
            x = torch.zeros(shape)
            flops = 3 * forward_flops(model, x, torch.zeros(1, shape[2]), None)
            if cfg.model.family == "dit":
                flops += forward_flops(build_vae(cfg).encoder, torch.zeros(1, 1, 8, 32, 32))
            params = sum(p.numel() for p in model.parameters())
            a = plain_loop(cfg, batch, min(args.steps, 12), clips)
            b = vdp_run(cfg, tmp / f"{name.replace(' ', '_')}-1", 1, batch, args.steps)
            c = vdp_run(cfg, tmp / f"{name.replace(' ', '_')}-2", 2, batch, args.steps)
            gf = c * flops / 1e9
            print(
                f"| {name} | {params / 1e6:.2f}M | {flops / 1e9:.2f} | {a:.1f} | {b:.1f} | {c:.1f} | {b / a:.2f} | "
                f"{c / b:.2f} | {gf:.0f} | {100 * gf / peak:.0f}% |",
                flush=True,
            )


if __name__ == "__main__":
    main()
