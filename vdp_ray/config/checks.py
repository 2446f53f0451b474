"""Relations between config sections, checked once when a config is built; each error names the keys involved.

Field types and ranges are checked by the fields themselves (``fields.py``); what lives here is what no single
field can know: frame counts against compression factors, sizes against downsampling, stages against families.
"""

from __future__ import annotations

import math

from ..vocab import STAGES
from .fields import ConfigError


def shared_folder_error(value: str, name: str) -> str | None:
    """Why ``value`` cannot be a run's (or a sweep's) folder, or None. Every node reads and writes it with local
    file APIs (DeepSpeed's checkpoint files, the run log, TensorBoard, exports): a storage URI would silently
    become a local folder of that name on each node, so it is refused before any work."""
    if "://" not in str(value):
        return None
    scheme = str(value).split("://", 1)[0]
    local = str(value).split("://", 1)[1] if scheme == "file" else None
    hint = (
        f"write the path itself ({local})"
        if local
        else "give a path on a file system every node mounts (NFS, EFS, Filestore, Lustre, or the bucket through "
        "a FUSE mount such as mountpoint-s3 or gcsfuse); shards may stay in the bucket (data.train)"
    )
    return (
        f"{name}: {value} is a {scheme}:// URI, but checkpoints, logs and exports are written with local file "
        f"APIs on every node: {hint}"
    )


def validate(cfg) -> None:
    error = shared_folder_error(cfg.run.dir, "run.dir")
    if error:
        raise ConfigError(error)
    _check_training(cfg)
    _check_diffusion(cfg)
    if cfg.model.family == "unet3d":
        _check_unet(cfg)
    if cfg.model.family == "dit" or "vae" in cfg.train.stages:
        _check_vae_geometry(cfg)
    if cfg.model.family == "dit":
        _check_dit(cfg)


def _check_training(cfg) -> None:
    m, v, tr = cfg.model, cfg.vae, cfg.train
    stages = tr.stages or ()
    if tr.min_workers is not None and tr.min_workers > tr.workers:
        raise ConfigError(f"train.min_workers ({tr.min_workers}) must not exceed train.workers ({tr.workers})")
    if cfg.text.encoder and m.family != "dit":
        raise ConfigError("text.encoder: text conditioning is built into the DiT; set model.family: dit")
    for s in stages:
        if s not in STAGES:
            raise ConfigError(f"train.stages: unknown stage {s!r}; expected a list of {', '.join(map(repr, STAGES))}")
    if "unet3d" in stages and m.family != "unet3d":
        raise ConfigError("train.stages: the 'unet3d' stage needs model.family: unet3d")
    if "dit" in stages:
        if m.family != "dit":
            raise ConfigError("train.stages: the 'dit' stage needs model.family: dit")
        if "vae" not in stages[: stages.index("dit")] and not v.export and not v.diffusers:
            raise ConfigError(
                "train.stages: the 'dit' stage needs a VAE: put 'vae' before it, or set vae.export or vae.diffusers"
            )


def _check_diffusion(cfg) -> None:
    d, df = cfg.data, cfg.diffusion
    frames = d.frames
    from ..anchor import Anchor  # the anchor checks its own choice (imports torch: only when a config is checked)

    try:
        anchor = Anchor.of_config(df)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    eps_net = df.prediction_type == "eps" and not anchor.predicts_change  # a network that outputs the noise
    if eps_net and df.zero_terminal_snr and df.objective == "ddpm":
        raise ConfigError(
            "diffusion.zero_terminal_snr: needs diffusion.prediction_type v or x0, or an anchor (diffusion.anchor: "
            "last or motion): an eps network carries no information about the clip at SNR 0 (Lin et al. 2024)"
        )
    if eps_net and df.objective == "flow":
        raise ConfigError(
            "diffusion.prediction_type: eps cannot be sampled under diffusion.objective flow (the path starts at pure "
            "noise, where the noise says nothing about the clip): use v (the velocity) or x0, or an anchor "
            "(diffusion.anchor: last or motion)"
        )
    mk = df.masks
    if sum(mk.probs().values()) <= 0:
        raise ConfigError(
            "diffusion.masks: the task probabilities (prediction, generation, interpolation, random) are all 0"
        )
    if mk.context_min > mk.context_max:
        raise ConfigError(f"diffusion.masks.context_min ({mk.context_min}) must be <= context_max ({mk.context_max})")
    if mk.context_max >= frames:
        raise ConfigError(f"diffusion.masks.context_max ({mk.context_max}) must be < data.frames ({frames})")
    if d.context_frames >= frames:
        raise ConfigError(f"data.context_frames ({d.context_frames}) must be < data.frames ({frames})")


def _check_unet(cfg) -> None:
    u = cfg.model.unet3d
    h, w = cfg.data.size
    down = u.patch * 2 ** (len(u.channel_mults) - 1)
    if h % down or w % down:
        raise ConfigError(
            f"data.size {h}x{w} must be divisible by the U-Net's downsampling {down} "
            f"(model.unet3d.patch * 2^(len(model.unet3d.channel_mults) - 1))"
        )
    bad = [lvl for lvl in u.attn_levels if lvl >= len(u.channel_mults)]
    if bad:
        raise ConfigError(f"model.unet3d.attn_levels {bad} out of range: levels are 0..{len(u.channel_mults) - 1}")


def _check_vae_geometry(cfg) -> None:
    v, frames, (h, w) = cfg.vae, cfg.data.frames, cfg.data.size
    need = int(math.log2(v.spatial_compression)) + 1
    if len(v.channel_mults) != need:
        raise ConfigError(
            f"vae.channel_mults needs {need} entries for vae.spatial_compression={v.spatial_compression} "
            f"(log2 + 1), got {list(v.channel_mults)}"
        )
    frames_per_latent, pixels_per_latent = v.temporal_compression, v.spatial_compression
    if frames % frames_per_latent:
        raise ConfigError(f"data.frames ({frames}) must be divisible by vae.temporal_compression ({frames_per_latent})")
    if h % pixels_per_latent or w % pixels_per_latent:
        raise ConfigError(f"data.size {h}x{w} must be divisible by vae.spatial_compression ({pixels_per_latent})")


def _check_dit(cfg) -> None:
    d, dt, v, mk = cfg.data, cfg.model.dit, cfg.vae, cfg.diffusion.masks
    if dt.hidden % dt.heads:
        raise ConfigError(f"model.dit.hidden ({dt.hidden}) must be divisible by model.dit.heads ({dt.heads})")
    frames_per_latent, pixels_per_latent = v.temporal_compression, v.spatial_compression
    lt, lh, lw = d.frames // frames_per_latent, d.size[0] // pixels_per_latent, d.size[1] // pixels_per_latent
    if lh % dt.patch or lw % dt.patch or lt % dt.patch_t:
        raise ConfigError(
            f"latent grid {lt}x{lh}x{lw} (data.frames/vae.temporal_compression x data.size/"
            f"vae.spatial_compression) must be divisible by model.dit.patch_t x patch "
            f"({dt.patch_t}x{dt.patch}x{dt.patch})"
        )
    if lt > dt.max_frames or lh > dt.max_size[0] or lw > dt.max_size[1]:
        raise ConfigError(
            f"latent grid {lt}x{lh}x{lw} exceeds model.dit.max_frames ({dt.max_frames}) / "
            f"model.dit.max_size ({list(dt.max_size)})"
        )
    # given frames must map to whole latent frames (DESIGN: temporal compression and masks must agree)
    for key in ("context_min", "context_max"):
        if getattr(mk, key) % frames_per_latent:
            raise ConfigError(
                f"diffusion.masks.{key} ({getattr(mk, key)}) must be a multiple of "
                f"vae.temporal_compression ({frames_per_latent}): given frames must fill whole latent frames"
            )
    if d.context_frames % frames_per_latent:
        raise ConfigError(
            f"data.context_frames ({d.context_frames}) must be a multiple of vae.temporal_compression "
            f"({frames_per_latent})"
        )
