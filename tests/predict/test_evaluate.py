"""`vdp evaluate` through Ray Data and Predictor actors on real shards: the protocol, the baselines
recomputed independently, the outputs, and refusals before Ray work."""

import json

import numpy as np
import pytest

from vdp_ray.cli import main
from vdp_ray.data.shards import ShardOptions, shard
from vdp_ray.evaluate import EvalOptions, EvaluationError, evaluate

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("evshards")
    shard(
        ShardOptions(
            out=str(out), synthetic="moving-digits", num_clips=10, frames=8, size=(16, 16), digits=(1, 1), shard_size=4
        ),
        log=lambda *_: None,
    )
    return out / "train"


def clips_from_shards(path):
    import io
    import tarfile

    out = {}
    for tar in sorted(path.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".npy"):
                    out[m.name[: -len(".npy")]] = np.load(io.BytesIO(tf.extractfile(m).read()))
    return out


def test_evaluate_scores_model_and_baselines(unet_export, shards, tmp_path):
    m = evaluate(
        EvalOptions(
            checkpoint=str(unet_export),
            shards=str(shards),
            context=2,
            future=4,
            clips=7,
            samples=2,
            steps=2,
            batch_size=3,
            cpus_per_worker=1,
            out=str(tmp_path),
        )
    )
    pr = m["protocol"]
    assert (pr["context"], pr["future"], pr["clips"], pr["samples_per_clip"], pr["steps"]) == (2, 4, 7, 2, 2)
    assert pr["resolution"] == [16, 16] and pr["sampler"] == "ddim"
    assert (pr["device"], pr["gpus_per_actor"]) == ("cpu", 0.0), "a GPU-less cluster: CPU actors, nothing reserved"
    assert len(m["per_frame"]["psnr"]) == 4 and set(m["baseline"]) == {"copy_last", "context_mean", "blank"}
    assert m["best_of"]["k"] == 2 and m["best_of"]["psnr"] >= m["psnr"]
    best = max(m["baseline"].values(), key=lambda b: b["psnr"])
    assert m["psnr_gain"] == pytest.approx(m["psnr"] - best["psnr"], abs=1e-3)

    # copy_last recomputed from the raw shard clips with numpy: mean over 7 clips x 4 frames of PSNR (peak 255),
    # an exact frame scoring the PSNR of 8-bit rounding (MSE 1/12 of a grey level squared)
    clips = clips_from_shards(shards)
    assert len(clips) == 10
    vals = []
    cap = 10 * np.log10(255.0**2 / (1 / 12))
    for clip in list(clips.values()):
        x = clip.astype(np.float64)
        for f in range(2, 6):
            mse = ((x[f] - x[1]) ** 2).mean()
            vals.append(min(10 * np.log10(255.0**2 / mse), cap) if mse > 0 else cap)
    per_clip = np.array(vals).reshape(10, 4).mean(1)
    # the 7 clips are the first 7 in shard order
    assert m["baseline"]["copy_last"]["psnr"] == pytest.approx(per_clip[:7].mean(), abs=0.02)

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["psnr"] == m["psnr"]
    for name in ("psnr_per_frame.png", "prediction.gif", "prediction.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_same_command_same_numbers(unet_export, shards, tmp_path):
    opts = dict(checkpoint=str(unet_export), shards=str(shards), clips=4, steps=2, batch_size=2, cpus_per_worker=1)
    a, b = evaluate(EvalOptions(**opts)), evaluate(EvalOptions(**opts))
    assert a["psnr"] == b["psnr"] and a["ssim"] == b["ssim"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--context", 0], "--context: must be a positive integer"),
        (["--context", 5, "--future", 5], "frames"),  # clips hold 8 frames
        (["--steps", 0], "--steps: must be in [1, 1000]"),
        (["--text-guidance", 2], "was trained without text (no text.encoder)"),
        (["--shards", "NOWHERE"], "--shards"),
    ],
)
def test_bad_options_are_refused_before_ray_work(unet_export, shards, tmp_path, capsys, args, message):
    base = {"--checkpoint": str(unet_export), "--shards": str(shards), "--out": str(tmp_path)}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = str(tmp_path / value) if value == "NOWHERE" else str(value)
    code = main(["evaluate", *[x for kv in base.items() for x in kv]])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "metrics.json").exists()


def test_cli_prints_the_table(unet_export, shards, tmp_path, capsys):
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(unet_export),
            "--shards",
            str(shards),
            "--clips",
            "2",
            "--steps",
            "1",
            "--cpus-per-worker",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "| copy_last" in out and "| gain over best |" in out


def test_asking_for_a_gpu_on_a_cluster_without_one_is_refused_naming_the_option(unet_export, shards):
    with pytest.raises(EvaluationError, match="--device cuda: the Ray cluster has no GPUs"):
        evaluate(
            EvalOptions(checkpoint=str(unet_export), shards=str(shards), context=2, future=4, clips=2, device="cuda")
        )


def test_digit_identity_is_scored_for_the_model_and_copy_last(shards, tmp_path):
    """A fresh model predicts copy-last (test_copy_last.py), so its scores must equal copy_last's: PSNR and the
    identity read at the digits' true positions in the last predicted frame."""
    from support.exports import PIXEL

    from vdp_ray.config import load_config
    from vdp_ray.export import write_export
    from vdp_ray.models import build_denoiser

    cfg = load_config(None, PIXEL)
    fresh = write_export(tmp_path / "fresh", cfg, "unet3d", build_denoiser(cfg).state_dict(), {})
    m = evaluate(
        EvalOptions(
            checkpoint=str(fresh),
            shards=str(shards),
            context=2,
            future=4,
            clips=10,
            steps=2,
            batch_size=5,
            cpus_per_worker=1,
            out=str(tmp_path / "ev"),
        )
    )
    copy = m["baseline"]["copy_last"]
    assert m["psnr"] == copy["psnr"] and m["ssim"] == copy["ssim"]
    assert m["identity"] == copy["identity"] and 0 <= m["identity"] <= 1
    assert m["identity_reader_accuracy"] >= 0.7  # the instrument reads the true frames
    assert "identity" in (tmp_path / "ev" / "metrics.json").read_text()
