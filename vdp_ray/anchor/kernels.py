"""Motion kernels: each predicted frame is the frame before it (towards the nearest given frame) moved by per-pixel
K x K weights.

With ``diffusion.motion_kernel`` K > 0 the network also outputs, for every frame and pixel, the weights of a K x K
neighbourhood: each predicted frame is first built by moving the frame before it (towards the nearest given
frame, which starts the chain) with those weights, and the network's change is added to that. Content that moves
is then carried forward as it is, shape and texture included, instead of being redrawn from scratch every frame:
the dynamic filters of Jia et al. (2016) and the convolutional transforms of Finn et al. (2016), chained frame to
frame so that a K x K kernel covers K // 2 pixels of motion per frame at any horizon. The weights are the identity
plus the network's output, so an output of zeros (a fresh model, whose output layer starts at zero) still
predicts the anchor exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .chain import Where, pick, walk


def moved(
    frames: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor,
    kernel: int,
    estimate: torch.Tensor | None = None,
    sync_free: bool | None = None,
) -> torch.Tensor:
    """Every frame built from its neighbour towards the nearest given frame, moved by ``weights`` (N, K^2, T, H, W)
    added to the identity kernel; given frames stay as given, a clip with no given frame is all zeros.
    ``estimate`` (same shape, or None): weights applied before ``weights`` at every step (the motion estimate's),
    so that ``weights`` correct its move instead of having to repeat it: a correction of zero is the answer
    wherever the estimate is right."""
    n, _, t = frames.shape[:3]
    given = torch.where(mask.view(n, 1, t, 1, 1), frames, torch.zeros_like(frames))
    taps = _per_frame_taps(weights, kernel)
    first = None if estimate is None else _per_frame_taps(estimate, kernel)

    def step(prev: torch.Tensor, where: Where) -> tuple[torch.Tensor]:  # prev (M, C, H, W): one step on
        if first is not None:  # the estimate's move, then the network's correction of it
            prev = shift_sum(prev, pick(first, where), kernel)
        return (shift_sum(prev, pick(taps, where), kernel),)

    built, _ = walk(given.transpose(1, 2), mask, step, sync_free=sync_free)  # walks (N, T, C, H, W)
    return built.transpose(1, 2)


def _per_frame_taps(weights: torch.Tensor, kernel: int) -> torch.Tensor:
    """(N, K^2, T, H, W) weights as one row of taps per frame: (N, T, 1, K^2, H W), the layout ``shift_sum`` reads."""
    n, _, t, h, w = weights.shape
    return weights.transpose(1, 2).reshape(n, t, 1, kernel * kernel, h * w)


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
