"""What DDPM and flow matching share: a Gaussian path ``x_t = a(t) x0 + s(t) eps`` between the data and noise,
the masked training loss, the anchor the network's prediction starts from, and the noise augmentation of given
frames.

Subclasses give the path (``coefficients``), the network's time input (``model_time``), how training draws times
(``draw_times``) and where sampling stops (``sampling_times``); samplers, conditioning and guidance only see
``point(t) -> (a, s, model time)`` and so work on both. The only link to a network is the call
``model(x_t, model_time, frame_mask, **kwargs)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ..anchor import Anchor
from ..config.diffusion import DiffusionConfig
from ..config.fields import build
from .objectives import masked_frame_loss, min_snr_weight_as, split_as, target_as, x0_error_factor

Denoiser = Callable[..., torch.Tensor]


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """What the diffusion arithmetic around a network runs in: fp32 for half-precision inputs (fp64 stays)."""
    return torch.promote_types(x.dtype, torch.float32)


def expand_to(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast per-sample (N,) or per-frame (N, T) values against x of shape (N, C, T, ...)."""
    if values.ndim == 1:
        return values.view(-1, *([1] * (x.ndim - 1)))
    if values.ndim == 2:
        return values.view(values.shape[0], 1, values.shape[1], *([1] * (x.ndim - 3)))  # (N, 1, T, 1, 1)
    raise ValueError(f"timesteps must be (N,) or (N, T), got shape {tuple(values.shape)}")


class DiffusionProcess:
    """A diffusion process, built from keyword-only settings named, defaulted and checked exactly as the config's
    ``diffusion`` section (``vdp keys diffusion``), so a process made by hand is the one a config with the same keys
    builds: ``GaussianDiffusion(prediction_type="x0", anchor="none")``, or ``make_diffusion(cfg.diffusion)``.

    ``anchor`` (``vdp_ray.anchor``): where the network's prediction starts from; an anchored network is trained in
    the objective's own space (``prediction_type`` sets the loss weighting). ``context_noise``: given frames are
    noised during training to a level drawn up to this fraction of the path (the network is told the level through
    its per-frame time), so roll-outs on its own, imperfect predictions do not drift; sampling gives them clean."""

    objective = ""
    flow = False  # v is the rectified-flow velocity rather than the VP v

    default_times = "uniform"  # how training draws times unless told (``times``)

    def __init__(self, **settings):
        settings.setdefault("objective", self.objective)
        # the config's own machinery: the same defaults, types, ranges and messages as a YAML file gets
        cfg = build(DiffusionConfig, settings, "diffusion.")
        if cfg.objective != self.objective:
            raise ValueError(f"diffusion.objective: {type(self).__name__} is {self.objective!r}, got {cfg.objective!r}")
        self.cfg = cfg
        self.anchor = Anchor.of_config(cfg)
        self.num_timesteps, self.prediction_type = cfg.num_timesteps, cfg.prediction_type
        self.min_snr_gamma, self.loss, self.context_noise = cfg.min_snr_gamma, cfg.loss, cfg.context_noise
        self.times = cfg.times or self.default_times  # unset: each objective's usual draw
        self.logit_mean, self.logit_std = cfg.time_logit_mean, cfg.time_logit_std

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> DiffusionProcess:
        """The process of a config's ``diffusion`` section."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "masks"})

    # ---- the path (subclasses)
    def path(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, s) at native times t, same shape as t, on t's device (float64 where the device has it)."""
        raise NotImplementedError

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The network's fp32 time input for native times t (0 = clean, num_timesteps - 1 ~ pure noise)."""
        raise NotImplementedError

    def point(self, t) -> tuple[float, float, float]:
        """(a, s, model time) at one native time, as host numbers: a sampler's per-step arithmetic."""
        raise NotImplementedError

    def draw_times(self, n: int, generator, device, shape) -> torch.Tensor:
        raise NotImplementedError

    def unit_times(self, n: int, generator) -> torch.Tensor:
        """n training times in (0, 1) (0 = clean, 1 = noise), float64 on the host: uniform, or logit-normal
        (``logit_mean`` > 0 favours the noisy end, where a predictor learns where things go)."""
        if self.times == "uniform":
            return torch.rand(n, generator=generator, dtype=torch.float64)
        normal = torch.randn(n, generator=generator, dtype=torch.float64)
        return torch.sigmoid(normal * self.logit_std + self.logit_mean)

    def context_times(self, n: int, generator, device) -> torch.Tensor:
        """Noise levels of given frames in training, uniform in [0, context_noise] of the path."""
        raise NotImplementedError

    def time_at(self, level: float, n: int, device) -> torch.Tensor:
        """(n,) native times at ``level`` in [0, 1] of the path (validation at fixed levels)."""
        raise NotImplementedError

    def sampling_times(self, steps: int, spacing: str, strength: float | None, shape) -> list:
        """Decreasing native times of a sampling run (after the last, the clean sample); ``strength`` < 1 starts
        part-way (refinement)."""
        raise NotImplementedError

    # ---- shared
    def coefficients(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, s) at native times t (N,) or (N, T), broadcast against x, on x's device, in fp32 at least."""
        a, s = self.path(t.to(x.device))
        dt = compute_dtype(x)
        return expand_to(a, x).to(dt), expand_to(s, x).to(dt)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward noising to native times t (N,) or (N, T), in fp32 at least whatever the inputs' dtype."""
        a, s = self.coefficients(t, x0)
        return a * x0.to(a.dtype) + s * noise.to(a.dtype)

    def split(self, prediction: torch.Tensor, x_t: torch.Tensor, a, s) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) from a prediction (``AnchorState.apply`` of a network output) at the point (a, s) of x_t."""
        return split_as(prediction, self.anchor.output_space(self.prediction_type), x_t, a, s, self.flow)

    def training_losses(
        self,
        model: Denoiser,
        x0: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        augment: bool = False,
        **model_kwargs,
    ) -> dict[str, torch.Tensor]:
        """Denoising loss on the frames that are not given.

        Given frames enter clean at time 0 (noised to a small level when ``augment`` and context_noise > 0); the
        rest share one time per sample. Noising, targets and weights are computed in fp32 (at least); only the
        network runs in ``dtype`` (default: x0's) and it gets its times in fp32. Returns ``loss`` (scalar),
        ``per_frame`` (N, T) unweighted errors and ``t`` (N,).
        """
        net_dtype = dtype or x0.dtype
        # the arithmetic around the network in fp32 at least: in fp16, alpha_bar rounds to 1 near the clean end
        x0 = x0.to(compute_dtype(x0))
        n, num_frames = x0.shape[0], x0.shape[2]
        if frame_mask is None:  # nothing given: unconditional generation for every clip
            frame_mask = torch.zeros(n, num_frames, dtype=torch.bool, device=x0.device)
        if t is None:
            t = self.draw_times(n, generator, x0.device, x0.shape)
        noise = self._noise(x0, noise, generator)

        # Given frames: clean at time 0, or (augment) noised a little and told how much through their own time,
        # so that at sampling time a model rolling out on its own imperfect frames has seen such context before.
        given_t = torch.zeros_like(t)
        context = x0
        if augment and self.context_noise > 0:
            given_t = self.context_times(n, generator, x0.device).to(t.dtype)
            noisy_context = self.q_sample(x0, given_t, self._noise(x0, None, generator))
            context = torch.where(expand_to(given_t > 0, x0), noisy_context, x0)
        # one time per clip for the frames to predict, the given frames' own time for the rest: (N, T)
        frame_t = torch.where(frame_mask, given_t[:, None], t[:, None])
        given = expand_to(frame_mask, x0)
        x_t = torch.where(given, context, self.q_sample(x0, frame_t, noise))

        # The anchor starts from the given frames as the network sees them (noised or not): at sampling time the
        # denoiser prepares it the same way from the frames it is given.
        anchor = self.anchor.prepare(context, frame_mask)
        model_kwargs = {**model_kwargs, **anchor.inputs(net_dtype)}
        out = model(x_t.to(net_dtype), self.model_time(frame_t), frame_mask, **model_kwargs).to(x0.dtype)
        prediction = anchor.apply(out)  # x0 for an anchored network, else the objective's space

        a_t, s_t = self.path(frame_t)  # (N, T)
        a_t, s_t = a_t.to(x0.dtype), s_t.to(x0.dtype)
        space = self.anchor.output_space(self.prediction_type)
        target = target_as(space, x0, noise, expand_to(a_t, x0), expand_to(s_t, x0), self.flow)
        weight = None
        if self.anchor.predicts_change:
            # An x0 prediction scored as its error would read in the objective's space (eps: a/s times it, v:
            # 1/s), so prediction_type keeps its meaning (where on the path the loss looks) for anchored models.
            weight = x0_error_factor(self.prediction_type, a_t, s_t).pow(2)  # (N, T)
        if self.min_snr_gamma:
            snr_weight = min_snr_weight_as(a_t, s_t, self.min_snr_gamma, self.prediction_type)
            weight = snr_weight if weight is None else weight * snr_weight
        # only the frames to predict count: given frames are inputs, and an error there would teach nothing
        loss, per_frame = masked_frame_loss(prediction, target, ~frame_mask, weight, self.loss)
        return {"loss": loss, "per_frame": per_frame.detach(), "t": t}

    @staticmethod
    def _noise(x0: torch.Tensor, noise, generator) -> torch.Tensor:
        if noise is None:  # a seeded generator lives on the CPU; without one, draw where the data is
            if generator is None:
                return torch.randn_like(x0)
            return torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        return noise.to(x0.dtype)
