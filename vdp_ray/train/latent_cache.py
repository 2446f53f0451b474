"""The frozen VAE's posterior per training clip, kept in memory so the DiT stage encodes each clip once.

In the DiT stage the VAE never changes, yet every step encoded its batch again: on CPUs that encoder pass cost
more than the DiT's own forward and backward. The cache keys a clip by a digest of its pixels (so a random
crop, flip or temporal offset is simply another entry, and nothing stale can be served), stores the posterior's
mean and standard deviation on the CPU, and draws a fresh latent sample from them at every use, so training
sees the same distribution of latents as without it. Full, it stops adding entries (the clips it holds keep
hitting). ``train.latent_cache_mb`` sizes it per worker; 0 turns it off.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


class LatentCache:
    def __init__(self, max_mb: float):
        self.max_bytes = int(max_mb * 2**20)
        self.entries: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def digest(clip: torch.Tensor) -> bytes:
        a = np.ascontiguousarray(clip.detach().cpu().numpy())
        return hashlib.blake2b(a.tobytes(), digest_size=16, person=str(a.shape).encode()[:16]).digest()

    @torch.no_grad()
    def posterior(self, encode, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of q(z|x) for a batch (N, C, T, H, W); ``encode(x)`` gives a posterior with .mean/.std for
        the clips not cached yet. Returned on the clips' device, in float32."""
        keys = [self.digest(c) for c in clips]
        missing = [i for i, k in enumerate(keys) if k not in self.entries]
        fresh = {}
        if missing:
            q = encode(clips[missing])
            mean, std = q.mean.float(), q.std.float()
            for j, i in enumerate(missing):
                fresh[keys[i]] = (mean[j], std[j])
                if keys[i] in self.entries:
                    continue  # the same clip twice in one batch
                size = mean[j].numel() * 2 * 4
                if self.bytes + size <= self.max_bytes:
                    self.entries[keys[i]] = (mean[j].cpu(), std[j].cpu())
                    self.bytes += size
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        pairs = [fresh.get(k) or self.entries[k] for k in keys]
        means = torch.stack([m.to(clips.device) for m, _ in pairs])
        stds = torch.stack([s.to(clips.device) for _, s in pairs])
        return means, stds

    def take_hit_rate(self) -> float | None:
        """The fraction of clips served from the cache since the last call (None when none were asked for)."""
        asked = self.hits + self.misses
        rate = self.hits / asked if asked else None
        self.hits = self.misses = 0
        return rate
