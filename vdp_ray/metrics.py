"""Frame metrics on clips in [-1, 1], shaped (N, C, T, H, W): PSNR and SSIM per frame, and the baselines a
prediction must beat."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# dB for identical frames, and the most any frame scores: the PSNR of 8-bit rounding (a uniform error of half a grey
# level, MSE step^2 / 12), the precision of the videos the frames come from. Means stay finite, and a frame that is
# right to the last bit does not outweigh the others: at 100 dB, the 10% of frames that a whole-pixel motion
# estimate gets exactly right on moving digits added 4 dB to its mean PSNR, and a trained model that left them
# off by an invisible 1e-5 lost those 4 dB (RESULTS.md, issue 17).
PSNR_CAP = 10 * math.log10(12 * 255**2)  # 58.92


def psnr(pred: torch.Tensor, truth: torch.Tensor, max_val: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per (clip, frame): (N, T), in dB, at most PSNR_CAP (identical frames)."""
    mse = (pred.float() - truth.float()).pow(2).transpose(1, 2).flatten(2).mean(-1)
    return (10 * torch.log10(max_val**2 / mse)).clamp(max=PSNR_CAP)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: torch.Tensor, truth: torch.Tensor, max_val: float = 2.0) -> torch.Tensor:
    """Structural similarity per (clip, frame): (N, T) (Wang et al. 2004, eq. 13; 11x11 Gaussian window
    with sigma 1.5, K1 = 0.01, K2 = 0.03, 'valid' borders, mean over channels)."""
    n, c, t, h, w = pred.shape
    x = pred.double().transpose(1, 2).reshape(n * t, c, h, w)  # frames as a batch
    y = truth.double().transpose(1, 2).reshape(n * t, c, h, w)
    size = min(11, h, w)
    g = _gaussian_window(size).to(x.device)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, size, size)

    def blur(z):
        return F.conv2d(z, kernel, groups=c)

    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=(1, 2, 3)).reshape(n, t).float()


BASELINES = ("copy_last", "context_mean", "blank")


def baselines(context: torch.Tensor, num_future: int, data_mean: float | None = None) -> dict[str, torch.Tensor]:
    """Guesses any model must beat, each (N, C, num_future, H, W):
    copy_last (repeat the last context frame), context_mean (the mean context frame), blank (a constant
    frame at the data's mean value; by default each clip's mean context value, which a predictor knows)."""
    last = context[:, :, -1:].expand(-1, -1, num_future, -1, -1)
    mean = context.mean(2, keepdim=True).expand(-1, -1, num_future, -1, -1)
    if data_mean is None:
        blank = context.mean(dim=(1, 2, 3, 4), keepdim=True).expand_as(last).clone()
    else:
        blank = torch.full_like(last, data_mean)
    return {"copy_last": last, "context_mean": mean, "blank": blank}
