"""The motion estimate: the given frames' own motion carried on, for the motion kernels to start from
(``diffusion.anchor: motion``).

Block matching (Jain & Jain 1981): for every pixel of a frame, the offset among the K x K whose P x P patch in the
frame before differs least from the patch around it, with a small penalty on the offset's length so that flat and
still regions keep offset zero (sensor noise alone never moves anything). The best match, not a weighted mean of
matches: where two objects moving apart share a patch, a mean would give it a speed neither has. Chained back
through the run of given frames, the matches give each pixel's path; a straight line fitted through it
(``velocity_fit``: as many frames as lie on one line, so a bounce inside the given frames starts a new one)
carries the content on at constant velocity, to the whole pixel nearest the line at every step. One pair of
frames whole pixels apart cannot tell 1.5 px per frame from 2; the line through several can, and a digit drawn
at 1.5 px per frame then moves 1, 2, 1, 2 px as it should. Frames are built along the same chain as
``kernels.moved``: outward from the nearest given frame, one step (one tap of the K x K kernel per pixel, so
shapes stay sharp) at a time; the pixels around each one vote on its move, so content moves as one piece; each
pixel takes the content whose move lands on it, and the line travels with that content. A frame with no two
given frames behind it (interpolation between two lone frames, a lone given frame, generation) does not move.

The result is the identity-relative weights that ``kernels.moved`` applies before the network's own, so a network
whose output is zero predicts this extrapolation exactly, and the clip they build, which the network sees beside
its input (a reference clip): it learns what the estimate gets wrong (bounces, occlusions, new content) knowing
what the estimate is. It depends on the given frames only: computed once per clip and condition, not per step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .chain import Where, chain, pick, walk
from .kernels import neighbourhood

PATCH = 7  # pixels on a side of the matched patch: larger than the motion per frame, so a moving edge's leading
# side (background in the frame before) still matches the edge's motion
LENGTH_PENALTY = 3e-5  # per squared pixel of offset, in squared [-1, 1] units of brightness: ties (flat regions,
# noise) keep the zero offset
MAX_HISTORY = 6  # given frames a line is fitted through, at most (the nearest ones)
FIT_TOLERANCE = 0.75  # pixels: the farthest a matched position may lie from the line for its frame to count
LINE = 5  # channels of a fitted line (``velocity_fit``): intercept a (dy, dx), slope b (dy, dx), 1.0 where fitted


class MotionEstimate(NamedTuple):
    """What ``estimate_motion`` finds for clips (N, C, T, H, W) and their given frames."""

    weights: torch.Tensor  # (N, K^2, T, H, W): identity-relative, what ``kernels.moved`` applies first at every step
    clip: torch.Tensor  # (N, C, T, H, W): the clip those weights build: the reference clip the network sees


def offsets(kernel: int, device=None) -> torch.Tensor:
    """(K^2, 2) (dy, dx) of each tap, in ``F.unfold``'s order (rows first)."""
    r = kernel // 2
    dy, dx = torch.meshgrid(
        torch.arange(-r, r + 1, device=device), torch.arange(-r, r + 1, device=device), indexing="ij"
    )
    return torch.stack([dy.flatten(), dx.flatten()], 1)


def patch_side(h: int, w: int) -> int:
    """``PATCH``, or the largest odd side that fits a smaller frame."""
    return min(PATCH, 2 * (min(h, w) // 2) + 1)


def box_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    """The mean over the size x size window around every pixel of x (M, C, H, W), over the part inside the frame:
    a row pass and a column pass (the same numbers as one 2-D pass, in 2/size of its work)."""
    x = F.avg_pool2d(x, (size, 1), stride=1, padding=(size // 2, 0), count_include_pad=False)
    return F.avg_pool2d(x, (1, size), stride=1, padding=(0, size // 2), count_include_pad=False)


def best_offsets(before: torch.Tensor, after: torch.Tensor, kernel: int) -> torch.Tensor:
    """(M, 2, H, W) for frames (M, C, H, W): per pixel of ``after``, the (dy, dx) of the K x K offsets whose patch in
    ``before`` matches its patch best, after(p) ~ before(p + o), on the frames' channel mean (brightness: as good
    a cue for motion at a C-th of the cost). A small penalty on the offset's length decides ties (flat regions,
    sensor noise) for the shorter one, so nothing moves without a reason."""
    m, _, h, w = before.shape
    taps = neighbourhood(before.mean(1, keepdim=True), kernel)  # (M, 1, K^2, H W)
    # squared difference of every pixel of ``after`` to each shifted copy of ``before``: (M, K^2, H, W)
    err = (taps - after.mean(1).view(m, 1, 1, h * w)).pow(2).view(m, kernel * kernel, h, w)
    err = box_mean(err, patch_side(h, w))  # (M, K^2, H, W)
    offs = offsets(kernel, before.device)
    length = offs.pow(2).sum(1).to(err.dtype).view(1, -1, 1, 1)
    best = (err + LENGTH_PENALTY * length).argmin(1)  # (M, H, W): the winning tap
    return offs[best].permute(0, 3, 1, 2).to(err.dtype)  # (M, H, W, 2) -> (M, 2, H, W)


def velocity_fit(frames: torch.Tensor, mask: torch.Tensor, kernel: int, sparse: bool = True) -> torch.Tensor:
    """Per frame and pixel, the straight line its content followed through the run of given frames that ends there:
    frames (N, T, C, H, W), mask (N, T) bool -> (N, T, LINE, H, W): intercept a (2: dy, dx), slope b (2) and 1.0
    where a line was fitted (0.0 where the frame is not given or has no given frame before it).

    Content at p in frame t sat at p + r(h) in frame t - h. r(1) is the offset of the best match of frame t-1 to t
    (``best_offsets``), and r(h) = r(1) + frame t-1's r(h-1) read (bilinearly) where that offset points. The line
    r(h) ~ a + b h is a least-squares fit over h = 0 .. L-1, with L the most frames (at most ``MAX_HISTORY``) whose r
    all lie within ``FIT_TOLERANCE`` of their line (a bounce or a change of speed inside the run shortens it; two
    frames always fit). Over several frames the slope resolves the sub-pixel speed that one pair of frames, whole
    pixels apart, cannot: a digit drawn at 1.5 px per frame moves 1, 2, 1, 2. ``sparse``: match only the pairs of
    given frames (one host read: the CPU path); otherwise every pair (no read: the GPU path)."""
    n, t, _, h, w = frames.shape
    out = torch.zeros(n, t, LINE, h, w, device=frames.device)
    if t < 2:
        return out
    paired = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, 1:] & mask[:, :-1]], 1)  # (N, T): t-1 and t given
    steps = torch.zeros(n, t, 2, h, w, device=frames.device)
    if sparse:
        i, f = paired.nonzero().unbind(1)
        if len(i):
            steps[i, f] = best_offsets(frames[i, f - 1], frames[i, f], kernel)
    else:
        pairs = best_offsets(frames[:, :-1].flatten(0, 1), frames[:, 1:].flatten(0, 1), kernel)  # (N (T-1), 2, H, W)
        steps[:, 1:] = pairs.view(n, t - 1, 2, h, w)
    ys, xs = torch.meshgrid(torch.arange(h, device=frames.device), torch.arange(w, device=frames.device), indexing="ij")
    scale = torch.tensor([2 / max(w - 1, 1), 2 / max(h - 1, 1)], device=frames.device)
    # where each match points, (N, T, H, W, 2) as (x, y): steps are (dy, dx) channels, grid_sample wants (x, y) last
    grid = (torch.stack([xs, ys], -1) + steps.flip(2).permute(0, 1, 3, 4, 2)) * scale - 1
    grid = grid.flatten(0, 1)  # (N T, H, W, 2), (x, y) in [-1, 1] as grid_sample reads them
    zero = torch.zeros(n, 1, 2, h, w, device=frames.device)
    history = min(t - 1, MAX_HISTORY - 1)
    r, ok = [torch.zeros_like(steps)], [mask]  # r(h) at every frame, and whether frames t-h .. t are all given
    for _ in range(history):
        older = torch.cat([zero, r[-1][:, :-1]], 1).flatten(0, 1)  # frame t-1's r(h-1)
        read = F.grid_sample(older, grid, mode="bilinear", padding_mode="border", align_corners=True)
        r.append(steps + read.view(n, t, 2, h, w))  # (N T, 2, H, W) -> (N, T, 2, H, W)
        ok.append(paired & torch.cat([torch.zeros_like(mask[:, :1]), ok[-1][:, :-1]], 1))
    for length in range(2, history + 2):  # longer runs overwrite shorter ones where they fit
        pts = torch.stack(r[:length])  # (L, N, T, 2, H, W)
        hs = torch.arange(length, device=frames.device, dtype=pts.dtype).view(-1, 1, 1, 1, 1, 1)
        centred = hs - (length - 1) / 2
        b = (centred * pts).sum(0) / centred.pow(2).sum()
        a = pts.mean(0) - b * (length - 1) / 2
        fits = (pts - a - b * hs).abs().amax(dim=(0, 3)) <= FIT_TOLERANCE  # (N, T, H, W)
        take = (fits & ok[length - 1].view(n, t, 1, 1)).unsqueeze(2)  # (N, T, 1, H, W)
        out = torch.where(take, torch.cat([a, b, torch.ones_like(a[:, :, :1])], 2), out)
    return out


def _line_parts(line: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A line (M, LINE, H, W) as its intercept (M, 2, H, W), slope (M, 2, H, W) and where it was fitted (M, 1, H, W)."""
    return line[:, :2], line[:, 2:4], line[:, 4:] > 0.5


def _pack(frame: torch.Tensor, forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """What a step of the chain moves, as one tensor (channels third from last): the frame and both of its lines
    (the line its content follows towards later frames, and towards earlier ones), so they travel together."""
    return torch.cat([frame, forward, backward], -3)


def _unpack(carried: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_pack`` undone: (frame, forward line, backward line) of a frame with ``channels`` channels."""
    return carried.split([channels, LINE, LINE], -3)


def _planned_taps(line: torch.Tensor, distance: torch.Tensor, kernel: int) -> torch.Tensor:
    """The kernel tap (M, 1, H, W) of each pixel's move this step, d steps from its given frame: the difference of
    the whole pixels nearest the line at d - 1 and at d (so a 1.5 px/frame digit moves 1, 2, 1, 2), zero where no
    line was fitted, voted over the patch around each pixel so that content moves as one piece."""
    r, k2 = kernel // 2, kernel * kernel
    _, h, w = line.shape[-3:]
    a, b, fitted = _line_parts(line)
    d = distance.to(a.dtype).view(-1, 1, 1, 1)
    total = torch.round(a - b * d)  # where the given frame's content is, d steps on
    before = torch.where(d > 1, torch.round(a - b * (d - 1)), torch.zeros_like(a))
    move = torch.where(fitted, (before - total).clamp(-r, r), torch.zeros_like(a))  # (M, 2, H, W)
    own = ((move[:, :1] + r) * kernel + move[:, 1:] + r).long()  # (M, 1, H, W): the move as a tap index
    votes = box_mean((own == _tap_ids(k2, line.device)).float(), patch_side(h, w))  # (M, K^2, H, W)
    return votes.argmax(1, keepdim=True)  # the most common move around each pixel


def _landing_taps(planned: torch.Tensor, kernel: int) -> torch.Tensor:
    """(M, 1, H, W): per pixel, the tap of the content that lands on it. Reading the move planned at the pixel
    itself (a backward warp) would shave a moving object's lead by its speed every step, since the pixels ahead of
    it still hold the background's line; so each pixel takes a neighbour p + o whose own move is o. Moving content
    wins over still (it is in front of what it passes; among movers the farthest); where nothing lands (what a
    move uncovers), the pixel's own planned move."""
    r, k2 = kernel // 2, kernel * kernel
    m, _, h, w = planned.shape
    move = torch.cat([planned // kernel - r, planned % kernel - r], 1).float()  # (M, 2, H, W) as (dy, dx)
    offs = offsets(kernel, planned.device).float().T.reshape(1, 2, k2, 1)  # (K^2, 2) -> (1, 2: dy dx, K^2, 1)
    reach = 1 + offs.pow(2).sum(1)  # (1, K^2, 1): the preference among contents landing on a pixel
    reach[:, k2 // 2] = 0  # and none for staying put
    lands = (neighbourhood(move, kernel) == offs).all(1)  # (M, K^2, H W): whether the neighbour o moves by o
    score = lands * reach
    tap = score.argmax(1).view(m, 1, h, w)
    return torch.where(score.amax(1).view(m, 1, h, w) > 0, tap, planned)


def _shifted(carried: torch.Tensor, tap: torch.Tensor, kernel: int) -> torch.Tensor:
    """``carried`` (M, X, H, W) with each pixel read from its tap's offset (edges repeated): ``shift_sum`` with
    one-hot weights, done as a gather in a K^2-th of the work."""
    r = kernel // 2
    _, _, h, w = carried.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=tap.device), torch.arange(w, device=tap.device), indexing="ij")
    dy, dx = (tap // kernel - r)[:, 0], (tap % kernel - r)[:, 0]  # (M, H, W) each
    at = (ys + dy).clamp(0, h - 1) * w + (xs + dx).clamp(0, w - 1)  # (M, H, W): the flat pixel read
    index = at.flatten(1).unsqueeze(1).expand(-1, carried.shape[1], -1)  # (M, X, H W)
    return torch.gather(carried.flatten(2), 2, index).view_as(carried)  # (M, X, H W) -> (M, X, H, W)


def _tap_ids(k2: int, device) -> torch.Tensor:
    return torch.arange(k2, device=device).view(1, k2, 1, 1)  # (1, K^2, 1, 1)


@torch.no_grad()
def estimate_motion(
    frames: torch.Tensor, mask: torch.Tensor, kernel: int, sync_free: bool | None = None
) -> MotionEstimate:
    """The given frames' motion carried on, for frames (N, C, T, H, W) under ``mask`` (N, T) bool: identity-relative
    weights, zeros (no motion) for given frames and unmatched steps, and the clip they build (the given frames, and
    every other frame moved on from them; zeros without any given frame).

    A frame d steps from its nearest given frame g is g's content moved along the line ``velocity_fit`` found
    there, to the whole pixel nearest the line at d: each step moves by the difference of those roundings (one
    tap of the K x K kernel, so content keeps its shape, and steps of 1, 2, 1, 2 px keep a 1.5 px/frame digit on
    its path). The line travels with the content it belongs to. Steps towards the future use the given frames
    before g, steps towards the past (interpolation) those after it; a frame with no two given frames behind it
    in its direction does not move. Computed in fp32 whatever the frames' dtype; ``sync_free`` as ``chain.walk``."""
    n, c, t, h, w = frames.shape
    k2 = kernel * kernel
    distance, source = chain(mask)
    later = source < torch.arange(t, device=mask.device)  # (N, T): built from the frame before it
    sync_free = sync_free if sync_free is not None else frames.device.type != "cpu"
    given = torch.where(mask.view(n, 1, t, 1, 1), frames.float(), torch.zeros_like(frames, dtype=torch.float32))
    given = given.transpose(1, 2)  # (N, T, C, H, W)
    forward = velocity_fit(given, mask, kernel, not sync_free)  # lines for building later frames
    # and earlier ones (interpolation), where a clip has any; on the CPU, one host read to skip the fit otherwise
    if sync_free or bool((~later & (distance > 0)).any()):
        backward = velocity_fit(given.flip(1), mask.flip(1), kernel, not sync_free).flip(1)
    else:
        backward = torch.zeros_like(forward)
    identity = (_tap_ids(k2, frames.device) == k2 // 2).float()  # (1, K^2, 1, 1): the kernel that keeps a pixel

    def step(carried: torch.Tensor, where: Where) -> tuple[torch.Tensor, torch.Tensor]:  # carried (M, C + 10, H, W)
        _, ahead, behind = _unpack(carried, c)
        line = torch.where(pick(later, where).view(-1, 1, 1, 1), ahead, behind)
        tap = _landing_taps(_planned_taps(line, pick(distance, where), kernel), kernel)  # this step's tap
        return _shifted(carried, tap, kernel), (tap == _tap_ids(k2, tap.device)).float() - identity

    weights = torch.zeros(n, t, k2, h, w, device=frames.device)
    built, (weights,) = walk(_pack(given, forward, backward), mask, step, (weights,), sync_free)
    # walked as (N, T, ...), returned as (N, K^2 or C, T, H, W)
    return MotionEstimate(weights.transpose(1, 2), _unpack(built, c)[0].transpose(1, 2))
