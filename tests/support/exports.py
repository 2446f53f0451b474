"""Tiny exports with fresh random weights (no training needed): a pixel U-Net and a latent DiT with its VAE."""

from pathlib import Path

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
    "sampling.steps=4",
]


def randomise(net, std=0.05):
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, std)
    return net


def unet_export(folder: Path) -> Path:
    """A pixel U-Net export: 6 grayscale frames of 16x16, up to 3 context frames."""
    torch.manual_seed(0)
    cfg = load_config(None, PIXEL)
    return write_export(folder / "unet", cfg, "unet3d", randomise(build_denoiser(cfg)).state_dict(), {"steps": 3})


def dit_export(folder: Path) -> Path:
    """A latent DiT export with its VAE (tiny_dit.yaml: 8 frames of 32x32, 2x temporal compression)."""
    torch.manual_seed(0)
    cfg = load_config(ROOT / "experiments" / "tiny_dit.yaml", ["vae.scale_factor=0.7", "sampling.steps=3"])
    vae = write_export(folder / "vae", cfg, "vae", randomise(build_vae(cfg), 0.02).state_dict(), {"steps": 1})
    return write_export(
        folder / "dit", cfg, "dit", randomise(build_denoiser(cfg), 0.02).state_dict(), {"steps": 1}, vae_export=vae
    )


def text_dit_export(folder: Path, encoder: Path, dim: int = 64) -> Path:
    """A text-conditioned latent DiT export (tiny_text_dit.yaml) with its VAE and a copy of ``encoder``."""
    torch.manual_seed(0)
    cfg = load_config(
        ROOT / "experiments" / "tiny_text_dit.yaml",
        [
            "vae.scale_factor=0.7",
            "sampling.steps=3",
            f"text.encoder={encoder}",
            f"model.dit.text_dim={dim}",
            "sampling.text_guidance=1.0",
        ],
    )
    vae = write_export(folder / "vae", cfg, "vae", randomise(build_vae(cfg), 0.02).state_dict(), {"steps": 1})
    return write_export(
        folder / "textdit", cfg, "dit", randomise(build_denoiser(cfg), 0.02).state_dict(), {"steps": 1}, vae_export=vae
    )
