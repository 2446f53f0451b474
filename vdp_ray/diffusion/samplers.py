"""Samplers: DDPM (ancestral), DDIM (= Euler), Heun and DPM-Solver++(2M), sharing one loop, on any Gaussian path
(the DDPM schedules and flow matching's straight lines).

Contract (as in diffusers): ``sampler.set_timesteps(n)`` picks the steps, then ``sampler.step(x0, eps, i, x_t)``
maps x at ``timesteps[i]`` to x at the next step, given the denoiser's (x0, eps) estimates (``advance`` calls the
denoiser, more than once per step for Heun). The conditioning (given frames, text, guidance) lives in
``conditioning.py`` and never inside a sampler.
"""

from __future__ import annotations

import math

import torch

from ..config.sampling import SamplingConfig
from ..vocab import SAMPLERS
from .conditioning import Condition, ConditionedDenoiser
from .process import DiffusionProcess
from .schedules import ddpm_grid


def timestep_schedule(num_train: int, num_steps: int, spacing: str = "trailing") -> torch.Tensor:
    """Decreasing DDPM timesteps for sampling with ``num_steps`` network calls.

    ``trailing`` starts at the last training step (Lin et al. 2024, table 2: the only spacing that reaches
    the noisiest level with few steps); ``leading`` is DDIM's original (ends at step 0); ``linspace``
    spans [0, T-1] in n+1 points and drops the 0 (as diffusers does). After the last of these steps the
    samplers jump to the clean sample.
    """
    return torch.tensor(ddpm_grid(num_train, num_steps, spacing), dtype=torch.long)


class Sampler:
    """Base: the process's times for a run and the path's (a, s) at each. Subclasses implement ``step`` (one
    denoiser call per step) or ``advance`` (several)."""

    stochastic = False

    def __init__(self, diffusion: DiffusionProcess, spacing: str = "trailing"):
        self.diffusion = diffusion
        self.spacing = spacing
        self.timesteps: list = []
        self._points: list[tuple[float, float, float]] = []

    def set_timesteps(self, num_steps: int, strength: float | None = None, shape=None) -> None:
        """Choose the times; ``strength`` < 1 starts part-way (SDEdit-style refinement)."""
        self.timesteps = self.diffusion.sampling_times(num_steps, self.spacing, strength, shape)
        self._points = [self.diffusion.point(t) for t in self.timesteps] + [(1.0, 0.0, 0.0)]  # then: clean

    def coefficients(self, i: int) -> tuple[float, float, float, float]:
        """(a, s) at step i and at the next step ((1, 0) after the last: the clean sample)."""
        (a, s, _), (a_next, s_next, _) = self._points[i], self._points[i + 1]
        return a, s, a_next, s_next

    def advance(self, denoiser, x: torch.Tensor, i: int, generator=None) -> torch.Tensor:
        x0, eps = denoiser(x, self.timesteps[i])
        return self.step(x0, eps, i, x, generator)

    def step(self, x0, eps, i, x_t, generator=None) -> torch.Tensor:
        raise NotImplementedError


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021, eq. 12) on any Gaussian path: x_next = a_next x0 + sqrt(s_next^2 - sigma^2) eps
    + sigma z, with sigma^2 = eta^2 s_next^2 (1 - SNR / SNR_next), the posterior variance of the Markov forward
    process scaled by eta^2 (on VP paths, eq. 16). At eta = 0 on a flow path it is the Euler step of the flow ODE;
    at eta = 1 on a VP path it is DDPM's ancestral step."""

    def __init__(self, diffusion: DiffusionProcess, spacing: str = "trailing", eta: float = 0.0):
        super().__init__(diffusion, spacing)
        self.eta = eta
        self.stochastic = eta > 0

    def step(self, x0, eps, i, x_t, generator=None):
        a, s, a_next, s_next = self.coefficients(i)
        sigma = 0.0
        if self.eta > 0 and s_next > 0 and a_next > 0:
            ratio = (a * s_next) ** 2 / max((s * a_next) ** 2, 1e-300)  # SNR / SNR_next
            sigma = self.eta * s_next * max(1.0 - ratio, 0.0) ** 0.5
        x_next = a_next * x0 + max(s_next**2 - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x_next = x_next + sigma * _randn_like(x_t, generator)
        return x_next


class DDPMSampler(DDIMSampler):
    """Ancestral sampling from the posterior q(x_prev | x_t, x0) of the (respaced) forward process (Ho et al. 2020,
    eqs. 6-7; Nichol & Dhariwal 2021, sec. 4): DDIM at eta = 1, on any Gaussian path."""

    stochastic = True

    def __init__(self, diffusion: DiffusionProcess, spacing: str = "trailing"):
        super().__init__(diffusion, spacing, eta=1.0)


class HeunSampler(Sampler):
    """Heun's second-order method (as in EDM, Karras et al. 2022, Algorithm 1) on the probability-flow ODE written as
    a flow: any Gaussian path is a straight one after scaling, x / (a + s) = (1 - u) x0 + u eps with u = s / (a + s)
    (Gao et al. 2024), where the ODE is d(x / (a + s)) / du = eps - x0. Each step takes an Euler step (= DDIM) to the
    next time, evaluates there and averages the two velocities; the last step, to the clean sample, stays Euler.
    Two network calls per step but the last."""

    def advance(self, denoiser, x, i, generator=None):
        a, s, a_next, s_next = self.coefficients(i)
        x0, eps = denoiser(x, self.timesteps[i])
        if s_next == 0.0:
            return x0
        euler = a_next * x0 + s_next * eps
        x0_next, eps_next = denoiser(euler, self.timesteps[i + 1])
        du = s_next / (a_next + s_next) - s / (a + s)
        velocity = 0.5 * ((eps - x0) + (eps_next - x0_next))
        return (a_next + s_next) * (x / (a + s) + du * velocity)

    def step(self, x0, eps, i, x_t, generator=None):  # one call per step: the Euler predictor alone
        _, _, a_next, s_next = self.coefficients(i)
        return a_next * x0 + s_next * eps


class DPMSolverPP2M(Sampler):
    """DPM-Solver++(2M), data prediction, multistep (Lu et al. 2022, "DPM-Solver++", Algorithm 2).

    With lambda = log(alpha / sigma) and h = lambda_next - lambda_cur:
        x_next = (sigma_next / sigma_cur) x_cur - alpha_next (exp(-h) - 1) D
    where D is x0 at the first step (and at the last, which goes to sigma = 0) and otherwise
    D = (1 + 1/(2r)) x0_cur - 1/(2r) x0_prev, r = h_prev / h.
    """

    def set_timesteps(self, num_steps: int, strength: float | None = None, shape=None) -> None:
        super().set_timesteps(num_steps, strength, shape)
        self._prev_x0 = None
        self._prev_h = None

    def step(self, x0, eps, i, x_t, generator=None):
        a_cur, s_cur, a_next, s_next = self.coefficients(i)
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


# The registry, one row a sampler: its class, the arguments that fix it, and the network evaluations one step
# takes (what a server prices a request with; Heun's last step takes one). vocab.SAMPLERS lists the same names
# without importing torch, for the config, the CLI and the HTTP API; tests hold the two equal.
REGISTRY = {
    "ddpm": (DDPMSampler, {}, 1),
    "ddim": (DDIMSampler, {}, 1),
    "dpm++": (DPMSolverPP2M, {}, 1),
    "euler": (DDIMSampler, {"eta": 0.0}, 1),
    "heun": (HeunSampler, {}, 2),
}


def make_sampler(name: str, diffusion: DiffusionProcess, spacing: str = "trailing", eta: float = 0.0) -> Sampler:
    """Sampler ``name`` of the registry; ``eta`` (sampling.eta) reaches DDIM only."""
    if name not in REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS}")
    cls, fixed, _ = REGISTRY[name]
    configured = {"eta": eta} if cls is DDIMSampler else {}
    return cls(diffusion, spacing, **{**configured, **fixed})


def evaluations_per_step(name: str) -> int:
    """Network evaluations one step of sampler ``name`` takes (at most)."""
    return REGISTRY[name][2]


@torch.no_grad()
def sample(
    model,
    diffusion: DiffusionProcess,
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
    solver.set_timesteps(s.steps, None if init is None else strength, shape)
    denoiser = ConditionedDenoiser(model, diffusion, cond, s.guidance, s.text_guidance, s.clip_x0)

    noise = torch.randn(shape, generator=generator, dtype=dtype).to(device)
    if init is None:
        x = noise  # the prior N(0, I) at the noisiest step
    else:
        x = diffusion.q_sample(init.to(device, dtype), torch.full((shape[0],), solver.timesteps[0]), noise).to(dtype)
    for i in range(len(solver.timesteps)):
        x = solver.advance(denoiser, x, i, generator)
        if progress is not None:
            progress(i + 1, len(solver.timesteps))
    return cond.keep_given(x)
