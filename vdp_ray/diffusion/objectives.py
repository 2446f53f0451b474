"""Prediction types and the training objective.

Symbols (Ho et al. 2020; Salimans & Ho 2022): ``a = sqrt(alpha_bar_t)``, ``s = sqrt(1 - alpha_bar_t)``,
``x_t = a x0 + s eps``. The network predicts one of

* ``eps``: the noise,
* ``v = a eps - s x0`` (Salimans & Ho 2022, sec. 4),
* ``x0``: the clean sample,

and each converts exactly into the others given ``x_t`` and ``alpha_bar_t``. The ``*_as`` functions say the same
for any Gaussian path ``x_t = a x0 + s eps`` given ``(a, s)``; on a flow-matching path (``a = 1 - t, s = t``)
``v`` is the rectified-flow velocity ``eps - x0`` (Lipman et al. 2023; Liu et al. 2023) instead.
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
    return target_as(prediction_type, x0, eps, alpha_bar.sqrt(), (1 - alpha_bar).sqrt())


def to_x0_eps(
    prediction: torch.Tensor, prediction_type: str, x_t: torch.Tensor, alpha_bar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both (x0, eps) implied by a network output of the given type (VP: v gives x0 = a x_t - s v)."""
    return split_as(prediction, prediction_type, x_t, alpha_bar.sqrt(), (1 - alpha_bar).sqrt())


def convert(
    prediction: torch.Tensor, source: str, dest: str, x_t: torch.Tensor, alpha_bar: torch.Tensor
) -> torch.Tensor:
    """Re-express a network output of type ``source`` as type ``dest``."""
    _check(dest)
    if source == dest:
        return prediction
    x0, eps = to_x0_eps(prediction, source, x_t, alpha_bar)
    return target_for(dest, x0, eps, alpha_bar)


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


# A residual model predicts x0 (as a change from its anchor) and is trained in its objective's space: the error
# there is ``x0_error * factor``, where 1/s is capped at 1/RESIDUAL_MIN_SIGMA near the clean end (as JiT caps
# 1/t for its x-prediction trained on the velocity loss: Li & He 2025).
RESIDUAL_MIN_SIGMA = 0.05


def residual_error_factor(prediction_type: str, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """How an x0 error reads in the objective's space: 1 for x0, a/s for eps, 1/s for v (VP) and for the flow
    velocity; s floored at ``RESIDUAL_MIN_SIGMA``."""
    _check(prediction_type)
    if prediction_type == "x0":
        return torch.ones_like(s)
    inv = 1.0 / s.clamp(min=RESIDUAL_MIN_SIGMA)
    return a * inv if prediction_type == "eps" else inv


def snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    return alpha_bar / (1 - alpha_bar).clamp(min=_EPS)


def min_snr_weight(alpha_bar: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023, eq. 7) for a VP schedule's alpha_bar; see ``min_snr_weight_as``."""
    return min_snr_weight_as(alpha_bar.sqrt(), (1 - alpha_bar).sqrt(), gamma, prediction_type)


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
