"""The Predictor: an export turned into future frames, new clips, in-betweens and refinements.

Frames go in and come out as uint8 arrays shaped (T, H, W, C), or (N, T, H, W, C) for a batch of clips;
grayscale (T, H, W) is taken as one channel. Everything else (the [-1, 1] range, the latent space and its scale
factor, latent frame groups, the model's window) stays inside. Ray Serve and `vdp evaluate` wrap this class;
nothing here imports Ray or DeepSpeed.

    p = Predictor.from_export("runs/demo/export")
    future = p.predict(frames[:4], num_future=12, seed=0)    # rolls out past the model's window
"""

from __future__ import annotations

import hashlib
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from .config import SamplingConfig, SettingError, check_prompts, resolve_sampling
from .diffusion import Condition, interpolation_mask, make_diffusion, sample
from .diffusion.samplers import evaluations_per_step
from .export import WEIGHTS, Export
from .latent import LatentFrameError, LatentSpace
from .pixels import clips_to_model, clips_to_uint8, fit_frames
from .vocab import INFERENCE_PRECISIONS


class PredictError(ValueError):
    """Input a model cannot take; the message names the argument and what was expected."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"device {device}: CUDA is not available on this machine")
    return device


def inference_precision(trained: str, device: torch.device, requested: str = "auto") -> tuple[str, torch.dtype | None]:
    """The precision a Predictor samples in and the autocast dtype it means (None: plain fp32). ``auto``: on CUDA
    the export's training precision (a bf16 model in bf16, fp16 in fp16, fp32 in fp32 with TF32), on CPUs
    fp32 (half-precision autocast is slower there); bf16 on a GPU without it becomes fp16."""
    if requested not in INFERENCE_PRECISIONS:
        raise PredictError(f"precision {requested!r}: expected one of {', '.join(INFERENCE_PRECISIONS)}")
    precision = requested
    if requested == "auto":
        precision = trained if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        precision = "fp16"
    return precision, {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)


class Predictor:
    """An export (EMA weights, config, latent space, text encoder) on a device, ready to sample."""

    def __init__(self, export: Export, device: str | torch.device = "auto", precision: str = "auto"):
        if export.stage == "vae":
            raise PredictError(f"{export.directory}: a VAE export; predicting needs a denoiser export (unet3d or dit)")
        self.export = export
        self.cfg = cfg = export.cfg
        self.device = resolve_device(device)
        self.model = export.model().to(self.device).requires_grad_(False)
        try:
            self.latent = LatentSpace.of_export(export, self.device)
        except FileNotFoundError as exc:
            raise PredictError(str(exc)) from None
        self.diffusion = make_diffusion(cfg.diffusion)
        self.text_encoder = self.text = None
        if (encoder := export.text_encoder()) is not None:
            from .text import TextConditioner, TextEncoder, TextError

            try:
                self.text_encoder = TextEncoder(encoder, cfg.text.max_tokens, self.device)
            except TextError as exc:
                raise PredictError(f"{export.directory}: a text-conditioned model: {exc}") from None
            self.text = TextConditioner.of_encoder(self.text_encoder)
        self.precision, self.autocast_dtype = inference_precision(cfg.train.precision, self.device, precision)
        if self.device.type == "cuda":  # the fp32 parts (and an fp32 model) on tensor cores
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    @classmethod
    def from_export(cls, path: str | Path, device: str | torch.device = "auto", precision: str = "auto") -> Predictor:
        path = Path(path)
        if not path.exists():
            raise PredictError(f"--checkpoint {path}: no such export folder")
        try:
            export = Export(path)
        except FileNotFoundError as e:
            raise PredictError(str(e)) from None
        return cls(export, device, precision)

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
    def temporal_compression(self) -> int:
        """Pixel frames per latent frame (1 for pixel models)."""
        return self.latent.temporal_compression

    @property
    def vae(self):
        return self.latent.vae

    @property
    def max_context(self) -> int:
        """Most given frames per window: what training showed the model (diffusion.masks.context_max), in
        whole latent frames, leaving at least one latent frame to predict."""
        trained = max(self.cfg.diffusion.masks.context_max, self.cfg.data.context_frames)
        frames_per_latent = self.temporal_compression
        return max(frames_per_latent, self.latent.whole(min(trained, self.window - frames_per_latent)))

    def context_for(self, given: int, context: int | None = None) -> int:
        """The given frames each window of a prediction conditions on, for ``given`` frames and an optional
        ``context`` limit: as many as the model takes, in whole latent frames."""
        c = min(self.max_context if context is None else context, given, self.max_context)
        frames_per_latent = self.temporal_compression
        if self.latent.whole(c) < frames_per_latent:
            raise PredictError(
                f"frames: {given} context frame(s) given; this model needs at least {frames_per_latent} "
                f"(its VAE compresses time by {frames_per_latent})"
            )
        return self.latent.whole(c)

    def windows(
        self, task: str, *, future: int | None = None, context: int | None = None, frames: int | None = None
    ) -> int:
        """Sampling windows (calls of ``sample``) a task takes: a prediction of ``future`` frames (default: the rest
        of the window) from ``context`` given ones rolls out a window per (window - context) new frames, a generated
        clip of ``frames`` rolls out from its first window, and an interpolation or a refinement is one window."""
        if task == "predict":
            new = self.window - self.context_for(context or self.max_context)
            return math.ceil((future or new) / new)
        if task == "generate":
            return 1 + math.ceil(max(0, (frames or self.window) - self.window) / (self.window - self.max_context))
        return 1

    def evaluations(self, r) -> int:
        """Network evaluations request ``r`` takes (a ``request.Request``, its frame counts given), each of one
        clip's window: windows x steps x evaluations per step x guidance branches x clips. A server prices a
        request with it before sampling."""
        s = self.settings(**r.sampling())
        strength = r.strength if r.task == "refine" else None  # refine starts part-way: fewer steps on DDPM's grid
        shape = self.latent.latent_shape(1, self.window)
        steps = len(self.diffusion.sampling_times(s.steps, s.spacing, strength, shape))
        branches = 1 + (s.guidance != 1.0) + (self.text is not None and s.text_guidance != 1.0)
        clips = r.batch if r.task == "generate" else 1
        windows = self.windows(r.task, future=r.future, context=r.context, frames=r.frames)
        return windows * steps * evaluations_per_step(s.sampler) * branches * clips

    @property
    def model_id(self) -> str:
        digest = hashlib.sha256((self.export.directory / WEIGHTS).read_bytes()).hexdigest()[:12]
        return f"{self.cfg.run.name}-{self.cfg.model.family}-{digest}"

    def info(self) -> dict:
        """What the export is: for `vdp serve`'s /v1/model and metrics.json."""
        s = self.cfg.sampling
        defaults = {"sampler": s.sampler, "steps": s.steps, "guidance": s.guidance}
        if self.text is not None:
            defaults["text_guidance"] = s.text_guidance
        return {
            "model_id": self.model_id,
            "family": self.cfg.model.family,
            "frames": self.window,
            "size": list(self.size),
            "channels": self.channels,
            "context_frames": self.cfg.data.context_frames,
            "max_context": self.max_context,
            "temporal_compression": self.temporal_compression,
            "objective": self.diffusion.objective,
            "num_timesteps": self.diffusion.num_timesteps,
            "steps": self.export.meta.get("steps"),
            "text": self.text is not None,
            "device": str(self.device),
            "precision": self.precision,
            "defaults": defaults,
        }

    def settings(self, **changes) -> SamplingConfig:
        """The export's sampling settings with a call's changes (sampler, steps, guidance, eta, text_guidance;
        None = the default), checked; a PredictError names the bad one."""
        try:
            return resolve_sampling(self.cfg.sampling, self.diffusion.num_timesteps, **changes)
        except SettingError as exc:
            raise PredictError(str(exc)) from None

    # ----------------------------------------------------------------------------------------- tasks
    def predict(
        self, frames, num_future: int, *, context: int | None = None, include_context: bool = False, **kw
    ) -> np.ndarray:
        """The ``num_future`` frames that follow ``frames`` (the context). Past the model's window it rolls
        out: each new window is conditioned on the last frames so far (its own predictions included).

        context: how many of the last given frames to condition on (default: as many as the model takes).
        include_context: return the given frames (unchanged) followed by the predicted ones.
        kw: sampler, steps, guidance, eta, seed, progress, and for text-conditioned models prompt (one for all
        clips or one per clip) and text_guidance.
        """
        x, batched = self._frames(frames, "frames")
        _positive(num_future, "num_future")
        if context is not None:
            _positive(context, "context")
        k = x.shape[2]
        c = self.context_for(k, context)
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
        shape = self.latent.latent_shape(batch, self.window)
        clip = self.latent.decode(self._sample(shape, Condition(), generator, **kw))
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
        end = self.temporal_compression  # first and last are one latent frame each
        if a.shape[2] != end or b.shape[2] != end:
            raise PredictError(f"first/last: give {end} frame(s) each (the model's latent frame)")
        self._latent_frames(num_between, "num_between")
        self._fits_window(num_between + 2 * end, "num_between", f"{self.window - 2 * end}")
        generator = self._generator(kw.pop("seed", None))
        n, c, _, h, w = a.shape
        filler = torch.zeros(n, c, num_between, h, w, device=a.device)
        latent = self.latent.encode(torch.cat([a, filler, b], dim=2))
        cond = Condition(latent, interpolation_mask(n, latent.shape[2], device=self.device), any_given=True)
        out = self.latent.decode(self._sample(latent.shape, cond, generator, **kw))
        return self._out(out[:, :, end : end + num_between], batched)

    def refine(self, frames, strength: float = 0.5, **kw) -> np.ndarray:
        """SDEdit (Meng et al. 2022): noise the clip to ``strength`` of the schedule (0 < s <= 1) and denoise
        it; low strength keeps the input's layout, 1 redraws it."""
        x, batched = self._frames(frames, "frames")
        if not 0.0 < float(strength) <= 1.0:
            raise PredictError(f"strength: must be in (0, 1], got {strength}")
        self._latent_frames(x.shape[2], "frames")
        self._fits_window(x.shape[2], "frames", f"clips of {self.window} frames")
        generator = self._generator(kw.pop("seed", None))
        latent = self.latent.encode(x)
        out = self._sample(latent.shape, Condition(), generator, init=latent, strength=float(strength), **kw)
        return self._out(self.latent.decode(out), batched)

    # -------------------------------------------------------------------------------------- internals
    def _window(self, ctx: torch.Tensor, num_new: int, generator, **kw) -> torch.Tensor:
        """One window: the given pixel frames ``ctx`` then ``num_new`` sampled ones; returns the new ones."""
        n, frames = ctx.shape[0], ctx.shape[2] + num_new
        cond = Condition.first_frames(self.latent.encode(ctx), self.latent.latent_frames(frames))
        out = self.latent.decode(self._sample(self.latent.latent_shape(n, frames), cond, generator, **kw))
        return out[:, :, ctx.shape[2] :]

    def _sample(
        self,
        shape,
        cond: Condition,
        generator,
        *,
        init=None,
        strength: float = 1.0,
        progress=None,
        prompt=None,
        **changes,
    ) -> torch.Tensor:
        """One sampling call in the latent space: the call's settings and prompt(s) checked, the text condition
        added to ``cond``."""
        settings = self.latent.sampling(self.settings(**changes))
        try:
            prompts = check_prompts(self.text is not None, prompt, changes.get("text_guidance"), shape[0])
        except SettingError as exc:
            raise PredictError(str(exc)) from None
        if prompts is not None:
            cond.model_kwargs, cond.null_kwargs = self.text(prompts, self.device)
        dtype = self.autocast_dtype
        autocast = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()
        with autocast:
            out = sample(
                self.model,
                self.diffusion,
                tuple(shape),
                cond,
                settings,
                init=init,
                strength=strength,
                generator=generator,
                device=self.device,
                progress=progress,
            )
        return out.float()

    def _fits_window(self, frames: int, name: str, expected: str) -> None:
        """A model whose frames are folded into channels (model.unet3d.fold_frames) takes exactly its window."""
        if getattr(self.model, "fold_frames", None) and frames != self.window:
            raise PredictError(
                f"{name}: this model takes exactly {self.window} frames at once (its frames are "
                f"folded into channels); expected {expected}"
            )

    def _latent_frames(self, frames: int, name: str) -> int:
        try:
            return self.latent.latent_frames(frames, name)
        except LatentFrameError as exc:
            raise PredictError(str(exc)) from None

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
        return clips_to_model(a, self.device), batched

    @staticmethod
    def _out(x: torch.Tensor, batched: bool) -> np.ndarray:
        a = clips_to_uint8(x)
        return a if batched else a[0]


def _positive(value, name: str) -> None:
    if not isinstance(value, (int, np.integer)) or value <= 0:
        raise PredictError(f"{name}: must be a positive integer, got {value!r}")


def _as_clip(frames) -> np.ndarray:
    """A single frame (H, W, C) becomes a one-frame clip; clips and batches pass through."""
    a = np.asarray(frames)
    return a[None] if a.ndim == 3 and a.shape[-1] in (1, 3) else a


__all__ = ["PredictError", "Predictor", "fit_frames", "resolve_device"]
