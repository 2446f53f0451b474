"""The Predictor: an export turned into future frames, new clips, in-betweens and refinements.

Frames go in and come out as uint8 arrays shaped (T, H, W, C), or (N, T, H, W, C) for a batch of clips;
grayscale (T, H, W) is taken as one channel. Everything else (the [-1, 1] range, the VAE and its scale
factor, latent frame groups, the model's window) stays inside. Ray Serve and `vdp evaluate` wrap this class;
nothing here imports Ray or DeepSpeed.

    p = Predictor.from_export("runs/demo/export")
    future = p.predict(frames[:4], num_future=12, seed=0)    # rolls out past the model's window
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from .diffusion import SAMPLERS, GaussianDiffusion, interpolation_mask, sample
from .export import WEIGHTS, Export


class PredictError(ValueError):
    """Input a model cannot take; the message names the argument and what was expected."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"device {device}: CUDA is not available on this machine")
    return device


class Predictor:
    """An export (EMA weights, config, VAE) on a device, ready to sample."""

    def __init__(self, export: Export, device: str | torch.device = "auto", half: bool | None = None):
        if export.stage == "vae":
            raise PredictError(f"{export.directory}: a VAE export; predicting needs a denoiser export (unet3d or dit)")
        self.export = export
        self.cfg = cfg = export.cfg
        self.device = resolve_device(device)
        self.model = export.model().to(self.device).requires_grad_(False)
        vae_export = export.vae()
        self.vae = vae_export.model().to(self.device).requires_grad_(False) if vae_export else None
        if cfg.model.family == "dit" and self.vae is None:
            raise PredictError(f"{export.directory}: a dit export without its vae/ folder")
        self.scale = float(cfg.vae.scale_factor or 1.0) if self.vae is not None else 1.0
        self.tc = cfg.vae.temporal_compression if self.vae is not None else 1
        self.diffusion = GaussianDiffusion.from_config(cfg.diffusion)
        self.text_encoder = None
        if (encoder := export.text_encoder()) is not None:
            from .text import TextEncoder, TextError

            try:
                self.text_encoder = TextEncoder(encoder, cfg.text.max_tokens, self.device)
            except TextError as exc:
                raise PredictError(f"{export.directory}: a text-conditioned model: {exc}") from None
            self._embedded: tuple[tuple[str, ...], dict] | None = None  # the last prompts: a roll-out reuses them
            self._null_text = self._embed([""])
        # fp16 autocast on CUDA unless told otherwise; CPUs run fp32
        self.half = (self.device.type == "cuda") if half is None else bool(half and self.device.type == "cuda")

    @classmethod
    def from_export(cls, path: str | Path, device: str | torch.device = "auto", half: bool | None = None) -> Predictor:
        path = Path(path)
        if not path.exists():
            raise PredictError(f"--checkpoint {path}: no such export folder")
        try:
            export = Export(path)
        except FileNotFoundError as e:
            raise PredictError(str(e)) from None
        return cls(export, device, half)

    # ------------------------------------------------------------------------------------------- facts
    @property
    def window(self) -> int:
        """Frames the model sees at once (data.frames of its training)."""
        return self.cfg.data.frames

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.cfg.data.size)

    @property
    def channels(self) -> int:
        return self.cfg.data.channels

    @property
    def max_context(self) -> int:
        """Most given frames per window: what training showed the model (diffusion.masks.context_max), in
        whole latent frames, leaving at least one latent frame to predict."""
        most = min(max(self.cfg.diffusion.masks.context_max, self.cfg.data.context_frames), self.window - self.tc)
        return max(self.tc, most // self.tc * self.tc)

    @property
    def model_id(self) -> str:
        digest = hashlib.sha256((self.export.directory / WEIGHTS).read_bytes()).hexdigest()[:12]
        return f"{self.cfg.run.name}-{self.cfg.model.family}-{digest}"

    def info(self) -> dict:
        """What the export is: for `vdp serve`'s /v1/model and metrics.json."""
        return {
            "model_id": self.model_id,
            "family": self.cfg.model.family,
            "frames": self.window,
            "size": list(self.size),
            "channels": self.channels,
            "context_frames": self.cfg.data.context_frames,
            "max_context": self.max_context,
            "temporal_compression": self.tc,
            "steps": self.export.meta.get("steps"),
            "text": self.text_encoder is not None,
            "defaults": {
                "sampler": self.cfg.diffusion.sampler,
                "steps": self.cfg.diffusion.sample_steps,
                "guidance": self.cfg.diffusion.guidance,
                **({"text_guidance": self.cfg.text.guidance} if self.text_encoder is not None else {}),
            },
        }

    # ----------------------------------------------------------------------------------------- tasks
    def predict(
        self, frames, num_future: int, *, context: int | None = None, include_context: bool = False, **kw
    ) -> np.ndarray:
        """The ``num_future`` frames that follow ``frames`` (the context). Past the model's window it rolls
        out: each new window is conditioned on the last frames so far (its own predictions included).

        context: how many of the last given frames to condition on (default: as many as the model takes).
        include_context: return the given frames (unchanged) followed by the predicted ones.
        kw: sampler, steps, guidance, eta, seed, progress, and for text-conditioned models prompt (one for all
        clips or one per clip) and text_guidance (see ``_sample_latent``).
        """
        x, batched = self._frames(frames, "frames")
        _positive(num_future, "num_future")
        k = x.shape[2]
        c = self.max_context if context is None else context
        _positive(c, "context")
        c = min(c, k, self.max_context)
        if c % self.tc:
            c = c // self.tc * self.tc
        if c < self.tc:
            raise PredictError(
                f"frames: {k} context frame(s) given; this model needs at least {self.tc} "
                f"(its VAE compresses time by {self.tc})"
            )
        generator = self._generator(kw.pop("seed", None))
        clip = x
        while clip.shape[2] - k < num_future:
            ctx = clip[:, :, -c:]
            new = self._window(ctx, self.window - c, generator, **kw)
            clip = torch.cat([clip, new], dim=2)
        if include_context:  # the given frames come back bit-exact: u8 -> [-1, 1] -> u8 is lossless
            return self._out(clip[:, :, : k + num_future], batched)
        return self._out(clip[:, :, k : k + num_future], batched)

    def generate(self, num_frames: int | None = None, *, batch: int = 1, **kw) -> np.ndarray:
        """``batch`` new clips of ``num_frames`` frames (default: the window) from nothing; longer clips roll
        out from the first window."""
        num_frames = self.window if num_frames is None else num_frames
        _positive(num_frames, "num_frames")
        _positive(batch, "batch")
        generator = self._generator(kw.pop("seed", None))
        first = self._sample_window(None, self.window, batch, generator, **kw)
        clip = first
        while clip.shape[2] < num_frames:
            ctx = clip[:, :, -self.max_context :]
            clip = torch.cat([clip, self._window(ctx, self.window - ctx.shape[2], generator, **kw)], dim=2)
        return self._out(clip[:, :, :num_frames], batch > 1)

    def interpolate(self, first, last, num_between: int, **kw) -> np.ndarray:
        """``num_between`` frames from ``first`` to ``last`` (frames (H, W, C) or, for models whose VAE
        compresses time, groups of frames (k, H, W, C)), through the interpolation task's frame mask."""
        a, batched = self._frames(_as_clip(first), "first")
        b, _ = self._frames(_as_clip(last), "last")
        if a.shape[0] != b.shape[0]:
            raise PredictError(f"first and last: {a.shape[0]} and {b.shape[0]} clips; expected the same batch size")
        _positive(num_between, "num_between")
        if a.shape[2] != self.tc or b.shape[2] != self.tc:
            raise PredictError(f"first/last: give {self.tc} frame(s) each (the model's latent frame)")
        if num_between % self.tc:
            raise PredictError(f"num_between: must be a multiple of {self.tc} (the model's temporal compression)")
        generator = self._generator(kw.pop("seed", None))
        n, c, _, h, w = a.shape
        filler = torch.zeros(n, c, num_between, h, w, device=a.device)
        clip = torch.cat([a, filler, b], dim=2)
        latent = self._encode(clip)
        mask = interpolation_mask(n, latent.shape[2], device=self.device)
        out = self._sample_latent(latent.shape, latent, mask, generator, **kw)
        return self._out(self._decode(out)[:, :, self.tc : self.tc + num_between], batched)

    def refine(self, frames, strength: float = 0.5, **kw) -> np.ndarray:
        """SDEdit (Meng et al. 2022): noise the clip to ``strength`` of the schedule (0 < s <= 1) and denoise
        it; low strength keeps the input's layout, 1 redraws it."""
        x, batched = self._frames(frames, "frames")
        if not 0.0 < float(strength) <= 1.0:
            raise PredictError(f"strength: must be in (0, 1], got {strength}")
        if x.shape[2] % self.tc:
            raise PredictError(f"frames: {x.shape[2]} frames; refining needs a multiple of {self.tc}")
        generator = self._generator(kw.pop("seed", None))
        latent = self._encode(x)
        out = self._sample_latent(latent.shape, None, None, generator, init=latent, strength=float(strength), **kw)
        return self._out(self._decode(out), batched)

    # -------------------------------------------------------------------------------------- internals
    def _window(self, ctx: torch.Tensor, num_new: int, generator, **kw) -> torch.Tensor:
        """One window: the given pixel frames ``ctx`` then ``num_new`` sampled ones; returns the new ones."""
        return self._sample_window(ctx, ctx.shape[2] + num_new, ctx.shape[0], generator, **kw)[:, :, ctx.shape[2] :]

    def _sample_window(self, ctx, frames: int, n: int, generator, **kw) -> torch.Tensor:
        if ctx is None:
            lat_shape = self._latent_shape(n, frames)
            out = self._sample_latent(lat_shape, None, None, generator, **kw)
            return self._decode(out)
        z_ctx = self._encode(ctx)
        lat_shape = self._latent_shape(n, frames)
        given = z_ctx.shape[2]
        context = torch.zeros(lat_shape, device=self.device)
        context[:, :, :given] = z_ctx
        mask = torch.zeros(n, lat_shape[2], dtype=torch.bool, device=self.device)
        mask[:, :given] = True
        out = self._decode(self._sample_latent(lat_shape, context, mask, generator, **kw))
        return torch.cat([ctx, out[:, :, ctx.shape[2] :]], dim=2)  # the given frames exactly as given

    def _latent_shape(self, n: int, frames: int) -> tuple[int, ...]:
        h, w = self.size
        if self.vae is None:
            return (n, self.channels, frames, h, w)
        sc = self.cfg.vae.spatial_compression
        return (n, self.cfg.vae.latent_channels, frames // self.tc, h // sc, w // sc)

    def _sample_latent(
        self,
        shape,
        context,
        mask,
        generator,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        eta: float | None = None,
        init=None,
        strength: float = 1.0,
        progress=None,
        prompt: str | list[str] | None = None,
        text_guidance: float | None = None,
    ) -> torch.Tensor:
        d = self.cfg.diffusion
        sampler, steps, guidance, eta = self.sampling(sampler, steps, guidance, eta)
        text, null, text_guidance = self._text(prompt, text_guidance, shape[0])
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.half else nullcontext()
        with autocast:
            out = sample(
                self.model,
                self.diffusion,
                tuple(shape),
                sampler=sampler,
                steps=steps,
                eta=eta,
                spacing=d.spacing,
                guidance=guidance,
                context=context,
                frame_mask=mask,
                init=init,
                strength=strength,
                clip_x0=d.clip_x0 if self.vae is None else None,
                generator=generator,
                device=self.device,
                progress=progress,
                model_kwargs=text,
                text_guidance=text_guidance,
                null_kwargs=null,
            )
        return out.float()

    def _text(self, prompt, text_guidance, n: int) -> tuple[dict, dict | None, float]:
        """Model kwargs for the prompt (the null text when none), the null text, and the text guidance."""
        if self.text_encoder is None:
            if prompt:
                raise PredictError("prompt: this model was trained without text (no text.encoder)")
            if text_guidance not in (None, 1.0):
                raise PredictError("text_guidance: this model was trained without text")
            return {}, None, 1.0
        g = self.cfg.text.guidance if text_guidance is None else float(text_guidance)
        if not 0.0 <= g <= 50.0:
            raise PredictError(f"text_guidance: must be in [0, 50], got {text_guidance}")
        prompts = [prompt or ""] * n if prompt is None or isinstance(prompt, str) else list(prompt)
        if len(prompts) != n or not all(isinstance(p, str) for p in prompts):
            raise PredictError(f"prompt: one string, or one per clip ({n}); got {prompt!r}")
        if any(len(p) > 2000 for p in prompts):
            raise PredictError("prompt: at most 2000 characters")
        return self._embed(prompts), {k: v.expand(n, *v.shape[1:]) for k, v in self._null_text.items()}, g

    def _embed(self, prompts: list[str]) -> dict:
        """The text encoder's output for the prompts; every window of one roll-out asks for the same ones."""
        key = tuple(prompts)
        if self._embedded is None or self._embedded[0] != key:
            out = self.text_encoder.encode(prompts)
            self._embedded = (key, {"text_tokens": out["tokens"].to(self.device),
                                    "text_mask": out["mask"].to(self.device),
                                    "text_pooled": out["pooled"].to(self.device)})  # fmt: skip
        return self._embedded[1]

    def sampling(self, sampler=None, steps=None, guidance=None, eta=None) -> tuple[str, int, float, float]:
        """Sampling settings with the export's defaults filled in, checked; a PredictError names the bad one."""
        d = self.cfg.diffusion
        sampler = sampler or d.sampler
        if sampler not in SAMPLERS:
            raise PredictError(f"sampler: unknown {sampler!r}; expected one of {list(SAMPLERS)}")
        steps = d.sample_steps if steps is None else int(steps)
        if steps <= 0 or steps > self.diffusion.num_timesteps:
            raise PredictError(f"steps: must be in [1, {self.diffusion.num_timesteps}], got {steps}")
        guidance = d.guidance if guidance is None else float(guidance)
        if not 0.0 <= guidance <= 50.0:
            raise PredictError(f"guidance: must be in [0, 50], got {guidance}")
        return sampler, steps, guidance, d.eta if eta is None else float(eta)

    @torch.no_grad()
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return x
        return self.vae.encode(x).mode() * self.scale

    @torch.no_grad()
    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return z
        return self.vae.decode(z / self.scale).float()

    def _generator(self, seed: int | None) -> torch.Generator:
        g = torch.Generator()
        if seed is None:
            g.seed()
        else:
            g.manual_seed(int(seed))
        return g

    def _frames(self, frames, name: str) -> tuple[torch.Tensor, bool]:
        """uint8 (T, H, W[, C]) or (N, T, H, W, C) -> float (N, C, T, H, W) in [-1, 1] on the device."""
        a = np.asarray(frames)
        if a.dtype != np.uint8:
            raise PredictError(f"{name}: expected uint8 frames (0-255), got dtype {a.dtype}")
        if a.ndim == 3:
            a = a[..., None]
        if a.ndim == 4:
            batched = False
            a = a[None]
        elif a.ndim == 5:
            batched = True
        else:
            raise PredictError(f"{name}: expected (T, H, W, C) or (N, T, H, W, C) frames, got shape {a.shape}")
        n, t, h, w, c = a.shape
        if t == 0 or n == 0:
            raise PredictError(f"{name}: no frames given")
        if (h, w) != self.size:
            raise PredictError(
                f"{name}: frames are {h}x{w}; this model takes {self.size[0]}x{self.size[1]} "
                "(resize the input, e.g. `vdp predict --resize`)"
            )
        if c != self.channels:
            raise PredictError(f"{name}: frames have {c} channel(s); this model takes {self.channels}")
        x = torch.from_numpy(np.ascontiguousarray(a)).to(self.device).permute(0, 4, 1, 2, 3).float()
        return x / 127.5 - 1.0, batched

    @staticmethod
    def _out(x: torch.Tensor, batched: bool) -> np.ndarray:
        a = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()
        return a if batched else a[0]


def _positive(value, name: str) -> None:
    if not isinstance(value, (int, np.integer)) or value <= 0:
        raise PredictError(f"{name}: must be a positive integer, got {value!r}")


def _as_clip(frames) -> np.ndarray:
    """A single frame (H, W, C) becomes a one-frame clip; clips and batches pass through."""
    a = np.asarray(frames)
    return a[None] if a.ndim == 3 and a.shape[-1] in (1, 3) else a


def fit_frames(frames: np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    """Resize (centre crop to the aspect, then area/bilinear) and convert channels: (T, H, W, C) uint8 in and
    out, for inputs a model's size or channel count does not match."""
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (T, C, H, W)
    if x.shape[1] != channels:
        if channels == 1:
            x = (x * x.new_tensor([0.299, 0.587, 0.114])[None, :, None, None]).sum(1, keepdim=True)
        else:
            x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    th, tw = size
    scale = max(th / h, tw / w)
    ch, cw = round(th / scale), round(tw / scale)
    top, left = (h - ch) // 2, (w - cw) // 2
    x = x[:, :, top : top + ch, left : left + cw]
    if (ch, cw) != (th, tw):
        x = F.interpolate(x, size=(th, tw), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


__all__ = ["PredictError", "Predictor", "fit_frames", "resolve_device"]
