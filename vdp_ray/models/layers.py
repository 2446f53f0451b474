"""Building blocks shared by the model families. No diffusion knowledge here."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def sinusoidal_embedding(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sin/cos features of arbitrary-shape positions (Vaswani et al. 2017, sec. 3.5). (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device) / half)
    args = positions.float()[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    """Per-frame timesteps (N, T) -> (N, T, dim): sinusoidal features through a 2-layer MLP (DiT)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


def run_block(block, *args, checkpoint: bool = False):
    """``block(*args)``; with ``checkpoint`` (and gradients on), its activations are recomputed in the backward
    pass instead of kept (Chen et al. 2016): memory for one block's activations at a time, for one more forward."""
    if checkpoint and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint as recompute

        return recompute(block, *args, use_reentrant=False)
    return block(*args)


def frame_timesteps(t: torch.Tensor, batch: int, num_frames: int) -> torch.Tensor:
    """Accept a scalar, (N,) or (N, T) timesteps and return (N, T)."""
    t = torch.as_tensor(t)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.ndim == 1:
        t = t[:, None].expand(batch, num_frames)
    if t.shape != (batch, num_frames):
        raise ValueError(f"timesteps must be (N,) or (N, T) = ({batch}, {num_frames}), got {tuple(t.shape)}")
    return t


def mask_channel(frame_mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """The frame mask as one extra input channel (N, 1, T, H, W); None (the null condition) is all zeros."""
    n, _, t, h, w = x.shape
    if frame_mask is None:
        return x.new_zeros(n, 1, t, h, w)
    if frame_mask.shape != (n, t):
        raise ValueError(f"frame mask must be (N, T) = ({n}, {t}), got {tuple(frame_mask.shape)}")
    return frame_mask.to(x.dtype)[:, None, :, None, None].expand(n, 1, t, h, w)


def with_reference(x: torch.Tensor, reference: torch.Tensor | None, channels: int) -> torch.Tensor:
    """x (N, C, T, H, W) with a reference clip (N, channels, T, H, W) appended as input channels: zeros when None (no
    reference, e.g. the null condition); x unchanged when the network takes none (``channels`` 0)."""
    if not channels:
        if reference is not None:
            raise ValueError("this network takes no reference clip (it was built without reference channels)")
        return x
    n, _, t, h, w = x.shape
    if reference is None:
        return torch.cat([x, x.new_zeros(n, channels, t, h, w)], dim=1)
    if reference.shape != (n, channels, t, h, w):
        raise ValueError(f"reference clip must be {(n, channels, t, h, w)}, got {tuple(reference.shape)}")
    return torch.cat([x, reference.to(x.dtype)], dim=1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class Attention(nn.Module):
    """Multi-head self-attention on (B, L, D) through scaled_dot_product_attention, optional QK-norm."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False, bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        head_dim = dim // heads
        # QK-norm keeps attention logits bounded at large widths and in low precision (Dehghani et al. 2023).
        self.q_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        out = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))


class CrossAttention(nn.Module):
    """Multi-head attention from (B, L, D) queries to (B, M, E) context tokens with a key padding mask (B, M)."""

    def __init__(self, dim: int, context_dim: int, heads: int, qk_norm: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = RMSNorm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(dim // heads) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q = rearrange(self.q(x), "b l (h d) -> b h l d", h=self.heads)
        k, v = rearrange(self.kv(context), "b m (two h d) -> two b h m d", two=2, h=self.heads)
        bias = None if mask is None else mask[:, None, None, :].to(torch.bool)  # True: attend
        out = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v, attn_mask=bias)
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))


class SpatialAttention3d(nn.Module):
    """Pre-norm residual attention over the pixels of each frame of a (N, C, T, H, W) feature map."""

    def __init__(self, channels: int, heads: int, groups: int = 32):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels, groups), channels)
        self.attn = Attention(channels, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, h, w = x.shape
        y = rearrange(self.norm(x), "n c t h w -> (n t) (h w) c")
        y = self.attn(y)
        return x + rearrange(y, "(n t) (h w) c -> n c t h w", n=n, t=t, h=h, w=w)


class TemporalAttention3d(nn.Module):
    """Pre-norm residual attention across frames at each pixel, with sinusoidal frame positions."""

    def __init__(self, channels: int, heads: int, groups: int = 32):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels, groups), channels)
        self.attn = Attention(channels, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, h, w = x.shape
        y = rearrange(self.norm(x), "n c t h w -> (n h w) t c")
        y = y + sinusoidal_embedding(torch.arange(t, device=x.device), c).to(y.dtype)  # any T works
        y = self.attn(y)
        return x + rearrange(y, "(n h w) t c -> n c t h w", n=n, h=h, w=w)


def _groups(channels: int, groups: int) -> int:
    """The largest group count <= groups that divides channels (GroupNorm needs an exact split)."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels, groups), channels)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module
