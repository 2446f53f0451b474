"""Pixels: the one place that knows the model's value range, colour conversion and how frames are fitted to a size.

Clips people hand us are uint8 (T, H, W, C) with C in {1, 3}; models see float (N, C, T, H, W) in [-1, 1].
The data pipeline, the Predictor, the evaluator and the HTTP API all convert through here, so a frame read by
any of them becomes the same tensor. torch is imported where it is used: the shard writer's Ray tasks import this
module for its crop geometry alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601: grey from RGB


def to_model_range(u8: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 values (any shape) -> float32 in [-1, 1]. Lossless: ``to_uint8`` gives back the same bytes."""
    import torch

    x = torch.as_tensor(u8)
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] (any shape) -> uint8, rounded; values outside the range are clamped."""
    import torch

    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def clips_to_model(frames: np.ndarray, device=None) -> torch.Tensor:
    """uint8 (N, T, H, W, C) -> float (N, C, T, H, W) in [-1, 1] on ``device``."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return to_model_range(x.permute(0, 4, 1, 2, 3))


def clips_to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, C, T, H, W) in [-1, 1] -> uint8 (N, T, H, W, C) on the CPU."""
    return to_uint8(x).permute(0, 2, 3, 4, 1).cpu().numpy()


def match_channels(x: torch.Tensor, channels: int, dim: int) -> torch.Tensor:
    """Grey repeated to RGB, or RGB reduced to its luma, along ``dim``; unchanged when it already matches."""
    if x.shape[dim] == channels:
        return x
    if channels == 3:
        shape = list(x.shape)
        shape[dim] = 3
        return x.expand(*shape).clone()
    view = [1] * x.ndim
    view[dim] = 3
    return (x * x.new_tensor(LUMA).view(view)).sum(dim, keepdim=True)


def centre_crop_box(h: int, w: int, th: int, tw: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the largest centred region of an h x w frame with the th x tw aspect."""
    scale = max(th / h, tw / w)
    ch, cw = round(th / scale), round(tw / scale)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def resize(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Float frames (T, C, h, w) resized to ``size`` (bilinear with antialiasing, so shrinking averages)."""
    import torch.nn.functional as F

    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    return F.interpolate(frames, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)


def fit_frames(frames: np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    """A clip of another size or colour fitted to a model: centre crop to the aspect, resize, convert channels.
    (T, H, W, C) uint8 in and out."""
    import torch

    frames = np.ascontiguousarray(frames) if frames.flags.writeable else np.array(frames)  # decoded images: read-only
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # (T, C, H, W)
    x = match_channels(x, channels, dim=1)
    top, left, ch, cw = centre_crop_box(*x.shape[-2:], *size)
    x = resize(x[:, :, top : top + ch, left : left + cw], size)
    return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def crop_and_resize(clip: torch.Tensor, size: tuple[int, int], crop_scale: float = 1.0, rng=None) -> torch.Tensor:
    """A float clip (C, T, h, w) in pixel values: an optional random crop covering [crop_scale, 1] of the area
    (aspect kept; the same window for every frame), then resized to ``size``."""
    h, w = clip.shape[-2:]
    if rng is not None and crop_scale < 1.0:
        scale = float(np.sqrt(rng.uniform(crop_scale, 1.0)))
        ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        clip = clip[:, :, top : top + ch, left : left + cw]
    if tuple(clip.shape[-2:]) != tuple(size):
        frames = resize(clip.permute(1, 0, 2, 3), size)  # (T, C, h, w): frames as a batch
        clip = frames.permute(1, 0, 2, 3).clamp(0, 255)
    return clip


def is_grey(frames: np.ndarray) -> bool:
    """Three equal channels (grey stored as RGB, e.g. our own GIF/MP4 outputs)."""
    return frames.shape[-1] == 3 and bool(
        (frames[..., 0] == frames[..., 1]).all() and (frames[..., 1] == frames[..., 2]).all()
    )
