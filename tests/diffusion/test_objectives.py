import itertools
import math

import pytest
import torch

from vdp_ray.diffusion import GaussianDiffusion, min_snr_weight_as, split_as, target_as

TYPES = ["eps", "v", "x0"]


@pytest.mark.parametrize(("src", "dst"), list(itertools.permutations(TYPES, 2)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_prediction_types_round_trip(src, dst, dtype):
    ab = make_ab(dtype)
    x0, eps = torch.randn(64, 3, 4, 1, 1, dtype=dtype), torch.randn(64, 3, 4, 1, 1, dtype=dtype)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    a, s = ab.sqrt(), (1 - ab).sqrt()
    pred = target_as(src, x0, eps, a, s)
    there = target_as(dst, *split_as(pred, src, x_t, a, s), a, s)  # src -> (x0, eps) -> dst
    assert torch.allclose(there, target_as(dst, x0, eps, a, s), atol=1e-5, rtol=1e-5)
    back = target_as(src, *split_as(there, dst, x_t, a, s), a, s)
    assert torch.allclose(back, pred, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ptype", TYPES)
def test_targets_imply_the_clean_sample_and_noise(ptype):
    ab = make_ab(torch.float64)
    x0, eps = torch.randn(64, 3, 4, 1, 1, dtype=torch.float64), torch.randn(64, 3, 4, 1, 1, dtype=torch.float64)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    a, s = ab.sqrt(), (1 - ab).sqrt()
    got_x0, got_eps = split_as(target_as(ptype, x0, eps, a, s), ptype, x_t, a, s)
    assert torch.allclose(got_x0, x0, atol=1e-8) and torch.allclose(got_eps, eps, atol=1e-8)


def make_ab(dtype):
    # alpha_bar per (sample, frame) away from the ill-conditioned ends
    return torch.linspace(0.02, 0.98, 64 * 4, dtype=dtype).reshape(64, 1, 4, 1, 1)


@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weights_agree_across_prediction_types(gamma):
    # An error delta in x0-space costs delta^2 * SNR in eps-space and delta^2 * (SNR + 1) in v-space, so the
    # weighted losses of all three types must equal min(SNR, gamma) * delta^2 (Hang et al. 2023).
    ab = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    delta = torch.randn(50, dtype=torch.float64)
    snr = ab / (1 - ab)
    mse = {"x0": delta**2, "eps": delta**2 * snr, "v": delta**2 * (snr + 1)}
    expected = snr.clamp(max=gamma) * delta**2
    for ptype in TYPES:
        assert torch.allclose(min_snr_weight_as(ab.sqrt(), (1 - ab).sqrt(), gamma, ptype) * mse[ptype], expected)


class EchoTarget:
    """A 'network' that returns the exact target on the frames it is asked about and garbage on the rest."""

    def __init__(self, diffusion, x0, noise, garbage_frames):
        self.d, self.x0, self.noise, self.garbage = diffusion, x0, noise, garbage_frames
        self.seen = None

    def __call__(self, x_t, t, frame_mask):
        self.seen = (x_t.clone(), t.clone(), frame_mask.clone())
        a, s = self.d.coefficients(t.long(), x_t)
        out = target_as(self.d.prediction_type, self.x0, self.noise, a, s).clone()
        out[:, :, self.garbage] = 1e3
        return out


@pytest.mark.parametrize("ptype", TYPES)
def test_loss_covers_only_frames_not_given(ptype):
    d = GaussianDiffusion(prediction_type=ptype, min_snr_gamma=5.0, anchor="none")
    x0, noise = torch.randn(4, 2, 6, 4, 4), torch.randn(4, 2, 6, 4, 4)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, :2] = True
    t = torch.tensor([10, 300, 600, 999])
    exact_on_free = EchoTarget(d, x0, noise, garbage_frames=slice(0, 2))
    out = d.training_losses(exact_on_free, x0, mask, t=t, noise=noise)
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-6)
    wrong_on_free = EchoTarget(d, x0, noise, garbage_frames=slice(2, 3))
    assert d.training_losses(wrong_on_free, x0, mask, t=t, noise=noise)["loss"].item() > 1.0

    x_in, t_in, m_in = exact_on_free.seen
    assert torch.equal(x_in[:, :, :2], x0[:, :, :2]), "given frames enter clean"
    assert (t_in[:, :2] == 0).all() and torch.equal(t_in[:, 2:], t[:, None].expand(4, 4).float())
    assert torch.equal(m_in, mask)


def test_the_log_mse_loss_is_minus_the_mean_frame_psnr_and_weighs_frames_by_relative_error():
    from vdp_ray.diffusion.objectives import LOG_FLOOR, masked_frame_loss

    target = torch.zeros(2, 1, 3, 4, 4)
    pred = target.clone()
    pred[0] += 0.1  # an easy clip, small error
    pred[1] += 1.0  # a hard clip, large error
    frames = torch.tensor([[False, True, True], [False, True, True]])
    loss, per_frame = masked_frame_loss(pred, target, frames, kind="log_mse")
    expected = (2 * math.log(0.01 + LOG_FLOOR) + 2 * math.log(1.0 + LOG_FLOOR)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6) and per_frame[0, 1].item() == pytest.approx(0.01)
    for kind, easy_wins in (("mse", False), ("log_mse", True)):
        p = pred.clone().requires_grad_(True)
        masked_frame_loss(p, target, frames, kind=kind)[0].backward()
        easy, hard = p.grad[0].abs().sum().item(), p.grad[1].abs().sum().item()
        assert (easy > hard) == easy_wins, kind  # mse: the hard clip's gradient dominates; log_mse: the easy one's
