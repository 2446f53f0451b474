"""Latent video DiT: 3D patches, blocks of spatial then temporal attention, AdaLN-Zero conditioning.

Peebles & Xie 2023 (DiT) with factorised space-time attention (Latte, Ma et al. 2024; Open-Sora). The
conditioning vector is per frame (timestep + given/not-given), so frames of one clip can sit at different
noise levels: given frames arrive clean with timestep 0.

Text (``text_dim`` set): every block attends from all its tokens to the caption's token embeddings
(cross-attention after the temporal attention, as in PixArt-alpha; its output projection starts at zero), and
the pooled caption embedding joins the AdaLN conditioning vector. The null text is the empty caption's
embedding, so one network serves text-conditioned and unconditional passes (classifier-free guidance).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .layers import (
    Attention,
    CrossAttention,
    TimestepEmbedder,
    frame_timesteps,
    mask_channel,
    run_block,
    sinusoidal_embedding,
    with_reference,
)

# Named sizes (DiT paper, table 1), plus a tiny one for CPU tests.
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden=128, depth=4, heads=4),
    "S": dict(hidden=384, depth=12, heads=6),
    "B": dict(hidden=768, depth=12, heads=12),
    "L": dict(hidden=1024, depth=24, heads=16),
    "XL": dict(hidden=1152, depth=28, heads=16),
}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class DiTBlock(nn.Module):
    def __init__(
        self, dim: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False, text_dim: int | None = None
    ):
        super().__init__()
        self.norm_c = nn.LayerNorm(dim, eps=1e-6) if text_dim else None
        self.cross = CrossAttention(dim, text_dim, heads, qk_norm) if text_dim else None
        self.norm_s = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn_s = Attention(dim, heads, qk_norm)
        self.norm_t = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn_t = Attention(dim, heads, qk_norm)
        self.norm_m = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        # shift, scale, gate for each of: spatial attention, temporal attention, MLP
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, text: tuple | None = None) -> torch.Tensor:
        """x (N, T, S, D) tokens; c (N, T, D) per-frame conditioning; text (tokens (N, L, E), mask (N, L))."""
        n, t = x.shape[:2]
        mods = self.ada(c)[:, :, None, :].chunk(9, dim=-1)  # 9 x (N, T, 1, D)
        sh_s, sc_s, g_s, sh_t, sc_t, g_t, sh_m, sc_m, g_m = mods
        h = rearrange(modulate(self.norm_s(x), sh_s, sc_s), "n t s d -> (n t) s d")
        x = x + g_s * rearrange(self.attn_s(h), "(n t) s d -> n t s d", n=n)
        h = rearrange(modulate(self.norm_t(x), sh_t, sc_t), "n t s d -> (n s) t d")
        x = x + g_t * rearrange(self.attn_t(h), "(n s) t d -> n t s d", n=n, t=t)
        if self.cross is not None and text is not None:
            h = rearrange(self.norm_c(x), "n t s d -> n (t s) d")
            x = x + rearrange(self.cross(h, *text), "n (t s) d -> n t s d", t=t)
        return x + g_m * self.mlp(modulate(self.norm_m(x), sh_m, sc_m))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c)[:, :, None, :].chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def spacetime_pos_embed(t: int, h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed sin-cos positions for a (t, h, w) token grid -> (t, h*w, dim).

    Half the channels encode the 2D position (split between rows and columns, as in DiT/MAE), the other
    half the frame index, so any grid shape works without interpolating a learned table.
    """
    d_t = dim // 2
    d_hw = dim - d_t
    rows = sinusoidal_embedding(torch.arange(h).float(), d_hw // 2)  # (h, d)
    cols = sinusoidal_embedding(torch.arange(w).float(), d_hw - d_hw // 2)  # (w, d)
    spatial = torch.cat([rows[:, None].expand(h, w, -1), cols[None].expand(h, w, -1)], -1).reshape(h * w, d_hw)
    frames = sinusoidal_embedding(torch.arange(t).float(), d_t)  # (t, d_t)
    return torch.cat([spatial[None].expand(t, -1, -1), frames[:, None].expand(-1, h * w, -1)], -1)


class DiT(nn.Module):
    checkpointing = False  # train.activation_checkpointing: recompute each block's activations in backward

    def __init__(
        self,
        in_channels: int = 4,
        hidden: int = 768,
        depth: int = 12,
        heads: int = 12,
        patch: int = 2,
        patch_t: int = 1,
        mlp_ratio: float = 4.0,
        qk_norm: bool = False,
        max_frames: int = 64,
        max_size: tuple[int, int] = (128, 128),
        out_channels: int | None = None,
        text_dim: int | None = None,
        reference_channels: int = 0,
        extra_channels: int = 0,
    ):
        super().__init__()
        self.text_dim = text_dim
        self.in_channels = in_channels
        self.reference_channels = reference_channels  # a reference clip beside the input (as UNet3D's)
        # more outputs per pixel after the clip's (as UNet3D's): the final projection simply grows
        self.out_channels = (out_channels or in_channels) + extra_channels
        self.hidden, self.patch, self.patch_t = hidden, patch, patch_t
        self.max_frames, self.max_size = max_frames, tuple(max_size)
        kernel = (patch_t, patch, patch)
        # +1: the frame-mask channel
        self.x_embed = nn.Conv3d(in_channels + reference_channels + 1, hidden, kernel, stride=kernel)
        self.t_embed = TimestepEmbedder(hidden)
        self.given_embed = nn.Embedding(2, hidden)  # 0: generate this frame, 1: this frame is given
        self.text_pool = None  # pooled caption -> the conditioning vector
        if text_dim:
            self.text_pool = nn.Sequential(nn.Linear(text_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio, qk_norm, text_dim) for _ in range(depth))
        self.final = FinalLayer(hidden, patch_t * patch * patch * self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init. The zeroing comes last, so a fresh model outputs exactly zero (AdaLN-Zero)."""

        def base(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(base)
        w = self.x_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # like a linear layer over the flattened patch
        nn.init.zeros_(self.x_embed.bias)
        for layer in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        nn.init.normal_(self.given_embed.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
            if block.cross is not None:  # text enters as a zero residual at first, like the gated branches
                nn.init.zeros_(block.cross.proj.weight)
                nn.init.zeros_(block.cross.proj.bias)
        for layer in (self.final.ada[-1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"DiT expects (N, {self.in_channels}, T, H, W), got {tuple(x.shape)}")
        t, h, w = x.shape[2:]
        if t % self.patch_t or h % self.patch or w % self.patch:
            raise ValueError(
                f"DiT input {t}x{h}x{w} (frames x height x width) must be divisible by the patch "
                f"{self.patch_t}x{self.patch}x{self.patch}"
            )
        if t > self.max_frames or h > self.max_size[0] or w > self.max_size[1]:
            raise ValueError(
                f"DiT input {t}x{h}x{w} exceeds the configured maxima max_frames={self.max_frames}, "
                f"max_size={self.max_size[0]}x{self.max_size[1]}"
            )

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        text_tokens: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        text_pooled: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (N, C, T, H, W), t (N,) or (N, T), frame_mask (N, T) bool or None -> (N, C_out, T, H, W); reference
        (N, reference_channels, T, H, W) or None (zeros): a clip the network sees beside x.

        A text-conditioned model also takes text_tokens (N, L, E), text_mask (N, L) and text_pooled (N, E);
        all three are required (the null text is the empty caption's embedding, never a missing argument)."""
        self.check_input(x)
        if self.text_dim and (text_tokens is None or text_pooled is None):
            raise ValueError(
                "this DiT is text-conditioned: pass text_tokens, text_mask and text_pooled "
                "(the empty caption's embeddings for no text)"
            )
        if not self.text_dim and text_tokens is not None:
            raise ValueError("this DiT was trained without text (model.dit.text_dim unset): it takes no text")
        n, _, frames, height, width = x.shape
        gt, gh, gw = frames // self.patch_t, height // self.patch, width // self.patch
        x_in = with_reference(x, reference, self.reference_channels)
        tokens = self.x_embed(torch.cat([x_in, mask_channel(frame_mask, x)], dim=1))  # (N, D, gt, gh, gw)
        tokens = rearrange(tokens, "n d t h w -> n t (h w) d")
        tokens = tokens + spacetime_pos_embed(gt, gh, gw, self.hidden).to(tokens)

        given = torch.zeros(n, frames, dtype=torch.long, device=x.device)
        if frame_mask is not None:
            given = frame_mask.long()
        c = self.t_embed(frame_timesteps(t, n, frames)) + self.given_embed(given)  # (N, T, D)
        c = rearrange(c, "n (t p) d -> n t p d", p=self.patch_t).mean(2)  # (N, gt, D): one per temporal patch
        text = None
        if self.text_dim:
            c = c + self.text_pool(text_pooled.to(c.dtype))[:, None, :]
            text = (text_tokens.to(tokens.dtype), text_mask)

        for block in self.blocks:
            tokens = run_block(block, tokens, c, text, checkpoint=self.checkpointing and self.training)
        out = self.final(tokens, c)  # (N, gt, gh*gw, pt*p*p*C)
        return rearrange(
            out,
            "n t (h w) (pt ph pw c) -> n c (t pt) (h ph) (w pw)",
            h=gh,
            w=gw,
            pt=self.patch_t,
            ph=self.patch,
            pw=self.patch,
        )
