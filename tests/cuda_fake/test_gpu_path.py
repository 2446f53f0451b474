"""The GPU path on a CPU-only machine. torch's FakeTensorMode builds modules and tensors on a fake ``cuda`` device
(shapes, dtypes and devices, no values) and raises on any CPU/CUDA mix, as CUDA does. DeepSpeed cannot run on
fake tensors, so ``GpuEngine`` stands in for what ``deepspeed.initialize`` leaves behind on a GPU: the module
moved to the device (and cast, in fp16/bf16), called like the module. Work that needs values (a mask drawn on
the host, a number read back) runs outside the fake mode, as it runs on the host on a GPU machine."""

import pytest
import torch
from support.runs import ROOT
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily

from vdp_ray.config import SamplingConfig, load_config
from vdp_ray.diffusion import Condition, GaussianDiffusion, sample
from vdp_ray.train.ema import EMA
from vdp_ray.train.engine import build_engine
from vdp_ray.train.stages import DiffusionStage

pytestmark = pytest.mark.cuda_fake
CUDA = torch.device("cuda", 0)
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


class GpuEngine:
    def __init__(self, model, dtype):
        self.module = model.to(CUDA, dtype)
        self.device = CUDA

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def gpu_initialize(dtype):
    return lambda model, model_parameters, config: (GpuEngine(model, dtype), None, None, None)


@pytest.fixture
def fake():
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        yield mode


def config(name: str, *overrides):
    return load_config(ROOT / "experiments" / f"{name}.yaml", list(overrides))


def clips_on_gpu(cfg, n: int = 2) -> torch.Tensor:
    d = cfg.data
    return torch.rand(n, d.channels, d.frames, *d.size, device=CUDA) * 2 - 1


def on(device, tensors) -> bool:
    return all(t.device == device for t in tensors)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_the_ema_is_made_on_the_engines_device_in_fp32_and_follows_it_there(fake, precision):
    cfg = config("tiny_unet", f"train.precision={precision}")
    with unset_fake_temporarily():  # the loop builds the stage's network on the host, before initialize
        stage = DiffusionStage(cfg, CUDA)
        before = EMA(DiffusionStage(cfg, torch.device("cpu")).model, 0.9)  # the old order: copied before
    engine, ema = build_engine(stage, cfg, "unet3d", 1, precision, gpu_initialize(HALF[precision]))
    assert on(CUDA, ema.shadow.values()) and {v.dtype for v in ema.shadow.values()} == {torch.float32}
    ema.update(engine.module)
    assert on(CUDA, ema.state_dict().values()) and ema.updates == 1
    with pytest.raises(RuntimeError, match="device"):  # what the first optimizer step on a GPU used to hit
        before.update(engine.module)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_training_step_on_the_gpu_noises_in_fp32_and_runs_the_network_in_half(fake, precision, monkeypatch):
    import vdp_ray.train.stages as stages

    draw = stages.sample_frame_masks

    def host_masks(*args, **kwargs):  # drawn on the host from its values, as on a GPU machine
        with unset_fake_temporarily():
            return draw(*args, **kwargs)

    monkeypatch.setattr(stages, "sample_frame_masks", host_masks)
    cfg = config("tiny_unet", f"train.precision={precision}")
    with unset_fake_temporarily():
        stage = DiffusionStage(cfg, CUDA)
    engine, _ = build_engine(stage, cfg, "unet3d", 1, precision, gpu_initialize(HALF[precision]))
    seen = {}
    forward = engine.module.forward

    def watched(x, t, mask=None, **kw):
        seen.update(x=x.dtype, t=t.dtype, mask=mask.device)
        return forward(x, t, mask, **kw)

    engine.module.forward = watched
    loss = stage.loss(engine, clips_on_gpu(cfg), [""] * 2, HALF[precision])
    assert loss.device == CUDA and loss.dtype == torch.float32
    assert seen == {"x": HALF[precision], "t": torch.float32, "mask": CUDA}  # (backward needs a real CUDA context)


def test_noising_targets_and_the_loss_are_fp32_for_half_inputs(fake):
    with unset_fake_temporarily():  # the schedule is host arithmetic
        diffusion = GaussianDiffusion(prediction_type="v", min_snr_gamma=5.0, anchor="none")
    x0 = torch.randn(2, 4, 3, 8, 8, device=CUDA, dtype=torch.float16)
    t = torch.tensor([0, 3], device=CUDA)
    assert diffusion.coefficients(t, x0)[0].dtype == torch.float32
    assert diffusion.q_sample(x0, t, torch.randn_like(x0)).dtype == torch.float32
    net = lambda x, t, m: torch.zeros_like(x)
    with unset_fake_temporarily():
        mask = torch.zeros(2, 3, dtype=torch.bool)
        mask[:, 0] = True
    out = diffusion.training_losses(net, x0, mask.to(CUDA), dtype=torch.float16)
    assert out["loss"].dtype == torch.float32 and out["loss"].device == CUDA


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm++"])
def test_every_sampler_with_guidance_and_refinement_keeps_to_the_gpu(fake, sampler):
    cfg = config("tiny_unet")
    with unset_fake_temporarily():
        model = DiffusionStage(cfg, CUDA).model.eval()
        diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    model = model.to(CUDA)
    clips = clips_on_gpu(cfg)
    cond = Condition.first_frames(clips[:, :, :2], clips.shape[2])
    settings = SamplingConfig(sampler=sampler, steps=3, guidance=2.0, eta=0.5, clip_x0=1.0)
    generator = torch.Generator().manual_seed(0)
    with torch.autocast("cuda", dtype=torch.bfloat16):  # the Predictor's bf16 path: the state stays fp32
        out = sample(model, diffusion, tuple(clips.shape), cond, settings, generator=generator, device=CUDA)
    assert out.device == CUDA and out.dtype == torch.float32 and out.shape == clips.shape
    refined = sample(
        model,
        diffusion,
        tuple(clips.shape),
        Condition(),
        settings,
        init=clips,
        strength=0.5,
        generator=generator,
        device=CUDA,
    )
    assert refined.device == CUDA


def test_the_latent_space_encodes_and_decodes_on_the_gpu(fake):
    from vdp_ray.latent import LatentSpace
    from vdp_ray.models import build_vae

    cfg = config("tiny_dit")
    with unset_fake_temporarily():
        vae = build_vae(cfg)
    space = LatentSpace.of_config(cfg, vae.to(CUDA))
    clips = clips_on_gpu(cfg)
    z = space.encode(clips, sample=True)
    assert z.device == CUDA and tuple(z.shape) == space.latent_shape(2, cfg.data.frames)
    assert space.decode(z).device == CUDA and space.decode(z).shape == clips.shape


def test_the_predictor_samples_a_window_on_the_gpu(fake, tmp_path):
    from support.exports import dit_export

    from vdp_ray.predict import Predictor

    with unset_fake_temporarily():
        p = Predictor.from_export(dit_export(tmp_path), device="cpu", precision="bf16")
    p.model, p.device = p.model.to(CUDA), CUDA  # what device="cuda" does on a GPU machine
    p.latent.vae.to(CUDA)
    ctx = torch.rand(1, p.channels, 2 * p.temporal_compression, *p.size, device=CUDA) * 2 - 1
    new = p._window(ctx, p.temporal_compression, torch.Generator().manual_seed(0), steps=2)
    assert new.device == CUDA and new.dtype == torch.float32 and new.shape[2] == p.temporal_compression


def test_inference_precision_follows_the_export_on_gpus_and_is_fp32_on_cpus():
    from vdp_ray.predict import PredictError, inference_precision

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert inference_precision("bf16", cpu) == ("fp32", None)
    assert inference_precision("fp16", gpu) == ("fp16", torch.float16)
    assert inference_precision("fp32", gpu) == ("fp32", None)
    assert inference_precision("fp16", gpu, "fp32") == ("fp32", None)
    assert inference_precision("fp32", cpu, "bf16") == ("bf16", torch.bfloat16)
    with pytest.raises(PredictError, match="precision 'half'"):
        inference_precision("fp16", cpu, "half")


@pytest.mark.parametrize("anchor", ["last", "motion"])
def test_motion_kernels_train_and_sample_on_the_gpu_without_host_reads(fake, anchor):
    """The motion chain (and the motion anchor's estimate) on a GPU take the sync-free path: no value is read back
    (FakeTensorMode would raise)."""
    cfg = config("tiny_unet", "diffusion.motion_kernel=5", "diffusion.prediction_type=x0", f"diffusion.anchor={anchor}")
    with unset_fake_temporarily():
        stage = DiffusionStage(cfg, CUDA)
        mask = torch.zeros(2, cfg.data.frames, dtype=torch.bool)
        mask[:, :3] = True
    model = stage.model.to(CUDA)
    clips = clips_on_gpu(cfg)
    out = stage.diffusion.training_losses(model, clips, mask.to(CUDA))
    assert out["loss"].device == CUDA and out["loss"].dtype == torch.float32
    cond = Condition.first_frames(clips[:, :, :3], clips.shape[2])
    settings = SamplingConfig(sampler="ddim", steps=2, guidance=2.0)
    generator = torch.Generator().manual_seed(0)
    pred = sample(model.eval(), stage.diffusion, tuple(clips.shape), cond, settings, generator=generator, device=CUDA)
    assert pred.device == CUDA and pred.shape == clips.shape
