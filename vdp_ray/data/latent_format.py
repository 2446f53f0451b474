"""Latent shards, the format: what `vdp encode` writes (latent_shards.py) and what training reads (pipeline.py).

Per clip ``{key}.npy``, an fp16 array (2, C, t, h, w) holding the VAE's posterior mean and standard deviation,
and ``{key}.json`` with its caption; each split's manifest.json says ``kind: latents`` and records the VAE
export, the digest of its weights and the clip geometry. A run reads such shards only if its own VAE and clip
geometry made them (``check_latents``).
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from .shards import MANIFEST

KIND = "latents"
LATENT = "npy"  # the member suffix of a clip's posterior


def holds_latents(folder: Path) -> bool:
    """Whether ``folder``'s manifest.json says it holds our latent shards (a split, or the top of an output)."""
    manifest = Path(folder) / MANIFEST
    return manifest.is_file() and json.loads(manifest.read_text()).get("kind") == KIND


def vae_id(export_dir: str | Path) -> str:
    """The identity of a VAE export: the digest of its weights (a retrained VAE in the same folder differs)."""
    from ..export import WEIGHTS

    return hashlib.sha256((Path(export_dir) / WEIGHTS).read_bytes()).hexdigest()[:16]


def check_latents(manifest: dict, cfg, key: str = "data.train") -> None:
    """Latent shards fit a run only if made by its VAE at its clip geometry (refused before any Ray work)."""
    from ..config import ConfigError

    where = f"{key}: latent shards (`vdp encode`)"
    if cfg.model.family != "dit" or "vae" in cfg.train.stages:
        raise ConfigError(f"{where} train a dit with an existing VAE (vae.export, train.stages without vae)")
    if not cfg.vae.export or vae_id(cfg.vae.export) != manifest["vae_id"]:
        raise ConfigError(
            f"{where} were made by the VAE at {manifest.get('vae_export')} (weights "
            f"{manifest['vae_id']}), but vae.export is {cfg.vae.export}: encode again with it"
        )
    d = cfg.data
    mine = {"frames": d.frames, "size": list(d.size), "channels": d.channels}
    theirs = {k: manifest[k] for k in mine}
    if mine != theirs:
        raise ConfigError(f"{where} hold clips of {theirs}, the run reads {mine}")


def decode_latents(batch: dict) -> dict:
    """Ray Data: raw members -> {"latent": fp16 (B, 2, C, t, h, w), "key", "caption"}."""
    latents = np.stack([np.load(io.BytesIO(b), allow_pickle=False) for b in batch[LATENT]])
    captions = [str(json.loads(m).get("caption", "")) if m is not None else "" for m in batch["json"]]
    return {"latent": latents, "key": np.asarray(batch["__key__"]), "caption": np.asarray(captions, dtype=object)}
