"""A pretrained per-frame 2D VAE (a `diffusers` AutoencoderKL, e.g. Stable Diffusion's) behind our VAE interface.

    vae = FrameVAE.from_folder("/models/sd-vae", channels=3)    # local folder: config.json + weights
    z = vae.encode(clips).sample()                              # (N, C, T, H, W) -> (N, 4, T, H/8, W/8)

Every frame is encoded on its own (no temporal compression), as the MSR-VTT text-to-video seed did. Grey
clips are repeated to the RGB the autoencoder expects and decoded back to one channel. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from ..pretrained import DiffusersVAEError, read_autoencoder_config


class _FramePosterior:
    """The per-frame Gaussian posteriors, reshaped back to clips."""

    def __init__(self, dist, n: int):
        self.dist, self.n = dist, n

    def _clip(self, z: torch.Tensor) -> torch.Tensor:
        return rearrange(z, "(n t) c h w -> n c t h w", n=self.n)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._clip(self.dist.sample(generator=generator))

    def mode(self) -> torch.Tensor:
        return self._clip(self.dist.mode())

    @property
    def mean(self) -> torch.Tensor:
        return self._clip(self.dist.mean)

    @property
    def std(self) -> torch.Tensor:
        return self._clip(self.dist.std)

    def kl(self) -> torch.Tensor:
        return self._clip(self.dist.kl()[:, None, None, None]).flatten(1).mean(1)


class FrameVAE(nn.Module):
    def __init__(self, autoencoder: nn.Module, channels: int):
        super().__init__()
        self.ae = autoencoder
        self.channels = channels
        self.ae_channels = int(autoencoder.config.in_channels)

    @classmethod
    def from_config_dict(cls, config: dict, channels: int) -> FrameVAE:
        from diffusers import AutoencoderKL

        return cls(AutoencoderKL.from_config(config), channels)

    @classmethod
    def from_folder(cls, path: str | Path, channels: int) -> FrameVAE:
        from diffusers import AutoencoderKL

        read_autoencoder_config(path)
        try:
            return cls(AutoencoderKL.from_pretrained(str(path), local_files_only=True), channels)
        except (OSError, ValueError) as exc:
            raise DiffusersVAEError(f"{path}: cannot load the AutoencoderKL: {exc}") from None

    def encode(self, x: torch.Tensor) -> _FramePosterior:
        n = x.shape[0]
        frames = rearrange(x, "n c t h w -> (n t) c h w")
        if frames.shape[1] != self.ae_channels:
            frames = frames.expand(-1, self.ae_channels, -1, -1) if frames.shape[1] == 1 else frames.mean(1, True)
        return _FramePosterior(self.ae.encode(frames).latent_dist, n)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        out = self.ae.decode(rearrange(z, "n c t h w -> (n t) c h w")).sample
        if out.shape[1] != self.channels:
            out = out.mean(1, keepdim=True) if self.channels == 1 else out.expand(-1, self.channels, -1, -1)
        return rearrange(out, "(n t) c h w -> n c t h w", n=n)

    def forward(self, x: torch.Tensor, sample: bool = True):
        posterior = self.encode(x)
        return self.decode(posterior.sample() if sample else posterior.mode()), posterior
