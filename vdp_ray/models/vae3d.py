"""3D VAE: residual conv encoder/decoder with spatial (4x/8x) and temporal (1x/2x/4x) compression and a
diagonal Gaussian posterior (Kingma & Welling 2014; the latent-diffusion autoencoder of Rombach et al. 2022,
extended to time)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import SpatialAttention3d, group_norm

PRESETS: dict[str, dict] = {
    "tiny": dict(
        base_channels=32,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        mid_attention=False,
        spatial_compression=4,
        temporal_compression=2,
        latent_channels=4,
    ),
    # The seed's reference: 8x spatial, 4x temporal, 4 latent channels.
    "seed": dict(
        base_channels=64,
        channel_mults=(1, 2, 4, 4),
        num_res_blocks=2,
        mid_attention=True,
        spatial_compression=8,
        temporal_compression=4,
        latent_channels=4,
    ),
}


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.net = nn.Sequential(
            group_norm(cin),
            nn.SiLU(),
            nn.Conv3d(cin, cout, 3, padding=1),
            group_norm(cout),
            nn.SiLU(),
            nn.Conv3d(cout, cout, 3, padding=1),
        )
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.net(x)


class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))) over latents (N, C, T, H, W)."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype).to(self.mean.device)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, averaged over latent elements: (N,), in fp32 whatever the network ran in
        (exp(logvar) overflows fp16 from logvar > 11, and the sum of small terms loses its digits)."""
        mean, logvar = self.mean.float(), self.logvar.float()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
        return kl.flatten(1).mean(1)


def _stage_strides(spatial: int, temporal: int) -> list[tuple[int, int, int]]:
    """Strides of the downsampling stages: spatial 2x each; temporal 2x in the first log2(temporal)."""
    n_spatial, n_temporal = int(math.log2(spatial)), int(math.log2(temporal))
    return [(2 if i < n_temporal else 1, 2, 2) for i in range(n_spatial)]


class VAE3D(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 4,
        base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        spatial_compression: int = 8,
        temporal_compression: int = 4,
        mid_attention: bool = True,
    ):
        super().__init__()
        if spatial_compression not in (4, 8):
            raise ValueError(f"spatial_compression must be 4 or 8, got {spatial_compression}")
        if temporal_compression not in (1, 2, 4):
            raise ValueError(f"temporal_compression must be 1, 2 or 4, got {temporal_compression}")
        strides = _stage_strides(spatial_compression, temporal_compression)
        if len(channel_mults) != len(strides) + 1:
            raise ValueError(
                f"channel_mults needs log2(spatial_compression) + 1 = {len(strides) + 1} entries for "
                f"{spatial_compression}x compression, got {len(channel_mults)}: {tuple(channel_mults)}"
            )
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.spatial_compression = spatial_compression
        self.temporal_compression = temporal_compression
        widths = [base_channels * m for m in channel_mults]

        enc: list[nn.Module] = [nn.Conv3d(in_channels, widths[0], 3, padding=1)]
        ch = widths[0]
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                enc.append(ResBlock(ch, width))
                ch = width
            if level < len(strides):
                enc.append(nn.Conv3d(ch, ch, 3, stride=strides[level], padding=1))
        enc += self._mid(ch, mid_attention)
        enc += [group_norm(ch), nn.SiLU(), nn.Conv3d(ch, 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv3d(latent_channels, ch, 3, padding=1), *self._mid(ch, mid_attention)]
        for level in reversed(range(len(widths))):
            for _ in range(num_res_blocks + 1):
                dec.append(ResBlock(ch, widths[level]))
                ch = widths[level]
            if level > 0:
                dec.append(Upsample(ch, strides[level - 1]))
        dec += [group_norm(ch), nn.SiLU(), nn.Conv3d(ch, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    @staticmethod
    def _mid(ch: int, attention: bool) -> list[nn.Module]:
        return [ResBlock(ch, ch), SpatialAttention3d(ch, 1), ResBlock(ch, ch)] if attention else [ResBlock(ch, ch)]

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T, H, W) of the latents of a clip; raises if the clip does not divide exactly."""
        s, t = self.spatial_compression, self.temporal_compression
        if frames % t:
            raise ValueError(f"{frames} frames do not divide by the VAE's temporal compression {t}")
        if height % s or width % s:
            raise ValueError(f"frame size {height}x{width} does not divide by the VAE's spatial compression {s}")
        return self.latent_channels, frames // t, height // s, width // s

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x (N, C, T, H, W) in [-1, 1] -> posterior over (N, z, T/t, H/s, W/s)."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"VAE3D expects (N, {self.in_channels}, T, H, W), got {tuple(x.shape)}")
        self.latent_shape(*x.shape[2:])
        return DiagonalGaussian(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None):
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior


class Upsample(nn.Module):
    def __init__(self, ch: int, stride: tuple[int, int, int]):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv3d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.stride, mode="nearest"))
