"""The motion anchor's estimate alone (``diffusion.anchor: motion`` with an untrained network): how well the given
frames' own motion, carried on, predicts held-out clips, against copy-last, and how long it takes.

    python experiments/bench/motion_estimate.py [--kernel 5] [--clips 128]

Moving digits as `make demo` draws them (32x32, 1-2 digits, 4 given -> 4 predicted), photo pans of held-out photos
(K = 7) and the same photos filmed by a still camera. Prints one JSON line per set: PSNR, SSIM and identity (digits)
for the estimate and copy-last, PSNR per predicted frame, and milliseconds per clip.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_recipe import clips, pan_clips

from vdp_ray.anchor import estimate_motion
from vdp_ray.evaluate import identity
from vdp_ray.metrics import psnr, ssim
from vdp_ray.pixels import clips_to_uint8


def score(test: torch.Tensor, k: int, kernel: int, metas=None) -> dict:
    mask = torch.zeros(len(test), test.shape[2], dtype=torch.bool)
    mask[:, :k] = True
    start = time.perf_counter()
    batches = range(0, len(test), 32)
    built = torch.cat([estimate_motion(test[i : i + 32], mask[i : i + 32], kernel).clip for i in batches])
    ms = (time.perf_counter() - start) * 1000 / len(test)
    pred, truth = built[:, :, k:].clamp(-1, 1), test[:, :, k:]
    copy = test[:, :, k - 1 : k].expand_as(truth)
    out = {"ms_per_clip": round(ms, 2)}
    for name, guess in (("estimate", pred), ("copy_last", copy)):
        per = psnr(guess, truth)
        out[name] = {
            "psnr": round(per.mean().item(), 2),
            "ssim": round(ssim(guess, truth).mean().item(), 3),
            "per_frame": [round(v, 2) for v in per.mean(0).tolist()],
        }
    if metas:
        u8 = clips_to_uint8(test)
        last = test.shape[2] - 1
        read = identity(
            metas, u8[:, k - 1], clips_to_uint8(built.clamp(-1, 1))[:, last], u8[:, last], last, tuple(test.shape[-2:])
        )
        out["estimate"]["identity"] = round(float(np.nanmean(read["identity"])), 3)
        out["copy_last"]["identity"] = round(float(np.nanmean(read["copy_last_identity"])), 3)
    out["gain_db"] = round(out["estimate"]["psnr"] - out["copy_last"]["psnr"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=128)
    ap.add_argument("--digits-kernel", type=int, default=5)
    ap.add_argument("--pans-kernel", type=int, default=7)
    ap.add_argument("--sets", nargs="+", default=("digits", "pans", "still"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    for name in args.sets:
        if name == "digits":
            metas = []
            test = clips(args.clips, 12345, 8, (32, 32), (1, 2), metas)
            res = score(test, 4, args.digits_kernel, metas)
        else:
            test = pan_clips(args.clips, 12345 if name == "pans" else 54321, 8, (32, 32), 3, "val", name == "still")
            res = score(test, 4, args.pans_kernel)
        print(json.dumps({"set": name, **res}), flush=True)


if __name__ == "__main__":
    main()
