"""`vdp demo` end to end, shortened: shards, Ray Train + DeepSpeed, export, evaluation, outputs; a re-run
reuses the data and the finished training."""

import json

import pytest
from PIL import Image

from vdp_ray.cli import main

SHORT = [
    "--clips",
    "80",
    "--eval-clips",
    "4",
    "--minutes",
    "10",
    "train.max_steps=4",
    "train.val_every=4",
    "train.checkpoint_every=4",
    "train.log_every=2",
    "train.warmup_steps=1",
    "sampling.steps=2",
]


@pytest.mark.cluster  # `vdp demo` as a user runs it: its own embedded Ray, shards to metrics
def test_demo_runs_the_whole_path(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *SHORT]) == 0
    printed = capsys.readouterr()
    m = json.loads((out / "metrics.json").read_text())
    base = m["baseline"]
    assert set(base) == {"copy_last", "context_mean", "blank"}
    for stats in (m, *base.values()):
        assert 3 < stats["psnr"] < 100 and -1 <= stats["ssim"] <= 1
        assert len(stats["per_frame"]["psnr"]) == 4, "one value per predicted frame"
    # the reported best baseline and the gain follow from the numbers next to them
    best = max(base, key=lambda n: base[n]["psnr"])
    assert m["best_baseline"]["psnr"] == best
    assert m["psnr_gain"] == pytest.approx(m["psnr"] - base[best]["psnr"], abs=2e-3)
    assert base["copy_last"]["psnr"] != base["blank"]["psnr"], "the baselines are computed, not copied"
    d = m["demo"]
    assert d["training"]["steps"] == 4
    assert d["data"]["resolution"] == [32, 32] and d["horizon"] == {"context": 4, "future": 4}
    assert d["model"]["preset"] == "demo" and d["model"]["parameters"] > 0
    assert m["protocol"]["clips"] == 4 and m["protocol"]["steps"] == 2
    assert {"psnr_met", "ssim_met", "identity_met"} <= set(d["target"]) and 0 <= m["identity"] <= 1
    # the pictures: an animated GIF of the 8 frames, the strip and the per-frame plot as PNGs
    with Image.open(out / "prediction.gif") as gif:
        assert gif.n_frames == 8
    for name in ("prediction.png", "psnr_per_frame.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) >= 32
    assert "| model |" in printed.out and "target (PSNR >= best baseline + 4 dB" in printed.out
    assert f"{m['psnr']:.2f}" in printed.out
    assert list((out / "run" / "tb" / "unet3d").glob("events.*"))

    # again: the shards and the finished training are reused, the numbers are the same
    assert main(["demo", "--out", str(out), *SHORT]) == 0
    err = capsys.readouterr().err
    assert "shards: reusing" in err and "reusing it" in err
    assert json.loads((out / "metrics.json").read_text())["psnr"] == m["psnr"]


def test_demo_refuses_a_budget_too_small(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--minutes", "1"]) == 2
    assert "--minutes: 1 leaves no time to train" in capsys.readouterr().err
