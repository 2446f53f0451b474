"""Pretrained components read from local folders: the geometry of a diffusers AutoencoderKL, from its
config.json alone (importing neither torch nor diffusers, so configs resolve fast)."""

from __future__ import annotations

import json
from pathlib import Path

CONFIG = "config.json"


class DiffusersVAEError(ValueError):
    """A folder that is not a usable AutoencoderKL; the message names it."""


def read_autoencoder_config(path: str | Path) -> dict:
    """The geometry of a diffusers AutoencoderKL folder, read from its config.json (no import of diffusers):
    latent_channels, spatial_compression, scale_factor, in_channels."""
    path = Path(path)
    config = path / CONFIG
    if not config.is_file():
        raise DiffusersVAEError(
            f"{path}: no {CONFIG} (expected a local diffusers AutoencoderKL folder; nothing is downloaded)"
        )
    raw = json.loads(config.read_text())
    if raw.get("_class_name") not in (None, "AutoencoderKL"):
        raise DiffusersVAEError(f"{path}: a {raw.get('_class_name')}, expected an AutoencoderKL")
    blocks = raw.get("block_out_channels") or [64]
    if 2 ** (len(blocks) - 1) not in (4, 8):
        raise DiffusersVAEError(
            f"{path}: compresses frames {2 ** (len(blocks) - 1)}x; the DiT's latent space "
            "needs 4x or 8x (Stable Diffusion's VAE: 8x)"
        )
    return {
        "latent_channels": int(raw.get("latent_channels", 4)),
        "spatial_compression": 2 ** (len(blocks) - 1),
        "scale_factor": float(raw.get("scaling_factor", 0.18215)),
        "in_channels": int(raw.get("in_channels", 3)),
    }
