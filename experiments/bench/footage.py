"""Real texture, known motion: train `experiments/footage.yaml` on photo pans and score held-out photos.

Shards photo pans split by photo (a quarter of the bundled photographs never seen in training), trains with the
recommended footage config for ``--minutes``, then `vdp evaluate`s three held-out sets against the baselines:
camera pans and zooms, a still camera, and a still camera with one small moving sprite (static and slowly changing
footage, where the model must stay within 0.5 dB of copy-last).

    python experiments/bench/footage.py --out runs/bench-footage --minutes 15 [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from vdp_ray.config import load_config
from vdp_ray.data.shards import ShardOptions, shard
from vdp_ray.evaluate import EvalOptions, evaluate, table
from vdp_ray.raytools import init_ray
from vdp_ray.train import fit

ROOT = Path(__file__).resolve().parents[2]
SPLIT = {"train": 0.75, "val": 0.25}
SETS = {"pans": {}, "still": {"still": True}, "still+sprite": {"still": True, "sprites": (1, 1)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench-footage")
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--clips", type=int, default=2400)
    ap.add_argument("--eval-clips", type=int, default=128)
    ap.add_argument("--config", default=str(ROOT / "experiments" / "footage.yaml"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    cfg = load_config(args.config, args.overrides)
    d = cfg.data
    init_ray()
    for name, extra in SETS.items():
        folder = out / "shards" / name
        if not (folder / "manifest.json").is_file():
            n = args.clips if name == "pans" else 4 * args.eval_clips  # the val quarter: >= eval_clips each
            shard(
                ShardOptions(
                    out=str(folder),
                    synthetic="photo-pans",
                    num_clips=n,
                    frames=d.frames,
                    size=tuple(d.size),
                    split=SPLIT,
                    grayscale=d.channels == 1,
                    seed=0,
                    **extra,
                ),
                log=print,
            )
    shards = out / "shards"
    cfg = cfg.updated(
        {
            "run.dir": str(out / "run"),
            "data.train": str(shards / "pans" / "train"),
            "data.val": str(shards / "pans" / "val"),
            "train.max_minutes": args.minutes,
        }
    )
    start = time.time()
    export = fit(cfg)[cfg.train.stages[-1]]
    minutes = (time.time() - start) / 60
    results = {
        "config": args.config,
        "overrides": args.overrides,
        "train_minutes": round(minutes, 2),
        "export_meta": json.loads((export / "meta.json").read_text()),
    }
    for name in SETS:
        m = evaluate(
            EvalOptions(
                checkpoint=str(export),
                shards=str(shards / name / "val"),
                clips=args.eval_clips,
                cpus_per_worker=2,
                out=str(out / "eval" / name),
            )
        )
        copy = m["baseline"]["copy_last"]
        results[name] = {
            "psnr": m["psnr"],
            "ssim": m["ssim"],
            "copy_last_psnr": copy["psnr"],
            "copy_last_ssim": copy["ssim"],
            "vs_copy_last_db": round(m["psnr"] - copy["psnr"], 3),
            "psnr_gain": m["psnr_gain"],
            "ssim_gain": m["ssim_gain"],
        }
        print(f"\n## {name}\n{table(m)}")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
