"""A freshly initialised model predicts the last given frame (copy-last) for every objective, prediction type,
sampler and model family: training starts from doing no harm and only moves away where that lowers the loss."""

import numpy as np
import pytest
import torch
from support.exports import PIXEL, ROOT

from vdp_ray import Predictor
from vdp_ray.anchor import estimate_motion
from vdp_ray.config import load_config
from vdp_ray.export import write_export
from vdp_ray.models import build_denoiser, build_vae
from vdp_ray.pixels import clips_to_model, clips_to_uint8

PLAIN = [("ddpm", "x0", 0), ("ddpm", "v", 0), ("ddpm", "eps", 0), ("flow", "v", 0), ("flow", "x0", 0)]
OBJECTIVES = [*PLAIN, ("ddpm", "x0", 5), ("flow", "v", 3)]  # the last two with motion kernels


def fresh_unet(folder, objective, ptype, kernel=0):
    torch.manual_seed(0)
    cfg = load_config(
        None,
        [
            *PIXEL,
            f"diffusion.objective={objective}",
            f"diffusion.prediction_type={ptype}",
            "diffusion.zero_terminal_snr=false",
            f"diffusion.motion_kernel={kernel}",
        ],
    )
    net = build_denoiser(cfg).state_dict()
    return write_export(folder / f"unet-{objective}-{ptype}-{kernel}", cfg, "unet3d", net, {})


@pytest.mark.parametrize(("objective", "ptype", "kernel"), OBJECTIVES)
def test_a_fresh_unet_predicts_the_last_given_frame(tmp_path, objective, ptype, kernel):
    p = Predictor.from_export(fresh_unet(tmp_path, objective, ptype, kernel), device="cpu")
    ctx = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16, 1), dtype=np.uint8)
    for sampler in ("ddim", "ddpm", "dpm++", "euler", "heun"):
        out = p.predict(ctx, 7, sampler=sampler, steps=5, seed=0)  # 7 frames: a roll-out over two windows
        assert np.array_equal(out, np.repeat(ctx[:, -1:], 7, axis=1)), sampler
    # (guidance > 1 extrapolates from the null condition, which has no frame to start from: not copy-last)
    # interpolation: each frame starts from its nearest given frame (the first, until the last is nearer)
    first, last = ctx[0, 0], ctx[0, 2]
    between = p.interpolate(first, last, 4, steps=4, seed=0)
    assert np.array_equal(between[:2], np.stack([first] * 2)) and np.array_equal(between[2:], np.stack([last] * 2))


@pytest.mark.parametrize(
    ("objective", "ptype", "kernel", "anchor"),
    [("ddpm", "v", 0, "last"), ("flow", "v", 0, "last"), ("ddpm", "x0", 3, "last"), ("ddpm", "x0", 3, "motion")],
)
def test_a_fresh_dit_predicts_the_last_given_latent(tmp_path, objective, ptype, kernel, anchor):
    """In a latent space copy-last holds for latents: the future is the decoded clip whose latent frames after the
    context repeat the last given one; with the motion anchor, the decoded latents that the given latents' motion
    estimate builds (the estimate runs in the latent space)."""
    torch.manual_seed(0)
    cfg = load_config(
        ROOT / "experiments" / "tiny_dit.yaml",
        [
            "vae.scale_factor=0.7",
            "sampling.steps=3",
            f"diffusion.objective={objective}",
            f"diffusion.prediction_type={ptype}",
            f"diffusion.motion_kernel={kernel}",
            f"diffusion.anchor={anchor}",
        ],
    )
    vae = write_export(tmp_path / "vae", cfg, "vae", build_vae(cfg).state_dict(), {})
    dit = write_export(tmp_path / "dit", cfg, "dit", build_denoiser(cfg).state_dict(), {}, vae_export=vae)
    p = Predictor.from_export(dit, device="cpu")
    k, frames = 4, p.window
    ctx = np.random.default_rng(0).integers(0, 256, (1, k, *p.size, p.channels), dtype=np.uint8)
    out = p.predict(ctx, frames - k, seed=0)
    with torch.no_grad():
        z = p.latent.encode(clips_to_model(ctx))
        kl = z.shape[2]
        z_full = torch.cat([z, z[:, :, -1:].repeat(1, 1, p.latent.latent_frames(frames) - kl, 1, 1)], dim=2)
        if anchor == "motion":
            mask = torch.arange(z_full.shape[2])[None] < kl
            z_full = estimate_motion(z_full, mask, kernel).clip
        expected = clips_to_uint8(p.latent.decode(z_full).clamp(-1, 1))[:, k:]
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1  # decoder arithmetic: one grey level at most


@pytest.mark.parametrize(("objective", "ptype"), [("ddpm", "x0"), ("flow", "v")])
def test_a_fresh_unet_with_the_motion_anchor_carries_moving_content_on(tmp_path, objective, ptype):
    """diffusion.anchor: motion: the untrained model already continues what moves in the given frames (here a
    textured square, one pixel down and right per frame, over a roll-out of two windows) and keeps what stands
    still (the flat background, a still clip), for every sampler."""
    torch.manual_seed(0)
    cfg = load_config(
        None,
        [
            *PIXEL,
            f"diffusion.objective={objective}",
            f"diffusion.prediction_type={ptype}",
            "diffusion.zero_terminal_snr=false",
            "diffusion.motion_kernel=3",
            "diffusion.anchor=motion",
        ],
    )
    p = Predictor.from_export(write_export(tmp_path / "unet", cfg, "unet3d", build_denoiser(cfg).state_dict(), {}))
    texture = np.random.default_rng(0).integers(100, 256, (4, 4, 1), dtype=np.uint8)
    clip = np.full((9, 16, 16, 1), 40, dtype=np.uint8)
    for i in range(9):
        clip[i, 1 + i : 5 + i, 1 + i : 5 + i] = texture
    still = np.repeat(clip[:1], 9, axis=0)
    for sampler in ("ddim", "dpm++", "euler", "heun"):
        out = p.predict(np.stack([clip[:2], still[:2]]), 7, sampler=sampler, steps=3, seed=0)
        assert np.array_equal(out[0], clip[2:]), sampler
        assert np.array_equal(out[1], still[2:]), sampler
