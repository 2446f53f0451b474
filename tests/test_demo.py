"""`vdp demo` end to end, shortened: shards, Ray Train + DeepSpeed, export, evaluation, outputs; a re-run
reuses the data and the finished training."""

import json

import pytest

from vdp_ray.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

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
    "diffusion.sample_steps=2",
]


def test_demo_runs_the_whole_path(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *SHORT]) == 0
    printed = capsys.readouterr()
    m = json.loads((out / "metrics.json").read_text())
    for key in ("psnr", "ssim"):
        assert isinstance(m[key], float)
        for name in ("copy_last", "context_mean", "blank"):
            assert isinstance(m["baseline"][name][key], float)
    d = m["demo"]
    assert d["training"]["steps"] == 4
    assert d["data"]["resolution"] == [32, 32] and d["horizon"] == {"context": 4, "future": 4}
    assert d["model"]["preset"] == "demo" and d["model"]["parameters"] > 0
    assert m["protocol"]["clips"] == 4 and m["protocol"]["steps"] == 2
    for name in ("prediction.gif", "prediction.png", "psnr_per_frame.png"):
        assert (out / name).stat().st_size > 0
    assert "| model |" in printed.out and "target (PSNR >= best baseline + 2 dB" in printed.out
    assert (out / "run" / "tb" / "unet3d").is_dir()

    # again: the shards and the finished training are reused, the numbers are the same
    assert main(["demo", "--out", str(out), *SHORT]) == 0
    err = capsys.readouterr().err
    assert "shards: reusing" in err and "reusing it" in err
    assert json.loads((out / "metrics.json").read_text())["psnr"] == m["psnr"]


def test_demo_refuses_a_budget_too_small(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--minutes", "1"]) == 2
    assert "--minutes: 1 leaves no time to train" in capsys.readouterr().err
