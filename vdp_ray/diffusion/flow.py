"""Flow matching (rectified flow): straight paths ``x_t = (1 - t) x0 + t eps`` for t in [0, 1] (Lipman et al. 2023;
Liu et al. 2023), the velocity ``v = eps - x0`` as the objective, and training times drawn from a logit-normal
shifted towards noise for larger clips (Esser et al. 2024, "Scaling rectified flow transformers", secs. 3.1, 5.3.2).

The same samplers, conditioning, guidance, refinement and roll-out as the DDPM family apply: the path is one more
``(a, s) = (1 - t, t)``, on which DDIM is exactly the Euler step of the flow ODE. The network's time input is
``t * num_timesteps``, the scale the DDPM models see, so both families share the models' time embeddings.
"""

from __future__ import annotations

import math

import torch

from .process import DiffusionProcess

SHIFT_BASE_ELEMENTS = 8 * 32 * 32  # a clip of this many elements per channel (8 frames of 32x32) gets shift 1
SHIFT_RANGE = (0.5, 8.0)


def shift_times(t, shift: float):
    """Esser et al. 2024, eq. 23: t' = shift t / (1 + (shift - 1) t); shift > 1 moves times towards noise."""
    return shift * t / (1 + (shift - 1) * t)


def resolution_shift(shape) -> float:
    """The shift for a clip shape (N, C, T, ...): sqrt(elements per channel / SHIFT_BASE_ELEMENTS), as SD3 scales
    its shift with resolution (more, correlated pixels keep more signal at a given noise level), within
    SHIFT_RANGE."""
    elements = math.prod(shape[2:])
    return min(max(math.sqrt(elements / SHIFT_BASE_ELEMENTS), SHIFT_RANGE[0]), SHIFT_RANGE[1])


class FlowMatching(DiffusionProcess):
    objective = "flow"
    flow = True
    default_times = "logit_normal"

    def __init__(self, **settings):
        super().__init__(**settings)
        self.shift = self.cfg.flow_shift  # None: from the clip's size (``resolution_shift``)

    def shift_for(self, shape) -> float:
        return self.shift if self.shift is not None else resolution_shift(shape)

    def path(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = t.to(torch.float64 if t.device.type != "mps" else torch.float32)
        return 1 - t, t

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return (t * self.num_timesteps).float()

    def point(self, t) -> tuple[float, float, float]:
        t = float(t)
        return 1.0 - t, t, t * self.num_timesteps

    def draw_times(self, n: int, generator, device, shape) -> torch.Tensor:
        return shift_times(self.unit_times(n, generator), self.shift_for(shape)).to(device)

    def context_times(self, n: int, generator, device) -> torch.Tensor:
        return (torch.rand(n, generator=generator, dtype=torch.float64) * self.context_noise).to(device)

    def time_at(self, level: float, n: int, device) -> torch.Tensor:
        return torch.full((n,), float(level), dtype=torch.float64, device=device)

    def sampling_times(self, steps: int, spacing: str, strength: float | None, shape) -> list[float]:
        """``steps`` times from 1 (pure noise; ``strength`` for refinement) towards 0, evenly spaced before the
        shift (the shift the model was trained with); the timestep spacing is a DDPM notion and is ignored."""
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"sampling steps must be in [1, {self.num_timesteps}], got {steps}")
        shift, top = self.shift_for(shape), 1.0 if strength is None else float(strength)
        return [top * shift_times(1 - i / steps, shift) for i in range(steps)]
