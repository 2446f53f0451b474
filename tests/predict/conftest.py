"""Tiny exports with fresh random weights (no training needed): a pixel U-Net and a latent DiT with its VAE."""

from pathlib import Path

import pytest
import torch

from vdp_ray.config import load_config
from vdp_ray.export import write_export
from vdp_ray.models import build_denoiser, build_vae

ROOT = Path(__file__).resolve().parents[2]
PIXEL = [
    "data.frames=6",
    "data.size=[16, 16]",
    "data.channels=1",
    "data.context_frames=2",
    "model.preset=tiny",
    "model.unet3d.base_channels=8",
    "model.unet3d.attn_levels=[1]",
    "model.unet3d.channel_mults=[1, 2]",
    "diffusion.masks.context_max=3",
    "diffusion.sample_steps=4",
]


def _randomise(net, std=0.05):
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, std)
    return net


@pytest.fixture(scope="module")
def unet_export(tmp_path_factory):
    torch.manual_seed(0)
    cfg = load_config(None, PIXEL)
    return write_export(
        tmp_path_factory.mktemp("x") / "unet", cfg, "unet3d", _randomise(build_denoiser(cfg)).state_dict(), {"steps": 3}
    )


@pytest.fixture(scope="module")
def dit_export(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("d")
    cfg = load_config(ROOT / "experiments" / "tiny_dit.yaml", ["vae.scale_factor=0.7", "diffusion.sample_steps=3"])
    vae = write_export(root / "vae", cfg, "vae", _randomise(build_vae(cfg), 0.02).state_dict(), {"steps": 1})
    return write_export(
        root / "dit", cfg, "dit", _randomise(build_denoiser(cfg), 0.02).state_dict(), {"steps": 1}, vae_export=vae
    )
