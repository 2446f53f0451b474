"""The anchored (residual) parametrisation of a network's clean-clip estimate, with optional motion kernels.

A residual network predicts the clean clip as a change from the nearest given frame. With motion kernels
(``diffusion.motion_kernel`` K > 0) it also predicts, for every frame and pixel, the weights of a K x K
neighbourhood: each predicted frame is first built by moving the frame before it (towards the nearest given
frame, which starts the chain) with those weights, and the change is added to that. Content that moves is then
carried forward as it is, shape and texture included, instead of being redrawn from scratch every frame: the
dynamic filters of Jia et al. (2016) and the convolutional transforms of Finn et al. (2016), chained frame to
frame so that a K x K kernel covers K // 2 pixels of motion per frame at any horizon. The weights are the
identity plus the network's output, so an output of zeros (a fresh model, whose output layer starts at zero)
still predicts copy-last exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .masks import nearest_given, nearest_side


def anchored(out: torch.Tensor, frames: torch.Tensor | None, mask: torch.Tensor | None, kernel: int,
             prior: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """The clean-clip estimate of a residual network: ``out`` (N, C [+ K^2], T, H, W) read as the change from the
    nearest given frame of ``frames`` (N, C, T, H, W) under ``mask`` (N, T) bool, moved by the motion weights when
    ``kernel`` > 0. ``prior`` (N, K^2, T, H, W): the motion estimated from the given frames (``motion_prior``),
    applied first at every step, the network's weights then correcting its result (None: the network's alone).
    No frames (generation, a null condition): the change alone."""
    channels = out.shape[1] - kernel * kernel
    change = out[:, :channels]
    if frames is None or mask is None:
        return change
    if not kernel:
        return change + nearest_given(frames, mask)
    prior = None if prior is None else prior.to(out.dtype)
    return change + moved(frames.to(out.dtype), mask, out[:, channels:], kernel, prior=prior)


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


def moved(frames: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor, kernel: int,
          sync_free: bool | None = None, prior: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Every frame built from its neighbour towards the nearest given frame, moved by ``weights`` (N, K^2, T, H, W)
    added to the identity kernel; given frames stay as given, a clip with no given frame is all zeros. ``prior``
    (same shape, or None): weights applied before ``weights`` at every step, so that ``weights`` correct the prior's
    move instead of having to repeat it (a correction of zero is the answer wherever the prior is right).

    Two ways to the same result: on the CPU each frame is computed once, in order of its distance to a given frame
    (which needs that order on the host); elsewhere (``sync_free``) every distance is a pass over the whole clip,
    more arithmetic but no wait for the device."""
    n, _, t, h, w = frames.shape
    distance, source = chain(mask)
    current = torch.where(mask.view(n, 1, t, 1, 1), frames, torch.zeros_like(frames)).transpose(1, 2)
    taps = weights.transpose(1, 2).reshape(n, t, 1, kernel * kernel, h * w)  # (N, T, 1, K^2, H W)
    first = None if prior is None else prior.transpose(1, 2).reshape(n, t, 1, kernel * kernel, h * w)

    def step_of(prev, taps, first):  # prev (M, C, H, W) one step on: the prior's move, then the weights'
        return shift_sum(prev if first is None else shift_sum(prev, first, kernel), taps, kernel)

    if sync_free if sync_free is not None else frames.device.type != "cpu":
        index = source.view(n, t, 1, 1, 1).expand_as(current)
        flat_taps = taps.flatten(0, 1)
        flat_first = None if first is None else first.flatten(0, 1)
        for level in range(1, t):  # the longest chain a T-frame clip can have
            prev = torch.gather(current, 1, index).flatten(0, 1)
            step = step_of(prev, flat_taps, flat_first).view_as(current)
            current = torch.where((distance == level).view(n, t, 1, 1, 1), step, current)
        return current.transpose(1, 2)
    for b, f in by_distance(distance):
        step = step_of(current[b, source[b, f]], taps[b, f], None if first is None else first[b, f])
        current = current.index_put((b, f), step)
    return current.transpose(1, 2)


def by_distance(distance: torch.Tensor):
    """The frames a chain builds, in groups of equal distance to their given frame, nearest first: one (samples,
    frames) pair of index tensors per group. One host read (the group sizes), so the CPU paths only."""
    pending = distance.nonzero()  # (M, 2): every frame that is built, with its sample
    if not len(pending):
        return
    order = distance[pending[:, 0], pending[:, 1]]
    sizes = torch.bincount(order).tolist()  # frames per distance (the host read)
    pending = pending[torch.argsort(order, stable=True)]
    start = sizes[0]
    for count in sizes[1:]:
        yield pending[start : start + count].unbind(1)
        start += count


def shift_sum(x: torch.Tensor, taps: torch.Tensor, kernel: int) -> torch.Tensor:
    """x (M, C, H, W) plus the weighted sum of its K x K shifts (edges repeated), sum_j w_j(p) x(p + o_j), with
    ``taps`` (M, 1, K^2, H W) the weights of each of the M frames."""
    return x + (neighbourhood(x, kernel) * taps).sum(2).view_as(x)


def neighbourhood(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """x (M, C, H, W) at each of the K x K offsets o_j around every pixel, x(p + o_j), edges repeated:
    (M, C, K^2, H W), offsets in ``F.unfold``'s order (rows first)."""
    m, c, h, w = x.shape
    r = kernel // 2
    return F.unfold(F.pad(x, (r, r, r, r), mode="replicate"), kernel).view(m, c, kernel * kernel, h * w)
