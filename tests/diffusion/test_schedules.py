import math

import pytest
import torch

from vdp_ray.diffusion import GaussianDiffusion, make_alpha_bar
from vdp_ray.diffusion.schedules import linear_betas, rescale_zero_terminal_snr


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_alpha_bar_is_a_decreasing_signal_level(name):
    ab = make_alpha_bar(name, 1000)
    assert ab.shape == (1000,) and ab.dtype == torch.float64
    assert (ab[1:] < ab[:-1]).all()
    assert 0.99 < ab[0] <= 1 and 0 < ab[-1] < 0.01


def test_linear_and_cosine_match_their_closed_forms():
    ab = make_alpha_bar("linear", 1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert torch.allclose(ab, torch.cumprod(1 - betas, 0))
    cos = make_alpha_bar("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 250, 500, 900):
        assert cos[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)


def test_zero_terminal_snr_rescale():
    betas = linear_betas(1000)
    ab = torch.cumprod(1 - rescale_zero_terminal_snr(betas), 0)
    assert ab[-1].item() == pytest.approx(0.0, abs=1e-12)
    assert ab[0].item() == pytest.approx(torch.cumprod(1 - betas, 0)[0].item(), rel=1e-12)
    assert (ab[1:] < ab[:-1]).all()


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'"):
        make_alpha_bar("quadratic", 10)


@pytest.mark.parametrize("t", [0, 100, 500, 999])
def test_forward_noising_statistics(t):
    d = GaussianDiffusion(prediction_type="eps", anchor="none")
    x0 = torch.full((20000, 1, 2, 2, 2), 0.7, dtype=torch.float64)
    xt = d.q_sample(x0, torch.full((20000,), t), torch.randn_like(x0))
    ab = d.alpha_bar[t].item()
    assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=0.01)
    assert xt.var().item() == pytest.approx(1 - ab, rel=0.03, abs=1e-4)


def test_per_frame_timesteps_noise_each_frame_at_its_level():
    d = GaussianDiffusion(schedule="linear", prediction_type="eps", anchor="none")
    x0 = torch.ones(4000, 1, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 500, 999]).expand(4000, 3)
    xt = d.q_sample(x0, t, torch.randn_like(x0))
    for f in range(3):
        ab = d.alpha_bar[t[0, f]].item()
        assert xt[:, :, f].mean().item() == pytest.approx(math.sqrt(ab), abs=0.02)


def test_half_precision_inputs_are_noised_in_fp32_at_small_timesteps():
    """In fp16, alpha_bar rounds to 1 for t <= 3 (no noise at all) and is off by up to 25% in (1 - alpha_bar) up
    to t ~ 15: the forward process, the targets and the weights are computed in fp32 whatever the inputs."""
    d = GaussianDiffusion(prediction_type="v", min_snr_gamma=5.0, anchor="none")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(21, 2, 3, 4, 4, generator=g).half()
    noise = torch.randn(x0.shape, generator=g).half()
    t = torch.arange(21)
    a, _ = d.coefficients(t, x0)
    assert a.dtype == torch.float32 and (a[:4] < 1).all()
    reference = (
        d.alpha_bar[t].sqrt().view(-1, 1, 1, 1, 1) * x0.double()
        + (1 - d.alpha_bar[t]).sqrt().view(-1, 1, 1, 1, 1) * noise.double()
    )
    xt = d.q_sample(x0, t, noise)
    assert xt.dtype == torch.float32
    torch.testing.assert_close(xt.double(), reference, rtol=1e-5, atol=1e-5)  # fp32 rounding; fp16 is ~1e-3
    assert ((xt.double() - x0.double()).abs().amax(dim=(1, 2, 3, 4)) > 0).all(), "noise at every t, t = 0 included"
    seen = {}

    def net(x, tt, mask):
        seen.update(x=x.dtype, t=tt.dtype)
        return torch.zeros_like(x)

    mask = torch.zeros(21, 3, dtype=torch.bool)
    out = d.training_losses(net, x0, mask, t=t, noise=noise, dtype=torch.float16)
    assert seen == {"x": torch.float16, "t": torch.float32} and out["loss"].dtype == torch.float32
    # the v target at these levels, from the fp32 reference: what the zero network is scored against
    v = (
        d.alpha_bar[t].sqrt().view(-1, 1, 1, 1, 1) * noise.double()
        - (1 - d.alpha_bar[t]).sqrt().view(-1, 1, 1, 1, 1) * x0.double()
    )
    torch.testing.assert_close(
        out["per_frame"].double(), v.pow(2).transpose(1, 2).flatten(2).mean(-1), rtol=1e-5, atol=1e-6
    )
