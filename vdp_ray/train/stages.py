"""Training stages: what a stage optimises, behind one protocol the loop talks to.

A stage owns the network it trains and everything around it (a frozen VAE, the diffusion process, the caption
tables) and knows nothing of Ray or DeepSpeed: the loop passes the DeepSpeed engine in as ``net`` (an engine is
called like the module it wraps). ``STAGE_CLASSES`` is the registry of the names ``train.stages`` takes
(``vocab.STAGES``); a new stage (another objective, another family) is one class here and one entry there.

    stage = make_stage(cfg, "dit", device)
    loss = stage.loss(engine, clips, captions, dtype)        # a training step's loss (clips on the device)
    image, metrics = stage.preview(ema_model, clips, captions)
    extra, note = stage.finish(ema_model, batches, world, mean)  # end of the stage: e.g. the VAE's scale factor
    cfg = stage.exported_config(cfg, extra)                  # what the export records
    cfg = stage.next_config(cfg, export_dir)                 # what later stages train with (a VAE: its latents)
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..diffusion import Condition, make_diffusion, prediction_mask, sample, sample_frame_masks
from ..latent import LatentSpace
from ..metrics import baselines, psnr
from ..models import build_denoiser, build_vae
from ..pixels import to_uint8
from .latent_cache import LatentCache

VAL_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)  # fixed noise levels (fractions of the path): comparable validation losses
PREVIEW_STEPS = 25  # sampling steps of a preview at most: previews must stay cheap beside training
SCALE_CLIPS = 64  # training clips (over all ranks) the VAE's latent scale factor is measured on


class Stage(Protocol):
    """What the loop asks of a stage. Every method runs on every rank unless noted."""

    model: nn.Module  # the network being trained
    # whether the untrained network is worth scoring (and exporting, if training never beats it): an anchored
    # denoiser starts as its anchor (copy-last or the motion estimate), a VAE or a plain denoiser as noise
    untrained_is_candidate: bool

    def new_model(self) -> nn.Module:
        """A fresh plain copy of the network (never DeepSpeed-wrapped): the EMA weights go in it for previews."""

    def loss(self, net, clips: torch.Tensor, captions: list[str], dtype: torch.dtype) -> torch.Tensor:
        """The training loss of one micro-batch (a scalar on the device; no host sync)."""

    def val_loss(self, net, clips: torch.Tensor, captions: list[str], dtype: torch.dtype) -> float:
        """A validation loss comparable across runs (fixed noise levels and seeds)."""

    def pixels(self, clips) -> torch.Tensor:
        """A batch as pixel clips in [-1, 1] (what previews show): latent shards' posteriors decoded."""

    def preview(self, model, clips: torch.Tensor, captions: list[str]) -> tuple[np.ndarray, dict]:
        """Rank 0: an image (H, W, 3) uint8 for TensorBoard and metrics on a few validation clips."""

    def step_metrics(self) -> dict[str, float]:
        """This rank's extra numbers since the last call (averaged over ranks by the loop)."""

    def finish(
        self,
        ema_model: Callable[[], nn.Module],
        batches: Iterator[torch.Tensor],
        world: int,
        mean: Callable[[float], float],
    ) -> tuple[dict, str | None]:
        """After the last step: results the checkpoint keeps and a line saying them. ``ema_model()`` gives the
        network with its EMA weights, ``batches`` more training clips, ``mean`` the average over ranks."""

    @staticmethod
    def exported_config(cfg: Config, extra: dict) -> Config:
        """The config an export of this stage records, given what ``finish`` returned."""

    @staticmethod
    def next_config(cfg: Config, export_dir) -> Config:
        """The config of the stages after this one, given this stage's export (the driver calls it)."""


class VAEStage:
    """The 3D VAE: reconstruction + KL (Kingma & Welling 2014); ends by measuring the latent scale factor."""

    untrained_is_candidate = False

    def __init__(self, cfg: Config, device: torch.device):
        self.cfg, self.device = cfg, device
        self.model = self.new_model()

    def new_model(self) -> nn.Module:
        return build_vae(self.cfg)

    def loss(self, net, clips, captions, dtype):
        recon, posterior = net(clips.to(dtype))
        rec = _reconstruction(recon.float(), clips.float(), self.cfg.vae.recon_loss)
        return rec + self.cfg.vae.kl_weight * posterior.kl().mean()  # kl() is fp32 whatever the net's dtype

    @torch.no_grad()
    def val_loss(self, net, clips, captions, dtype):
        recon, _ = net(clips.to(dtype), sample=False)
        return _reconstruction(recon.float(), clips.float(), self.cfg.vae.recon_loss).item()

    @torch.no_grad()
    def preview(self, model, clips, captions):
        recon = model(clips, sample=False)[0].clamp(-1, 1)
        return strip([clips, recon]), {"psnr": psnr(recon, clips).mean().item()}

    def step_metrics(self) -> dict[str, float]:
        return {}

    def pixels(self, clips) -> torch.Tensor:
        return clips.float()

    @torch.no_grad()
    def finish(self, ema_model, batches, world, mean):
        """The latent scale factor: 1 / std of the latents of training clips (Rombach et al. 2022, sec. 4.3.2)."""
        model = ema_model()
        first = next(batches)
        count = max(1, SCALE_CLIPS // (first.shape[0] * world))  # as many whole batches as fit, at least one
        clips = itertools.chain([first], itertools.islice(batches, count - 1))
        stds = [model.encode(c).sample().float().std().item() for c in clips]
        scale = 1.0 / mean(float(np.mean(stds)))
        return {"scale_factor": scale}, f"latent scale factor {scale:.4f} (1 / std of training latents)"

    @staticmethod
    def exported_config(cfg: Config, extra: dict) -> Config:
        return cfg.updated({"vae.scale_factor": extra.get("scale_factor")})

    @staticmethod
    def next_config(cfg: Config, export_dir) -> Config:
        """The stages after this one train in its latent space."""
        from ..export import with_vae

        return with_vae(cfg, export_dir)


def _reconstruction(recon: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    loss = recon.new_zeros(())
    if "l1" in kind:
        loss = loss + F.l1_loss(recon, target)
    if "mse" in kind:
        loss = loss + F.mse_loss(recon, target)
    return loss


class DiffusionStage:
    """A denoiser under the masked diffusion loss: unet3d on pixels, dit on the latents of a frozen VAE (encoder
    only and without gradients in a training step; the decoder runs only for previews)."""

    def __init__(self, cfg: Config, device: torch.device):
        self.cfg, self.device = cfg, device
        self.model = self.new_model()  # first: the same seed gives the same initial weights on every rank
        self.diffusion = make_diffusion(cfg.diffusion)
        self.untrained_is_candidate = self.diffusion.anchor.predicts_change
        vae = cache = None
        if cfg.model.family == "dit":
            from ..export import Export

            vae = Export(cfg.vae.export).model().to(device)  # the driver resolved vae.export and its geometry
            # the cache pays where the encoder is slow: on CPUs, and not when the training latents come from
            # `vdp encode`'s shards. On a GPU the encoder pass is cheap beside the host copy and the pixel digest
            # the cache needs every step. Decided from the config alone: every rank reports the same metrics.
            wanted = cfg.train.latent_cache_mb and device.type == "cpu" and not _latent_shards(cfg.data.train)
            cache = LatentCache(cfg.train.latent_cache_mb) if wanted else None
        self.latent = LatentSpace.of_config(cfg, vae, cache)
        self.text = None
        if cfg.text.encoder:
            from ..data.pipeline import run_split_folders
            from ..text import TextConditioner

            self.text = TextConditioner.of_tables(run_split_folders(cfg.data))

    def new_model(self) -> nn.Module:
        return build_denoiser(self.cfg)

    def _text(self, captions, n: int, device, dtype, drop: float = 0.0) -> tuple[dict, dict | None]:
        if self.text is None:
            return {}, None
        return self.text(list(captions) if captions is not None else [""] * n, device, dtype, drop)

    def _given_latents(self, k: int | None = None) -> int:
        return self.latent.latent_context(self.cfg.data.context_frames if k is None else k, self.cfg.data.frames)

    def loss(self, net, clips, captions, dtype):
        with _half_on_gpu(self.device, dtype):  # the frozen encoder in the training precision on a GPU
            x0 = self.latent.encode(clips, sample=True).float()  # fp32: the diffusion arithmetic is
        m = self.cfg.diffusion.masks
        given = (self._given_latents(m.context_min), self._given_latents(m.context_max))
        masks = sample_frame_masks(x0.shape[0], x0.shape[2], m.probs(), given, m.context_drop).mask.to(x0.device)
        text, _ = self._text(captions, x0.shape[0], x0.device, dtype, drop=self.cfg.text.dropout)
        return self.diffusion.training_losses(net, x0, masks, dtype=dtype, augment=True, **text)["loss"]

    @torch.no_grad()
    def val_loss(self, net, clips, captions, dtype):
        x0 = self.latent.encode(clips, sample=True)
        text, _ = self._text(captions, x0.shape[0], x0.device, dtype)
        n, frames = x0.shape[0], x0.shape[2]
        mask = prediction_mask(n, frames, self._given_latents(), device=x0.device)
        g = torch.Generator().manual_seed(0)
        losses = []
        for level in VAL_LEVELS:
            noise = torch.randn(x0.shape, generator=g).to(x0.device)
            tt = self.diffusion.time_at(level, n, x0.device)
            out = self.diffusion.training_losses(net, x0, mask, t=tt, noise=noise, dtype=dtype, **text)
            losses.append(out["loss"].item())
        return float(np.mean(losses))

    @torch.no_grad()
    def preview(self, model, clips, captions):
        """Predict the future of validation clips from their first data.context_frames frames, with the export's
        sampling settings (at most PREVIEW_STEPS steps), scored against the baselines."""
        x0 = self.latent.encode(clips)
        text, null = self._text(captions, x0.shape[0], x0.device, x0.dtype)
        k = self._given_latents()
        cond = Condition.first_frames(x0[:, :, :k], x0.shape[2], model_kwargs=text, null_kwargs=null)
        s = self.cfg.sampling
        settings = self.latent.sampling(replace(s, steps=min(s.steps, PREVIEW_STEPS)))
        out = sample(
            model,
            self.diffusion,
            tuple(x0.shape),
            cond,
            settings,
            generator=torch.Generator().manual_seed(0),
            device=x0.device,
        )
        pred = self.latent.decode(out).clamp(-1, 1)
        kp = k * self.latent.temporal_compression
        future, truth = pred[:, :, kp:], clips[:, :, kp:]
        metrics = {"psnr": psnr(future, truth).mean().item()}
        for name, guess in baselines(clips[:, :, :kp], clips.shape[2] - kp).items():
            metrics[f"psnr_{name}"] = psnr(guess, truth).mean().item()
        best = max(metrics[f"psnr_{b}"] for b in ("copy_last", "context_mean", "blank"))
        metrics["psnr_gain"] = metrics["psnr"] - best  # judged against the best baseline, never one alone
        return strip([clips, pred]), metrics

    @torch.no_grad()
    def pixels(self, clips) -> torch.Tensor:
        return self.latent.pixels(clips)

    def step_metrics(self) -> dict[str, float]:
        cache = self.latent.cache
        return {} if cache is None else {"latent_cache_hits": cache.take_hit_rate() or 0.0}

    def finish(self, ema_model, batches, world, mean):
        return {}, None

    @staticmethod
    def exported_config(cfg: Config, extra: dict) -> Config:
        """A latent model records its VAE's geometry and scale factor (read from the VAE export)."""
        from ..export import with_vae

        return with_vae(cfg, cfg.vae.export) if cfg.model.family == "dit" else cfg

    @staticmethod
    def next_config(cfg: Config, export_dir) -> Config:
        return cfg


STAGE_CLASSES: dict[str, type] = {"vae": VAEStage, "unet3d": DiffusionStage, "dit": DiffusionStage}


def make_stage(cfg: Config, name: str, device: torch.device) -> Stage:
    return STAGE_CLASSES[name](cfg, device)


def _latent_shards(spec) -> bool:
    """Whether ``spec`` names `vdp encode`'s latent shards (False for clip shards, or none readable here)."""
    from ..data.latent_format import KIND
    from ..data.pipeline import shard_manifest
    from ..data.shards import ShardError

    try:
        return bool(spec) and (shard_manifest(spec) or {}).get("kind") == KIND
    except (ShardError, OSError):
        return False


def _half_on_gpu(device: torch.device, dtype: torch.dtype):
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def strip(rows: list[torch.Tensor], max_clips: int = 4) -> np.ndarray:
    """An image (H', W', 3) uint8: for each clip, one row per tensor (e.g. truth, prediction), frames left
    to right."""
    tiles = []
    for i in range(min(max_clips, rows[0].shape[0])):
        for r in rows:
            clip = to_uint8(r[i]).cpu()  # (C, T, H, W)
            tiles.append(torch.cat(list(clip.permute(1, 2, 3, 0)), dim=1))  # (H, T*W, C)
    image = torch.cat(tiles, dim=0).numpy()
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
