"""Recipe search for the demo: train a denoiser from an experiment config in a plain loop (one process, no
Ray) for a fixed wall-clock budget on in-memory moving digits, then predict held-out clips and score them
against the baselines. The training step is vdp_ray's own (DiffusionStage.loss, the same masks and EMA),
so what wins here carries over to `vdp train` / `vdp demo`.

    python experiments/bench/demo_recipe.py experiments/demo.yaml --minutes 8 [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from vdp_ray.config import load_config
from vdp_ray.data.moving_digits import moving_digits_clip
from vdp_ray.diffusion import Condition, sample
from vdp_ray.metrics import baselines, psnr, ssim
from vdp_ray.train.ema import EMA
from vdp_ray.train.stages import DiffusionStage


def clips(n: int, seed: int, frames: int, size, digits) -> torch.Tensor:
    out = np.stack([moving_digits_clip(i, seed, frames, size, digits)[0] for i in range(n)])  # (N, T, H, W, 1)
    return torch.from_numpy(out).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def evaluate(model, task, test: torch.Tensor, k: int, steps_list, data_mean: float, batch: int = 32) -> dict:
    res = {}
    for steps in steps_list:
        settings = task.latent.sampling(replace(task.cfg.sampling, steps=steps))
        preds = []
        for i in range(0, len(test), batch):
            x = test[i : i + batch]
            cond = Condition.first_frames(x[:, :, :k], x.shape[2])
            g = torch.Generator().manual_seed(i)
            preds.append(sample(model, task.diffusion, tuple(x.shape), cond, settings, generator=g))
        pred = torch.cat(preds).clamp(-1, 1)[:, :, k:]
        truth = test[:, :, k:]
        res[f"ddim{steps}"] = (psnr(pred, truth).mean().item(), ssim(pred, truth).mean().item())
    for name, guess in baselines(test[:, :, :k], test.shape[2] - k, data_mean).items():
        res[name] = (psnr(guess, truth).mean().item(), ssim(guess, truth).mean().item())
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--digits", type=int, nargs=2, default=(1, 2))
    ap.add_argument("--train-clips", type=int, default=4000)
    ap.add_argument("--test-clips", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, nargs="+", default=(10, 20))
    args = ap.parse_intermixed_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.config, args.overrides)
    d, tr = cfg.data, cfg.train
    train = clips(args.train_clips, 0, d.frames, tuple(d.size), tuple(args.digits))
    test = clips(args.test_clips, 12345, d.frames, tuple(d.size), tuple(args.digits))
    task = DiffusionStage(cfg, torch.device("cpu"))
    net = task.model.train()
    ema = EMA(net, tr.ema_decay)
    opt = torch.optim.AdamW(net.parameters(), lr=tr.lr, weight_decay=tr.weight_decay)
    batch = tr.batch_size * tr.workers
    budget = args.minutes * 60
    start, step = time.time(), 0
    losses = []
    while time.time() - start < budget:
        frac = (time.time() - start) / budget
        lr = tr.lr * min(1.0, (step + 1) / max(1, tr.warmup_steps))
        lr *= tr.min_lr_ratio + (1 - tr.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(train), (batch,))
        x = train[idx]
        if d.hflip:
            flip = torch.rand(batch) < 0.5
            x[flip] = x[flip].flip(-1)
        loss = task.loss(net, x, None, torch.float32)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), tr.grad_clip or 1e9)
        opt.step()
        ema.update(net)
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            el = time.time() - start
            print(f"step {step} loss {np.mean(losses[-100:]):.4f} {step * batch / el:.1f} clips/s", flush=True)
    train_s = time.time() - start
    model = task.new_model()
    model.load_state_dict(ema.state_dict())
    model.eval()
    k = d.context_frames
    t0 = time.time()
    res = evaluate(model, task, test, k, args.steps, train.mean().item())
    best = max(res[b][0] for b in ("copy_last", "context_mean", "blank"))
    best_ssim = max(res[b][1] for b in ("copy_last", "context_mean", "blank"))
    summary = {
        "overrides": args.overrides,
        "steps": step,
        "clips_per_s": round(step * batch / train_s, 1),
        "final_loss": round(float(np.mean(losses[-100:])), 4),
        **{name: [round(v[0], 2), round(v[1], 3)] for name, v in res.items()},
        "gain_db": {n: round(v[0] - best, 2) for n, v in res.items() if n.startswith("ddim")},
        "ssim_gain": {n: round(v[1] - best_ssim, 3) for n, v in res.items() if n.startswith("ddim")},
        "eval_s": round(time.time() - t0, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
