"""Real Ray Train + real DeepSpeed on two CPU workers: every family, ZeRO 1-3, fp32/bf16, resume, faults."""

import json
from pathlib import Path

import pytest
import torch
from media import digit_shards

from vdp_ray.config import load_config
from vdp_ray.export import Export, load_state_dict
from vdp_ray.train import TrainingError, export_checkpoint, fit

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return digit_shards(tmp_path_factory.mktemp("digits"), num_clips=48)


def config(experiment, digits, run_dir, *overrides):
    base = [f"data.train={digits / 'train'}", f"data.val={digits / 'val'}", f"run.dir={run_dir}",
            f"run.name={run_dir.name}", "train.workers=2", "train.cpus_per_worker=0.5", "train.batch_size=4",
            "train.log_every=5", "train.val_every=10", "train.checkpoint_every=10", "train.preview_every=1000",
            "train.warmup_steps=5", "train.val_batches=1", "diffusion.sample_steps=5"]  # fmt: skip
    return load_config(ROOT / "experiments" / f"{experiment}.yaml", [*base, *overrides])


def logged(run_dir, stage):
    return [json.loads(line) for line in (run_dir / "logs" / f"{stage}.jsonl").read_text().splitlines()]


def last_checkpoint(run_dir, name):
    return sorted(p for p in (run_dir / "ray" / name).glob("checkpoint_*") if p.is_dir())[-1]


def test_unet_trains_exports_and_reloads(digits, tmp_path):
    run = tmp_path / "unet"
    # fp16 is requested as on a GPU: this CPU cannot, so it falls back to fp32 (ZeRO 1)
    cfg = config("tiny_unet", digits, run, "train.max_steps=30", "train.lr=1e-3", "train.precision=fp16",
                 "train.zero_stage=1")  # fmt: skip
    exports = fit(cfg)
    losses = [m["loss"] for m in logged(run, "unet3d")]
    assert [m["step"] for m in logged(run, "unet3d")] == [5, 10, 15, 20, 25, 30]
    assert losses[-1] < losses[0], losses
    export = Export(exports["unet3d"])
    assert export.meta["steps"] == 30 and export.stage == "unet3d"
    # the export holds exactly the EMA weights of the final checkpoint
    ema = load_state_dict(last_checkpoint(run, "unet-unet3d") / "ema.safetensors")
    model = export.model()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.items())
    assert (run / "config.yaml").is_file() and list((run / "tb" / "unet3d").glob("events.*"))
    # `vdp export` makes the same export from the checkpoint folder
    again = export_checkpoint(last_checkpoint(run, "unet-unet3d"), tmp_path / "again")
    assert all(torch.equal(Export(again).model().state_dict()[k], v) for k, v in ema.items())


def test_two_stage_vae_then_dit_with_zero2_zero3_and_bf16(digits, tmp_path):
    run = tmp_path / "latent"
    cfg = config("tiny_dit", digits, run, "train.max_steps=20", "train.lr=1e-3", "vae.lr=2e-3",
                 "train.zero_stage=2", "train.precision=fp32")  # fmt: skip
    vae_exports = fit(
        cfg.__class__.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "stages": ["vae"]}})
    )
    vae_losses = [m["loss"] for m in logged(run, "vae")]
    assert vae_losses[-1] < vae_losses[0]
    vae = Export(vae_exports["vae"])
    assert vae.cfg.vae.scale_factor and vae.cfg.vae.scale_factor > 0

    dit_cfg = config("tiny_dit", digits, tmp_path / "dit", "train.max_steps=20", "train.lr=1e-3", "train.zero_stage=3",
                     "train.precision=bf16", f"vae.export={vae.directory}", "train.stages=[dit]")  # fmt: skip
    exports = fit(dit_cfg)
    dit = Export(exports["dit"])
    dit_losses = [m["loss"] for m in logged(tmp_path / "dit", "dit")]
    assert dit_losses[-1] < dit_losses[0]
    assert dit.vae() is not None and dit.cfg.vae.scale_factor == pytest.approx(vae.cfg.vae.scale_factor)
    assert dit.model()(torch.zeros(1, 4, 4, 8, 8), torch.zeros(1)).shape == (1, 4, 4, 8, 8)


def test_pipeline_config_runs_both_stages_without_a_prompt(digits, tmp_path):
    run = tmp_path / "pipe"
    exports = fit(config("tiny_dit", digits, run, "train.max_steps=5", "train.val_every=5", "train.checkpoint_every=5"))
    assert set(exports) == {"vae", "dit"}
    assert exports["dit"] == run / "export" and (run / "export" / "vae" / "model.safetensors").is_file()


def test_rerunning_resumes_the_step_count(digits, tmp_path):
    run = tmp_path / "resume"
    fit(config("tiny_unet", digits, run, "train.max_steps=10"))
    fit(config("tiny_unet", digits, run, "train.max_steps=20"))
    steps = [m["step"] for m in logged(run, "unet3d")]
    assert steps == [5, 10, 15, 20], "the second run went on from step 10"


@pytest.mark.parametrize("fault", ["raise", "kill"])
def test_worker_failure_restarts_from_the_last_checkpoint(digits, tmp_path, fault):
    run = tmp_path / fault
    cfg = config("tiny_unet", digits, run, "train.max_steps=14", "train.log_every=1", "train.checkpoint_every=5",
                 f"train.fault={fault}", "train.fault_step=8", "train.max_failures=1")  # fmt: skip
    exports = fit(cfg)
    steps = [m["step"] for m in logged(run, "unet3d")]
    assert steps[-1] == 14 and Export(exports["unet3d"]).meta["steps"] == 14
    counts = {s: steps.count(s) for s in set(steps)}
    assert all(counts[s] == 1 for s in range(1, 6)), "nothing before the last checkpoint (step 5) was redone"
    assert all(counts[s] == 2 for s in (6, 7)), "the steps after that checkpoint were redone once"
    assert all(counts[s] == 1 for s in range(8, 15))


def test_non_finite_loss_stops_with_a_clear_message(digits, tmp_path):
    run = tmp_path / "nan"
    cfg = config("tiny_unet", digits, run, "train.max_steps=20", "train.checkpoint_every=5", "train.fault=nan",
                 "train.fault_step=7")  # fmt: skip
    with pytest.raises(TrainingError, match="non-finite loss at step 7 of the unet3d stage"):
        fit(cfg)
    good = last_checkpoint(run, "nan-unet3d")
    assert json.loads((good / "trainer_state.json").read_text())["step"] == 5
    assert not (run / "export").exists()


def test_missing_shards_fail_before_ray_starts(tmp_path):
    cfg = load_config(
        ROOT / "experiments" / "tiny_unet.yaml", [f"data.train={tmp_path / 'none'}", f"run.dir={tmp_path}"]
    )
    from vdp_ray.config import ConfigError

    with pytest.raises(ConfigError, match=r"data\.train: .*no such shard folder"):
        fit(cfg)


def test_max_minutes_caps_a_stage_and_still_exports(digits, tmp_path):
    run = tmp_path / "capped"
    cfg = config("tiny_unet", digits, run, "train.max_steps=100000", "train.max_minutes=0.1")
    export = fit(cfg)["unet3d"]
    steps = Export(export).meta["steps"]
    assert 0 < steps < 100000
    last = logged(run, "unet3d")[-1]
    assert last["step"] == steps, "the capped step is logged, validated and checkpointed like a last step"
    assert last_checkpoint(run, "capped-unet3d").is_dir()


def test_resume_on_another_worker_count_continues_from_the_weights(digits, tmp_path):
    """A ZeRO checkpoint from 2 workers resumed on 1, then on 2 again: DeepSpeed cannot re-partition the
    optimizer state, so the run says so and continues from the weights with a fresh optimizer; the step
    count, the LR schedule and the export carry on."""
    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    run = tmp_path / "rescale"
    common = ("train.lr=1e-3", "train.checkpoint_every=4", "train.log_every=2", "train.val_every=100")
    fit(config("tiny_unet", digits, run, "train.max_steps=4", *common))  # 2 workers
    fit(config("tiny_unet", digits, run, "train.max_steps=8", "train.workers=1", *common))
    exports = fit(config("tiny_unet", digits, run, "train.max_steps=12", "train.workers=2", *common))
    rows = logged(run, "unet3d")
    assert [m["step"] for m in rows] == [2, 4, 6, 8, 10, 12]  # never restarted from 0
    text = (run / "logs" / "unet3d.log").read_text()
    assert "written by 2 worker(s), resuming on 1" in text and "written by 1 worker(s), resuming on 2" in text
    # the LR at step 6 is the 8-step schedule's value at step 6, not a new warm-up's
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = WarmupCosineLR(opt, total_num_steps=8, warmup_num_steps=5, warmup_type="linear", cos_min_ratio=0.1)
    for _ in range(6):
        sched.step()
    assert rows[2]["lr"] == pytest.approx(sched.get_lr()[0], rel=1e-6)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert Export(exports["unet3d"]).meta["steps"] == 12
    assert len(json.loads((run / "logs" / "unet3d-workers.json").read_text())) == 2
