"""Gaussian diffusion over clips (N, C, T, ...) with per-frame timesteps and frame-mask conditioning: the DDPM
family (Ho et al. 2020) on a discrete schedule ``alpha_bar[t]``, ``a = sqrt(alpha_bar)``, ``s = sqrt(1 - alpha_bar)``.

The network gets t (N, T) as float timesteps (0 for given frames); frame_mask (N, T) bool or None (the null
condition).
"""

from __future__ import annotations

import math

import torch

from .process import DiffusionProcess, compute_dtype, expand_to
from .schedules import ddpm_grid, make_alpha_bar


class GaussianDiffusion(DiffusionProcess):
    objective = "ddpm"

    def __init__(
        self,
        schedule: str = "cosine",
        num_timesteps: int = 1000,
        prediction_type: str = "v",
        zero_terminal_snr: bool = False,
        min_snr_gamma: float | None = None,
        residual: bool = False,
        context_noise: float = 0.0,
        times: str | None = None,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        motion_kernel: int = 0,
        loss: str = "mse",
        anchor: str = "last",
    ):
        super().__init__(num_timesteps, prediction_type, min_snr_gamma, residual, context_noise, times, logit_mean,
                         logit_std, motion_kernel, loss, anchor)  # fmt: skip
        self.schedule = schedule
        self.alpha_bar = make_alpha_bar(schedule, num_timesteps, zero_terminal_snr)  # (T,) float64
        self.alpha_bar_values: list[float] = self.alpha_bar.tolist()  # for the samplers' per-step host arithmetic
        self._tables: dict[torch.device, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg) -> GaussianDiffusion:
        """Build from a ``DiffusionConfig`` (or anything with the same attributes)."""
        return cls(cfg.schedule, cfg.num_timesteps, cfg.prediction_type, cfg.zero_terminal_snr, cfg.min_snr_gamma,
                   getattr(cfg, "residual", False), getattr(cfg, "context_noise", 0.0), getattr(cfg, "times", None),
                   getattr(cfg, "time_logit_mean", 0.0), getattr(cfg, "time_logit_std", 1.0),
                   getattr(cfg, "motion_kernel", 0), getattr(cfg, "loss", "mse"),
                   getattr(cfg, "anchor", "last"))  # fmt: skip

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

    def path(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ab = self.alpha_bar_on(t.device)[t.long()]
        return ab.sqrt(), (1 - ab).sqrt()

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.float()

    def point(self, t) -> tuple[float, float, float]:
        ab = self.alpha_bar_values[int(t)]
        return math.sqrt(ab), math.sqrt(max(1.0 - ab, 0.0)), float(t)

    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        if generator is None:
            return torch.randint(0, self.num_timesteps, (batch,), device=device)
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator).to(device)

    def draw_times(self, n: int, generator, device, shape) -> torch.Tensor:
        if self.times == "uniform":
            return self.sample_timesteps(n, generator, device)
        t = (self.unit_times(n, generator) * self.num_timesteps).long().clamp(0, self.num_timesteps - 1)
        return t.to(device)

    def context_times(self, n: int, generator, device) -> torch.Tensor:
        top = round(self.context_noise * (self.num_timesteps - 1))
        return torch.randint(0, top + 1, (n,), generator=generator).to(device)

    def time_at(self, level: float, n: int, device) -> torch.Tensor:
        return torch.full((n,), round(level * self.num_timesteps), device=device).clamp(max=self.num_timesteps - 1)

    def sampling_times(self, steps: int, spacing: str, strength: float | None, shape) -> list[int]:
        steps_list = ddpm_grid(self.num_timesteps, steps, spacing)
        if strength is not None:  # SDEdit-style refinement: the schedule truncated at the start
            top = round(strength * self.num_timesteps) - 1
            steps_list = [t for t in steps_list if t <= top] or [max(top, 0)]
        return steps_list
