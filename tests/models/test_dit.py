from pathlib import Path

import pytest
import torch

from vdp_ray.models import PRESETS, DiT, count_parameters, forward_flops


def tiny(**kw):
    args = dict(in_channels=4, hidden=32, depth=2, heads=4, patch=2, max_frames=16, max_size=(16, 16))
    args.update(kw)
    return DiT(**args)


def test_fresh_dit_outputs_exactly_zero():
    # AdaLN-Zero: the zeroing must come after the generic init, or xavier would undo it.
    net = tiny()
    out = net(torch.randn(2, 4, 4, 8, 8), torch.rand(2) * 999, torch.tensor([[True, False, False, False]] * 2))
    assert out.shape == (2, 4, 4, 8, 8)
    assert torch.count_nonzero(out) == 0
    for block in net.blocks:
        assert torch.count_nonzero(block.ada[-1].weight) == 0  # gates start closed


@pytest.mark.parametrize(("frames", "size"), [(1, (8, 8)), (5, (8, 16)), (16, (16, 4)), (3, (2, 14))])
def test_any_frame_count_and_aspect_ratio_up_to_the_maxima(frames, size):
    net = perturbed(tiny())
    assert net(torch.randn(1, 4, frames, *size), torch.zeros(1)).shape == (1, 4, frames, *size)


def test_limits_are_refused_clearly():
    with pytest.raises(ValueError, match="exceeds the configured maxima max_frames=16"):
        tiny()(torch.randn(1, 4, 17, 8, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="must be divisible by the patch 1x2x2"):
        tiny()(torch.randn(1, 4, 4, 7, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="must be divisible by the patch 2x2x2"):
        tiny(patch_t=2)(torch.randn(1, 4, 3, 8, 8), torch.zeros(1))


def perturbed(net):
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return net


@pytest.mark.parametrize("kw", [dict(), dict(qk_norm=True), dict(patch_t=2)])
def test_conditioning_reaches_the_output_and_all_parameters_learn(kw):
    net = perturbed(tiny(**kw))
    x = torch.randn(2, 4, 4, 8, 8)
    t = torch.full((2, 4), 300.0)
    mask = torch.tensor([[True, True, False, False]] * 2)
    out = net(x, t, mask)
    assert not torch.allclose(out, net(x, t, None))
    t2 = t.clone()
    t2[:, 3] = 900
    assert not torch.allclose(out, net(x, t2, mask))
    out.square().mean().backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not unused, unused


def test_attention_mixes_space_and_time():
    net = perturbed(tiny()).eval()
    x = torch.randn(1, 4, 4, 8, 8)
    y = x.clone()
    y[:, :, 0, :2, :2] += 1  # one patch of frame 0
    diff = (net(x, torch.zeros(1)) - net(y, torch.zeros(1))).abs()
    assert diff[:, :, 3, 6:, 6:].sum() > 0, "reaches a distant patch of a later frame"


def analytic_dit_flops(net: DiT, n, c, t, h, w):
    d, p, pt = net.hidden, net.patch, net.patch_t
    s, tt = (h // p) * (w // p), t // pt
    m = n * tt * s
    mlp = int(d * 4.0)
    per_block = (
        2 * n * tt * d * 9 * d  # AdaLN modulation
        + 2 * (2 * m * d * 3 * d + 2 * m * d * d)  # qkv + proj, spatial and temporal
        + 4 * n * tt * s * s * d  # spatial QK^T and AV
        + 4 * n * s * tt * tt * d  # temporal QK^T and AV
        + 2 * 2 * m * d * mlp  # MLP
    )
    embed = 2 * m * d * (c + 1) * pt * p * p + 2 * n * t * (256 * d + d * d)
    final = 2 * n * tt * d * 2 * d + 2 * m * d * pt * p * p * c
    return embed + len(net.blocks) * per_block + final


@pytest.mark.parametrize("preset", ["tiny", "B"])
def test_counted_flops_match_the_closed_form(preset):
    with torch.device("meta"):
        net = DiT(in_channels=4, **PRESETS["dit"][preset])
    x = torch.zeros(2, 4, 4, 16, 16, device="meta")
    counted = forward_flops(net, x, torch.zeros(2, 4, device="meta"), None)
    assert counted == pytest.approx(analytic_dit_flops(net, 2, 4, 4, 16, 16), rel=1e-3)


def test_presets_have_their_published_sizes():
    sizes = {name: (kw["hidden"], kw["depth"], kw["heads"]) for name, kw in PRESETS["dit"].items()}
    assert sizes["B"] == (768, 12, 12) and sizes["XL"] == (1152, 28, 16)
    with torch.device("meta"):
        b = DiT(in_channels=4, **PRESETS["dit"]["B"])
    # DiT-B/2 has ~130M parameters; the extra temporal attention adds 12 x 4 x 768^2 ~ 28M and the 9-way
    # AdaLN (vs 6) another 12 x 3 x 768^2 ~ 21M.
    assert 170e6 < count_parameters(b) < 190e6


@pytest.mark.parametrize("family", ["unet3d", "dit"])
def test_activation_checkpointing_changes_memory_not_results(family):
    """train.activation_checkpointing: each block recomputed in the backward pass gives the same output and
    the same gradients as keeping its activations."""
    from vdp_ray.config import load_config
    from vdp_ray.models import build_denoiser

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "experiments" / ("tiny_unet.yaml" if family == "unet3d" else "tiny_dit.yaml"))
    torch.manual_seed(0)
    model = build_denoiser(cfg)
    with torch.no_grad():  # AdaLN-Zero / zero-initialised outputs would make every gradient below trivially equal
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    x = torch.randn(2, model.in_channels, 4, *cfg.data.size) if family == "unet3d" else torch.randn(2, 4, 4, 8, 8)
    t = torch.rand(2) * 999
    runs = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.checkpointing = checkpointing
        out = model(x, t)
        out.square().mean().backward()
        runs.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (a, ga), (b, gb) = runs
    torch.testing.assert_close(a, b)
    assert all(torch.allclose(u, v, atol=1e-6, rtol=1e-5) for u, v in zip(ga, gb, strict=True))


def test_a_reference_clip_enters_beside_the_input_and_none_means_zeros():
    net = perturbed(tiny(reference_channels=4))
    x, t = torch.randn(2, 4, 4, 8, 8), torch.full((2,), 300.0)
    ref = torch.randn(2, 4, 4, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(net(x, t, reference=ref), net(x, t))
        assert torch.equal(net(x, t), net(x, t, reference=torch.zeros_like(ref)))
    with pytest.raises(ValueError, match="reference clip must be"):
        net(x, t, reference=ref[:, :, :2])
