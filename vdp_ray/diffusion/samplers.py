"""Samplers: DDPM (ancestral), DDIM and DPM-Solver++(2M), sharing one loop.

Contract (as in diffusers): ``sampler.set_timesteps(n)`` picks the steps, then ``sampler.step(x0, eps,
i, x_t)`` maps x at ``timesteps[i]`` to x at the next step, given the denoiser's (x0, eps) estimates. The
conditioning (given frames, text, guidance) lives in ``conditioning.py`` and never inside a sampler.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..config.sampling import SamplingConfig
from ..vocab import SAMPLERS, SPACINGS
from .conditioning import Condition, ConditionedDenoiser
from .gaussian import GaussianDiffusion


def timestep_schedule(num_train: int, num_steps: int, spacing: str = "trailing") -> torch.Tensor:
    """Decreasing timesteps for sampling with ``num_steps`` network calls.

    ``trailing`` starts at the last training step (Lin et al. 2024, table 2: the only spacing that reaches
    the noisiest level with few steps); ``leading`` is DDIM's original (ends at step 0); ``linspace``
    spans [0, T-1] in n+1 points and drops the 0 (as diffusers does). After the last of these steps the
    samplers jump to the clean sample.
    """
    return torch.tensor(_schedule(num_train, num_steps, spacing), dtype=torch.long)


def _schedule(num_train: int, num_steps: int, spacing: str) -> list[int]:
    # plain numbers (NumPy, rounding half to even like torch): the schedule is host arithmetic, never device work
    if not 1 <= num_steps <= num_train:
        raise ValueError(f"sampling steps must be in [1, {num_train}], got {num_steps}")
    if spacing == "trailing":
        steps = np.round(np.arange(num_train, 0, -num_train / num_steps)).astype(np.int64) - 1
    elif spacing == "leading":
        steps = (np.arange(num_steps) * (num_train // num_steps))[::-1]
    elif spacing == "linspace":
        steps = np.round(np.linspace(0, num_train - 1, num_steps + 1)).astype(np.int64)[::-1][:-1]
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")
    return [int(t) for t in steps]


class Sampler:
    """Base: holds the schedule and the chosen timesteps. Subclasses implement ``step``."""

    stochastic = False

    def __init__(self, diffusion: GaussianDiffusion, spacing: str = "trailing"):
        self.diffusion = diffusion
        self.spacing = spacing
        self.timesteps: list[int] = []
        self._ab = diffusion.alpha_bar_values  # float64 values: each step's coefficients are host arithmetic

    def set_timesteps(self, num_steps: int, max_timestep: int | None = None) -> None:
        """Choose the steps; ``max_timestep`` truncates the start (SDEdit-style refinement)."""
        steps = _schedule(self.diffusion.num_timesteps, num_steps, self.spacing)
        if max_timestep is not None:
            steps = [t for t in steps if t <= max_timestep] or [max(max_timestep, 0)]
        self.timesteps = steps

    def alpha_bars(self, i: int) -> tuple[float, float]:
        """alpha_bar at step i and at the next step (1.0 after the last: the clean sample)."""
        cur = self._ab[self.timesteps[i]]
        nxt = self._ab[self.timesteps[i + 1]] if i + 1 < len(self.timesteps) else 1.0
        return cur, nxt

    def step(self, x0, eps, i, x_t, generator=None) -> torch.Tensor:
        raise NotImplementedError


class DDIMSampler(Sampler):
    def __init__(self, diffusion: GaussianDiffusion, spacing: str = "trailing", eta: float = 0.0):
        super().__init__(diffusion, spacing)
        self.eta = eta
        self.stochastic = eta > 0

    def step(self, x0, eps, i, x_t, generator=None):
        # Song et al. 2021, eq. 12:
        #   x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z
        #   sigma  = eta sqrt((1 - ab_prev) / (1 - ab)) sqrt(1 - ab / ab_prev)     (eq. 16)
        ab, ab_prev = self.alpha_bars(i)
        var = (1 - ab_prev) / max(1 - ab, 1e-12) * (1 - ab / ab_prev)
        sigma = self.eta * max(var, 0.0) ** 0.5
        x_prev = ab_prev**0.5 * x0 + max(1 - ab_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x_prev = x_prev + sigma * _randn_like(x_t, generator)
        return x_prev


class DDPMSampler(Sampler):
    """Ancestral sampling from the posterior q(x_prev | x_t, x0) of the (respaced) forward process."""

    stochastic = True

    def step(self, x0, eps, i, x_t, generator=None):
        # Ho et al. 2020, eqs. 6-7, with beta_t = 1 - ab / ab_prev for respaced steps (Nichol & Dhariwal
        # 2021, sec. 4): mean = c0 x0 + ct x_t, variance beta_tilde = (1 - ab_prev)/(1 - ab) beta_t.
        ab, ab_prev = self.alpha_bars(i)
        beta = 1 - ab / ab_prev
        c0 = ab_prev**0.5 * beta / max(1 - ab, 1e-12)
        ct = (1 - beta) ** 0.5 * (1 - ab_prev) / max(1 - ab, 1e-12)
        mean = c0 * x0 + ct * x_t
        var = (1 - ab_prev) / max(1 - ab, 1e-12) * beta
        if var <= 0:
            return mean
        return mean + var**0.5 * _randn_like(x_t, generator)


class DPMSolverPP2M(Sampler):
    """DPM-Solver++(2M), data prediction, multistep (Lu et al. 2022, "DPM-Solver++", Algorithm 2).

    With lambda = log(alpha / sigma) and h = lambda_next - lambda_cur:
        x_next = (sigma_next / sigma_cur) x_cur - alpha_next (exp(-h) - 1) D
    where D is x0 at the first step (and at the last, which goes to sigma = 0) and otherwise
    D = (1 + 1/(2r)) x0_cur - 1/(2r) x0_prev, r = h_prev / h.
    """

    def set_timesteps(self, num_steps: int, max_timestep: int | None = None) -> None:
        super().set_timesteps(num_steps, max_timestep)
        self._prev_x0 = None
        self._prev_h = None

    @staticmethod
    def _alpha_sigma(ab: float) -> tuple[float, float]:
        return ab**0.5, max(1 - ab, 0.0) ** 0.5

    def step(self, x0, eps, i, x_t, generator=None):
        ab, ab_next = self.alpha_bars(i)
        a_cur, s_cur = self._alpha_sigma(ab)
        a_next, s_next = self._alpha_sigma(ab_next)
        if s_next == 0.0:  # final jump to the clean sample: x = D (first order)
            self._prev_x0 = None
            return x0
        lam_cur = _log_snr_half(a_cur, s_cur)
        lam_next = _log_snr_half(a_next, s_next)
        h = lam_next - lam_cur
        # exp(-h) = (alpha_cur / sigma_cur) / (alpha_next / sigma_next); finite even at zero terminal SNR.
        exp_neg_h = (a_cur / max(s_cur, 1e-12)) / (a_next / s_next)
        d = x0
        # Few steps: the last steps stay first order (lower_order_final in DPM-Solver++ and diffusers),
        # since a huge final step in lambda makes the 2nd-order extrapolation overshoot.
        final_steps = len(self.timesteps) < 15 and i >= len(self.timesteps) - 2
        if self._prev_x0 is not None and not final_steps and math.isfinite(self._prev_h) and self._prev_h > 0 and h > 0:
            r = self._prev_h / h  # h_prev is infinite after a zero-SNR first step: stay first order then
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * self._prev_x0
        self._prev_x0, self._prev_h = x0, h
        return (s_next / max(s_cur, 1e-12)) * x_t - a_next * (exp_neg_h - 1) * d


def _log_snr_half(a: float, s: float) -> float:
    """lambda = log(alpha / sigma); -inf at zero SNR."""
    return math.log(a) - math.log(s) if a > 0 else float("-inf")


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Draw on the generator's device, then move: the same seed gives the same sample on CPU and GPU.
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def make_sampler(name: str, diffusion: GaussianDiffusion, spacing: str = "trailing", eta: float = 0.0) -> Sampler:
    if name == "ddim":
        return DDIMSampler(diffusion, spacing, eta)
    if name == "ddpm":
        return DDPMSampler(diffusion, spacing)
    if name == "dpm++":
        return DPMSolverPP2M(diffusion, spacing)
    raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS}")


@torch.no_grad()
def sample(
    model,
    diffusion: GaussianDiffusion,
    shape: tuple[int, ...],
    condition: Condition | None = None,
    settings: SamplingConfig | None = None,
    *,
    init: torch.Tensor | None = None,
    strength: float = 1.0,
    generator: torch.Generator | None = None,
    device=None,
    dtype=torch.float32,
    progress=None,
) -> torch.Tensor:
    """Draw clips of ``shape`` (N, C, T, ...) under ``condition`` (given frames come back unchanged) with
    ``settings`` (sampler, steps, eta, spacing, guidance on the context and on the text, clip_x0; the section's
    defaults when None). init + strength: SDEdit refinement, noise ``init`` to ``strength`` of the schedule and
    denoise from there. progress: optional callable (i, num_steps) for progress display.
    """
    s = settings or SamplingConfig(clip_x0=None)
    cond = condition or Condition()
    if s.steps <= 0:
        raise ValueError(f"sampling steps must be > 0, got {s.steps}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"refinement strength must be in (0, 1], got {strength}")
    device = device or (cond.given.device if cond.given is not None else None)
    solver = make_sampler(s.sampler, diffusion, s.spacing, s.eta)
    solver.set_timesteps(s.steps, None if init is None else round(strength * diffusion.num_timesteps) - 1)
    denoiser = ConditionedDenoiser(model, diffusion, cond, s.guidance, s.text_guidance, s.clip_x0)

    noise = torch.randn(shape, generator=generator, dtype=dtype).to(device)
    if init is None:
        x = noise  # the prior N(0, I) at the noisiest step
    else:
        x = diffusion.q_sample(init.to(device, dtype), torch.full((shape[0],), solver.timesteps[0]), noise).to(dtype)
    for i, t in enumerate(solver.timesteps):
        x0, eps = denoiser(x, t)
        x = solver.step(x0, eps, i, x, generator)
        if progress is not None:
            progress(i + 1, len(solver.timesteps))
    return cond.keep_given(x)
