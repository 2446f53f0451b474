"""Samplers on the demo model: PSNR, SSIM and seconds per clip for DDPM-1000, DDIM-50/25 and DPM-Solver++
at 20 and 10 steps, on the same held-out clips with the same seed (the `vdp evaluate` protocol).

    python experiments/bench/sampling.py [--export runs/demo/run/export] [--shards runs/demo/shards/val]
                                         [--clips 32] [--ddpm-clips 32]

Target: DPM-Solver++ at 20 steps within 0.5 dB of DDPM-1000. Prints a Markdown table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from vdp_ray.evaluate import EvalOptions, evaluate

SETTINGS = [("ddpm", 1000), ("ddim", 50), ("ddim", 25), ("dpm++", 20), ("dpm++", 10)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", default="runs/demo/run/export")
    ap.add_argument("--shards", default="runs/demo/shards/val")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--ddpm-clips", type=int, default=None, help="fewer clips for DDPM-1000 (default: --clips)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    rows = []
    for sampler, steps in SETTINGS:
        clips = args.ddpm_clips if sampler == "ddpm" and args.ddpm_clips else args.clips
        m = evaluate(
            EvalOptions(
                checkpoint=args.export,
                shards=args.shards,
                clips=clips,
                sampler=sampler,
                steps=steps,
                batch_size=args.batch_size,
                cpus_per_worker=2,
                seed=0,
            )
        )
        best = m["baseline"][m["best_baseline"]["psnr"]]
        row = {
            "sampler": sampler,
            "steps": steps,
            "clips": clips,
            "psnr": m["psnr"],
            "ssim": m["ssim"],
            "s_per_clip": m["seconds_per_clip"],
            "best_baseline_psnr": best["psnr"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    ref = rows[0]["psnr"]
    print("\n| sampler | steps | clips | PSNR (dB) | vs DDPM-1000 | SSIM | s / clip |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['sampler']} | {r['steps']} | {r['clips']} | {r['psnr']:.2f} | {r['psnr'] - ref:+.2f} | "
            f"{r['ssim']:.3f} | {r['s_per_clip']:.3f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
