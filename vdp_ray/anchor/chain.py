"""Where every frame of a clip starts from: its nearest given frame, and the chain of frames that leads there.

A predicted frame d steps from its nearest given frame is built from its neighbour one step closer, which was
built the same way: the chain. Motion kernels (``kernels.moved``) and the motion estimate (``estimate``) both
walk it, nearest frames first, through the one ``walk`` below.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Which frames a step builds: (samples, frames) index tensors (M,) each, or None for every frame of the batch at
# once, in (N T) order (the sync-free walk).
Where = tuple[torch.Tensor, torch.Tensor] | None


def nearest_side(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per frame of mask (N, T) bool: whether its nearest given frame comes before it (or is it; the earlier side
    on a tie), that frame's index (clamped into the clip where a clip has none) and the distance to it (2T where
    a clip has none)."""
    n, t = mask.shape
    idx = torch.arange(t, device=mask.device).expand(n, t)
    before = torch.cummax(torch.where(mask, idx, torch.full_like(idx, -1)), dim=1).values  # -1: none yet
    after = torch.where(mask, idx, torch.full_like(idx, t)).flip(1).cummin(dim=1).values.flip(1)  # t: none
    far = 2 * t
    d_before = torch.where(before >= 0, idx - before, torch.full_like(idx, far))
    d_after = torch.where(after < t, after - idx, torch.full_like(idx, far))
    from_before = d_before <= d_after
    src = torch.where(from_before, before, after).clamp(0, t - 1)
    return from_before, src, torch.where(from_before, d_before, d_after)


def nearest_given(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """For every frame, the closest given frame (the earlier one on a tie), or zeros when a clip has none: the
    ``last`` anchor (the last given frame for every predicted one, the nearer end in an interpolation).
    frames (N, C, T, ...), mask (N, T) bool."""
    n, t = mask.shape
    src = nearest_side(mask)[1]
    has = mask.any(1, keepdim=True).expand(n, t).to(frames.dtype)
    shape = (n, 1, t) + (1,) * (frames.ndim - 3)  # (N, 1, T, 1, 1): one index per frame, for every pixel
    gathered = torch.gather(frames, 2, src.view(shape).expand_as(frames))
    return gathered * has.view(shape)


def chain(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame, the number of steps to its nearest given frame (0 for given frames, and for every frame of a clip
    with none) and the neighbouring frame one step closer to it (the earlier side on a tie, as ``nearest_given``).
    mask (N, T) bool -> (distance, source), both (N, T) long."""
    n, t = mask.shape
    idx = torch.arange(t, device=mask.device).expand(n, t)
    from_before, _, distance = nearest_side(mask)
    distance = torch.where(mask.any(1, keepdim=True), distance, torch.zeros_like(distance))
    source = torch.where(from_before, idx - 1, idx + 1).clamp(0, t - 1)
    return distance, torch.where(distance > 0, source, idx)


def pick(values: torch.Tensor, where: Where) -> torch.Tensor:
    """The rows of per-frame ``values`` (N, T, ...) for the frames a step builds: (M, ...)."""
    return values.flatten(0, 1) if where is None else values[where]


def walk(
    frames: torch.Tensor,
    mask: torch.Tensor,
    step: Callable[[torch.Tensor, Where], tuple[torch.Tensor, ...]],
    outputs: tuple[torch.Tensor, ...] = (),
    sync_free: bool | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Build every frame of the chain from its source, nearest to a given frame first.

    frames (N, T, ...): the given frames in place (what everything is built from; frames with distance 0 are
    kept, the rest overwritten). ``step(prev, where)`` builds the frames ``where`` names from ``prev`` (M, ...),
    their sources, and returns ``(built, *values)``: the frames (M, ...) and one row (M, ...) for each of
    ``outputs``, per-frame tensors (N, T, ...) it fills in. Returns frames and outputs, filled in.

    Two walks give the same result. On the CPU each frame is built once, in order of distance, which needs that
    order on the host (one read). Elsewhere (``sync_free``) every frame is rebuilt at every distance 1 .. T-1 and
    kept where its distance matches: T-1 times the arithmetic, but never a wait for the device.
    ``experiments/bench/chain_walk.py`` measures both on the CPU.
    """
    n, t = mask.shape
    distance, source = chain(mask)
    if sync_free is None:
        sync_free = frames.device.type != "cpu"
    if not sync_free:
        for where in _by_distance(distance):
            built, *values = step(frames[where[0], source[where]], where)
            frames = frames.index_put(where, built)
            outputs = tuple(out.index_put(where, v) for out, v in zip(outputs, values, strict=True))
        return frames, outputs
    per_frame = (n, t) + (1,) * (frames.ndim - 2)  # (N, T, 1, ...): broadcasts a frame's index or flag
    index = source.view(per_frame).expand_as(frames)
    for level in range(1, t):  # the longest chain a T-frame clip can have
        built, *values = step(torch.gather(frames, 1, index).flatten(0, 1), None)  # every source: (N T, ...)
        here = (distance == level).view(n, t)
        frames = torch.where(here.view(per_frame), built.view_as(frames), frames)
        outputs = tuple(
            torch.where(here.view((n, t) + (1,) * (out.ndim - 2)), v.view_as(out), out)
            for out, v in zip(outputs, values, strict=True)
        )
    return frames, outputs


def _by_distance(distance: torch.Tensor):
    """The frames a chain builds, in groups of equal distance to their given frame, nearest first: one (samples,
    frames) pair of index tensors per group. One host read (the group sizes)."""
    pending = distance.nonzero()  # (M, 2): every frame that is built, with its sample
    if not len(pending):
        return
    order = distance[pending[:, 0], pending[:, 1]]
    sizes = torch.bincount(order).tolist()  # frames per distance (the host read)
    pending = pending[torch.argsort(order, stable=True)]
    start = sizes[0]
    for count in sizes[1:]:
        b, f = pending[start : start + count].unbind(1)
        yield b, f
        start += count
