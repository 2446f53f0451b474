"""Flow matching: the path and its conversions in closed form, logit-normal times with the resolution shift, an
oracle velocity field transported exactly by the samplers, and training on it."""

import math

import pytest
import torch
from support.oracles import GaussianOracle

from vdp_ray.config import SamplingConfig
from vdp_ray.diffusion import (
    Condition,
    FlowMatching,
    GaussianDiffusion,
    nearest_given,
    prediction_mask,
    resolution_shift,
    sample,
    shift_times,
    split_as,
    target_as,
)

MU, S = 0.5, 0.3
SHAPE = (4000, 1, 2, 4, 4)


def settings(**kw) -> SamplingConfig:
    return SamplingConfig(clip_x0=None, **kw)


@pytest.mark.parametrize("flow", [True, False])
@pytest.mark.parametrize("ptype", ["eps", "v", "x0"])
def test_every_prediction_type_converts_back_exactly(flow, ptype):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 100, generator=g, dtype=torch.float64)
    t = torch.rand(100, generator=g, dtype=torch.float64) * 0.98 + 0.01
    a, s = (1 - t, t) if flow else (torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2))
    x_t = a * x0 + s * eps
    x0_back, eps_back = split_as(target_as(ptype, x0, eps, a, s, flow), ptype, x_t, a, s, flow)
    assert torch.allclose(x0_back, x0, atol=1e-9) and torch.allclose(eps_back, eps, atol=1e-9)


def test_the_flow_path_and_its_velocity():
    fm = FlowMatching(prediction_type="v", anchor="none")
    x0, noise = torch.full((3, 1, 2, 1, 1), 2.0), torch.full((3, 1, 2, 1, 1), -1.0)
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    x_t = fm.q_sample(x0, t, noise)
    assert x_t[:, 0, 0, 0, 0].tolist() == [2.0, 1.25, -1.0]  # (1 - t) x0 + t eps: straight from data to noise
    assert target_as("v", x0, noise, 1 - 0.25, 0.25, flow=True).unique().item() == -3.0  # eps - x0, constant in t
    assert fm.model_time(t).tolist() == [0.0, 250.0, 1000.0]  # the time scale the DDPM models see


def test_logit_normal_times_with_the_resolution_shift():
    g = torch.Generator().manual_seed(0)
    plain = FlowMatching(prediction_type="v", flow_shift=1.0, anchor="none").draw_times(
        20000, g, "cpu", (1, 1, 8, 32, 32)
    )
    assert plain.median().item() == pytest.approx(0.5, abs=0.01)  # sigmoid(N(0, 1)): median 1/2
    assert plain.min() > 0 and plain.max() < 1
    shifted = FlowMatching(prediction_type="v", flow_shift=3.0, anchor="none").draw_times(
        20000, g, "cpu", (1, 1, 8, 32, 32)
    )
    assert shifted.median().item() == pytest.approx(0.75, abs=0.01)  # 3 * 0.5 / (1 + 2 * 0.5)
    assert resolution_shift((1, 3, 8, 32, 32)) == 1.0
    assert resolution_shift((1, 3, 16, 64, 64)) == pytest.approx(math.sqrt(8))  # 8x the elements: sqrt(8)
    assert resolution_shift((1, 3, 2, 8, 8)) == 0.5  # within the range
    auto = FlowMatching(prediction_type="v", anchor="none").draw_times(20000, g, "cpu", (1, 1, 16, 64, 64))
    assert auto.median().item() == pytest.approx(shift_times(0.5, math.sqrt(8)), abs=0.01)
    times = FlowMatching(prediction_type="v", flow_shift=3.0, anchor="none").sampling_times(4, "trailing", None, SHAPE)
    assert times == pytest.approx([1.0, shift_times(0.75, 3.0), shift_times(0.5, 3.0), shift_times(0.25, 3.0)])


def test_both_objectives_draw_uniform_or_logit_normal_times():
    """diffusion.times: DDPM defaults to uniform timesteps, flow to logit-normal; either takes the other, and a
    positive logit mean favours the noisy end (median sigmoid(mean))."""
    g = torch.Generator().manual_seed(0)
    ddpm = GaussianDiffusion(prediction_type="x0", anchor="none").draw_times(20000, g, "cpu", SHAPE)
    assert ddpm.dtype == torch.int64 and ddpm.float().median().item() == pytest.approx(500, abs=15)
    noisy_times = GaussianDiffusion(prediction_type="x0", times="logit_normal", time_logit_mean=1.0, anchor="none")
    noisy = noisy_times.draw_times(20000, g, "cpu", SHAPE)
    assert noisy.min() >= 0 and noisy.max() <= 999 and noisy.dtype == torch.int64
    assert noisy.float().median().item() == pytest.approx(1000 * torch.sigmoid(torch.tensor(1.0)).item(), abs=15)
    flat = FlowMatching(prediction_type="v", flow_shift=1.0, times="uniform", anchor="none").draw_times(
        20000, g, "cpu", SHAPE
    )
    assert flat.quantile(0.1).item() == pytest.approx(0.1, abs=0.01)  # uniform: deciles at 0.1, 0.2, ...
    with pytest.raises(
        ValueError, match=r"diffusion.times: .beta. is not allowed; expected one of \[.uniform., .logit_normal.\]"
    ):
        GaussianDiffusion(times="beta", anchor="none")


def transported(sampler, steps, ptype="v"):
    """Sample N(MU, S^2) data with the exact velocity field; return the error against the exact flow map."""
    fm = FlowMatching(prediction_type=ptype, flow_shift=1.0, anchor="none")
    oracle = GaussianOracle(fm, MU, S)
    x = sample(
        oracle,
        fm,
        SHAPE,
        settings=settings(sampler=sampler, steps=steps),
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # the starting noise
    # For Gaussian data the ODE maps each noise draw linearly: x_t = a MU + sqrt(a^2 S^2 + t^2) z. Every sampler ends
    # with the jump from its last time t to the clean sample through E[x0 | x_t] = MU + a S^2 / sqrt(a^2 S^2 + t^2) z.
    t = fm.sampling_times(steps, "trailing", None, SHAPE)[-1]
    a = 1 - t
    exact = MU + a * S**2 / math.sqrt(a**2 * S**2 + t**2) * z
    return (x - exact).abs().max().item(), oracle.calls


@pytest.mark.parametrize("ptype", ["v", "x0"])
def test_the_oracle_velocity_field_transports_the_gaussian_exactly(ptype):
    err, calls = transported("heun", 40, ptype)
    assert err < 2e-3
    assert calls == 2 * 40 - 1  # two calls per Heun step but the last, an Euler step to the clean sample


def test_euler_converges_at_first_order_and_heun_faster():
    euler = [transported("euler", n)[0] for n in (10, 40, 160)]
    assert euler[0] > euler[1] > euler[2]
    assert 2.5 < euler[1] / euler[2] < 6  # first order: 4x the steps, ~4x less error
    heun10, heun40 = transported("heun", 10)[0], transported("heun", 40)[0]
    assert heun40 < heun10 < euler[0] and heun10 / heun40 > 12  # second order: ~16x
    assert transported("ddim", 40)[0] == pytest.approx(euler[1])  # DDIM on a flow path is Euler


@pytest.mark.parametrize("sampler", ["dpm++", "ddpm"])
def test_the_other_samplers_recover_the_distribution_on_a_flow_path(sampler):
    fm = FlowMatching(prediction_type="v", flow_shift=1.0, anchor="none")
    x = sample(
        GaussianOracle(fm, MU, S),
        fm,
        SHAPE,
        settings=settings(sampler=sampler, steps=200),
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(S, rel=0.03)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_heun_and_euler_on_ddpm_recover_the_distribution(sampler):
    d = GaussianDiffusion(prediction_type="v", anchor="none")
    x = sample(
        GaussianOracle(d, MU, S),
        d,
        SHAPE,
        settings=settings(sampler=sampler, steps=100),
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(S, rel=0.03)


@pytest.mark.parametrize("residual", [False, True])
def test_a_perfect_flow_model_has_zero_loss_and_samples_the_truth(residual):
    """Training targets and the sampler agree: a network that knows the clip (its velocity, or its change from
    the nearest given frame) trains to zero loss and its samples are the clip, with guidance too."""
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 1, 5, 4, 4, generator=g) * 2 - 1
    fm = FlowMatching(prediction_type="v", anchor="last" if residual else "none")
    mask = prediction_mask(2, 5, 2)

    def model(x, t, m):  # the exact velocity at (x, t), or the exact residual
        clips = truth.repeat(x.shape[0] // truth.shape[0], 1, 1, 1, 1)
        if residual:
            return clips if m is None else clips - nearest_given(clips, m)
        tt = (t / 1000.0)[:, None, :, None, None]
        return (x - clips) / tt.clamp(min=1e-6)  # eps - x0 = (x_t - x0) / t

    loss = fm.training_losses(model, truth, mask, generator=g)["loss"]
    assert loss.item() < 1e-8
    for guidance in (1.0, 2.0):
        out = sample(
            model,
            fm,
            tuple(truth.shape),
            Condition(truth, mask),
            settings(sampler="heun", steps=4, guidance=guidance),
            generator=g,
        )
        assert torch.allclose(out, truth, atol=1e-4)


def test_refine_on_a_flow_path_starts_at_its_strength():
    fm = FlowMatching(prediction_type="v", flow_shift=1.0, anchor="none")
    init = torch.full((500, 1, 2, 2, 2), 0.8)
    oracle = GaussianOracle(fm, MU, S)
    light = sample(
        oracle,
        fm,
        init.shape,
        settings=settings(sampler="euler", steps=10),
        init=init,
        strength=0.05,
        generator=torch.Generator().manual_seed(0),
    )
    heavy = sample(
        oracle,
        fm,
        init.shape,
        settings=settings(sampler="euler", steps=10),
        init=init,
        strength=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert (light - init).abs().mean() < 0.05 < (heavy - init).abs().mean()


@pytest.mark.parametrize(
    "process",
    [GaussianDiffusion(prediction_type="v", context_noise=0.1), FlowMatching(prediction_type="v", context_noise=0.1)],
)
def test_given_frames_are_noised_in_training_and_the_network_is_told_the_level(process):
    g = torch.Generator().manual_seed(0)
    clips = torch.rand(64, 1, 4, 2, 2, generator=g) * 2 - 1
    mask = prediction_mask(64, 4, 2)
    seen = {}

    def net(x, t, m):
        seen.update(x=x, t=t)
        return torch.zeros_like(x)

    process.training_losses(net, clips, mask, generator=g)  # validation and plain calls: the context stays clean
    assert torch.equal(seen["x"][:, :, :2], clips[:, :, :2]) and (seen["t"][:, :2] == 0).all()
    out = process.training_losses(net, clips, mask, generator=g, augment=True)
    level = seen["t"][:, :2]
    assert (level[:, 0] == level[:, 1]).all(), "one level per clip"
    assert 0 < level.max() <= 0.1 * 1000 and (level == 0).float().mean() < 0.2
    noisy = (seen["x"][:, :, :2] - clips[:, :, :2]).abs().flatten(1).max(1).values
    assert torch.equal(noisy > 0, level[:, 0] > 0), "noised exactly where a level was drawn"
    # the anchor is the noised frame the network saw: a zero network's loss is the change from it
    assert out["loss"] > 0
