"""The anchor (vdp_ray.anchor): motion kernels (diffusion.motion_kernel), where each predicted frame is the frame
before it (towards the nearest given one) moved by per-pixel K x K weights, plus the network's change (zero
weights are copy-last exactly), and the motion estimate they start from (diffusion.anchor: motion)."""

import numpy as np
import pytest
import torch

from vdp_ray.anchor import Anchor, chain, estimate_motion, moved, nearest_given
from vdp_ray.diffusion import GaussianDiffusion


def anchored(out, frames, mask, kernel, motion=False):
    """A raw network output read through the ``motion`` or ``last`` anchor of these frames."""
    return Anchor("motion" if motion else "last", kernel).prepare(frames, mask).apply(out)


def _frames(n=2, c=2, t=6, h=10, w=12):
    return torch.randn(n, c, t, h, w, generator=torch.Generator().manual_seed(0))


def _shift_weights(n, k, t, h, w, dy, dx):
    """Weights that pull every pixel from (y - dy, x - dx): content moves by (dy, dx) per frame."""
    wts = torch.zeros(n, k * k, t, h, w)
    r = k // 2
    wts[:, r * k + r] = -1.0
    wts[:, (r - dy) * k + (r - dx)] = 1.0
    return wts


@pytest.mark.parametrize("given", [[0, 1], [0, 5], [3], [2, 3, 4], []])
def test_zero_weights_are_the_nearest_given_frame(given):
    x = _frames()
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, given] = True
    assert torch.equal(moved(x, mask, torch.zeros(2, 9, 6, 10, 12), 3), nearest_given(x, mask))
    out = torch.zeros(2, 2 + 9, 6, 10, 12)
    assert torch.equal(anchored(out, x, mask, 3), nearest_given(x, mask))


def test_chains_run_towards_the_nearest_given_frame_from_both_ends():
    mask = torch.tensor([[True, False, False, False, False, True], [False, False, True, False, False, False]])
    distance, source = chain(mask)
    assert distance.tolist() == [[0, 1, 2, 2, 1, 0], [2, 1, 0, 1, 2, 3]]
    assert source.tolist() == [[0, 0, 1, 4, 5, 5], [1, 2, 2, 2, 3, 4]]
    assert chain(torch.zeros(1, 4, dtype=torch.bool))[0].tolist() == [[0, 0, 0, 0]]  # nothing given: no chain


@pytest.mark.parametrize(("k", "dy", "dx"), [(3, 1, 0), (5, -2, 1), (5, 2, 2)])
def test_a_shift_kernel_carries_the_last_given_frame_forward_exactly(k, dy, dx):
    x = _frames(t=7, h=16, w=16)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[:, :3] = True
    out = moved(x, mask, _shift_weights(2, k, 7, 16, 16, dy, dx), k)
    assert torch.equal(out[:, :, :3], x[:, :, :3])
    last = x[:, :, 2]
    for i in range(3, 7):
        steps = i - 2
        expected = torch.roll(last, shifts=(steps * dy, steps * dx), dims=(-2, -1))
        ys = slice(max(0, steps * dy), 16 + min(0, steps * dy))  # away from the edges, where pixels repeat
        xs = slice(max(0, steps * dx), 16 + min(0, steps * dx))
        assert torch.allclose(out[:, :, i][..., ys, xs], expected[..., ys, xs], atol=1e-6), i


def test_motion_weights_learn_a_shift_from_the_identity_by_gradient_descent():
    """From zero weights (copy-last), plain gradient descent on the weights finds a two-pixel-per-frame motion of
    a sharp pattern: the loss is informative about every offset in the kernel, not only about sub-pixel moves."""
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(1, 1, 5, 12, 12, generator=g) > 0.7).float()  # sharp binary texture
    mask = torch.zeros(1, 5, dtype=torch.bool)
    mask[:, :2] = True
    target = moved(x, mask, _shift_weights(1, 5, 5, 12, 12, 2, 0), 5)
    wts = torch.zeros(1, 25, 5, 12, 12, requires_grad=True)
    opt = torch.optim.Adam([wts], lr=0.05)
    before = (moved(x, mask, wts, 5) - target)[:, :, 2:].pow(2).mean().item()
    for _ in range(300):
        opt.zero_grad()
        loss = (moved(x, mask, wts, 5) - target)[:, :, 2:].pow(2).mean()
        loss.backward()
        opt.step()
    assert before > 0.1 and loss.item() < 0.01 * before


def test_the_process_refuses_motion_kernels_without_an_anchor():
    with pytest.raises(ValueError, match="needs an anchor"):
        GaussianDiffusion(prediction_type="x0", anchor="none", motion_kernel=3)
    with pytest.raises(ValueError, match="odd"):
        GaussianDiffusion(prediction_type="x0", motion_kernel=4)


def test_the_sync_free_path_equals_the_per_frame_path_values_and_gradients():
    x = _frames(t=7)
    mask = torch.tensor(
        [[True, True, False, False, False, False, False], [False, True, False, False, True, False, False]]
    )
    g = torch.Generator().manual_seed(3)
    base = torch.randn(2, 9, 7, 10, 12, generator=g) * 0.2
    for estimate in (
        None,
        torch.softmax(torch.randn(2, 9, 7, 10, 12, generator=g) * 3, 1) - torch.eye(9)[4].view(9, 1, 1, 1),
    ):
        results = []
        for sync_free in (False, True):
            wts = base.clone().requires_grad_(True)
            out = moved(x, mask, wts, 3, estimate, sync_free=sync_free)
            out.square().sum().backward()
            results.append((out.detach(), wts.grad))
        assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
        assert torch.allclose(results[0][1], results[1][1], atol=1e-4)


def _moving_square(n=2, t=6, size=16, start=2, dy=1, dx=1, side=6, seed=0):
    """A textured square on a flat background, moving (dy, dx) pixels per frame: (N, 1, T, size, size)."""
    g = torch.Generator().manual_seed(seed)
    texture = torch.rand(n, 1, side, side, generator=g) * 1.6 - 0.8
    x = torch.full((n, 1, t, size, size), -0.5)
    for i in range(t):
        y0, x0 = start + i * dy, start + i * dx
        x[:, :, i, y0 : y0 + side, x0 : x0 + side] = texture
    return x


@pytest.mark.parametrize(("dy", "dx", "kernel"), [(1, 1, 3), (0, -2, 5), (2, 1, 5)])
def test_the_motion_estimate_carries_a_moving_object_on_exactly(dy, dx, kernel):
    x = _moving_square(t=6, size=24, start=2, dy=dy, dx=abs(dx))
    if dx < 0:  # moving left: the mirror image
        x = torch.flip(x, dims=(-1,))
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, :2] = True
    weights, built = estimate_motion(x, mask, kernel)
    gpu_weights, gpu_built = estimate_motion(x, mask, kernel, sync_free=True)  # the GPU path: the same
    assert torch.allclose(gpu_weights, weights, atol=1e-6) and torch.allclose(gpu_built, built, atol=1e-6)
    assert torch.allclose(built, x, atol=1e-5)  # the clip the network sees beside its input: the continuation
    assert weights.shape == (2, kernel * kernel, 6, 24, 24) and torch.equal(
        weights[:, :, :2], torch.zeros_like(weights[:, :, :2])
    )
    out = anchored(torch.zeros(2, 1 + kernel * kernel, 6, 24, 24), x, mask, kernel, motion=True)
    assert torch.allclose(out, x, atol=1e-5), (out - x).abs().amax(dim=(0, 1, 3, 4))
    # without the estimate the same fresh output is copy-last
    assert torch.equal(
        anchored(torch.zeros_like(out[:, :1].expand(-1, 1 + kernel * kernel, -1, -1, -1)), x, mask, kernel),
        nearest_given(x, mask),
    )


def _square_along(track, size=24, side=6, seed=1):
    """A textured square on a flat background with its top-left corner at each (y, x) of ``track``: (1, 1, T, S, S)."""
    texture = torch.rand(1, 1, side, side, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.8
    x = torch.full((1, 1, len(track), size, size), -0.5)
    for i, (y0, x0) in enumerate(track):
        x[:, :, i, y0 : y0 + side, x0 : x0 + side] = texture
    return x


@pytest.mark.parametrize("backwards", [False, True])
def test_the_motion_estimate_keeps_a_sub_pixel_speed_on_its_path(backwards):
    """Drawn at whole pixels, 1.5 px per frame moves 1, 2, 1, 2 and 0.5 px per frame 0, 1, 0, 1: carrying on the
    last step (2 and 1 px) is wrong at once, the line through all six given frames is right at both predicted
    ones. In reverse (the last six frames given, the first two built), the same."""
    track = [(int(np.floor(0.75 + 0.5 * i)), int(np.floor(0.75 + 1.5 * i))) for i in range(8)]
    assert [x for _, x in track] == [0, 2, 3, 5, 6, 8, 9, 11] and [y for y, _ in track][-3:] == [3, 3, 4]
    clip = _square_along(track)
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[:, :6] = True
    if backwards:
        clip, mask = clip.flip(2), mask.flip(1)
    built = estimate_motion(clip, mask, 5).clip
    assert torch.equal(built, clip), (built - clip).abs().amax(dim=(0, 1, 3, 4))
    assert torch.equal(estimate_motion(clip, mask, 5, sync_free=True)[1], built)
    out = anchored(torch.zeros(1, 1 + 25, 8, 24, 24), clip, mask, 5, motion=True)  # a fresh network predicts the same
    assert torch.allclose(out, clip, atol=1e-5)


def test_the_motion_estimate_fits_the_motion_since_the_last_bounce():
    """A square that bounced inside the given frames (right 2 px per frame, then left): the line through all five
    does not fit, the one through the three since the bounce does, and carries the square on leftwards."""
    clip = _square_along([(5, x) for x in (6, 8, 10, 8, 6, 4, 2)])
    mask = torch.zeros(1, 7, dtype=torch.bool)
    mask[:, :5] = True
    _, built = estimate_motion(clip, mask, 5)
    assert torch.equal(built, clip), (built - clip).abs().amax(dim=(0, 1, 3, 4))


def test_the_motion_estimate_carries_two_objects_moving_apart_each_at_its_own_speed():
    """Two textured squares side by side, one going left 1 px per frame, the other right 2 px per frame: patches
    that hold both must not move either at a speed in between, and each keeps its leading edge (the pixels ahead
    of it hold the still background's motion until it arrives)."""
    g = torch.Generator().manual_seed(2)
    left, right = (torch.rand(6, 6, generator=g) * 1.6 - 0.8 for _ in range(2))
    clip = torch.full((1, 1, 7, 24, 40), -0.5)
    for i in range(7):
        clip[0, 0, i, 8:14, 12 - i : 18 - i] = left
        clip[0, 0, i, 9:15, 18 + 2 * i : 24 + 2 * i] = right
    mask = torch.zeros(1, 7, dtype=torch.bool)
    mask[:, :4] = True
    _, built = estimate_motion(clip, mask, 5)
    assert torch.equal(built, clip), (built - clip).abs().amax(dim=(0, 1, 3, 4))


def test_the_motion_estimate_keeps_still_noisy_content_and_moves_nothing_it_cannot_match():
    g = torch.Generator().manual_seed(3)
    scene = torch.rand(2, 3, 1, 16, 16, generator=g) * 2 - 1
    still = scene + torch.randn(2, 3, 6, 16, 16, generator=g) * (2 / 255)  # a still camera's sensor noise
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, :3] = True
    weights, built = estimate_motion(still, mask, 5)
    assert weights.abs().max() < 1e-3 and torch.allclose(
        built, nearest_given(still, mask), atol=1e-3
    )  # offset zero everywhere: noise never moves anything
    # interpolation (first and last given) and a lone given frame: no pair of given frames to match, so no motion
    # (the steps next to a given frame get the identity; further ones match two copies of it: still no motion)
    moving = _moving_square(t=6)
    for given in ([0, 5], [2]):
        mask = torch.zeros(2, 6, dtype=torch.bool)
        mask[:, given] = True
        weights, _ = estimate_motion(moving, mask, 5)
        distance, _ = chain(mask)
        assert torch.equal(weights[:, :, distance[0] == 1], torch.zeros_like(weights[:, :, distance[0] == 1])), given
        out = anchored(torch.zeros(2, 1 + 25, 6, 16, 16), moving, mask, 5, motion=True)
        assert torch.allclose(out, nearest_given(moving, mask), atol=1e-5), given
    weights, built = estimate_motion(still, torch.zeros(2, 6, dtype=torch.bool), 5)  # nothing given: nothing to move
    assert torch.equal(weights, torch.zeros(2, 25, 6, 16, 16)) and torch.equal(built, torch.zeros_like(still))


def test_the_motion_anchor_needs_motion_kernels():
    with pytest.raises(ValueError, match="motion kernels"):
        GaussianDiffusion(prediction_type="x0", anchor="motion")
    with pytest.raises(ValueError, match="anchor"):
        GaussianDiffusion(prediction_type="x0", motion_kernel=3, anchor="flow")
