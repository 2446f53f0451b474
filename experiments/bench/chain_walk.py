"""The two walks of the anchor's chain (``vdp_ray.anchor.chain.walk``) on this CPU: each frame built once in order of
distance (one host read: the CPU default) against every frame rebuilt at every distance (no host read: the default
on a GPU, where waiting for the device costs more than the arithmetic). Why both exist: a number per use.

    python experiments/bench/chain_walk.py [--repeats 20]

Shapes of `make demo` (8 frames of 32x32, 4 given, K = 5, a batch of 8) and of experiments/footage.yaml at 64x64
(K = 7). Per case: milliseconds per batch of the motion kernels' forward + backward (a training step's share) and
of the motion estimate (once per batch and condition), for both walks, and their ratio. Prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vdp_ray.anchor import estimate_motion, moved

CASES = {  # name: (batch, channels, frames, size, given frames, kernel)
    "demo 8x32x32 K5": (8, 1, 8, 32, 4, 5),
    "footage 8x64x64 K7": (4, 3, 8, 64, 4, 7),
}


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) * 1000 / repeats


def bench_case(n: int, c: int, t: int, size: int, given: int, kernel: int, repeats: int) -> dict:
    """Milliseconds per batch of each part, for both walks, on random clips whose first ``given`` frames are given."""
    frames = torch.rand(n, c, t, size, size) * 2 - 1
    mask = torch.zeros(n, t, dtype=torch.bool)
    mask[:, :given] = True
    weights = (torch.randn(n, kernel * kernel, t, size, size) * 0.05).requires_grad_(True)
    row = {}
    for walk, sync_free in (("by_distance", False), ("sync_free", True)):

        def kernels_step(sync_free=sync_free):  # a training step's share: forward and backward through the chain
            weights.grad = None
            moved(frames, mask, weights, kernel, sync_free=sync_free).square().mean().backward()

        def estimate(sync_free=sync_free):
            estimate_motion(frames, mask, kernel, sync_free)

        row[f"kernels_fwd_bwd_ms_{walk}"] = round(timed(kernels_step, repeats), 2)
        row[f"estimate_ms_{walk}"] = round(timed(estimate, repeats), 2)
    for part in ("kernels_fwd_bwd", "estimate"):
        row[f"{part}_sync_free_over_by_distance"] = round(
            row[f"{part}_ms_sync_free"] / row[f"{part}_ms_by_distance"], 2
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    for name, case in CASES.items():
        row = {"case": name, "threads": torch.get_num_threads(), **bench_case(*case, repeats=args.repeats)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
