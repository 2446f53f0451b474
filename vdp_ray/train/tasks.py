"""What a training stage optimises: the VAE (reconstruction + KL) or a denoiser (masked diffusion loss).

A task owns the network being trained and everything around it (a frozen VAE, the diffusion process)
and turns a batch of clips into a loss. It knows nothing of Ray or DeepSpeed: the loop in ``loop.py``
passes the DeepSpeed engine in as ``net`` (an engine is called like the module it wraps).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config
from ..diffusion import GaussianDiffusion, prediction_mask, sample, sample_frame_masks
from ..metrics import baselines, psnr
from ..models import build_denoiser, build_vae
from .latent_cache import LatentCache

VAL_TIMESTEPS = (50, 250, 500, 750, 950)  # fixed levels: validation losses comparable across runs


class VAETask:
    stage = "vae"

    def __init__(self, cfg: Config, device: torch.device):
        self.cfg, self.device = cfg, device
        self.model = self.new_model()

    def new_model(self):
        return build_vae(self.cfg)

    def loss(self, net, clips: torch.Tensor, dtype=torch.float32, captions=None) -> tuple[torch.Tensor, dict]:
        recon, posterior = net(clips.to(dtype))
        rec = _reconstruction(recon.float(), clips.float(), self.cfg.vae.recon_loss)
        kl = posterior.kl().float().mean()
        return rec + self.cfg.vae.kl_weight * kl, {"recon": rec.item(), "kl": kl.item()}

    @torch.no_grad()
    def val_loss(self, net, clips: torch.Tensor, dtype=torch.float32, captions=None) -> float:
        recon, _ = net(clips.to(dtype), sample=False)
        return _reconstruction(recon.float(), clips.float(), self.cfg.vae.recon_loss).item()

    @torch.no_grad()
    def preview(self, model, clips: torch.Tensor, captions=None) -> tuple[np.ndarray, dict]:
        recon, _ = model(clips, sample=False)
        recon = recon.clamp(-1, 1)
        return strip([clips, recon]), {"psnr": psnr(recon, clips).mean().item()}

    @torch.no_grad()
    def latent_std(self, model, clips: torch.Tensor) -> torch.Tensor:
        z = model.encode(clips).sample()
        return z.float().std()


def _reconstruction(recon: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    loss = recon.new_zeros(())
    if "l1" in kind:
        loss = loss + F.l1_loss(recon, target)
    if "mse" in kind:
        loss = loss + F.mse_loss(recon, target)
    return loss


class DiffusionTask:
    """unet3d: pixels. dit: latents of a frozen VAE (encoder only, no gradients; the decoder runs only for
    previews, never in a training step)."""

    def __init__(self, cfg: Config, device: torch.device, vae=None):
        self.cfg, self.device = cfg, device
        self.stage = cfg.model.family
        self.model = self.new_model()
        self.diffusion = GaussianDiffusion.from_config(cfg.diffusion)
        self.vae = vae
        self.scale = 1.0
        self.tc = 1
        self.cache = None  # the frozen VAE's posteriors of clips seen (dit)
        if self.stage == "dit":
            if vae is None:
                raise ValueError("the dit stage needs a VAE (vae.export or a vae stage before it)")
            self.vae = vae.to(device).eval().requires_grad_(False)
            self.scale = float(cfg.vae.scale_factor or 1.0)
            self.tc = cfg.vae.temporal_compression
            if cfg.train.latent_cache_mb:
                self.cache = LatentCache(cfg.train.latent_cache_mb)
        self.tables = None
        if cfg.text.encoder:
            from ..text import TextTable

            self.tables = [TextTable.load(folder) for folder in text_folders(cfg)]
            self.null = self.tables[0].lookup([""])

    def text(self, captions: list[str] | None, n: int, device, dtype, drop: float = 0.0) -> dict:
        """Model kwargs for a batch's captions (none for a model without text); ``drop``: the chance of
        the null text per clip (training only)."""
        if self.tables is None:
            return {}
        from ..text import TextError, drop_text

        captions = list(captions) if captions is not None else [""] * n
        for table in self.tables:  # training and validation splits each have their table
            if all(c in table.rows for c in captions):
                out = table.lookup(captions, device, dtype)
                break
        else:
            missing = next(c for c in captions if not any(c in t.rows for t in self.tables))
            raise TextError(f"caption {missing!r} has no stored embedding: run `vdp encode-text` on the shards again")
        return drop_text(out, self.null, drop)  # the null text takes the batch's device and dtype there

    def new_model(self):
        return build_denoiser(self.cfg)

    @torch.no_grad()
    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return clips
        if self.cache is None:
            return self.vae.encode(clips).sample() * self.scale
        mean, std = self.cache.posterior(self.vae.encode, clips)  # a fresh sample of the cached posterior
        return (mean + std * torch.randn(mean.shape, dtype=mean.dtype).to(mean.device)) * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return latents
        return self.vae.decode(latents / self.scale)

    def masks(self, n: int, frames: int, generator=None) -> torch.Tensor:
        m = self.cfg.diffusion.masks
        lo, hi = max(1, m.context_min // self.tc), max(1, m.context_max // self.tc)
        hi = min(hi, frames - 1)
        return sample_frame_masks(n, frames, m.probs(), (min(lo, hi), hi), m.context_drop, generator).mask

    def loss(self, net, clips: torch.Tensor, dtype=torch.float32, captions=None) -> tuple[torch.Tensor, dict]:
        x0 = self.encode(clips).to(dtype)
        mask = self.masks(x0.shape[0], x0.shape[2]).to(x0.device)
        text = self.text(captions, x0.shape[0], x0.device, dtype, drop=self.cfg.text.dropout)
        out = self.diffusion.training_losses(net, x0, mask, **text)
        return out["loss"], {}

    @torch.no_grad()
    def val_loss(self, net, clips: torch.Tensor, dtype=torch.float32, captions=None) -> float:
        x0 = self.encode(clips).to(dtype)
        text = self.text(captions, x0.shape[0], x0.device, dtype)
        n, frames = x0.shape[0], x0.shape[2]
        mask = prediction_mask(n, frames, self.context_latents(frames), device=x0.device)
        g = torch.Generator().manual_seed(0)
        losses = []
        for t in VAL_TIMESTEPS:
            t = min(t, self.diffusion.num_timesteps - 1)
            noise = torch.randn(x0.shape, generator=g).to(x0.device, dtype)
            tt = torch.full((n,), t, device=x0.device)
            losses.append(self.diffusion.training_losses(net, x0, mask, t=tt, noise=noise, **text)["loss"].item())
        return float(np.mean(losses))

    def context_latents(self, frames: int) -> int:
        return min(max(1, self.cfg.data.context_frames // self.tc), frames - 1)

    @torch.no_grad()
    def preview(self, model, clips: torch.Tensor, steps: int | None = None, captions=None) -> tuple[np.ndarray, dict]:
        """Predict the future of validation clips from their first data.context_frames frames."""
        x0 = self.encode(clips)
        text = self.text(captions, x0.shape[0], x0.device, x0.dtype)
        n, frames = x0.shape[0], x0.shape[2]
        k = self.context_latents(frames)
        mask = prediction_mask(n, frames, k, device=x0.device)
        d = self.cfg.diffusion
        out = sample(model, self.diffusion, tuple(x0.shape), sampler=d.sampler, steps=steps or d.sample_steps,
                     context=x0, frame_mask=mask, guidance=d.guidance, clip_x0=d.clip_x0 if self.vae is None else None,
                     generator=torch.Generator().manual_seed(0), device=x0.device, model_kwargs=text,
                     text_guidance=self.cfg.text.guidance,
                     null_kwargs=self.text(None, n, x0.device, x0.dtype))  # fmt: skip
        pred = self.decode(out).clamp(-1, 1)
        kp = k * self.tc
        future, truth = pred[:, :, kp:], clips[:, :, kp:]
        metrics = {"psnr": psnr(future, truth).mean().item()}
        for name, guess in baselines(clips[:, :, :kp], frames * self.tc - kp).items():
            metrics[f"psnr_{name}"] = psnr(guess, truth).mean().item()
        best = max(metrics[f"psnr_{b}"] for b in ("copy_last", "context_mean", "blank"))
        metrics["psnr_gain"] = metrics["psnr"] - best  # judged against the best baseline, never one alone
        return strip([clips, pred]), metrics


def text_folders(cfg: Config) -> list:
    """The split folders whose caption embeddings a text-conditioned run uses: training first, then validation."""
    from pathlib import Path

    from ..data.pipeline import list_shards

    specs = [cfg.data.train, *([cfg.data.val] if cfg.data.val else [])]
    return [str(Path(list_shards(spec)[0]).parent) for spec in specs]


def strip(rows: list[torch.Tensor], max_clips: int = 4) -> np.ndarray:
    """An image (H', W', C) uint8: for each clip, one row per tensor (e.g. truth, prediction), frames left
    to right."""
    tiles = []
    for i in range(min(max_clips, rows[0].shape[0])):
        for r in rows:
            clip = ((r[i].float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()  # (C, T, H, W)
            tiles.append(torch.cat(list(clip.permute(1, 2, 3, 0)), dim=1))  # (H, T*W, C)
    image = torch.cat(tiles, dim=0).numpy()
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
