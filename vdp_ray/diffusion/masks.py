"""Frame masks: which frames of a clip are given. One model, many tasks.

A mask is a bool tensor (N, T); True marks a given (clean, conditioning) frame. Training draws a task per
sample; sampling picks the task by the mask it passes (RaMViD, MCVD). Dropping the mask to all-False is
the null condition for classifier-free guidance on the context.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..vocab import MASK_TASKS as TASKS


class FrameMasks(NamedTuple):
    mask: torch.Tensor  # (N, T) bool, True = given
    task: torch.Tensor  # (N,) long, index into TASKS (before any context drop)
    dropped: torch.Tensor  # (N,) bool, context dropped to the null condition


def prediction_mask(batch: int, num_frames: int, context: int, device=None) -> torch.Tensor:
    """The first ``context`` frames given."""
    if not 0 <= context < num_frames:
        raise ValueError(
            f"context frames must be in [0, {num_frames - 1}] for a {num_frames}-frame clip, got {context}"
        )
    mask = torch.zeros(batch, num_frames, dtype=torch.bool, device=device)
    mask[:, :context] = True
    return mask


def interpolation_mask(batch: int, num_frames: int, device=None) -> torch.Tensor:
    """First and last frame given."""
    if num_frames < 3:
        raise ValueError(f"interpolation needs at least 3 frames, got {num_frames}")
    mask = torch.zeros(batch, num_frames, dtype=torch.bool, device=device)
    mask[:, 0] = mask[:, -1] = True
    return mask


def sample_frame_masks(
    batch: int,
    num_frames: int,
    probs: dict[str, float],
    context_range: tuple[int, int],
    context_drop: float = 0.0,
    generator: torch.Generator | None = None,
    device=None,
) -> FrameMasks:
    """Draw one task per sample with the given probabilities and build its mask.

    probs: task name -> probability (missing tasks have probability 0; they are renormalised).
    context_range: inclusive (min, max) number of given frames for the prediction task.
    context_drop: probability of replacing any mask by the null (all-False) condition.
    """
    unknown = set(probs) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown mask task(s) {sorted(unknown)}; expected {TASKS}")
    lo, hi = context_range
    if not 1 <= lo <= hi < num_frames:
        raise ValueError(f"context range must satisfy 1 <= min <= max < {num_frames} frames, got {context_range}")
    weights = torch.tensor([float(probs.get(name, 0.0)) for name in TASKS], dtype=torch.float64)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"mask probabilities must be >= 0 and not all zero, got {probs}")
    task = torch.multinomial(weights / weights.sum(), batch, replacement=True, generator=generator)

    frame = torch.arange(num_frames)
    # prediction: the first k frames, k uniform in [lo, hi]
    k = torch.randint(lo, hi + 1, (batch,), generator=generator)
    pred = frame[None, :] < k[:, None]
    interp = (frame == 0) | (frame == num_frames - 1)
    # random: each frame given with probability 1/2, but never all of them
    rand = torch.rand(batch, num_frames, generator=generator, dtype=torch.float64) < 0.5
    full = rand.all(dim=1)
    rand[full, torch.randint(0, num_frames, (int(full.sum()),), generator=generator)] = False

    # every task's mask for every sample, then each sample's own task's (``task`` indexes TASKS)
    nothing = torch.zeros(batch, num_frames, dtype=torch.bool)
    given = {"prediction": pred, "generation": nothing, "interpolation": interp.expand(batch, -1), "random": rand}
    by_task = torch.stack([given[name] for name in TASKS])  # (len(TASKS), N, T)
    mask = by_task[task, torch.arange(batch)]  # (N, T)
    dropped = torch.rand(batch, generator=generator, dtype=torch.float64) < context_drop
    mask = mask & ~dropped[:, None]
    return FrameMasks(mask.to(device), task.to(device), dropped.to(device))


def latent_frame_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """Map a pixel-frame mask (N, T) to latent frames of a VAE that compresses time by ``factor``.

    A latent frame is given only if all the pixel frames it encodes are given; a mask that gives part of
    a latent frame cannot be honoured and is refused rather than silently rounded.
    """
    n, t = mask.shape
    if t % factor:
        raise ValueError(f"{t} frames do not divide into latent frames of {factor} (temporal compression)")
    groups = mask.reshape(n, t // factor, factor)  # (N, T/f, f)
    partial = groups.any(-1) & ~groups.all(-1)
    if partial.any():
        given = int(mask[partial.any(-1)].sum(-1)[0])
        raise ValueError(
            f"{given} given frames do not fill whole latent frames: with temporal compression {factor}, "
            f"given frames must come in groups of {factor} (e.g. {factor}, {2 * factor}, ...)"
        )
    return groups.all(-1)
