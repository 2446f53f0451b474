"""Exact denoisers for data whose posterior mean is known in closed form (test helpers)."""

from __future__ import annotations

import torch

from vdp_ray.diffusion import DiffusionProcess, expand_to, target_as


class GaussianOracle:
    """The optimal network for data x0 ~ N(mu, s^2) i.i.d. per element, on any path x_t = a x0 + sigma eps.

    E[x0 | x_t] = mu + a s^2 / (a^2 s^2 + sigma^2) (x_t - a mu); the network output is that estimate expressed in
    the process's prediction type (the velocity under flow matching). Counts its calls.
    """

    def __init__(self, diffusion: DiffusionProcess, mu: float, s: float):
        self.diffusion, self.mu, self.s = diffusion, mu, s
        self.calls = 0

    def path_at(self, t: torch.Tensor, x_t: torch.Tensor):
        d = self.diffusion
        native = t.double() / d.num_timesteps if d.flow else t.round().long()  # the network sees t * T under flow
        a, sigma = d.path(native.to(x_t.device))
        return expand_to(a, x_t).to(x_t.dtype), expand_to(sigma, x_t).to(x_t.dtype)

    def __call__(self, x_t, t, frame_mask=None):
        self.calls += 1
        a, sigma = self.path_at(t, x_t)
        x0 = self.mu + a * self.s**2 / (a**2 * self.s**2 + sigma**2) * (x_t - a * self.mu)
        eps = (x_t - a * x0) / sigma.clamp(min=1e-12)
        return target_as(self.diffusion.prediction_type, x0, eps, a, sigma, self.diffusion.flow)
