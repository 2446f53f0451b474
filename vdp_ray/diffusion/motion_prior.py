"""A motion estimate from the given frames alone, for the motion kernels to start from (``diffusion.anchor: motion``).

Block matching (Jain & Jain 1981) in soft form: for every pixel of a frame, the mean squared difference between
the P x P patch around it and the patch of the frame before, at each of the K x K offsets, turned into weights by a
softmax at a low temperature, with a small penalty on the offset's length so that flat and still regions keep
offset zero (sensor noise alone never moves anything). The weights that take frame s-1 to frame s carry s on to
s+1 (constant velocity); the next step re-estimates them between s and the frame just built, so the motion field
travels with what moves. Frames are built along the same chain as ``motion.moved``: outward from the nearest
given frame, one step at a time. A step with no earlier frame to compare with (the first step of interpolation,
a lone given frame) gets the identity: no motion.

The result is the identity-relative weights that ``motion.moved`` applies before the network's own, so a network
whose output is zero predicts this extrapolation exactly, and the clip they build, which the network sees beside
its input (a reference clip): it learns what the estimate gets wrong (bounces, occlusions, new content) knowing
what the estimate is. It depends on the given frames only: computed once per clip and condition, not per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .motion import by_distance, chain, neighbourhood, shift_sum

PATCH = 7  # pixels on a side of the matched patch: larger than the motion per frame, so a moving edge's leading
# side (background in the frame before) still matches the edge's motion
TEMPERATURE = 3e-5  # of the softmax over offsets, in squared [-1, 1] units of brightness: the matches commit
LENGTH_PENALTY = 3e-5  # per squared pixel of offset: ties (flat regions, noise) keep the zero offset


def offsets(kernel: int, device=None) -> torch.Tensor:
    """(K^2, 2) (dy, dx) of each tap, in ``F.unfold``'s order (rows first)."""
    r = kernel // 2
    dy, dx = torch.meshgrid(torch.arange(-r, r + 1, device=device), torch.arange(-r, r + 1, device=device),
                            indexing="ij")  # fmt: skip
    return torch.stack([dy.flatten(), dx.flatten()], 1)


def match_weights(before: torch.Tensor, after: torch.Tensor, kernel: int) -> torch.Tensor:
    """(M, K^2, H, W) weights w with after(p) ~ sum_j w_j(p) before(p + o_j), for frames (M, C, H, W), matched on
    their channel mean (brightness: as good a cue for motion at a C-th of the cost)."""
    m, _, h, w = before.shape
    taps = neighbourhood(before.mean(1, keepdim=True), kernel)  # (M, 1, K^2, H W)
    err = (taps - after.mean(1).view(m, 1, 1, h * w)).pow(2).view(m, kernel * kernel, h, w)
    patch = min(PATCH, 2 * (min(h, w) // 2) + 1)
    err = F.avg_pool2d(err, patch, stride=1, padding=patch // 2, count_include_pad=False)  # (M, K^2, H, W)
    length = offsets(kernel, before.device).pow(2).sum(1).to(err.dtype).view(1, -1, 1, 1)
    return torch.softmax(-(err + LENGTH_PENALTY * length) / TEMPERATURE, dim=1)


@torch.no_grad()
def motion_prior(frames: torch.Tensor, mask: torch.Tensor, kernel: int,
                 sync_free: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The given frames' motion carried on, for frames (N, C, T, H, W) under ``mask`` (N, T) bool: identity-relative
    weights (N, K^2, T, H, W), zeros (no motion) for given frames and unmatched steps, and the clip they build
    (N, C, T, H, W: the given frames, and every other frame moved on from them; zeros without any given frame).
    Computed in fp32 whatever the frames' dtype. As ``motion.moved``: one host read on the CPU (the frames' order
    along the chains), none elsewhere (``sync_free``: every distance is a pass over the whole clip)."""
    n, _, t, h, w = frames.shape
    k2 = kernel * kernel
    frames = frames.float()
    distance, source = chain(mask)
    idx = torch.arange(t, device=mask.device).expand(n, t)
    # the frame on the far side of the source: the one the chain came from, or a given neighbour beyond a given one
    beyond = 2 * source - idx
    inside = (beyond >= 0) & (beyond < t)
    beyond = beyond.clamp(0, t - 1)
    source_built = torch.gather(distance, 1, source) > 0
    matched = (distance > 0) & inside & (source_built | torch.gather(mask, 1, beyond))
    identity = torch.zeros(1, k2, 1, 1, device=frames.device)
    identity[:, k2 // 2] = 1.0

    def step(before, src, ok):  # frames (M, C, H, W) -> the next frame and its identity-relative weights
        wts = torch.where(ok.view(-1, 1, 1, 1), match_weights(before, src, kernel), identity) - identity
        return shift_sum(src, wts.view(len(src), 1, k2, h * w), kernel), wts

    current = torch.where(mask.view(n, 1, t, 1, 1), frames, torch.zeros_like(frames)).transpose(1, 2)  # (N, T, C, H, W)
    prior = torch.zeros(n, t, k2, h, w, device=frames.device)
    if sync_free if sync_free is not None else frames.device.type != "cpu":
        src_index = source.view(n, t, 1, 1, 1).expand_as(current)
        far_index = beyond.view(n, t, 1, 1, 1).expand_as(current)
        for level in range(1, t):  # the longest chain a T-frame clip can have
            src = torch.gather(current, 1, src_index).flatten(0, 1)
            built, wts = step(torch.gather(current, 1, far_index).flatten(0, 1), src, matched.flatten())
            at = (distance == level).view(n, t, 1, 1, 1)
            current = torch.where(at, built.view_as(current), current)
            prior = torch.where(at, wts.view_as(prior), prior)
        return prior.transpose(1, 2), current.transpose(1, 2)
    for b, f in by_distance(distance):
        built, wts = step(current[b, beyond[b, f]], current[b, source[b, f]], matched[b, f])
        current = current.index_put((b, f), built)
        prior = prior.index_put((b, f), wts)
    return prior.transpose(1, 2), current.transpose(1, 2)
