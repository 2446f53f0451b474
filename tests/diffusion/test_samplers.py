import math

import pytest
import torch
from support.oracles import GaussianOracle

from vdp_ray.config import SamplingConfig
from vdp_ray.diffusion import Condition, GaussianDiffusion, prediction_mask, sample, timestep_schedule

MU, S = 0.5, 0.3
SHAPE = (2000, 1, 4, 4, 4)  # 128k elements: std estimates good to ~0.2%


def settings(**kw) -> SamplingConfig:
    return SamplingConfig(clip_x0=None, **kw)


def test_timestep_spacings():
    assert timestep_schedule(1000, 10, "trailing").tolist() == list(range(999, 0, -100))
    assert timestep_schedule(1000, 10, "leading").tolist() == list(range(900, -1, -100))
    assert timestep_schedule(1000, 4, "linspace").tolist() == [999, 749, 500, 250]
    assert timestep_schedule(1000, 1000, "trailing").tolist() == list(range(999, -1, -1))
    assert timestep_schedule(1000, 7, "trailing").unique().numel() == 7
    for bad in (0, 1001):
        with pytest.raises(ValueError, match=r"sampling steps must be in \[1, 1000\]"):
            timestep_schedule(1000, bad)
    with pytest.raises(ValueError, match="unknown timestep spacing"):
        timestep_schedule(1000, 10, "cubic")


def test_the_registry_is_the_vocabulary_and_counts_each_samplers_network_calls():
    """Every name of vocab.SAMPLERS is a row of the registry, in order; sampling.eta reaches DDIM alone; and a
    sampler's evaluations per step bound the network calls of a run, tightly (Heun's last step takes one)."""
    from vdp_ray.diffusion import make_sampler
    from vdp_ray.diffusion.samplers import REGISTRY, evaluations_per_step
    from vdp_ray.vocab import SAMPLERS

    assert tuple(REGISTRY) == SAMPLERS
    d = GaussianDiffusion(prediction_type="eps", anchor="none")
    assert [make_sampler(name, d, eta=0.5).eta for name in ("ddim", "euler", "ddpm")] == [0.5, 0.0, 1.0]
    for name in SAMPLERS:
        oracle, per_step = GaussianOracle(d, MU, S), evaluations_per_step(name)
        sample(oracle, d, (2, 1, 2, 2, 2), settings=settings(sampler=name, steps=5))
        assert 5 * per_step - per_step < oracle.calls <= 5 * per_step, (name, oracle.calls)


def expected_std(diffusion, steps, spacing="trailing"):
    # Every sampler ends with a jump from the last timestep to the clean sample through E[x0 | x_t], so for
    # Gaussian data its exact output law is that of the posterior mean at the last step:
    # Var = s^2 * a s^2 / (a s^2 + 1 - a), a = alpha_bar(t_last).
    a = diffusion.alpha_bar[timestep_schedule(diffusion.num_timesteps, steps, spacing)[-1]].item()
    return S * math.sqrt(a * S**2 / (a * S**2 + 1 - a))


CASES = [  # sampler, steps, relative tolerance on the std (first-order samplers converge more slowly)
    ("ddpm", 500, 0.03),
    ("ddim", 200, 0.03),
    ("dpm++", 20, 0.02),
]


@pytest.mark.parametrize(("sampler", "steps", "tol"), CASES)
@pytest.mark.parametrize(
    ("schedule", "ptype", "zero_snr"),
    [("cosine", "eps", False), ("cosine", "v", False), ("linear", "x0", False), ("linear", "v", True)],
)
def test_oracle_denoiser_recovers_the_data_distribution(sampler, steps, tol, schedule, ptype, zero_snr):
    d = GaussianDiffusion(schedule=schedule, prediction_type=ptype, zero_terminal_snr=zero_snr, anchor="none")
    oracle = GaussianOracle(d, MU, S)
    x = sample(
        oracle,
        d,
        SHAPE,
        settings=settings(sampler=sampler, steps=steps),
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(expected_std(d, steps), rel=tol)
    assert oracle.calls == steps


def test_samplers_converge_as_steps_grow():
    d = GaussianDiffusion(prediction_type="v", anchor="none")
    errors = []
    for steps in (10, 40, 160):
        x = sample(
            GaussianOracle(d, MU, S),
            d,
            SHAPE,
            settings=settings(sampler="ddim", steps=steps),
            generator=torch.Generator().manual_seed(0),
            dtype=torch.float64,
        )
        errors.append(abs(x.std().item() / expected_std(d, steps) - 1))
    assert errors[0] > errors[1] > errors[2]


def test_ddpm_is_ddim_with_eta_one():
    # The respaced DDPM posterior (Ho et al. eqs. 6-7) and DDIM's eq. 12 at eta = 1 are the same kernel.
    d = GaussianDiffusion(prediction_type="eps", anchor="none")
    a = sample(
        GaussianOracle(d, MU, S),
        d,
        (8, 1, 3, 2, 2),
        settings=settings(sampler="ddpm", steps=25),
        generator=torch.Generator().manual_seed(1),
        dtype=torch.float64,
    )
    b = sample(
        GaussianOracle(d, MU, S),
        d,
        (8, 1, 3, 2, 2),
        settings=settings(sampler="ddim", eta=1.0, steps=25),
        generator=torch.Generator().manual_seed(1),
        dtype=torch.float64,
    )
    assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_given_frames_come_back_unchanged_and_seeds_reproduce(sampler):
    d = GaussianDiffusion(prediction_type="v", anchor="none")
    context = torch.rand(3, 2, 6, 4, 4) * 2 - 1
    mask = prediction_mask(3, 6, 2)
    run = lambda seed: sample(
        GaussianOracle(d, MU, S),
        d,
        context.shape,
        Condition(context, mask),
        settings(sampler=sampler, steps=10),
        generator=torch.Generator().manual_seed(seed),
    )
    x = run(0)
    assert torch.equal(x[:, :, :2], context[:, :, :2])
    assert not torch.allclose(x[:, :, 2:], context[:, :, 2:])
    assert torch.equal(x, run(0))
    assert not torch.equal(x, run(1))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm++"])
def test_the_sampler_state_stays_fp32_when_the_network_answers_in_half(sampler):
    """Under autocast (the Predictor on a GPU) the network answers in fp16/bf16: the state, the schedule's
    arithmetic and the returned clip stay fp32, and match an fp32 network to half precision."""
    d = GaussianDiffusion(prediction_type="v", anchor="none")
    context = torch.rand(2, 2, 6, 4, 4) * 2 - 1
    oracle = GaussianOracle(d, MU, S)
    cond = Condition.first_frames(context[:, :, :2], 6)

    def run(net):
        return sample(
            net, d, context.shape, cond, settings(sampler=sampler, steps=8), generator=torch.Generator().manual_seed(0)
        )

    def half(x, t, m):
        return oracle(x, t, m).to(torch.bfloat16)

    out, ref = run(half), run(oracle)
    assert out.dtype == torch.float32 and torch.equal(out[:, :, :2], context[:, :, :2])
    assert (out - ref).abs().max() < 0.1


class Recorder:
    """A linear network that records what it is asked, to check conditioning and guidance wiring."""

    def __init__(self):
        self.calls = []

    def __call__(self, x_t, t, frame_mask):
        self.calls.append((x_t.clone(), t.clone(), None if frame_mask is None else frame_mask.clone()))
        given = torch.zeros_like(t) if frame_mask is None else frame_mask.to(t.dtype)
        return 0.5 * x_t + given[:, None, :, None, None]  # conditional output differs on given frames only


def test_conditioning_and_guidance_wiring():
    d = GaussianDiffusion(prediction_type="eps", anchor="none")
    context = torch.full((2, 1, 4, 2, 2), 0.25)
    mask = prediction_mask(2, 4, 1)
    net = Recorder()
    sample(net, d, context.shape, Condition(context, mask), settings(steps=3))
    assert len(net.calls) == 3, "guidance 1: one call per step"
    x_in, t_in, m_in = net.calls[0]
    assert torch.equal(x_in[:, :, 0], context[:, :, 0]), "given frames enter clean"
    assert (t_in[:, 0] == 0).all() and (t_in[:, 1:] == 999).all()
    assert torch.equal(m_in, mask)

    net = Recorder()
    sample(net, d, context.shape, Condition(context, mask), settings(steps=3, guidance=3.0))
    assert len(net.calls) == 3, "both branches in one batched call"
    x_in, t_in, m_in = net.calls[0]
    assert x_in.shape[0] == 4
    assert torch.equal(m_in[:2], mask) and not m_in[2:].any(), "second half is the null condition"
    assert (t_in[2:] == 999).all()


def test_guidance_extrapolates_from_unconditional():
    from vdp_ray.diffusion import ConditionedDenoiser

    d = GaussianDiffusion(prediction_type="x0", anchor="none")

    def net(x, t, m):  # 1 where the sample is conditioned, 0 under the null condition
        cond = torch.zeros(x.shape[0]) if m is None else m.any(1).float()
        return cond[:, None, None, None, None].expand_as(x).clone()

    ctx = torch.zeros(1, 1, 3, 1, 1)
    mask = torch.tensor([[True, False, False]])
    x0, _ = ConditionedDenoiser(net, d, Condition(ctx, mask), guidance=2.5)(torch.zeros(1, 1, 3, 1, 1), 500)
    assert torch.allclose(x0[:, :, 1:], torch.full_like(x0[:, :, 1:], 2.5))  # 0 + 2.5 (1 - 0)


def test_refine_keeps_low_strength_close_to_the_input():
    d = GaussianDiffusion(prediction_type="v", anchor="none")
    init = torch.full((500, 1, 2, 2, 2), 0.8)
    oracle = GaussianOracle(d, MU, S)
    light = sample(
        oracle,
        d,
        init.shape,
        settings=settings(steps=10),
        init=init,
        strength=0.05,
        generator=torch.Generator().manual_seed(0),
    )
    heavy = sample(
        oracle,
        d,
        init.shape,
        settings=settings(steps=10),
        init=init,
        strength=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert (light - init).abs().mean() < 0.1 < (heavy - init).abs().mean()
    assert oracle.calls < 20  # light refinement runs only the steps below its strength


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (lambda: dict(settings=settings(steps=0)), "sampling steps must be > 0"),
        (lambda: dict(settings=settings(sampler="lms")), "unknown sampler 'lms'"),
        (lambda: dict(init=torch.zeros(1, 1, 2, 1, 1), strength=0.0), "strength must be in"),
        (lambda: dict(condition=Condition(mask=torch.ones(1, 2, dtype=torch.bool))), "needs the context frames"),
    ],
)
def test_bad_sampling_arguments(kwargs, message):
    d = GaussianDiffusion(prediction_type="v", anchor="none")
    with pytest.raises(ValueError, match=message):
        sample(GaussianOracle(d, MU, S), d, (1, 1, 2, 1, 1), **kwargs())


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_an_anchored_x0_model_gets_its_anchor_back(guidance):
    """A perfect anchored model (it outputs truth minus the nearest given frame) trains to zero loss and
    samples the truth exactly: the anchor is subtracted in training and added back in sampling."""
    from vdp_ray.diffusion import GaussianDiffusion, nearest_given, prediction_mask, sample

    g = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 1, 5, 4, 4, generator=g) * 2 - 1
    diffusion = GaussianDiffusion(num_timesteps=100, prediction_type="x0", zero_terminal_snr=True)

    def model(x, t, mask):  # CFG calls it on [cond; uncond] stacked: rows without given frames get no anchor
        reps = x.shape[0] // truth.shape[0]
        clips = truth.repeat(reps, 1, 1, 1, 1)
        if mask is None:
            return clips
        return clips - nearest_given(clips, mask)

    mask = prediction_mask(2, 5, 2)
    loss = diffusion.training_losses(model, truth, mask, generator=g)["loss"]
    assert loss.item() < 1e-12
    out = sample(
        model,
        diffusion,
        tuple(truth.shape),
        Condition(truth, mask),
        settings(sampler="ddim", steps=4, guidance=guidance),
        generator=g,
    )
    assert torch.allclose(out, truth, atol=1e-5)
