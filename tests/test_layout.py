"""Architecture rules that keep the package readable: models know nothing of diffusion, diffusion nothing
of models or Ray, and importing the package has no side effects."""

import subprocess
import sys

import pytest
import torch

from vdp_ray.config import load_config
from vdp_ray.models import build_denoiser, build_vae


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_models_never_import_diffusion_or_ray():
    mods = imported_after("import vdp_ray.models")
    assert "vdp_ray.diffusion" not in mods and "ray" not in mods


def test_diffusion_never_imports_models_or_ray():
    mods = imported_after("import vdp_ray.diffusion")
    assert "vdp_ray.models" not in mods and "ray" not in mods and "deepspeed" not in mods


def test_importing_the_package_is_cheap():
    mods = imported_after("import vdp_ray, vdp_ray.config")
    assert "torch" not in mods and "ray" not in mods


@pytest.mark.parametrize("name", ["tiny_unet", "tiny_dit", "demo"])
def test_tiny_experiments_build_and_run(repo_root, name):
    cfg = load_config(repo_root / "experiments" / f"{name}.yaml")
    c, t, (h, w) = cfg.data.channels, cfg.data.frames, cfg.data.size
    x = torch.randn(2, c, t, h, w)
    if cfg.model.family == "dit":
        vae = build_vae(cfg)
        recon, post = vae(x)
        assert recon.shape == x.shape
        x = post.sample()
    out = build_denoiser(cfg)(x, torch.full((2,), 10.0), None)
    assert out.shape == x.shape


@pytest.mark.parametrize("name", ["seed_unet", "seed_dit"])
def test_seed_experiments_build_at_full_size(repo_root, name):
    cfg = load_config(repo_root / "experiments" / f"{name}.yaml")
    with torch.device("meta"):
        model = build_denoiser(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params > 50e6


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_samplers_drive_a_real_model_with_context_and_guidance(repo_root, sampler):
    from vdp_ray.diffusion import GaussianDiffusion, prediction_mask, sample

    cfg = load_config(repo_root / "experiments" / "tiny_unet.yaml")
    model = build_denoiser(cfg).eval()
    with torch.no_grad():  # leave the zero-init so the output is informative: random final conv
        model.conv_out.weight.normal_(0, 0.02)
    diffusion = GaussianDiffusion.from_config(cfg.diffusion)
    c, t, (h, w) = cfg.data.channels, cfg.data.frames, cfg.data.size
    context = torch.rand(2, c, t, h, w) * 2 - 1
    mask = prediction_mask(2, t, cfg.data.context_frames)
    out = sample(
        model,
        diffusion,
        context.shape,
        sampler=sampler,
        steps=3,
        guidance=2.0,
        context=context,
        frame_mask=mask,
        clip_x0=cfg.diffusion.clip_x0,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.shape == context.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    k = cfg.data.context_frames
    assert torch.equal(out[:, :, :k], context[:, :, :k])
    assert out[:, :, k:].abs().max() <= 1.0 + 1e-6, "the last step returns the clipped x0 estimate"
