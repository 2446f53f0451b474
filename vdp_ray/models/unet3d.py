"""Pixel-space 3D U-Net denoiser (Ho et al. 2022 "Video Diffusion Models", ADM-style blocks).

Residual blocks with per-frame scale-shift timestep conditioning, spatial and temporal attention at
configurable levels, spatial-only down/up-sampling (time keeps its length, so any T works).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .layers import (
    SpatialAttention3d,
    TemporalAttention3d,
    TimestepEmbedder,
    frame_timesteps,
    group_norm,
    mask_channel,
    run_block,
    with_reference,
    zero_module,
)

# fmt: off
PRESETS: dict[str, dict] = {
    "tiny": dict(patch=1, base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1, attn_levels=(1, 2), head_dim=16),
    # The demo's model: 2x2 pixels folded into channels first, so every level runs at half the resolution
    # (4x fewer FLOPs per channel at the top level, where a 3D U-Net spends most of its time).
    "demo": dict(patch=2, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attn_levels=(1, 2),
                 head_dim=32),
    "small": dict(patch=1, base_channels=64, channel_mults=(1, 2, 4), num_res_blocks=2, attn_levels=(1, 2),
                  head_dim=32),
    # A window of frames folded into channels (MCVD): 2D convolutions over the whole clip at once, at full
    # resolution, T times cheaper per clip than the 3D levels; for short fixed windows (the demo's 8 frames).
    "window": dict(patch=1, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=2, attn_levels=(2,),
                   head_dim=32, fold_frames=True),
    # The seed's reference size: base 64, mults 1,2,4,8.
    "seed": dict(patch=1, base_channels=64, channel_mults=(1, 2, 4, 8), num_res_blocks=2, attn_levels=(2, 3),
                 head_dim=64),
}
# fmt: on


class Conv2Plus1d(nn.Sequential):
    """A 3x3 spatial conv then a 3-tap temporal conv (Tran et al. 2018, "R(2+1)D"): 12 instead of 27
    multiply-adds per channel pair, with the same receptive field as a 3x3x3 conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv3d(cin, cout, (1, 3, 3), padding=(0, 1, 1)),
            nn.Conv3d(cout, cout, (3, 1, 1), padding=(1, 0, 0)),
        )


class ResBlock3d(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(cin)
        self.conv1 = Conv2Plus1d(cin, cout)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = group_norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(Conv2Plus1d(cout, cout))  # block starts as identity
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        # per-frame scale-shift (ADM's "AdaGN"): emb (N, T, D) -> (N, 2C, T, 1, 1)
        scale, shift = rearrange(self.emb(F.silu(emb)), "n t c -> n c t 1 1").chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Level(nn.Module):
    """Residual blocks, each optionally followed by spatial then temporal attention (spatial only when the frames
    are folded into channels: there is one "frame" left)."""

    def __init__(
        self,
        channels_in: list[int],
        cout: int,
        emb_dim: int,
        attention: bool,
        head_dim: int,
        dropout: float,
        temporal: bool = True,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock3d(c, cout, emb_dim, dropout) for c in channels_in)
        heads = max(1, cout // head_dim)

        def attend() -> nn.Module:
            spatial = SpatialAttention3d(cout, heads)
            return nn.Sequential(spatial, TemporalAttention3d(cout, heads)) if temporal else spatial

        self.attn = nn.ModuleList(attend() if attention else nn.Identity() for _ in channels_in)


def _block_then_attention(block, attn, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    return attn(block(h, emb))


class UNet3D(nn.Module):
    checkpointing = False  # train.activation_checkpointing: recompute each block's activations in backward

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        attn_levels: tuple[int, ...] = (2, 3),
        head_dim: int = 64,
        dropout: float = 0.0,
        out_channels: int | None = None,
        patch: int = 1,
        fold_frames: int | None = None,
        extra_channels: int = 0,
        reference_channels: int = 0,
    ):
        super().__init__()
        self.in_channels = in_channels
        # a reference clip beside the input (``forward(reference=...)``; zeros when not passed): e.g. what the given
        # frames' motion predicts, so the network sees the estimate it corrects
        self.reference_channels = reference_channels
        self.out_channels = out_channels or in_channels
        # more output channels after the out_channels ones, from a 1x1x1 head (per-pixel weights such as motion
        # kernels: at K^2 channels a 3x3x3 head would cost more than the rest of a small network)
        self.extra_channels = extra_channels
        self.patch = patch  # space-to-depth: p x p pixels become p^2 channels (undone at the output)
        # frames folded into channels (MCVD's design, Voleti et al. 2022): a 2D U-Net over a fixed window of this
        # many frames, about T times cheaper per clip than convolving every frame
        self.fold_frames = fold_frames
        self.downsampling = patch * 2 ** (len(channel_mults) - 1)
        emb_dim = 4 * base_channels
        self.time_embed = TimestepEmbedder(emb_dim)
        frames = fold_frames or 1
        # folded: every frame's time embedding, concatenated, makes the one embedding of the window
        self.fold_embed = nn.Linear(frames * emb_dim, emb_dim) if fold_frames else None
        temporal = not fold_frames
        # + the frame-mask channel(s)
        self.conv_in = nn.Conv3d(
            ((in_channels + reference_channels) * patch**2 + 1) * frames, base_channels, 3, padding=1
        )

        widths = [base_channels * m for m in channel_mults]
        skips = [base_channels]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        ch = base_channels
        for level, width in enumerate(widths):
            ins = [ch] + [width] * (num_res_blocks - 1)
            self.down.append(Level(ins, width, emb_dim, level in attn_levels, head_dim, dropout, temporal))
            ch = width
            skips += [width] * num_res_blocks
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv3d(ch, ch, 3, stride=(1, 2, 2), padding=1))
                skips.append(ch)

        self.mid = Level([ch, ch], ch, emb_dim, True, head_dim, dropout, temporal)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            ins = []
            for _ in range(num_res_blocks + 1):
                ins.append(ch + skips.pop())
                ch = width
            self.up.append(Level(ins, width, emb_dim, level in attn_levels, head_dim, dropout, temporal))
            if level > 0:
                self.upsample.append(nn.Conv3d(ch, ch, 3, padding=1))
        self.norm_out = group_norm(ch)
        self.conv_out = zero_module(nn.Conv3d(ch, self.out_channels * patch**2 * frames, 3, padding=1))
        point = extra_channels * patch**2 * frames
        self.point_out = zero_module(nn.Conv3d(ch, point, 1)) if extra_channels else None

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet3D expects (N, {self.in_channels}, T, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        d = self.downsampling
        if h % d or w % d:
            raise ValueError(f"UNet3D frame size {h}x{w} must be divisible by its total downsampling {d}")
        if self.fold_frames and x.shape[2] != self.fold_frames:
            raise ValueError(
                f"this UNet3D folds a window of exactly {self.fold_frames} frames into channels, got "
                f"{x.shape[2]} frames"
            )

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (N, C, T, H, W), t (N,) or (N, T), frame_mask (N, T) bool or None, reference (N, reference_channels, T,
        H, W) or None (zeros) -> (N, C_out, T, H, W)."""
        self.check_input(x)
        n, _, num_frames = x.shape[:3]
        emb = self.time_embed(frame_timesteps(t, n, num_frames))  # (N, T, D)
        x = with_reference(x, reference, self.reference_channels)
        p = self.patch
        if p > 1:
            x = rearrange(x, "n c t (h p) (w q) -> n (c p q) t h w", p=p, q=p)
        x = torch.cat([x, mask_channel(frame_mask, x)], dim=1)
        if self.fold_frames:  # (N, C, T, H, W) -> (N, C T, 1, H, W); one embedding for the window
            x = rearrange(x, "n c t h w -> n (t c) 1 h w")
            emb = self.fold_embed(emb.flatten(1))[:, None]
        h = self.conv_in(x)
        hs = [h]
        ckpt = self.checkpointing and self.training
        for i, level in enumerate(self.down):
            for block, attn in zip(level.blocks, level.attn, strict=True):
                h = run_block(_block_then_attention, block, attn, h, emb, checkpoint=ckpt)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        for block, attn in zip(self.mid.blocks, self.mid.attn, strict=True):
            h = run_block(_block_then_attention, block, attn, h, emb, checkpoint=ckpt)
        for i, level in enumerate(self.up):
            for block, attn in zip(level.blocks, level.attn, strict=True):
                h = run_block(_block_then_attention, block, attn, torch.cat([h, hs.pop()], dim=1), emb, checkpoint=ckpt)
            if i < len(self.upsample):
                h = F.interpolate(h, scale_factor=(1, 2, 2), mode="nearest")
                h = self.upsample[i](h)
        h = F.silu(self.norm_out(h))
        out = self._unpack(self.conv_out(h))
        if self.point_out is not None:
            out = torch.cat([out, self._unpack(self.point_out(h))], dim=1)
        return out

    def _unpack(self, out: torch.Tensor) -> torch.Tensor:
        """A head's output back to (N, C, T, H, W): frames out of channels, patches back to pixels."""
        if self.fold_frames:
            out = rearrange(out, "n (t c) 1 h w -> n c t h w", t=self.fold_frames)
        if self.patch > 1:
            out = rearrange(out, "n (c p q) t h w -> n c t (h p) (w q)", p=self.patch, q=self.patch)
        return out
