"""Gaussian diffusion over clips (N, C, T, ...) with per-frame timesteps and frame-mask conditioning.

The only link to a network is the call ``model(x_t, t, frame_mask, **kwargs)``: x_t (N, C, T, ...),
t (N, T) float timesteps (0 for given frames), frame_mask (N, T) bool or None (the null condition).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .masks import nearest_given
from .objectives import masked_frame_loss, min_snr_weight, target_for
from .schedules import make_alpha_bar

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


class GaussianDiffusion:
    def __init__(
        self,
        schedule: str = "cosine",
        num_timesteps: int = 1000,
        prediction_type: str = "v",
        zero_terminal_snr: bool = False,
        min_snr_gamma: float | None = None,
        residual: bool = False,
    ):
        if residual and prediction_type != "x0":
            raise ValueError("a residual objective needs prediction_type x0")
        self.schedule = schedule
        self.num_timesteps = num_timesteps
        self.prediction_type = prediction_type
        self.min_snr_gamma = min_snr_gamma
        self.residual = residual  # x0 predicted as a change from the nearest given frame
        self.alpha_bar = make_alpha_bar(schedule, num_timesteps, zero_terminal_snr)  # (T,) float64
        self.alpha_bar_values: list[float] = self.alpha_bar.tolist()  # for the samplers' per-step host arithmetic
        self._tables: dict[torch.device, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg) -> GaussianDiffusion:
        """Build from a ``DiffusionConfig`` (or anything with the same attributes)."""
        return cls(cfg.schedule, cfg.num_timesteps, cfg.prediction_type, cfg.zero_terminal_snr, cfg.min_snr_gamma,
                   getattr(cfg, "residual", False))  # fmt: skip

    def alpha_bar_on(self, device) -> torch.Tensor:
        """The float64 table on ``device``, copied there once (this sits on the training hot path)."""
        device = torch.device(device)
        if device not in self._tables:
            self._tables[device] = self.alpha_bar.to(device)
        return self._tables[device]

    def alpha_bar_at(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """alpha_bar[t] broadcast against x, on x's device, in fp32 at least (``compute_dtype``: in fp16 alpha_bar
        rounds to 1 for t <= 3 and is off by up to 25% to t ~ 15). t: (N,) or (N, T) integer steps."""
        ab = self.alpha_bar_on(x.device)[t.long().to(x.device)]
        return expand_to(ab, x).to(compute_dtype(x))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward noising, Ho et al. 2020 eq. 4, in fp32 at least whatever the inputs' dtype."""
        ab = self.alpha_bar_at(t, x0)
        return ab.sqrt() * x0.to(ab.dtype) + (1 - ab).sqrt() * noise.to(ab.dtype)

    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        if generator is None:
            return torch.randint(0, self.num_timesteps, (batch,), device=device)
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator).to(device)

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
        **model_kwargs,
    ) -> dict[str, torch.Tensor]:
        """Denoising loss on the frames that are not given.

        Given frames enter clean with timestep 0; the rest share one timestep per sample. Noising, targets and
        weights are computed in fp32 (at least); only the network runs in ``dtype`` (default: x0's), and it gets
        its timesteps in fp32 (bf16 cannot tell 999 from 1000). Returns ``loss`` (scalar), ``per_frame`` (N, T)
        unweighted errors and ``t`` (N,).
        """
        net_dtype = dtype or x0.dtype
        x0 = x0.to(compute_dtype(x0))
        n, num_frames = x0.shape[0], x0.shape[2]
        if frame_mask is None:
            frame_mask = torch.zeros(n, num_frames, dtype=torch.bool, device=x0.device)
        if t is None:
            t = self.sample_timesteps(n, generator, x0.device)
        if noise is None:  # a seeded generator lives on the CPU; without one, draw where the data is
            noise = (
                torch.randn_like(x0)
                if generator is None
                else torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
            )
        noise = noise.to(x0.dtype)
        frame_t = torch.where(frame_mask, torch.zeros_like(t)[:, None], t[:, None])  # (N, T)
        given = expand_to(frame_mask, x0)
        x_t = torch.where(given, x0, self.q_sample(x0, frame_t, noise))
        out = model(x_t.to(net_dtype), frame_t.float(), frame_mask, **model_kwargs).to(x0.dtype)
        ab = self.alpha_bar_at(frame_t, x0)
        target = target_for(self.prediction_type, x0, noise, ab)
        if self.residual:
            target = target - nearest_given(x0, frame_mask)
        weight = None
        if self.min_snr_gamma:
            weight = min_snr_weight(self.alpha_bar_on(x0.device)[frame_t], self.min_snr_gamma, self.prediction_type)
        loss, per_frame = masked_frame_loss(out, target, ~frame_mask, weight)
        return {"loss": loss, "per_frame": per_frame.detach(), "t": t}
