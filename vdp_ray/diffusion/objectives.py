"""Prediction types and the training objective.

Symbols (Ho et al. 2020; Salimans & Ho 2022): ``a = sqrt(alpha_bar_t)``, ``s = sqrt(1 - alpha_bar_t)``,
``x_t = a x0 + s eps``. The network predicts one of

* ``eps``: the noise,
* ``v = a eps - s x0`` (Salimans & Ho 2022, sec. 4),
* ``x0``: the clean sample,

and each converts exactly into the others given ``x_t`` and ``alpha_bar_t``.
"""

from __future__ import annotations

import torch

from ..vocab import PREDICTION_TYPES

# alpha_bar is clamped away from 0 and 1 only where a division would otherwise blow up (eps -> x0 at
# SNR 0, x0 -> eps at SNR inf); the identities are exact everywhere else.
_EPS = 1e-12


def _check(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def target_for(prediction_type: str, x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """What the network should output for ``x_t = sqrt(ab) x0 + sqrt(1 - ab) eps``."""
    _check(prediction_type)
    if prediction_type == "eps":
        return eps
    if prediction_type == "x0":
        return x0
    return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0


def to_x0_eps(
    prediction: torch.Tensor, prediction_type: str, x_t: torch.Tensor, alpha_bar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both (x0, eps) implied by a network output of the given type."""
    _check(prediction_type)
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "eps":
        eps = prediction
        x0 = (x_t - s * eps) / a.clamp(min=_EPS)
    elif prediction_type == "x0":
        x0 = prediction
        eps = (x_t - a * x0) / s.clamp(min=_EPS)
    else:  # v: x0 = a x_t - s v, eps = s x_t + a v (a^2 + s^2 = 1)
        x0 = a * x_t - s * prediction
        eps = s * x_t + a * prediction
    return x0, eps


def convert(
    prediction: torch.Tensor, source: str, dest: str, x_t: torch.Tensor, alpha_bar: torch.Tensor
) -> torch.Tensor:
    """Re-express a network output of type ``source`` as type ``dest``."""
    _check(dest)
    if source == dest:
        return prediction
    x0, eps = to_x0_eps(prediction, source, x_t, alpha_bar)
    return target_for(dest, x0, eps, alpha_bar)


def snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    return alpha_bar / (1 - alpha_bar).clamp(min=_EPS)


def min_snr_weight(alpha_bar: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023, eq. 7), expressed for each prediction type.

    The paper weights the x0-space loss by min(SNR, gamma); an eps loss equals SNR times the x0 loss and
    a v loss equals (SNR + 1) times it, so those weights are divided accordingly.
    """
    _check(prediction_type)
    ratio = snr(alpha_bar)
    clipped = ratio.clamp(max=gamma)
    if prediction_type == "x0":
        return clipped
    if prediction_type == "eps":
        return clipped / ratio.clamp(min=_EPS)
    return clipped / (ratio + 1)


def masked_frame_loss(
    prediction: torch.Tensor, target: torch.Tensor, loss_frames: torch.Tensor, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared error over the frames selected by ``loss_frames``.

    prediction, target: (N, C, T, ...); loss_frames: (N, T) bool or float; weight: (N, T) or None.
    Returns the scalar loss and the per-frame errors (N, T) (unweighted, for logging).
    """
    per_frame = (prediction.float() - target.float()).pow(2).transpose(1, 2).flatten(2).mean(-1)  # (N, T)
    w = loss_frames.float()
    if weight is not None:
        w = w * weight.float()
    denom = loss_frames.float().sum().clamp(min=1.0)
    return (per_frame * w).sum() / denom, per_frame
