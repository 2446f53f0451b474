import pytest
import torch

from vdp_ray.models import UNet3D
from vdp_ray.models.layers import SpatialAttention3d, TemporalAttention3d


def small_unet(**kw):
    args = dict(
        in_channels=2, base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, attn_levels=(1, 2), head_dim=8
    )
    args.update(kw)
    return UNet3D(**args)


def randomize(model):
    """Undo the zero-init of output layers so that every input can influence the output."""
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model


@pytest.mark.parametrize(("frames", "size"), [(1, (16, 16)), (5, (16, 32)), (8, (32, 16)), (3, (8, 8))])
def test_any_frame_count_and_divisible_size(frames, size):
    net = small_unet()
    x = torch.randn(2, 2, frames, *size)
    out = net(x, torch.rand(2) * 999)
    assert out.shape == x.shape


def test_indivisible_size_is_refused_clearly():
    with pytest.raises(ValueError, match="frame size 14x16 must be divisible by its total downsampling 4"):
        small_unet()(torch.randn(1, 2, 4, 14, 16), torch.zeros(1))
    with pytest.raises(ValueError, match=r"expects \(N, 2, T, H, W\)"):
        small_unet()(torch.randn(1, 3, 4, 16, 16), torch.zeros(1))


def test_fresh_unet_is_zero_and_attention_sits_at_the_configured_levels():
    net = small_unet(attn_levels=(2,))
    assert net(torch.randn(1, 2, 3, 8, 8), torch.zeros(1)).abs().max() == 0
    spatial = [m for m in net.modules() if isinstance(m, SpatialAttention3d)]
    temporal = [m for m in net.modules() if isinstance(m, TemporalAttention3d)]
    # level 2 (deepest): 1 down block + 2 up blocks, plus the 2 mid blocks
    assert len(spatial) == len(temporal) == 5
    assert (
        len([m for m in small_unet(attn_levels=(0, 1, 2)).modules() if isinstance(m, SpatialAttention3d)])
        == 2 + 3 + 3 + 3
    )


def test_timestep_mask_and_every_parameter_matter():
    net = randomize(small_unet())
    x = torch.randn(2, 2, 4, 16, 16)
    t = torch.full((2, 4), 500.0)
    mask = torch.tensor([[True, False, False, False]] * 2)
    base = net(x, t, mask)
    assert not torch.allclose(base, net(x, t, None)), "the mask (null condition) changes the output"
    t2 = t.clone()
    t2[:, 0] = 0
    assert not torch.allclose(base, net(x, t2, mask)), "per-frame timesteps are used"
    base.square().mean().backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not unused, f"parameters without gradient: {unused}"


def test_temporal_mixing_reaches_other_frames():
    net = randomize(small_unet()).eval()
    x = torch.randn(1, 2, 6, 16, 16)
    y = x.clone()
    y[:, :, 0] += 1.0
    diff = (net(x, torch.zeros(1)) - net(y, torch.zeros(1))).abs().flatten(3).amax(-1)  # (1, C, T)
    assert (diff[0, :, 5] > 0).any(), "a change in frame 0 reaches frame 5"


def test_space_to_depth_patch_keeps_shapes_and_locality():
    net = UNet3D(in_channels=1, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attn_levels=(), patch=2)
    assert net.downsampling == 4
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    x = torch.randn(2, 1, 3, 16, 20)
    out = net(x, torch.full((2, 3), 5.0), torch.tensor([[True, False, False]] * 2))
    assert out.shape == x.shape
    # every output pixel of the 2x2 cells comes back where it belongs: moving one input pixel changes
    # the output near it (not a shuffled place)
    y = x.clone()
    y[:, :, :, 0, 0] += 5.0
    diff = (net(y, torch.full((2, 3), 5.0)) - net(x, torch.full((2, 3), 5.0))).abs().sum(dim=(0, 1, 2))
    assert diff[:6, :6].sum() > diff[10:, 10:].sum()
    with pytest.raises(ValueError, match="divisible by its total downsampling 4"):
        net(torch.randn(1, 1, 2, 18, 16), torch.zeros(1, 2))


def test_a_window_folded_into_channels_is_a_2d_unet_over_the_clip():
    """fold_frames (MCVD): the clip's frames become channels of one 2D U-Net pass; every frame still gets its own
    output, its own timestep and its own mask bit, a fresh model is still zero, and other lengths are refused."""
    net = small_unet(fold_frames=6, patch=2)
    x = torch.randn(2, 2, 6, 16, 16)
    assert net(x, torch.rand(2, 6) * 999).abs().max() == 0
    assert not any(isinstance(m, TemporalAttention3d) for m in net.modules()), "one 'frame' left: no temporal mixing"
    net = randomize(net)
    t = torch.full((2, 6), 500.0)
    mask = torch.tensor([[True, True, False, False, False, False]] * 2)
    base = net(x, t, mask)
    assert base.shape == x.shape
    assert not torch.allclose(base, net(x, t, None)), "the mask is an input"
    t2 = t.clone()
    t2[:, 5] = 10.0
    assert not torch.allclose(base, net(x, t2, mask)), "each frame's timestep is an input"
    y = x.clone()
    y[:, :, 0] += 1.0
    assert (net(y, t, mask) - base)[:, :, 5].abs().max() > 0, "frame 0 reaches frame 5"
    base.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    with pytest.raises(ValueError, match="folds a window of exactly 6 frames"):
        net(torch.randn(1, 2, 4, 16, 16), torch.zeros(1))


@pytest.mark.parametrize("kw", [dict(patch=2), dict(patch=1), dict(patch=2, fold_frames=4)])
def test_an_extra_head_adds_output_channels_that_start_at_zero(kw):
    """The extra channels (motion weights) come after the regular ones, in the same (N, C, T, H, W) layout, per
    pixel and frame, whatever the patch and frame folding."""
    net = small_unet(extra_channels=9, **kw)
    x = torch.randn(2, 2, 4, 16, 16)
    out = net(x, torch.rand(2) * 999)
    assert out.shape == (2, 2 + 9, 4, 16, 16) and out.abs().max() == 0
    with torch.no_grad():
        net.point_out.bias.copy_(torch.arange(net.point_out.bias.numel(), dtype=torch.float32))
    out = net(x, torch.rand(2) * 999)
    assert out[:, :2].abs().max() == 0  # the regular head is untouched
    channel_of = out[0, 2:, 0, 0, 0]  # bias k lands on one channel, frame and pixel of the head's layout
    assert len(set(out[0, 2:].flatten().tolist())) == net.point_out.bias.numel() and channel_of.unique().numel() == 9


@pytest.mark.parametrize("kw", [{}, {"patch": 2}, {"fold_frames": 4}])
def test_a_reference_clip_enters_beside_the_input_and_none_means_zeros(kw):
    """reference_channels (diffusion.anchor: motion): the network sees a reference clip (the motion estimate it
    corrects); leaving it out equals passing zeros, and a network without those channels refuses one."""
    net = randomize(small_unet(reference_channels=2, **kw))
    x, t = torch.randn(2, 2, 4, 16, 16), torch.rand(2) * 999
    ref = torch.randn(2, 2, 4, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(net(x, t, reference=ref), net(x, t))
        assert torch.equal(net(x, t), net(x, t, reference=torch.zeros_like(ref)))
    with pytest.raises(ValueError, match="reference clip must be"):
        net(x, t, reference=ref[:, :1])
    with pytest.raises(ValueError, match="takes no reference"):
        small_unet()(x, t, reference=ref)
