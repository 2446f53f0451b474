import numpy as np
import pytest
import torch

from vdp_ray.config import load_config
from vdp_ray.train.ema import EMA
from vdp_ray.train.engine import deepspeed_config, resolve_precision, stage_settings


def test_fp16_falls_back_on_a_cpu_without_it():
    precision, note = resolve_precision("fp16", "cpu")
    assert precision == "fp32" and "fp16 is not supported" in note
    assert resolve_precision("fp32", "cpu") == ("fp32", None)


def test_deepspeed_config_follows_ours():
    overrides = ["train.batch_size=3", "train.grad_accum=2", "train.zero_stage=2", "train.lr=3e-4",
                 "train.max_steps=50", "train.warmup_steps=80", "vae.max_steps=7", "vae.lr=1e-3"]  # fmt: skip
    cfg = load_config(None, overrides)
    ds = deepspeed_config(cfg, "unet3d", world_size=4, precision="fp16")
    assert ds["train_batch_size"] == 3 * 2 * 4 and ds["zero_optimization"]["stage"] == 2
    assert ds["fp16"]["enabled"] and ds["fp16"]["loss_scale"] == 0, "dynamic loss scaling"
    assert ds["optimizer"]["params"]["torch_adam"] is True and ds["optimizer"]["params"]["lr"] == 3e-4
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 49, "warm-up shorter than the run"
    vae = deepspeed_config(cfg, "vae", world_size=1, precision="bf16")
    assert (
        vae["bf16"]["enabled"]
        and vae["optimizer"]["params"]["lr"] == 1e-3
        and stage_settings(cfg, "vae").max_steps == 7
    )


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

    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0"}  # fmt: skip
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

    from vdp_ray.train.loop import _update_ema
    from vdp_ray.train.stages import DiffusionStage

    cfg = load_config(ROOT / "experiments" / "tiny_unet.yaml", [
        f"train.zero_stage={zero}", f"train.precision={precision}", "train.batch_size=2", "train.lr=2e-3",
        "train.warmup_steps=1", "train.max_steps=8", "train.grad_clip=1.0", "diffusion.masks.prediction=1.0",
        "diffusion.masks.generation=0", "diffusion.masks.interpolation=0", "diffusion.masks.context_drop=0",
    ])  # fmt: skip
    dtype = {"bf16": torch.bfloat16}.get(precision, torch.float32)

    def engine_for(seed: int):
        torch.manual_seed(seed)
        stage = DiffusionStage(cfg, torch.device("cpu"))
        ema = EMA(stage.model, 0.5)  # before initialize, as the loop does: ZeRO-3 partitions the module's weights
        ds = deepspeed_config(cfg, "unet3d", world_size=1, precision=precision)
        engine, *_ = deepspeed.initialize(model=stage.model, model_parameters=list(stage.model.parameters()), config=ds)
        return stage, engine, ema

    stage, engine, ema = engine_for(0)
    initial = _weights(engine, zero == 3)
    d = cfg.data
    clips = torch.rand(2, d.channels, d.frames, *d.size) * 2 - 1
    losses = []
    for step in range(8):
        torch.manual_seed(step % 2)  # two fixed draws of masks, timesteps and noise: the loss must fall on them
        loss = stage.loss(engine, clips, [""] * 2, dtype)
        engine.backward(loss)
        engine.step()
        _update_ema(ema, engine.module, zero == 3)
        losses.append(loss.float().item())
    assert all(np.isfinite(losses)) and np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    trained = _weights(engine, zero == 3)
    assert any(not torch.equal(initial[k], trained[k]) for k in trained)
    assert ema.updates == 8 and all(v.dtype == torch.float32 for v in ema.state_dict().values())
    engine.save_checkpoint(str(tmp_path), tag="ds")

    _, other, _ = engine_for(1)
    assert any(not torch.equal(_weights(other, zero == 3)[k], trained[k]) for k in trained)
    other.load_checkpoint(str(tmp_path), tag="ds", load_module_strict=True)
    restored = _weights(other, zero == 3)
    assert all(torch.equal(restored[k], trained[k]) for k in trained)
