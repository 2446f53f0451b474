import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from vdp_ray.config import load_config
from vdp_ray.train.ema import EMA
from vdp_ray.train.engine import (
    build_engine,
    deepspeed_config,
    lr_ratio,
    resolve_precision,
    set_lr,
    stage_settings,
)


def test_fp16_falls_back_to_fp32_on_every_cpu():
    """Even where DeepSpeed accepts fp16 on a CPU (AVX512-FP16 / AMX), it is far slower there than fp32."""
    precision, note = resolve_precision("fp16", "cpu")
    assert precision == "fp32" and "fp16 is a GPU precision" in note
    assert resolve_precision("fp32", "cpu") == ("fp32", None)


def test_deepspeed_config_follows_ours():
    overrides = [
        "train.batch_size=3",
        "train.grad_accum=2",
        "train.zero_stage=2",
        "train.lr=3e-4",
        "train.max_steps=50",
        "train.warmup_steps=80",
        "vae.max_steps=7",
        "vae.lr=1e-3",
    ]
    cfg = load_config(None, overrides)
    ds = deepspeed_config(cfg, "unet3d", world_size=4, precision="fp16")
    assert ds["train_batch_size"] == 3 * 2 * 4 and ds["zero_optimization"]["stage"] == 2
    assert ds["fp16"]["enabled"] and ds["fp16"]["loss_scale"] == 0, "dynamic loss scaling"
    assert ds["optimizer"]["params"]["torch_adam"] is True and ds["optimizer"]["params"]["lr"] == 3e-4
    zero = ds["zero_optimization"]
    assert zero["reduce_bucket_size"] == 200_000_000 and zero["overlap_comm"], "no size given: the largest buckets"
    sized = deepspeed_config(cfg, "unet3d", world_size=4, precision="bf16", num_params=160_000_000, overlap=True)
    z = sized["zero_optimization"]  # about 8 buckets per backward pass, so the reduction overlaps it
    assert z["reduce_bucket_size"] == z["allgather_bucket_size"] == 20_000_000 and z["overlap_comm"]
    small = deepspeed_config(cfg, "unet3d", world_size=1, precision="fp32", num_params=1_000)["zero_optimization"]
    assert small["reduce_bucket_size"] == 2_000_000 and not small["overlap_comm"]
    vae = deepspeed_config(cfg, "vae", world_size=1, precision="bf16")
    assert (
        vae["bf16"]["enabled"]
        and vae["optimizer"]["params"]["lr"] == 1e-3
        and stage_settings(cfg, "vae").max_steps == 7
    )


def test_the_lr_schedule_ends_with_the_run_by_steps_or_by_time():
    """One schedule for every run, set by the loop (DeepSpeed gets no scheduler). Bounded by steps, after the
    warm-up it is DeepSpeed's WarmupCosineLR, which such runs used before; under train.max_minutes the cosine
    reaches its floor when the time budget is spent even if the steps are far from done, so a run stopped by the
    clock ends on a decayed learning rate."""
    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    ds = WarmupCosineLR(opt, total_num_steps=40, warmup_num_steps=5, warmup_type="linear", cos_min_ratio=0.1)
    for step in range(45):
        ds.step()  # DeepSpeed's iteration `step` now
        if step >= 5:
            assert lr_ratio(step, 40, 5, 0.1) == pytest.approx(ds.get_lr()[0], rel=1e-9), step
    # the numbers of a 40-step run with 5 warm-up updates, pinned: a linear warm-up from the first update, then
    # the cosine, whose last update is at the floor
    steps_bounded = [lr_ratio(s, 40, 5, 0.1) for s in range(40)]
    assert steps_bounded[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert steps_bounded[5:9] == pytest.approx([0.998188, 0.992768, 0.983783, 0.971306], abs=1e-6)
    assert steps_bounded[21] == pytest.approx(0.55 + 0.45 * math.cos(math.pi * 17 / 35))
    assert steps_bounded[4:] == sorted(steps_bounded[4:], reverse=True) and steps_bounded[-1] == pytest.approx(0.1)
    # a warm-up longer than the run ends before its last update, which is the cosine's
    assert lr_ratio(48, 50, 80, 0.1) == 1.0 and lr_ratio(49, 50, 80, 0.1) == pytest.approx(0.1)
    # 10 of 100000 steps, but half the time used: half-way down the cosine; all of it: the floor
    assert lr_ratio(10, 100_000, 5, 0.1, used=0.5) == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-3)
    assert lr_ratio(10, 100_000, 5, 0.1, used=1.0) == pytest.approx(0.1)
    assert lr_ratio(10, 100_000, 5, 0.1, used=0.0) == pytest.approx(1.0, abs=1e-6)
    # no warm-up, and a one-step run (DeepSpeed refused both: warmup_num_steps must be positive)
    assert lr_ratio(0, 10, 0, 0.1) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 10)) / 2)
    assert lr_ratio(0, 1, 100, 0.1) == pytest.approx(0.1)
    for overrides in ([], ["train.max_minutes=3"]):
        assert "scheduler" not in deepspeed_config(load_config(None, overrides), "unet3d", 1, precision="fp32")


def test_ema_follows_weights_with_warmup():
    net = torch.nn.Linear(2, 1)
    start = net.weight.detach().clone()
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)  # first update: decay min(0.9, (1 + 0) / (10 + 0)) = 0.1
    assert torch.allclose(ema.state_dict()["weight"], 0.1 * start + 0.9)
    for _ in range(300):
        ema.update(net)
    assert torch.allclose(ema.state_dict()["weight"], torch.ones(1, 2), atol=1e-6)
    assert ema.current_decay() == pytest.approx(0.9)


def test_missing_shards_fail_before_ray_starts(tmp_path):
    from support.runs import ROOT

    from vdp_ray.config import ConfigError
    from vdp_ray.train import fit

    cfg = load_config(
        ROOT / "experiments" / "tiny_unet.yaml", [f"data.train={tmp_path / 'none'}", f"run.dir={tmp_path}"]
    )
    with pytest.raises(ConfigError, match=r"data\.train: .*no such shard folder"):
        fit(cfg)
    assert not (tmp_path / "logs").exists() and not (tmp_path / "ray").exists()


@pytest.fixture(scope="module")
def one_rank():
    """A one-rank gloo process group in this process: DeepSpeed engines without Ray or a second rank."""
    import os

    import torch.distributed as dist
    from support.serving import free_port

    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _weights(engine, zero3: bool) -> dict[str, torch.Tensor]:
    import deepspeed

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=zero3):
        return {k: v.detach().float().clone() for k, v in engine.module.state_dict().items()}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_every_zero_stage_and_precision_trains_saves_and_restores_on_one_rank(one_rank, zero, precision, tmp_path):
    """The engine the loop builds (our DeepSpeed config, the stage's loss, the EMA) at every ZeRO stage in fp32
    and bf16: steps lower the loss on a fixed batch, the EMA follows, and a checkpoint restores the weights into
    an engine built from other weights. Multi-rank ZeRO is the `train` tier's business."""
    import deepspeed
    from support.runs import ROOT

    from vdp_ray.train.stages import DiffusionStage

    cfg = load_config(
        ROOT / "experiments" / "tiny_unet.yaml",
        [
            f"train.zero_stage={zero}",
            f"train.precision={precision}",
            "train.batch_size=2",
            "train.lr=2e-3",
            "train.warmup_steps=1",
            "train.max_steps=8",
            "train.grad_clip=1.0",
            "diffusion.masks.prediction=1.0",
            "diffusion.masks.generation=0",
            "diffusion.masks.interpolation=0",
            "diffusion.masks.context_drop=0",
        ],
    )
    dtype = {"bf16": torch.bfloat16}.get(precision, torch.float32)

    def engine_for(seed: int):
        torch.manual_seed(seed)
        stage = DiffusionStage(cfg, torch.device("cpu"))
        engine, ema = build_engine(stage, cfg, "unet3d", 1, precision, deepspeed.initialize)  # as the loop builds them
        return stage, engine, ema

    stage, engine, ema = engine_for(0)
    initial = _weights(engine, zero == 3)
    d = cfg.data
    clips = torch.rand(2, d.channels, d.frames, *d.size) * 2 - 1
    losses = []
    t = cfg.train
    for step in range(8):
        set_lr(engine, t.lr * lr_ratio(step, t.max_steps, t.warmup_steps, t.min_lr_ratio))  # as the loop sets it
        torch.manual_seed(step % 2)  # two fixed draws of masks, timesteps and noise: the loss must fall on them
        loss = stage.loss(engine, clips, [""] * 2, dtype)
        engine.backward(loss)
        engine.step()
        ema.update(engine.module)
        losses.append(loss.float().item())
    assert all(np.isfinite(losses)) and np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    trained = _weights(engine, zero == 3)
    assert any(not torch.equal(initial[k], trained[k]) for k in trained)
    averaged = ema.state_dict()  # under ZeRO-3 gathered from this rank's partitions
    assert ema.updates == 8 and all(v.dtype == torch.float32 for v in averaged.values())
    assert {k: v.shape for k, v in averaged.items()} == {k: v.shape for k, v in trained.items()}
    moved = [k for k in trained if trained[k].dtype.is_floating_point and not torch.equal(initial[k], trained[k])]
    for k in moved:  # between the initial and the trained weights, nearer the trained (decay <= 0.47 here)
        assert (averaged[k] - trained[k]).norm() < (initial[k] - trained[k]).norm(), k
    ema.load(averaged, ema.updates)
    assert all(torch.equal(ema.state_dict()[k], averaged[k]) for k in averaged)
    engine.save_checkpoint(str(tmp_path), tag="ds")

    _, other, _ = engine_for(1)
    assert any(not torch.equal(_weights(other, zero == 3)[k], trained[k]) for k in trained)
    other.load_checkpoint(str(tmp_path), tag="ds", load_module_strict=True)
    restored = _weights(other, zero == 3)
    assert all(torch.equal(restored[k], trained[k]) for k in trained)


class _Lines:
    def __init__(self):
        self.lines = []

    def line(self, text):
        self.lines.append(text)


@pytest.mark.parametrize("zero", [1, 2, 3])
def test_a_checkpoint_of_another_worker_count_resumes_into_the_optimizers_fp32_weights(one_rank, zero, tmp_path):
    """ZeRO's optimizer state cannot be re-partitioned for another worker count: the weights are loaded into the
    module and into the optimizer's fp32 master copy (which the next step writes back into the module). Without
    the second, the first step after the resume put the initial weights back."""
    import deepspeed
    from support.runs import ROOT

    from vdp_ray.train.checkpoint import DS_TAG, _load_engine
    from vdp_ray.train.stages import DiffusionStage

    cfg = load_config(
        ROOT / "experiments" / "tiny_unet.yaml",
        [
            f"train.zero_stage={zero}",
            "train.precision=fp32",
            "train.batch_size=2",
            "train.lr=1e-3",
            "train.warmup_steps=1",
            "train.max_steps=8",
            "train.weight_decay=0",
        ],
    )
    d = cfg.data
    clips = torch.rand(2, d.channels, d.frames, *d.size) * 2 - 1

    def engine_for(seed: int):
        torch.manual_seed(seed)
        stage = DiffusionStage(cfg, torch.device("cpu"))
        return stage, build_engine(stage, cfg, "unet3d", 1, "fp32", deepspeed.initialize)[0]

    stage, engine = engine_for(0)
    for _ in range(2):
        engine.backward(stage.loss(engine, clips, [""] * 2, torch.float32))
        engine.step()
    trained = _weights(engine, zero == 3)
    engine.save_checkpoint(str(tmp_path), tag=DS_TAG)

    stage, other = engine_for(1)
    log = _Lines()
    _load_engine(other, tmp_path, {"world_size": 2}, cfg, world=1, step=2, log=log)  # "written by 2 workers"
    assert "written by 2 worker(s), resuming on 1" in log.lines[0]
    assert all(torch.equal(_weights(other, zero == 3)[k], trained[k]) for k in trained)
    other.backward(stage.loss(other, clips, [""] * 2, torch.float32) * 0.0)  # a step that changes nothing...
    other.step()
    after = _weights(other, zero == 3)
    assert all(torch.allclose(after[k], trained[k], atol=1e-6) for k in trained), "...keeps the resumed weights"


def test_a_resumed_rank_continues_its_own_streams_and_ranks_draw_apart(tmp_path):
    """Every stream a rank draws from (CPU torch, NumPy, Python; CUDA on a GPU: `make gpu-check`) goes through a
    checkpoint: after the resume each rank draws exactly what it would have drawn uninterrupted, although every
    rank first seeds the same run seed (identical initial weights), and two ranks never draw alike."""
    import random

    from vdp_ray.train.randomness import rng_state, seed_rank, set_rng_state

    def draws():
        return [
            torch.randn(4),
            torch.randint(0, 1000, (3,)),
            torch.from_numpy(np.random.rand(2)),
            torch.tensor(random.random()),
        ]

    uninterrupted = {}
    for rank in (0, 1):
        seed_rank(7, rank)
        draws()  # some steps
        torch.save(rng_state(torch.device("cpu")), tmp_path / f"rng_rank{rank}.pt")
        uninterrupted[rank] = draws()
    for rank in (0, 1):
        torch.manual_seed(7)  # what every rank does before building the network
        set_rng_state(torch.load(tmp_path / f"rng_rank{rank}.pt", weights_only=True), torch.device("cpu"))
        assert all(torch.equal(a, b) for a, b in zip(draws(), uninterrupted[rank], strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(uninterrupted[0], uninterrupted[1], strict=True))
    seed_rank(7, 2, step=14)  # a rank the checkpoint had no state for (the run grew): a stream of its own
    grown = draws()
    assert not any(torch.equal(a, b) for r in (0, 1) for a, b in zip(grown, uninterrupted[r], strict=True))


def test_a_non_finite_loss_stops_fp16_the_same_clean_way(one_rank, tmp_path):
    """fp16's loss scaler deals with overflowing gradients, not with a loss that is inf/NaN already: the step
    stops before the update with a status the driver reads, in fp16 as in fp32/bf16. (The engine is fp32: a
    CPU may lack fp16; the decision is the loop's.)"""
    import deepspeed
    from support.runs import ROOT

    from vdp_ray.train import faults
    from vdp_ray.train.faults import Drill
    from vdp_ray.train.loop import LogTally, Preview, Worker, _optimizer_step
    from vdp_ray.train.runlog import RankZeroLog
    from vdp_ray.train.stages import DiffusionStage

    cfg = load_config(ROOT / "experiments" / "tiny_unet.yaml", ["train.batch_size=2", "train.grad_accum=2"])
    stage = DiffusionStage(cfg, torch.device("cpu"))
    engine, ema = build_engine(stage, cfg, "unet3d", 1, "fp32", deepspeed.initialize)
    log = RankZeroLog(tmp_path, "unet3d", 0)
    w = Worker(
        cfg,
        "unet3d",
        tmp_path,
        0,
        1,
        torch.device("cpu"),
        "fp16",
        torch.float32,
        log,
        stage,
        ema,
        engine,
        2,
        8,
        drill=Drill("nan", 1),
    )
    d = cfg.data
    batch = {"clip": torch.rand(2, d.channels, d.frames, *d.size) * 2 - 1, "caption": ["", ""]}
    before = _weights(engine, False)
    assert _optimizer_step(w, iter([(0, batch)] * 2), LogTally(), Preview(stage, ema, w.device, 8), step=0) is None
    status = (tmp_path / "logs" / "unet3d-status.json").read_text()
    assert "non-finite loss at step 1 of the unet3d stage" in status
    assert all(torch.equal(v, before[k]) for k, v in _weights(engine, False).items()), "no update was made"
    # a finite loss with NaN gradients stops the same way in fp32 / bf16 (fp16's scaler skips such steps itself)
    w = replace(w, drill=Drill("nan_grad", 1), precision="fp32", log=RankZeroLog(tmp_path / "grad", "unet3d", 0))
    assert _optimizer_step(w, iter([(0, batch)] * 2), LogTally(), Preview(stage, ema, w.device, 8), step=0) is None
    status = (tmp_path / "grad" / "logs" / "unet3d-status.json").read_text()
    assert "non-finite gradients (of a finite loss) at step 1" in status
    # and DeepSpeed's own end of a diverged fp16 run is recognised, not re-raised as a crash
    exhausted = Exception("Current loss scale already at minimum - cannot decrease scale anymore. Exiting run.")
    assert faults.is_loss_scale_exhausted(exhausted) and not faults.is_loss_scale_exhausted(ValueError("shape"))
