"""Recipe search for the demo: train a denoiser from an experiment config in a plain loop (one process, no
Ray) for a fixed wall-clock budget on in-memory moving digits (or photo pans), then predict held-out clips and
score them against the baselines. The training step is vdp_ray's own (DiffusionStage.loss, the same masks and
EMA), so what wins here carries over to `vdp train` / `vdp demo`.

    python experiments/bench/demo_recipe.py experiments/demo.yaml --minutes 8 [key=value ...]
    python experiments/bench/demo_recipe.py experiments/footage.yaml --data pans --minutes 8 [key=value ...]

``--data pans``: photo pans split by photo as `vdp shard --synthetic photo-pans --split train=0.75,val=0.25`
does; the held-out photos are scored twice, as pans and filmed by a still camera (``still_*`` entries).
"""

from __future__ import annotations

import argparse
import json
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
from vdp_ray.evaluate import identity
from vdp_ray.metrics import baselines, psnr, ssim
from vdp_ray.pixels import clips_to_uint8
from vdp_ray.train.ema import EMA
from vdp_ray.train.engine import lr_ratio
from vdp_ray.train.stages import DiffusionStage


def clips(n: int, seed: int, frames: int, size, digits, metas: list | None = None) -> torch.Tensor:
    """n moving-digits clips (N, 1, T, H, W) in [-1, 1]; their metadata (for the identity metric) into ``metas``."""
    made = [moving_digits_clip(i, seed, frames, size, digits) for i in range(n)]
    if metas is not None:
        metas.extend(json.dumps({**meta, "size": list(size)}) for _, meta in made)
    out = np.stack([clip for clip, _ in made])  # (N, T, H, W, 1)
    return torch.from_numpy(out).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def pan_clips(n: int, seed: int, frames: int, size, channels: int, split: str, still: bool = False) -> torch.Tensor:
    """n photo-pan clips of the photos in ``split`` (cached under the temp folder: they take ~70 ms each)."""
    import tempfile

    from vdp_ray.data.photo_pans import photo_pan_clip
    from vdp_ray.data.shards import ShardOptions, photos_of

    name = f"pans-{split}-{n}-{seed}-{frames}-{size[0]}x{size[1]}-{channels}-{still}.npy"
    cache = Path(tempfile.gettempdir()) / "vdp-recipe" / name
    if not cache.is_file():
        opts = ShardOptions(
            out=str(cache.parent),
            synthetic="photo-pans",
            num_clips=n,
            frames=frames,
            size=size,
            split={"train": 0.75, "val": 0.25},
            seed=0,
        )
        photos = photos_of(split, opts)
        out = np.stack(
            [
                photo_pan_clip(i, seed, photos[i % len(photos)], frames, size, still=still, channels=channels)[0]
                for i in range(n)
            ]
        )
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, out)
    return torch.from_numpy(np.load(cache)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def evaluate(
    model, task, test: torch.Tensor, k: int, steps_list, data_mean: float, batch: int = 32, metas: list | None = None
) -> dict:
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
        res[f"ddim{steps}"] = scores(pred, truth)
        if metas:  # digits: does each digit of the last predicted frame still read as itself (vdp evaluate's identity)
            u8 = clips_to_uint8(test)
            last = len(u8[0]) - 1
            read = identity(
                metas,
                u8[:, k - 1],
                clips_to_uint8(torch.cat([test[:, :, :k], pred], 2))[:, last],
                u8[:, last],
                last,
                tuple(test.shape[-2:]),
            )
            res[f"identity{steps}"] = (
                float(np.nanmean(read["identity"])),
                float(np.nanmean(read["copy_last_identity"])),
            )
    for name, guess in baselines(test[:, :, :k], test.shape[2] - k, data_mean).items():
        res[name] = scores(guess, truth)
    return res


def scores(pred: torch.Tensor, truth: torch.Tensor) -> tuple[float, float, list]:
    """Mean PSNR, mean SSIM and PSNR per predicted frame."""
    per = psnr(pred, truth)
    return per.mean().item(), ssim(pred, truth).mean().item(), [round(v, 2) for v in per.mean(0).tolist()]


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
    ap.add_argument("--data", choices=("digits", "pans"), default="digits")
    ap.add_argument(
        "--schedule",
        choices=("time", "steps"),
        default="time",
        help="the cosine LR decay over the --minutes budget (time) or over train.max_steps (steps)",
    )
    ap.add_argument("--save", help="write the EMA weights here (torch.save) for a closer look")
    args = ap.parse_intermixed_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.config, args.overrides)
    d, tr = cfg.data, cfg.train
    tests, metas = {}, []
    if args.data == "pans":
        train = pan_clips(args.train_clips, 0, d.frames, tuple(d.size), d.channels, "train")
        test = pan_clips(args.test_clips, 12345, d.frames, tuple(d.size), d.channels, "val")
        tests["still_"] = pan_clips(args.test_clips // 2, 54321, d.frames, tuple(d.size), d.channels, "val", True)
    else:
        train = clips(args.train_clips, 0, d.frames, tuple(d.size), tuple(args.digits))
        test = clips(args.test_clips, 12345, d.frames, tuple(d.size), tuple(args.digits), metas)
    task = DiffusionStage(cfg, torch.device("cpu"))
    net = task.model.train()
    ema = EMA(net, tr.ema_decay)
    opt = torch.optim.AdamW(net.parameters(), lr=tr.lr, weight_decay=tr.weight_decay)
    batch = tr.batch_size * tr.workers
    budget = args.minutes * 60
    start, step = time.time(), 0
    losses = []
    while time.time() - start < budget:
        # vdp train's schedule (engine.lr_ratio): under a time budget the cosine ends with the clock, as there
        used = (time.time() - start) / budget if args.schedule == "time" else 0.0
        lr = tr.lr * lr_ratio(step, tr.max_steps, tr.warmup_steps, tr.min_lr_ratio, used)
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
    if args.save:
        torch.save(ema.state_dict(), args.save)
    model.eval()
    k = d.context_frames
    t0 = time.time()
    res = evaluate(model, task, test, k, args.steps, train.mean().item(), metas=metas)
    for prefix, extra in tests.items():
        res.update({prefix + n: v for n, v in evaluate(model, task, extra, k, args.steps, train.mean().item()).items()})
    # the untrained model (copy-last, or the motion anchor's extrapolation): what training added
    fresh = evaluate(task.new_model().eval(), task, test, k, [1], train.mean().item(), metas=metas)
    untrained = fresh["ddim1"]
    best = max(res[b][0] for b in ("copy_last", "context_mean", "blank"))
    best_ssim = max(res[b][1] for b in ("copy_last", "context_mean", "blank"))
    summary = {
        "overrides": args.overrides,
        "steps": step,
        "clips_per_s": round(step * batch / train_s, 1),
        "final_loss": round(float(np.mean(losses[-100:])), 4),
        **{name: [round(v[0], 2), round(v[1], 3)] for name, v in res.items() if not name.startswith("identity")},
        "untrained": [round(untrained[0], 2), round(untrained[1], 3)],
        "identity": {
            **{n: round(v[0], 3) for n, v in res.items() if n.startswith("identity")},
            **(
                {"untrained": round(fresh["identity1"][0], 3), "copy_last": round(fresh["identity1"][1], 3)}
                if "identity1" in fresh
                else {}
            ),
        },
        "per_frame_psnr": {"untrained": untrained[2], **{n: v[2] for n, v in res.items() if len(v) > 2}},
        "gain_db": {n: round(v[0] - best, 2) for n, v in res.items() if n.startswith("ddim")},
        "ssim_gain": {n: round(v[1] - best_ssim, 3) for n, v in res.items() if n.startswith("ddim")},
        "untrained_gain_db": round(untrained[0] - best, 2),
        "vs_copy_last_db": {
            n: round(v[0] - res[n.split("ddim")[0] + "copy_last"][0], 2) for n, v in res.items() if "ddim" in n
        },
        "eval_s": round(time.time() - t0, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
