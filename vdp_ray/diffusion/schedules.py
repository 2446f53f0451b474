"""Noise schedules for discrete-time Gaussian diffusion.

A schedule is the sequence of cumulative signal levels ``alpha_bar[t]`` for ``t = 0 .. T-1``; the forward
process is ``q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)`` (Ho et al. 2020, eq. 4).
Everything here is computed in float64 and cast at the point of use.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..vocab import SPACINGS


def linear_betas(num_steps: int) -> torch.Tensor:
    # Ho et al. 2020 use 1e-4 .. 0.02 for T=1000; scaling by 1000/T keeps the same total noise for other T
    # (Nichol & Dhariwal 2021, appendix).
    scale = 1000.0 / num_steps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    # Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2).
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def sigmoid_betas(
    num_steps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0, max_beta: float = 0.999
) -> torch.Tensor:
    # Chen 2023 ("On the importance of noise scheduling"), sigmoid schedule of alpha_bar(t).
    def sig(x: torch.Tensor | float) -> torch.Tensor:
        return torch.sigmoid(torch.as_tensor(x, dtype=torch.float64))

    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    v_start, v_end = sig(start / tau), sig(end / tau)
    f = (-sig((t * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    f = f.clamp(min=1e-12)
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last step has SNR exactly 0 (Lin et al. 2024, Algorithm 1).

    Needs v- or x0-prediction: eps-prediction carries no information about x0 at SNR 0.
    """
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)  # first value kept, last becomes 0
    ab = sqrt_ab**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1 - alphas


def make_alpha_bar(name: str, num_steps: int, zero_terminal_snr: bool = False) -> torch.Tensor:
    """Cumulative signal level alpha_bar[t], float64, shape (num_steps,)."""
    makers = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}
    if name not in makers:
        raise ValueError(f"unknown noise schedule {name!r}; expected one of {list(makers)}")
    betas = makers[name](num_steps)
    if zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return torch.cumprod(1 - betas, 0)


def ddpm_grid(num_train: int, num_steps: int, spacing: str) -> list[int]:
    """Decreasing timesteps for ``num_steps`` network calls as plain numbers (NumPy, rounding half to even like
    torch): the schedule is host arithmetic, never device work. See ``samplers.timestep_schedule``."""
    if not 1 <= num_steps <= num_train:
        raise ValueError(f"sampling steps must be in [1, {num_train}], got {num_steps}")
    if spacing == "trailing":
        # Lin et al. 2024, table 2: the first step at the last training timestep, where sampling starts from
        # pure noise (with a zero-terminal-SNR schedule); leading and linspace start below it
        steps = np.round(np.arange(num_train, 0, -num_train / num_steps)).astype(np.int64) - 1
    elif spacing == "leading":  # DDIM's and Stable Diffusion's original spacing
        steps = (np.arange(num_steps) * (num_train // num_steps))[::-1]
    elif spacing == "linspace":
        steps = np.round(np.linspace(0, num_train - 1, num_steps + 1)).astype(np.int64)[::-1][:-1]
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")
    return [int(t) for t in steps]
