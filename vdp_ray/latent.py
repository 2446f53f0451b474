"""The space a denoiser works in: a frozen VAE's latents (scaled), or the pixels themselves.

Training, the Predictor, exports, `vdp evaluate`, `vdp predict` and the server all go through one
``LatentSpace``: the scale factor, the VAE's compression and the arithmetic of given frames against latent
frames are defined here and nowhere else.

    space = LatentSpace.of_export(export, device)      # an export's own latent space (pixels for a U-Net)
    z = space.encode(clips)                            # (N, C, T, H, W) in [-1, 1] -> latents * scale
    x = space.decode(z)                                # and back
    space.latent_frames(4)                             # given pixel frames -> whole latent frames (or an error)

A VAE that compresses time by ``f`` turns every ``f`` pixel frames into one latent frame: a number of given frames
must fill whole latent frames (DESIGN: temporal compression and masks must agree). That arithmetic is plain
integer math (``latent_frames`` / ``whole_frames``), usable where no model is loaded (the HTTP ingress); torch is
imported where tensors are made.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config.sampling import SettingError


class LatentFrameError(SettingError):
    """A number of frames that does not fill whole latent frames; ``field`` names it, the message says what would."""


def latent_frames(frames: int, temporal_compression: int, what: str = "frames") -> int:
    """Whole latent frames holding ``frames`` pixel frames (``temporal_compression`` pixel frames per latent
    frame); a partial latent frame is refused, naming ``what``."""
    if frames % temporal_compression:
        n = temporal_compression
        raise LatentFrameError(
            what,
            f"{frames} frame(s) do not fill whole latent frames; this model's VAE "
            f"compresses time by {n}, so give a multiple of {n}",
        )
    return frames // temporal_compression


def whole_frames(frames: int, temporal_compression: int) -> int:
    """``frames`` rounded down to whole latent frames (in pixel frames)."""
    return frames // temporal_compression * temporal_compression


@dataclass(frozen=True)
class LatentBatch:
    """A batch of posteriors read from latent shards (`vdp encode`), on a device: ``encode`` samples latents from
    them as it would from the encoder's."""

    mean: object  # torch (N, C, t, h, w), unscaled (the VAE's own units)
    std: object

    @property
    def shape(self):
        return self.mean.shape

    def __getitem__(self, index) -> LatentBatch:
        return LatentBatch(self.mean[index], self.std[index])


class LatentSpace:
    """``vae``: a frozen VAE module (``encode(x)`` -> posterior with ``sample()/mode()/mean/std``, ``decode(z)``), or
    None for pixels. ``vae_cfg``: its config section (compression, latent channels, scale factor)."""

    def __init__(self, vae, vae_cfg, frame_size: tuple[int, int], channels: int, cache=None):
        self.vae = vae
        self.size, self.channels = tuple(frame_size), channels
        self.cache = cache  # training only: the frozen encoder's posterior per clip (train/latent_cache.py)
        if vae is None:
            self.scale, self.latent_channels = 1.0, channels
            self.temporal_compression = self.spatial_compression = 1
        else:
            # latents are scaled to unit variance (Rombach et al. 2022, sec. 4.3.2); the factor is measured at
            # the end of VAE training and travels in the config
            self.scale = float(vae_cfg.scale_factor or 1.0)
            self.temporal_compression = vae_cfg.temporal_compression  # pixel frames per latent frame
            self.spatial_compression = vae_cfg.spatial_compression  # pixels per latent pixel, each side
            self.latent_channels = vae_cfg.latent_channels

    @classmethod
    def of_config(cls, cfg, vae=None, cache=None) -> LatentSpace:
        """The latent space a config trains in: ``vae`` (frozen here) for a DiT, pixels otherwise."""
        if vae is not None:
            vae = vae.eval().requires_grad_(False)
        return cls(vae, cfg.vae, cfg.data.size, cfg.data.channels, cache)

    @classmethod
    def of_export(cls, export, device=None) -> LatentSpace:
        """An export's latent space: the VAE export it carries (``vae/``), on ``device``; pixels without one."""
        vae_export = export.vae()
        if export.cfg.model.family == "dit" and vae_export is None:
            raise FileNotFoundError(f"{export.directory}: a dit export without its vae/ folder")
        vae = vae_export.model().to(device) if vae_export is not None else None
        return cls.of_config(export.cfg, vae)

    # ----------------------------------------------------------------------------------------- facts
    @property
    def is_pixels(self) -> bool:
        return self.vae is None

    def latent_shape(self, n: int, frames: int) -> tuple[int, ...]:
        """The shape of ``n`` clips of ``frames`` pixel frames in this space."""
        h, w = self.size
        s = self.spatial_compression
        return (n, self.latent_channels, self.latent_frames(frames), h // s, w // s)

    def latent_frames(self, frames: int, what: str = "frames") -> int:
        """Whole latent frames holding ``frames`` pixel frames; a partial latent frame is refused."""
        return latent_frames(frames, self.temporal_compression, what)

    def whole(self, frames: int) -> int:
        """``frames`` rounded down to whole latent frames (pixel frames)."""
        return whole_frames(frames, self.temporal_compression)

    def latent_context(self, frames: int, window: int) -> int:
        """Latent frames given when ``frames`` pixel frames are given in a window of ``window`` pixel frames: at
        least one, and at least one latent frame left to make."""
        t = self.temporal_compression
        return min(max(1, frames // t), window // t - 1)

    def sampling(self, settings):
        """``settings`` for this space: x0 is clamped to the pixel range only in pixel space (latents are not
        bounded like pixels)."""
        from dataclasses import replace

        return settings if self.is_pixels or settings.clip_x0 is None else replace(settings, clip_x0=None)

    # ------------------------------------------------------------------------------------------ maps
    def encode(self, clips, sample: bool = False):
        """Clips (N, C, T, H, W) in [-1, 1] -> scaled latents: the posterior's mode, or a sample of it (training:
        from the cache when there is one, a fresh sample at every use)."""
        import torch

        if isinstance(clips, LatentBatch):  # posteriors from `vdp encode` shards: no encoder pass
            latents = clips.mean + clips.std * torch.randn_like(clips.std) if sample else clips.mean
            return latents * self.scale
        if self.vae is None:
            return clips
        with torch.no_grad():
            if not sample:
                return self.vae.encode(clips).mode() * self.scale
            if self.cache is None:
                return self.vae.encode(clips).sample() * self.scale
            mean, std = self.cache.posterior(self.vae.encode, clips)
            return (mean + std * torch.randn_like(mean)) * self.scale  # drawn where the latents are

    def pixels(self, clips):
        """Pixel clips as they are, or the decoded mode of a LatentBatch (what previews show and score)."""
        if not isinstance(clips, LatentBatch):
            return clips.float()
        return self.decode(clips.mean * self.scale).clamp(-1, 1)

    def decode(self, latents):
        """Scaled latents -> clips (float32, not clamped)."""
        import torch

        if self.vae is None:
            return latents
        with torch.no_grad():
            return self.vae.decode(latents / self.scale).float()
