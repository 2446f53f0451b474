import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vdp_ray.config import Config

ROOT = Path(__file__).resolve().parents[1]
VDP = str(Path(sys.executable).with_name("vdp"))  # the installed console script


def vdp(*args, check=False):
    proc = subprocess.run([VDP, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_lists_the_verbs():
    out = vdp("--help", check=True).stdout
    for verb in ("shard", "train", "predict", "evaluate", "demo", "models"):
        assert verb in out


@pytest.mark.parametrize("verb", ["train", "tune", "demo"])
def test_the_commands_that_train_document_verbose(verb, capsys):
    """Ray's own output goes to the run folder unless --verbose asks for it on the terminal."""
    from vdp_ray.cli import main

    with pytest.raises(SystemExit):
        main([verb, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--verbose" in text and "ray.log" in text


def test_dry_run_prints_the_resolved_config_and_starts_nothing():
    code = (
        "import sys; from vdp_ray.cli import main; "
        "rc = main(['train', 'experiments/tiny_unet.yaml', '--dry-run', 'train.lr=2e-4', 'run.dir=runs/a']); "
        "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY', file=sys.stderr); sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "NO_RAY" in proc.stderr
    cfg = Config.from_dict(yaml.safe_load(proc.stdout))
    assert cfg.train.lr == pytest.approx(2e-4) and cfg.run.dir == "runs/a"
    assert cfg.model.unet3d.base_channels is not None, "presets are resolved in the printed config"


def test_config_errors_exit_2_naming_the_key():
    proc = vdp("train", "experiments/tiny_unet.yaml", "--dry-run", "train.lr=abc")
    assert proc.returncode == 2
    assert "experiments/tiny_unet.yaml: train.lr: expected a number, got 'abc'" in proc.stderr
    proc = vdp("train", "experiments/missing.yaml", "--dry-run")
    assert proc.returncode == 2 and "config file not found" in proc.stderr


def test_models_prints_parameters_and_flops_for_every_preset():
    out = vdp("models", check=True).stdout
    rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
    names = {(r[0], r[1]) for r in rows}
    assert {
        ("unet3d", "tiny"),
        ("unet3d", "seed"),
        ("dit", "tiny"),
        ("dit", "B"),
        ("dit", "XL"),
        ("vae", "seed"),
    } <= names
    for r in rows:
        assert r[2].endswith("M") and float(r[2][:-1]) > 0
        assert float(r[-1]) > 0  # GFLOPs
    b = next(r for r in rows if r[:2] == ["dit", "B"])
    assert 170 < float(b[2][:-1]) < 190


def test_models_of_an_experiment_config():
    out = vdp("models", "--config", "experiments/tiny_dit.yaml", check=True).stdout
    assert "dit" in out and "vae" in out and "(4, 4, 8, 8)" in out  # latents of 8x32x32 under 2x/4x


def test_keys_lists_documented_keys():
    out = vdp("keys", "train.", check=True).stdout
    assert "train.lr" in out and "Peak learning rate" in out and "diffusion." not in out


def test_shard_without_a_source_is_a_usage_error(tmp_path):
    proc = vdp("shard", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "nothing to shard: give --source PATH, --dataset dataset.yaml or --synthetic moving-digits" in proc.stderr
