"""Does a text-conditioned model draw the digit a prompt names? (issue 9)

Captioned moving digits (one digit per clip) -> `vdp encode-text` with a small random CLIP over the captions'
words (--make-encoder; no download) -> the tiny text DiT (experiments/tiny_text_dit.yaml: VAE, then DiT) ->
clips generated from "the digit D" for every D, read back by a digit classifier trained here on scikit-learn's
digits (vdp_ray/data/digit_reader.py). Reported: accuracy of the digit read against the digit asked for, at text
guidance 1 (off) and higher, against chance (10 %) and the same model given the null text (unconditional).

    python experiments/bench/text_digits.py [--out runs/bench_text] [--clips 2000] [--steps 4000] [--per-digit 10]
        [--guidance 1 3 5 7 10] [--set KEY=VALUE ...]

Re-running reuses the shards, the encoder and a finished training in --out; more --steps continue it.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bench_text")
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=4000, help="DiT steps (more resume a finished run)")
    ap.add_argument("--vae-steps", type=int, default=300)
    ap.add_argument("--per-digit", type=int, default=10, help="clips generated per digit and setting")
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 5.0, 7.0, 10.0])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for the training")
    args = ap.parse_args()
    from vdp_ray.cli import main as vdp
    from vdp_ray.config import load_config
    from vdp_ray.data.digit_reader import DigitReader
    from vdp_ray.data.moving_digits import moving_digits_clip
    from vdp_ray.data.shards import ShardOptions, shard
    from vdp_ray.media import strip, write_png
    from vdp_ray.predict import Predictor
    from vdp_ray.train import fit

    out = Path(args.out).resolve()
    shards, encoder, run = out / "shards", out / "encoder", out / "run"
    started = time.time()
    if not (shards / "manifest.json").is_file():
        shard(
            ShardOptions(
                out=str(shards),
                synthetic="moving-digits",
                num_clips=args.clips,
                frames=8,
                size=(32, 32),
                digits=(1, 1),
                split={"train": 0.9, "val": 0.1},
            )
        )
    if not (shards / "train" / "text" / "index.json").is_file():
        flags = ["--max-tokens", "16"] + ([] if (encoder / "config.json").is_file() else ["--make-encoder"])
        assert vdp(["encode-text", str(shards), "--encoder", str(encoder), *flags]) == 0
    cfg = load_config(
        ROOT / "experiments" / "tiny_text_dit.yaml",
        [
            f"data.train={shards / 'train'}",
            f"data.val={shards / 'val'}",
            f"run.dir={run}",
            f"text.encoder={encoder}",
            f"train.max_steps={args.steps}",
            f"vae.max_steps={args.vae_steps}",
            "train.preview_every=1000000",
            *args.set,
        ],
    )
    export = run / "export"
    if (
        not (export / "model.safetensors").is_file()
        or json.loads((export / "meta.json").read_text())["steps"] < args.steps
    ):
        fit(cfg)
    trained_s = time.time() - started

    reader = DigitReader(32)
    p = Predictor.from_export(run / "export", device="cpu")
    rows, sheet = [], []
    # The ceiling: real clips of each digit, as drawn and after a trip through the model's latent space.
    real = [moving_digits_clip(i, 321, 8, (32, 32), (1, 1)) for i in range(10 * args.per_digit)]
    clips = np.stack([c for c, _ in real])
    truth = np.array([m["digits"][0] for _, m in real])
    x, _ = p._frames(clips, "frames")
    through = p._out(p._decode(p._encode(x)), True)
    for name, batch in (("real clips (the reader's ceiling)", clips), ("real clips through the VAE", through)):
        got = np.array([reader.read_clip(c) for c in batch])
        rows.append({"setting": name, "accuracy": float(np.mean(got == truth)), "clips": len(got)})
        print(f"{name}: {100 * rows[-1]['accuracy']:.0f} %", flush=True)
    settings = [("null text", "", 1.0)] + [(f"prompt, text guidance {g:g}", None, g) for g in args.guidance]
    for name, fixed_prompt, g in settings:
        t0 = time.time()
        hits, read = 0, []
        for d in range(10):
            prompt = f"the digit {d}" if fixed_prompt is None else fixed_prompt
            clips = p.generate(
                batch=args.per_digit, seed=1000 + d, prompt=prompt, text_guidance=g, steps=args.sample_steps
            )
            got = [reader.read_clip(c) for c in clips]
            read.append(got)
            hits += sum(x == d for x in got)
            if name != "null text" and g == max(args.guidance):
                sheet.append((f"the digit {d}", np.concatenate(list(clips[:4]), axis=2)))
        total = 10 * args.per_digit
        rows.append(
            {
                "setting": name,
                "accuracy": hits / total,
                "clips": total,
                "read": read,
                "seconds": round(time.time() - t0, 1),
            }
        )
        print(f"{name}: {hits}/{total} clips show the asked digit ({100 * hits / total:.0f} %)", flush=True)
    write_png(out / "prompted_digits.png", strip(sheet))
    result = {
        "rows": rows,
        "chance": 0.1,
        "steps": args.steps,
        "clips": args.clips,
        "sample_steps": args.sample_steps,
        "train_and_data_s": round(trained_s, 1),
    }
    (out / "text_digits.json").write_text(json.dumps(result, indent=1))
    print("\n| setting | clips showing the asked digit | of | accuracy |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['setting']} | {round(r['accuracy'] * r['clips'])} | {r['clips']} | {100 * r['accuracy']:.0f} % |")
    print(f"\nchance 10 %; sheet: {out / 'prompted_digits.png'}")


if __name__ == "__main__":
    main()
