"""Prediction types and the training objective.

Symbols (Ho et al. 2020; Salimans & Ho 2022): ``a = sqrt(alpha_bar_t)``, ``s = sqrt(1 - alpha_bar_t)``,
``x_t = a x0 + s eps``. The network predicts one of

* ``eps``: the noise,
* ``v = a eps - s x0`` (Salimans & Ho 2022, sec. 4),
* ``x0``: the clean sample,

and each converts exactly into the others given ``x_t`` and the point ``(a, s)`` of the path (the ``*_as``
functions: any Gaussian path ``x_t = a x0 + s eps``); on a flow-matching path (``a = 1 - t, s = t``) ``v`` is the
rectified-flow velocity ``eps - x0`` (Lipman et al. 2023; Liu et al. 2023) instead.
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


def target_as(prediction_type: str, x0, eps, a, s, flow: bool = False) -> torch.Tensor:
    """The network's target on the path ``x_t = a x0 + s eps`` (VP when not ``flow``)."""
    _check(prediction_type)
    if prediction_type == "eps":
        return eps
    if prediction_type == "x0":
        return x0
    return eps - x0 if flow else a * eps - s * x0


def split_as(prediction, prediction_type: str, x_t, a, s, flow: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) implied by a network output on the path ``x_t = a x0 + s eps``; a and s floats or tensors."""
    _check(prediction_type)
    if prediction_type == "eps":
        return (x_t - s * prediction) / _floor(a), prediction
    if prediction_type == "x0":
        return prediction, (x_t - a * prediction) / _floor(s)
    if flow:  # x_t = a x0 + s (u + x0) with a + s = 1: x0 = x_t - s u, eps = x_t + a u
        return x_t - s * prediction, x_t + a * prediction
    return a * x_t - s * prediction, s * x_t + a * prediction


def _floor(value):
    return value.clamp(min=_EPS) if torch.is_tensor(value) else max(value, _EPS)


# An anchored model predicts x0 (as a change from its anchor) and is trained in its objective's space: the error
# there is ``x0_error * factor``, where 1/s is capped at 1/X0_MIN_SIGMA near the clean end (as JiT caps
# 1/t for its x-prediction trained on the velocity loss: Li & He 2025).
X0_MIN_SIGMA = 0.05


def x0_error_factor(prediction_type: str, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """How an x0 error reads in the objective's space: 1 for x0, a/s for eps, 1/s for v (VP) and for the flow
    velocity; s floored at ``X0_MIN_SIGMA``."""
    _check(prediction_type)
    if prediction_type == "x0":
        return torch.ones_like(s)
    inv = 1.0 / s.clamp(min=X0_MIN_SIGMA)
    return a * inv if prediction_type == "eps" else inv


def min_snr_weight_as(a: torch.Tensor, s: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma on any Gaussian path: the paper weights the x0-space loss by min(SNR, gamma); a loss in another
    space reads an x0 error times a factor (eps: a/s, so SNR times the x0 loss; v, VP or flow: 1/s), so the weight
    there is min(SNR, gamma) divided by the factor squared."""
    _check(prediction_type)
    ratio = (a / s.clamp(min=_EPS)).pow(2)
    clipped = ratio.clamp(max=gamma)
    if prediction_type == "x0":
        return clipped
    if prediction_type == "eps":
        return clipped / ratio.clamp(min=_EPS)
    return clipped * s.pow(2)


LOG_FLOOR = 1e-4  # log_mse: the error below which a frame counts as right (46 dB on [-1, 1] data; sensor noise)


def masked_frame_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    loss_frames: torch.Tensor,
    weight: torch.Tensor | None = None,
    kind: str = "mse",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared error over the frames selected by ``loss_frames``; ``kind`` log_mse averages each frame's
    log(error + LOG_FLOOR) instead, which is minus the frame's PSNR up to constants: every frame counts by its
    relative error, as in the mean-PSNR metric, not by its absolute one (where a few hard clips dominate).

    prediction, target: (N, C, T, ...); loss_frames: (N, T) bool or float; weight: (N, T) or None.
    Returns the scalar loss and the per-frame errors (N, T) (unweighted squared errors, for logging).
    """
    per_frame = (prediction.float() - target.float()).pow(2).transpose(1, 2).flatten(2).mean(-1)  # (N, T)
    w = loss_frames.float()
    if weight is not None:
        w = w * weight.float()
    denom = loss_frames.float().sum().clamp(min=1.0)
    term = per_frame if kind == "mse" else torch.log(per_frame + LOG_FLOOR)
    return (term * w).sum() / denom, per_frame
