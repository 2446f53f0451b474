"""Real Ray Train + real DeepSpeed on two CPU workers: train, export, reload, resume on other worker counts, the
time cap, worker failures and divergence. The shared runs come from conftest.py (`unet_run`, `latent_run`)."""

import json
import os
import re
import shutil

import pytest
import torch
from support.runs import checkpoints, last_checkpoint, logged, train_config, trainer_state
from support.videos import corrupt_split

from vdp_ray.cli import main
from vdp_ray.export import Export, load_state_dict
from vdp_ray.fsutil import OutputError, run_lock
from vdp_ray.models import build_denoiser
from vdp_ray.train import CheckpointError, TrainingError, export_checkpoint, fit
from vdp_ray.train.faults import Drill

pytestmark = pytest.mark.train


def test_unet_trains_exports_and_reloads(unet_run, tmp_path, monkeypatch, capsys):
    run = unet_run.dir
    rows = logged(run, "unet3d")
    assert [m["step"] for m in rows] == [5, 10, 15, 20]
    assert rows[-1]["loss"] < rows[0]["loss"], rows
    assert all(m["workers"] == 2 and m["lr"] > 0 and m["clips_per_s"] > 0 for m in rows)
    assert [trainer_state(c)["step"] for c in checkpoints(run, "unet-unet3d")] == [10, 20]
    assert "val/loss" in (run / "logs" / "unet3d.log").read_text()
    export = Export(unet_run.exports["unet3d"])
    assert export.directory == run / "export" and export.meta["trained_steps"] == 20 and export.stage == "unet3d"
    assert export.cfg.train.zero_stage == 1 and export.cfg.model.family == "unet3d"
    # train.select_by: the untrained model (step 0: a residual model starts as copy-last) and the one preview of
    # training (step 20) competed on the validation gain; the export holds the winner's EMA weights
    chosen = export.meta["selected_by"]
    assert chosen["metric"] == "val/psnr_gain" and chosen["step"] in (0, 20) and export.meta["steps"] == chosen["step"]
    assert "best val/psnr_gain so far" in (run / "logs" / "unet3d.log").read_text()
    ema = load_state_dict(last_checkpoint(run, "unet-unet3d") / "ema.safetensors")
    torch.manual_seed(export.cfg.run.seed)  # as every rank does before building the model
    initial = build_denoiser(export.cfg).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in ema.items()), "training moved the weights"
    model = export.model()
    winner = ema if chosen["step"] == 20 else initial
    assert all(torch.allclose(model.state_dict()[k], v) for k, v in winner.items())
    # the run folder records its config and its TensorBoard events
    assert (run / "config.yaml").is_file() and list((run / "tb" / "unet3d").glob("events.*"))
    # `vdp export` makes the same export from the checkpoint folder
    checkpoint = last_checkpoint(run, "unet-unet3d")
    again = export_checkpoint(checkpoint, tmp_path / "again")
    assert all(torch.equal(Export(again).model().state_dict()[k], v) for k, v in ema.items())
    # ...and never over what it did not write: the run folder, the checkpoint it reads, the current folder
    for out in (run, checkpoint):
        with pytest.raises(OutputError, match="overlaps the checkpoint"):
            export_checkpoint(checkpoint, out)
    # every rank's files are recorded with their digests: a damaged or replaced one is refused, naming it
    digests = json.loads((checkpoint / "trainer_state.json").read_text())["digests"]
    assert {"ema.safetensors", "config.yaml", "rng_rank0.pt", "rng_rank1.pt"} <= set(digests)
    assert any(name.startswith("ds/") for name in digests)
    damaged = shutil.copytree(checkpoint, tmp_path / "damaged")
    weights = bytearray((damaged / "ema.safetensors").read_bytes())
    weights[-1] ^= 1
    (damaged / "ema.safetensors").write_bytes(bytes(weights))
    with pytest.raises(CheckpointError, match=r"ema\.safetensors does not match its digest"):
        export_checkpoint(damaged, tmp_path / "never")
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--checkpoint", str(checkpoint), "--out", "."]) == 2
    assert "not an export: refusing to replace" in capsys.readouterr().err and (tmp_path / "again").is_dir()


def test_the_terminal_shows_our_lines_and_the_run_folder_keeps_ray_s(unet_run):
    """`vdp train` prints our progress lines; Ray's own (the controller's resource requests, a line per report with
    the checkpoint's path, Ray Data's notices) go to the run folder's logs/ray.log, named on the terminal."""
    terminal = unet_run.stdout + unet_run.stderr
    log = unet_run.dir / "logs" / "ray.log"
    assert "[vdp unet3d] step 20/20 | loss" in unet_run.stdout and "unet3d: export in" in unet_run.stdout
    assert "[vdp unet3d] 2 worker(s) on 1 node(s)" in unet_run.stdout, "a worker's line, forwarded by Ray"
    assert f"Ray's own output goes to {log}" in unet_run.stderr
    for chatter in ("Reporting training result", "Checkpoint successfully created", "Requesting resources"):
        assert chatter not in terminal, terminal
    assert not re.search(r"\(\w+ pid=\d+", terminal), "no worker line of Ray's, e.g. (RayTrainWorker pid=1)"
    text = log.read_text()
    assert "Reporting training result" in text and "(TrainController pid=" in text
    assert "[vdp unet3d] step 20/20" in text, "ours too, in order among Ray's"


def test_unreadable_clips_in_training_are_skipped_named_and_past_the_limit_stop_the_run(digits, tmp_path):
    """Half the training clips are garbage inside intact tars: each one met is skipped and named (shard and key)
    in the run log; past data.max_bad_fraction the run stops at once with that reason, instead of failing inside
    Ray Data and restarting the group on the same file until train.max_failures is spent."""
    data = tmp_path / "digits"
    spoiled = corrupt_split(digits / "train", data / "train", every=2)
    shutil.copytree(digits / "val", data / "val")
    run = tmp_path / "run"
    cfg = train_config(
        "tiny_unet",
        data,
        run,
        "train.workers=1",
        "train.max_steps=40",
        "train.max_failures=2",
        "data.max_bad_fraction=0.1",
    )
    with pytest.raises(TrainingError, match=r"clips could not be read \(over data.max_bad_fraction 0.1; the last: "):
        fit(cfg)
    text = (run / "logs" / "unet3d.log").read_text()
    named = [k for k in spoiled if f"skipped clip {k} in shard-000000.tar" in text]
    assert len(named) >= 5, text[-2000:]
    assert "resumed" not in text, "stopped, not restarted"


def test_shards_of_only_unreadable_clips_on_one_rank_neither_hang_nor_stop_a_two_worker_run(ray_local, tmp_path):
    """Half the training shards hold nothing readable: a rank meeting a batch of them takes its step anyway
    (weighted zero) instead of dropping it. Before, that rank ended its epoch a step early and waited in Ray
    Data's split coordinator while the other waited in the step's collective, forever."""
    import signal

    from vdp_ray.data.shards import ShardOptions, shard

    clean = tmp_path / "clean"
    shard(
        ShardOptions(
            out=str(clean),
            synthetic="moving-digits",
            num_clips=48,
            frames=8,
            size=(32, 32),
            split={"train": 0.75, "val": 0.25},
            digits=(1, 1),
            shard_size=4,
        ),
        log=lambda *_: None,
    )
    data = tmp_path / "data"
    files = {e["file"] for e in json.loads((clean / "train" / "manifest.json").read_text())["shards"][1::2]}
    spoiled = corrupt_split(clean / "train", data / "train", every=1, files=files)
    shutil.copytree(clean / "val", data / "val")
    run = tmp_path / "run"
    cfg = train_config(
        "tiny_unet",
        data,
        run,
        "train.max_steps=24",
        "data.shuffle_buffer=0",
        "data.max_bad_fraction=0.9",
        "train.val_every=1000",
        "train.checkpoint_every=1000",
    )

    def hung(*_):
        raise TimeoutError("the two-worker run hung on a rank's unreadable batches")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(600)  # a hang fails this test instead of the whole CI run
    try:
        exports = fit(cfg)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert (exports["unet3d"] / "model.safetensors").is_file()
    rows = logged(run, "unet3d")
    assert rows[-1]["step"] == 24 and rows[-1]["skipped_clips"] >= 8, rows[-1]
    text = (run / "logs" / "unet3d.log").read_text()
    assert any(f"skipped clip {k} in shard-" in text for k in spoiled), "each unreadable clip is named"


def test_a_run_folder_has_one_writer(digits, tmp_path):
    """A second `vdp train` on a run folder in use is refused before any Ray work, naming the holder."""
    run = tmp_path / "run"
    with run_lock(run, "vdp train"), pytest.raises(OutputError, match=rf"in use by vdp train \(pid {os.getpid()}\)"):
        fit(train_config("tiny_unet", digits, run))
    assert sorted(p.name for p in run.iterdir()) == [".vdp.lock"]


def test_a_rerun_resumes_on_other_worker_counts_survives_a_failure_and_the_time_cap_still_exports(
    unet_run, digits, tmp_path
):
    """Re-running a finished 2-worker run with more steps on 1 worker (where a worker raises once), then on 2
    again under train.max_minutes. DeepSpeed cannot re-partition ZeRO's optimizer state, so the run says so
    and continues from the weights with a fresh optimizer; the step count, the LR schedule and the export carry
    on. The failure restarts the worker group from the last checkpoint, redoing only the steps after it. The
    time cap ends the last run early, and its capped step is logged, checkpointed and exported like a last
    step."""
    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    run = shutil.copytree(unet_run.dir, tmp_path / unet_run.dir.name)
    # select_by=last: these runs check that the step count and the export carry on (the best-validation export is
    # test_selection.py's and test_unet_trains_exports_and_reloads's)
    common = ("train.lr=1e-3", "train.precision=fp16", "train.zero_stage=1", "train.select_by=last")
    cfg = train_config(
        "tiny_unet",
        digits,
        run,
        "train.max_steps=30",
        "train.workers=1",
        "train.log_every=1",
        "train.checkpoint_every=5",
        "train.max_failures=1",
        *common,
    )
    fit(cfg, drill=Drill("raise", 28))
    rows = logged(run, "unet3d")
    steps = [m["step"] for m in rows]
    assert steps[:4] == [5, 10, 15, 20], "the first run's rows are kept"
    counts = {s: steps[4:].count(s) for s in range(21, 31)}
    assert counts == {**dict.fromkeys(range(21, 31), 1), 26: 2, 27: 2}, "went on from 20; redid 26-27 after the failure"
    assert rows[-1]["workers"] == 1 and Export(run / "export").meta["steps"] == 30
    # the LR at step 25 is the 30-step schedule's value at step 25, not a new warm-up's
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = WarmupCosineLR(opt, total_num_steps=30, warmup_num_steps=5, warmup_type="linear", cos_min_ratio=0.1)
    for _ in range(25):
        sched.step()
    assert next(m for m in rows if m["step"] == 25)["lr"] == pytest.approx(sched.get_lr()[0], rel=1e-6)

    exports = fit(train_config("tiny_unet", digits, run, "train.max_steps=100000", "train.max_minutes=0.1", *common))
    text = (run / "logs" / "unet3d.log").read_text()
    assert "written by 2 worker(s), resuming on 1" in text and "written by 1 worker(s), resuming on 2" in text
    assert "train.max_minutes=0.1 reached at step" in text
    steps = Export(exports["unet3d"]).meta["steps"]
    assert 30 < steps < 100000
    rows = logged(run, "unet3d")
    later = [m["step"] for m in rows if m["workers"] == 2][4:]
    assert later and min(later) > 30, "the last run went on from step 30, never from 0"
    assert rows[-1]["step"] == steps and rows[-1]["loss"] < rows[0]["loss"]
    # the 100000-step schedule alone would still be at its peak; the time cap brought the LR down with the clock
    capped = [m["lr"] for m in rows if m["step"] > 30]
    assert capped[-1] < 0.9e-3 and capped == sorted(capped, reverse=True)
    assert trainer_state(last_checkpoint(run, "unet-unet3d"))["step"] == steps
    assert len(json.loads((run / "logs" / "unet3d-workers.json").read_text())) == 2


def test_two_stages_vae_then_dit_in_one_run_survive_a_killed_worker(latent_run):
    run, exports = latent_run.dir, latent_run.exports
    assert set(exports) == {"vae", "dit"}
    assert exports["dit"] == run / "export" and exports["vae"] == run / "vae_export"
    vae_rows, dit_rows = logged(run, "vae"), logged(run, "dit")
    assert vae_rows[-1]["loss"] < vae_rows[0]["loss"] and dit_rows[-1]["loss"] < dit_rows[0]["loss"]
    assert [m["step"] for m in vae_rows] == list(range(1, 13)), "the VAE stage ran once through, no fault there"
    # the killed rank: the group restarted from a checkpoint (step 14's, or step 7's had Ray's controller not yet
    # registered 14 when the rank died) and redid only the steps after it; no step lost, none run three times
    steps = [m["step"] for m in dit_rows]
    counts = {s: steps.count(s) for s in set(steps)}
    redone = [s for s in sorted(counts) if counts[s] == 2]
    assert steps[-1] == 20 and set(counts) == set(range(1, 21)) and max(counts.values()) == 2
    assert redone == list(range(redone[0], 16)) and redone[0] - 1 in (7, 14), counts
    # under ZeRO-3 each rank averaged its own partitions: gathered, they are the average of the model's weights
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    final = last_checkpoint(run, "latent-dit")
    weights = get_fp32_state_dict_from_zero_checkpoint(str(final), tag="ds")
    averaged = load_state_dict(final / "ema.safetensors")
    assert {k: v.shape for k, v in averaged.items()} == {k: v.shape for k, v in weights.items()}
    gap = sum((averaged[k] - weights[k]).pow(2).sum() for k in weights)
    assert gap < 0.05 * sum(w.pow(2).sum() for w in weights.values()), "partitions gathered in the wrong place"
    vae = Export(exports["vae"])
    scale = vae.cfg.vae.scale_factor
    assert scale and scale > 0 and "latent scale factor" in (run / "logs" / "vae.log").read_text()
    dit = Export(exports["dit"])
    # the DiT's export carries its own copy of the VAE and records its geometry and scale factor
    assert (run / "export" / "vae" / "model.safetensors").is_file()
    assert dit.vae() is not None and dit.cfg.vae.scale_factor == pytest.approx(scale)
    assert dit.cfg.train.zero_stage == 3 and dit.meta["steps"] == 20 and Export(exports["vae"]).meta["steps"] == 12
    assert dit.model()(torch.zeros(1, 4, 4, 8, 8), torch.zeros(1)).shape == (1, 4, 4, 8, 8)
    # and it predicts in pixels, keeping the given frames
    from vdp_ray.predict import Predictor

    p = Predictor.from_export(exports["dit"], device="cpu")
    clip = (torch.rand(4, 32, 32, 1) * 255).to(torch.uint8).numpy()
    out = p.predict(clip, 4, steps=2, seed=0, include_context=True)
    assert out.shape == (8, 32, 32, 1) and (out[:4] == clip).all()


def test_non_finite_loss_stops_with_a_clear_message(digits, tmp_path):
    run = tmp_path / "nan"
    cfg = train_config("tiny_unet", digits, run, "train.max_steps=10", "train.checkpoint_every=5")
    with pytest.raises(TrainingError, match="non-finite loss at step 7 of the unet3d stage"):
        fit(cfg, drill=Drill("nan", 7))
    assert trainer_state(last_checkpoint(run, "nan-unet3d"))["step"] == 5
    assert not (run / "export").exists()
