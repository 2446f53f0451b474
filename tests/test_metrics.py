"""PSNR / SSIM against closed forms and scikit-image's reference SSIM; the baselines."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from vdp_ray.metrics import PSNR_CAP, baselines, psnr, ssim


def test_identical_frames_give_the_capped_psnr_and_unit_ssim():
    x = torch.rand(2, 1, 3, 16, 16) * 2 - 1
    assert (psnr(x, x) == PSNR_CAP).all()  # finite: a mean over still clips stays a number
    assert torch.allclose(ssim(x, x), torch.ones(2, 3))


def test_no_frame_scores_above_the_precision_of_8_bit_video():
    """The cap is the PSNR of rounding to 8 bits: a frame right to within float error scores no more than one
    rounded to whole grey levels, and both score (about) the cap; a grey level off everywhere scores less."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 2, 64, 64, generator=g) * 2 - 1
    rounded = torch.round((x + 1) * 127.5) / 127.5 - 1
    assert round(PSNR_CAP, 2) == 58.92
    assert (psnr(x + 1e-6, x) == PSNR_CAP).all()
    assert psnr(rounded, x).mean().item() == pytest.approx(PSNR_CAP, abs=0.1)
    assert (psnr(x + 2 / 255, x) < PSNR_CAP - 10).all()  # one grey level off: 48.1 dB


def test_known_noise_level_gives_the_known_psnr():
    g = torch.Generator().manual_seed(0)
    truth = torch.zeros(1, 1, 4, 64, 64)
    for sigma in (0.01, 0.1, 0.3):
        noisy = truth + sigma * torch.randn(truth.shape, generator=g)
        expected = 10 * math.log10(4 / sigma**2)  # peak-to-peak 2 in [-1, 1]
        assert psnr(noisy, truth).mean().item() == pytest.approx(expected, abs=0.1)
    # a constant offset of d: MSE = d^2 exactly
    assert psnr(truth + 0.2, truth)[0, 0].item() == pytest.approx(10 * math.log10(4 / 0.04), abs=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_agrees_with_scikit_image(channels):
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (2, channels, 3, 32, 32)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1).astype(np.float32)
    ours = ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    for n in range(2):
        for t in range(3):
            ref = structural_similarity(
                a[n, :, t].astype(np.float64),
                b[n, :, t].astype(np.float64),
                data_range=2.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                channel_axis=0,
            )
            assert ours[n, t] == pytest.approx(ref, abs=2e-3)


def test_baselines():
    ctx = torch.stack([torch.full((1, 8, 8), v) for v in (-1.0, 0.0, 0.5)], dim=1)[None]  # (1, 1, 3, 8, 8)
    b = baselines(ctx, 2)
    assert b["copy_last"].shape == (1, 1, 2, 8, 8) and torch.all(b["copy_last"] == 0.5)
    assert torch.allclose(b["context_mean"], torch.full((1, 1, 2, 8, 8), -0.5 / 3))
    assert torch.allclose(b["blank"], torch.full((1, 1, 2, 8, 8), -0.5 / 3))  # each clip's mean context value
    assert torch.all(baselines(ctx, 2, data_mean=-0.9)["blank"] == -0.9)
