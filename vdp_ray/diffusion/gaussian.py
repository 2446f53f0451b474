"""Gaussian diffusion over clips (N, C, T, ...) with per-frame timesteps and frame-mask conditioning: the DDPM
family (Ho et al. 2020) on a discrete schedule ``alpha_bar[t]``, ``a = sqrt(alpha_bar)``, ``s = sqrt(1 - alpha_bar)``.

The network gets t (N, T) as float timesteps (0 for given frames); frame_mask (N, T) bool or None (the null
condition).
"""

from __future__ import annotations

import math

import torch

from .process import DiffusionProcess
from .schedules import ddpm_grid, make_alpha_bar


class GaussianDiffusion(DiffusionProcess):
    objective = "ddpm"

    def __init__(self, **settings):
        super().__init__(**settings)
        self.schedule = self.cfg.schedule
        self.alpha_bar = make_alpha_bar(self.schedule, self.num_timesteps, self.cfg.zero_terminal_snr)  # (T,) fp64
        # samplers do their per-step arithmetic on the host (floats, not tensors): no device sync per step
        self.alpha_bar_values: list[float] = self.alpha_bar.tolist()
        self._tables: dict[torch.device, torch.Tensor] = {}

    def alpha_bar_on(self, device) -> torch.Tensor:
        """The float64 table on ``device``, copied there once (this sits on the training hot path)."""
        device = torch.device(device)
        if device not in self._tables:
            self._tables[device] = self.alpha_bar.to(device)
        return self._tables[device]

    def path(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ab = self.alpha_bar_on(t.device)[t.long()]
        return ab.sqrt(), (1 - ab).sqrt()

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.float()

    def point(self, t) -> tuple[float, float, float]:
        ab = self.alpha_bar_values[int(t)]
        return math.sqrt(ab), math.sqrt(max(1.0 - ab, 0.0)), float(t)

    def draw_times(self, n: int, generator, device, shape) -> torch.Tensor:
        if self.times == "uniform" and generator is None:  # no seeded (host) generator: draw where the data is
            return torch.randint(0, self.num_timesteps, (n,), device=device)
        if self.times == "uniform":
            return torch.randint(0, self.num_timesteps, (n,), generator=generator).to(device)
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
