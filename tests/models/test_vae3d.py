import pytest
import torch

from vdp_ray.models import VAE3D, DiagonalGaussian


def vae(spatial, temporal, **kw):
    mults = (1, 2, 2) if spatial == 4 else (1, 2, 2, 2)
    return VAE3D(
        in_channels=3,
        latent_channels=4,
        base_channels=8,
        channel_mults=mults,
        num_res_blocks=1,
        spatial_compression=spatial,
        temporal_compression=temporal,
        mid_attention=True,
        **kw,
    )


@pytest.mark.parametrize("spatial", [4, 8])
@pytest.mark.parametrize("temporal", [1, 2, 4])
@pytest.mark.parametrize("frames", [4, 8, 12])
def test_decode_encode_keeps_the_exact_shape(spatial, temporal, frames):
    model = vae(spatial, temporal)
    x = torch.randn(2, 3, frames, 16, 24)
    if spatial == 8:
        x = torch.randn(2, 3, frames, 16, 32)
    posterior = model.encode(x)
    assert posterior.mean.shape == (2, 4, frames // temporal, x.shape[3] // spatial, x.shape[4] // spatial)
    assert tuple(posterior.mean.shape[1:]) == model.latent_shape(*x.shape[2:])
    assert model.decode(posterior.sample()).shape == x.shape


def test_indivisible_clips_are_refused_clearly():
    with pytest.raises(ValueError, match="6 frames do not divide by the VAE's temporal compression 4"):
        vae(4, 4).encode(torch.randn(1, 3, 6, 16, 16))
    with pytest.raises(ValueError, match="frame size 20x16 does not divide by the VAE's spatial compression 8"):
        vae(8, 1).encode(torch.randn(1, 3, 4, 20, 16))
    with pytest.raises(ValueError, match="channel_mults needs log2"):
        VAE3D(channel_mults=(1, 2), spatial_compression=8)
    with pytest.raises(ValueError, match="temporal_compression must be 1, 2 or 4"):
        VAE3D(temporal_compression=3)


def test_gaussian_posterior_kl_and_sampling():
    zeros = DiagonalGaussian(torch.zeros(2, 8, 1, 2, 2))  # mean 0, logvar 0: the prior itself
    assert torch.allclose(zeros.kl(), torch.zeros(2))
    moments = torch.cat([torch.full((1, 4, 1, 2, 2), 2.0), torch.full((1, 4, 1, 2, 2), -1.0)], 1)
    post = DiagonalGaussian(moments)
    # KL(N(2, e^-1) || N(0, 1)) per element = 0.5 (4 + e^-1 - 1 + 1)
    assert post.kl().item() == pytest.approx(0.5 * (4 + torch.e**-1), rel=1e-6)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([post.sample(g) for _ in range(2000)])
    assert draws.mean().item() == pytest.approx(2.0, abs=0.02)
    assert draws.std().item() == pytest.approx(torch.e**-0.5, rel=0.05)
    assert torch.equal(post.mode(), post.mean)


def test_reconstruction_gradients_reach_encoder_and_decoder():
    model = vae(4, 2)
    x = torch.randn(1, 3, 4, 16, 16)
    recon, post = model(x)
    ((recon - x).abs().mean() + 1e-3 * post.kl().mean()).backward()
    assert all(p.grad is not None for p in model.parameters())
