"""Runs shared by the training tests: each costs a Ray Train start-up (about 20 s on two cores) and a few dozen
steps, so one run feeds every test that only reads it, and a test that trains on from it copies its folder."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.runs import train_config


@dataclass(frozen=True)
class Run:
    dir: Path
    exports: dict[str, Path]
    stdout: str = ""  # what the command printed, for a run made by `vdp train`
    stderr: str = ""


@pytest.fixture(scope="session")
def unet_run(ray_local, digits, tmp_path_factory) -> Run:
    """tiny_unet, 20 steps on 2 workers with ZeRO-1, fp16 requested as on a GPU (this CPU falls back to fp32),
    checkpoints at 10 and 20, made by `vdp train` as a user runs it (a subprocess, joining the session's Ray so
    it starts no Ray of its own), its terminal kept. Read-only: copy run.dir to train on from it."""
    run = tmp_path_factory.mktemp("runs") / "unet"
    cfg = train_config(
        "tiny_unet", digits, run, "train.max_steps=20", "train.lr=1e-3", "train.precision=fp16", "train.zero_stage=1"
    )
    config = run.parent / "unet.yaml"
    cfg.save(config)
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    proc = subprocess.run(
        [sys.executable, "-m", "vdp_ray.cli", "train", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return Run(run, {"unet3d": run / "export"}, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def latent_run(digits, tmp_path_factory) -> Run:
    """tiny_dit's two stages in one fit, as `vdp train experiments/tiny_dit.yaml` runs them: the VAE (12 steps),
    its latent scale factor, then the DiT in its latents (20 steps); ZeRO-3 in bf16 on 2 workers (ZeRO 0-2 and
    fp32 are checked in-process in test_engine.py). Rank 0 is killed (SIGKILL) once, at the DiT's step 16: the
    group restarts from its step-14 checkpoint. The export is the last weights (select_by is unet_run's)."""
    from vdp_ray.train import fit
    from vdp_ray.train.faults import Drill

    run = tmp_path_factory.mktemp("runs") / "latent"
    cfg = train_config(
        "tiny_dit",
        digits,
        run,
        "train.max_steps=20",
        "vae.max_steps=12",
        "train.lr=1e-3",
        "vae.lr=2e-3",
        "train.zero_stage=3",
        "train.precision=bf16",
        "train.val_every=10",
        "train.preview_every=20",
        "train.log_every=1",
        "train.checkpoint_every=7",
        "train.max_failures=1",
        "train.select_by=last",
    )
    return Run(run, fit(cfg, drill=Drill("kill", 16)))
