import pytest
import torch

from vdp_ray.config import load_config
from vdp_ray.train.ema import EMA
from vdp_ray.train.engine import deepspeed_config, resolve_precision, stage_steps


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
    assert vae["bf16"]["enabled"] and vae["optimizer"]["params"]["lr"] == 1e-3 and stage_steps(cfg, "vae") == 7


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
