"""Exact denoisers for data whose posterior mean is known in closed form (test helpers)."""

from __future__ import annotations

from vdp_ray.diffusion import GaussianDiffusion, expand_to, target_for


class GaussianOracle:
    """The optimal network for data x0 ~ N(mu, s^2) i.i.d. per element.

    E[x0 | x_t] = mu + a s^2 / (a^2 s^2 + 1 - a^2) (x_t - a mu), a = sqrt(alpha_bar_t); the network output
    is that estimate expressed in the diffusion's prediction type. Counts its calls.
    """

    def __init__(self, diffusion: GaussianDiffusion, mu: float, s: float):
        self.diffusion, self.mu, self.s = diffusion, mu, s
        self.calls = 0

    def __call__(self, x_t, t, frame_mask=None):
        self.calls += 1
        ab = expand_to(self.diffusion.alpha_bar.to(x_t.device)[t.round().long()], x_t).to(x_t.dtype)
        a = ab.sqrt()
        x0 = self.mu + a * self.s**2 / (ab * self.s**2 + 1 - ab) * (x_t - a * self.mu)
        eps = (x_t - a * x0) / (1 - ab).sqrt().clamp(min=1e-12)
        return target_for(self.diffusion.prediction_type, x0, eps, ab)
