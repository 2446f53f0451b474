"""Forward+backward time, parameters and analytic FLOPs of the model presets on this machine.

    python experiments/bench/models.py              # tiny and seed presets
    python experiments/bench/models.py --only tiny  # just the CPU-trainable sizes

Prints a Markdown table (paste into experiments/bench/RESULTS.md). FLOPs are counted from shapes on the
meta device (2 per multiply-add; elementwise ops excluded); "achieved" is 3x forward FLOPs (forward +
backward ~ 3x forward) over the measured time, to compare with the matmul rate printed in the header.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time

import torch

from vdp_ray.models import CLASSES, PRESETS, count_parameters, forward_flops

# (family, preset, batch, (C, T, H, W)): tiny sizes at the tiny experiments' shapes; seed sizes at the
# seed's reference shapes (the seed VAE at 8x128x128: its 16x256x256 step needs ~20 GB here).
CASES = [
    ("unet3d", "tiny", 8, (1, 8, 32, 32)),
    ("vae", "tiny", 8, (1, 8, 32, 32)),
    ("dit", "tiny", 8, (4, 4, 8, 8)),
    ("unet3d", "seed", 1, (3, 16, 64, 64)),
    ("dit", "B", 1, (4, 4, 32, 32)),
    ("vae", "seed", 1, (3, 8, 128, 128)),
]


def step(model, family: str, x: torch.Tensor) -> None:
    if family == "vae":
        recon, post = model(x)
        loss = (recon - x).abs().mean() + 1e-4 * post.kl().mean()
    else:
        t = torch.rand(x.shape[0], x.shape[2]) * 999
        mask = torch.zeros(x.shape[0], x.shape[2], dtype=torch.bool)
        mask[:, :1] = True
        loss = model(x, t, mask).square().mean()
    loss.backward()


def bench(family: str, preset: str, batch: int, shape, repeats: int) -> dict:
    torch.manual_seed(0)
    model = CLASSES[family](in_channels=shape[0], **PRESETS[family][preset])
    x = torch.randn(batch, *shape)
    args = (x,) if family == "vae" else (x, torch.zeros(batch, shape[1]), None)
    flops = forward_flops(model, *args)
    step(model, family, x)  # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        step(model, family, x)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return dict(
        family=family,
        preset=preset,
        batch=batch,
        shape=shape,
        params=count_parameters(model),
        gflops=flops / 1e9,
        sec=sec,
        achieved=3 * flops / sec / 1e9,
    )


def matmul_gflops(n: int = 4096, repeats: int = 3) -> float:
    """The machine's fp32 matmul rate: the ceiling a training step can approach."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["tiny", "seed", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, fp32; matmul {matmul_gflops():.0f} GFLOP/s"
    )
    print("| family | preset | batch x (C,T,H,W) | params | fwd GFLOPs | fwd+bwd s | s/clip | achieved GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for family, preset, batch, shape in CASES:
        is_tiny = preset == "tiny"
        if (args.only == "tiny" and not is_tiny) or (args.only == "seed" and is_tiny):
            continue
        r = bench(family, preset, batch, shape, args.repeats)
        print(
            f"| {family} | {preset} | {batch} x {shape} | {r['params'] / 1e6:.2f}M | {r['gflops']:.1f} | "
            f"{r['sec']:.2f} | {r['sec'] / batch:.3f} | {r['achieved']:.0f} |",
            flush=True,
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"\npeak RSS {peak:.1f} GiB")


if __name__ == "__main__":
    main()
