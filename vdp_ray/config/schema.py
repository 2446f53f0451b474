"""The config tree: one frozen dataclass per section, loaded from YAML with dotted overrides and validated once.

Every field carries its help text and its allowed values or range (``fields.opt``); ``Config.from_dict`` checks
types, choices and ranges and names the offending key, fills unset architecture fields from the named presets,
and runs the cross-section checks of ``checks.py``. The result is frozen: code that needs another config derives
one with ``Config.updated`` (validated again), never by assignment. The resolved config is what gets saved beside
checkpoints and exports.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ..vocab import FAMILIES, PRECISIONS
from .checks import validate
from .diffusion import DiffusionConfig
from .fields import ConfigError, build, describe, opt, plain, section
from .loading import apply_override, normalise, read_yaml_mapping, set_key
from .sampling import SamplingConfig


# --------------------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class RunConfig:
    name: str = opt("vdp", "Run name, used in logs and as the Ray Train run name.")
    dir: str = opt(
        "runs/vdp",
        "Run folder: config, logs, checkpoints, export. On a cluster, a path every node "
        "sees (a shared file system); storage URIs are refused.",
    )
    seed: int = opt(0, "Seed for weights, data order, masks and noise.", ge=0)


@dataclass(frozen=True)
class DataConfig:
    train: str | None = opt(None, "Training shards: a directory of .tar shards (from `vdp shard`).")
    val: str | None = opt(None, "Validation shards, same layout as `train`.")
    frames: int = opt(16, "Frames per training clip (T).", ge=2, le=1024)
    size: tuple[int, int] = opt((64, 64), "Frame size [height, width] in pixels.", ge=8, le=4096)
    channels: int = opt(3, "Colour channels: 1 (grayscale) or 3 (RGB).", choices=(1, 3))
    context_frames: int = opt(5, "Given frames for prediction previews and evaluation.", ge=1)
    hflip: bool | None = opt(
        None, "Random horizontal flips (same for every frame). Unset: the shards' dataset.yaml, else off."
    )
    crop_scale: float | None = opt(
        None,
        "Random crops covering [crop_scale, 1] of the frame, resized back. Unset: dataset.yaml, else 1 (off).",
        gt=0.0,
        le=1.0,
    )
    vflip: bool = opt(
        False,
        "Random vertical flips (same for every frame): with hflip, 4 orientations of each "
        "video, against memorising a few videos.",
    )
    reverse: bool = opt(
        False,
        "Random time reversal: half the clips play backwards (a pan the other way; motion "
        "stays physical for cameras and most objects).",
    )
    channel_shuffle: bool = opt(
        False,
        "Random order of the colour channels per clip (RGB): new colours for the same "
        "textures and motion, against memorising a few videos.",
    )
    shuffle_buffer: int = opt(256, "Clips in the local shuffle buffer of each training worker (0 = off).", ge=0)
    max_bad_fraction: float = opt(
        0.01,
        "Clips that cannot be decoded (or are too short) are skipped and named in "
        "the log; past this fraction of the clips seen (and a few clips) the run stops.",
        ge=0.0,
        le=1.0,
    )


@dataclass(frozen=True)
class UNetConfig:
    patch: int | None = opt(
        None, "Space-to-depth patch: p x p pixels folded into channels before the first level.", ge=1, le=8
    )
    base_channels: int | None = opt(None, "Channels at full resolution.", ge=8)
    channel_mults: tuple[int, ...] | None = opt(
        None, "Channel multiplier per level; 2x spatial downsampling between levels.", ge=1
    )
    num_res_blocks: int | None = opt(None, "Residual blocks per level.", ge=1, le=8)
    attn_levels: tuple[int, ...] | None = opt(
        None, "Levels (0 = full resolution) with spatial + temporal attention.", ge=0
    )
    head_dim: int | None = opt(None, "Channels per attention head.", ge=8)
    dropout: float = opt(0.0, "Dropout inside residual blocks.", ge=0.0, lt=1.0)
    fold_frames: bool | None = opt(
        None,
        "Fold the data.frames window into channels: a 2D U-Net over a fixed window "
        "(MCVD's design), about T times cheaper per clip; the model then takes exactly "
        "data.frames frames (longer futures roll out).",
    )


@dataclass(frozen=True)
class DiTConfig:
    hidden: int | None = opt(None, "Transformer width.", ge=16)
    depth: int | None = opt(None, "Number of blocks (each: spatial attention, temporal attention, MLP).", ge=1)
    heads: int | None = opt(None, "Attention heads; must divide `hidden`.", ge=1)
    patch: int = opt(2, "Spatial patch size (in latent pixels).", ge=1, le=16)
    patch_t: int = opt(1, "Temporal patch size (in latent frames).", ge=1, le=8)
    mlp_ratio: float = opt(4.0, "MLP width as a multiple of `hidden`.", gt=0.0)
    qk_norm: bool = opt(False, "RMS-normalise queries and keys (stabler at large widths / low precision).")
    max_frames: int = opt(64, "Largest latent frame count the model accepts.", ge=1)
    max_size: tuple[int, int] = opt((128, 128), "Largest latent [height, width] the model accepts.", ge=1)
    text_dim: int | None = opt(
        None,
        "Width of the text encoder's token embeddings: cross-attention to the caption in every block. Set "
        "from the stored embeddings when text.encoder is set.",
        ge=1,
    )


@dataclass(frozen=True)
class ModelConfig:
    family: str = opt("unet3d", "Denoiser family.", choices=FAMILIES)
    preset: str = opt("tiny", "Named size; fields left unset in the family's section come from it.")
    unet3d: UNetConfig = section(UNetConfig, "Pixel-space 3D U-Net.")
    dit: DiTConfig = section(DiTConfig, "Latent DiT (inputs are VAE latents).")


@dataclass(frozen=True)
class VAEConfig:
    preset: str = opt("tiny", "Named size; unset architecture fields come from it.")
    base_channels: int | None = opt(None, "Channels at full resolution.", ge=8)
    channel_mults: tuple[int, ...] | None = opt(
        None, "Channel multiplier per level: log2(spatial_compression)+1 entries.", ge=1
    )
    num_res_blocks: int | None = opt(None, "Residual blocks per level.", ge=1, le=8)
    mid_attention: bool | None = opt(None, "Spatial attention in the bottleneck.")
    spatial_compression: int | None = opt(None, "Spatial downsampling factor.", choices=(4, 8))
    temporal_compression: int | None = opt(None, "Temporal downsampling factor.", choices=(1, 2, 4))
    latent_channels: int | None = opt(None, "Latent channels.", ge=1, le=64)
    recon_loss: str = opt("l1+mse", "Reconstruction loss.", choices=("l1", "mse", "l1+mse"))
    kl_weight: float = opt(1e-4, "Weight of the KL term (per-element means on both terms).", ge=0.0)
    max_steps: int | None = opt(None, "Optimizer steps of the VAE stage (unset: train.max_steps).", ge=1)
    lr: float | None = opt(None, "Peak learning rate of the VAE stage (unset: train.lr).", gt=0.0, le=1.0)
    batch_size: int | None = opt(None, "Clips per worker per step in the VAE stage (unset: train.batch_size).", ge=1)
    export: str | None = opt(None, "A trained VAE export to use as the latent space of the DiT stage.")
    diffusers: str | None = opt(
        None,
        "A local diffusers AutoencoderKL folder (e.g. Stable Diffusion's VAE) used frame by frame as the "
        "latent space, with its scaling_factor, instead of training our 3D VAE (geometry read from its "
        "config.json; nothing is downloaded). The vae stage is then skipped.",
    )
    scale_factor: float | None = opt(
        None, "Latent scale (1/std of latents); measured at the end of VAE training.", gt=0.0
    )


@dataclass(frozen=True)
class TextConfig:
    encoder: str | None = opt(
        None,
        "Text conditioning: a local transformers text model folder (CLIP text model or T5 encoder); "
        "`vdp encode-text` stores the shards' caption embeddings with it. Unset: no text.",
    )
    max_tokens: int = opt(77, "Caption tokens kept (longer captions are cut).", ge=1, le=512)
    dropout: float = opt(
        0.1,
        "Chance that a training clip sees the null text instead of its caption "
        "(what classifier-free guidance on text needs).",
        ge=0.0,
        le=1.0,
    )


@dataclass(frozen=True)
class TrainConfig:
    stages: tuple[str, ...] | None = opt(None, "What to train, in order: vae, dit, unet3d. Unset: from model.family.")
    workers: int = opt(
        1,
        "Ray Train workers (data-parallel ranks); an elastic range [min, max] sets train.min_workers too.",
        ge=1,
        le=4096,
    )
    min_workers: int | None = opt(
        None,
        "Elastic training: go on with as few as this many workers while nodes are missing, and scale back "
        "to train.workers when they return. Unset: always train.workers.",
        ge=1,
        le=4096,
    )
    resize_check_s: float = opt(60.0, "Elastic training: seconds between checks for more room.", gt=0.0)
    start_timeout_s: float | None = opt(
        None,
        "Seconds Ray Train waits for a worker group to start before retrying (an elastic run then tries the "
        "size there is room for). Unset: Ray's 60, or 30 with an elastic range, so a run that lost a node "
        "stops waiting for it sooner.",
        gt=0.0,
    )
    placement: str = opt(
        "pack",
        "Where Ray puts the workers: pack (fill nodes in turn), spread (across nodes), strict_spread (one per node).",
        choices=("pack", "spread", "strict_spread"),
    )
    use_gpu: str = opt(
        "auto", "Train on GPUs: auto (if the cluster has any), true or false.", choices=("auto", "true", "false")
    )
    cpus_per_worker: float = opt(1.0, "CPUs reserved per worker (fractional is fine; leave some for Ray Data).", gt=0.0)
    gpus_per_worker: float = opt(1.0, "GPUs per worker when training on GPUs.", ge=0.0)
    batch_size: int = opt(8, "Clips per worker per step (micro-batch).", ge=1)
    grad_accum: int = opt(1, "Micro-batches accumulated per optimizer step.", ge=1)
    latent_cache_mb: float = opt(
        1024,
        "Memory per CPU worker (MiB) for the frozen VAE's posterior of clips seen "
        "(DiT stage: each clip is encoded once); 0: encode every step. GPU workers "
        "encode every step (or train from `vdp encode` latent shards).",
        ge=0,
    )
    max_steps: int = opt(1000, "Optimizer steps per stage.", ge=1)
    max_minutes: float | None = opt(
        None,
        "Wall-clock cap per stage: stop (checkpoint and export) at the first step past it; the learning rate's "
        "cosine then ends with whichever of max_steps and max_minutes comes first. Unset = none.",
        gt=0.0,
    )
    lr: float = opt(1e-4, "Peak learning rate (AdamW).", gt=0.0, le=1.0)
    weight_decay: float = opt(0.0, "AdamW weight decay.", ge=0.0)
    warmup_steps: int = opt(100, "Linear warm-up steps before cosine decay.", ge=0)
    min_lr_ratio: float = opt(0.1, "Final learning rate as a fraction of the peak.", ge=0.0, le=1.0)
    grad_clip: float = opt(1.0, "Gradient-norm clipping (0 = off).", ge=0.0)
    precision: str = opt("fp16", "fp16 on GPUs (falls back on CPUs without fp16), bf16 or fp32.", choices=PRECISIONS)
    zero_stage: int = opt(1, "DeepSpeed ZeRO stage.", choices=(0, 1, 2, 3))
    ema_decay: float = opt(0.999, "EMA decay of the exported weights.", ge=0.0, lt=1.0)
    select_by: str = opt(
        "val/psnr_gain",
        "Which EMA weights a stage exports: those of the validation that scored "
        "best on val/psnr_gain (the preview's gain over the best baseline; scored every "
        "train.preview_every steps) or val/loss, or the last. Without data.val: the last.",
        choices=("val/psnr_gain", "val/loss", "last"),
    )
    tf32: bool = opt(True, "CUDA: TF32 for fp32 matmuls and convolutions (Ampere and later; no effect on CPUs).")
    activation_checkpointing: bool = opt(
        False,
        "Recompute each transformer / U-Net block's activations in the backward pass instead of keeping "
        "them: less memory for larger batches or clips, about a third more compute.",
    )
    compile: bool = opt(False, "torch.compile the network (first steps slower while it compiles; GPUs gain most).")
    log_every: int = opt(10, "Steps between logged metrics.", ge=1)
    val_every: int = opt(200, "Steps between validations.", ge=1)
    checkpoint_every: int = opt(200, "Steps between checkpoints.", ge=1)
    keep_checkpoints: int = opt(2, "Checkpoints kept per stage.", ge=1)
    max_failures: int = opt(1, "Worker-group restarts after a failure (-1 = unlimited).", ge=-1)
    preview_every: int = opt(500, "Steps between preview strips (sampling on validation clips) in TensorBoard.", ge=1)
    val_batches: int = opt(4, "Validation batches per worker at each validation.", ge=1)
    preview_clips: int = opt(
        32,
        "Validation clips rank 0 predicts at each preview, for val/psnr and val/psnr_gain "
        "(what train.select_by: val/psnr_gain picks the export by): taken from the first "
        "validation's batches (at most val_batches of them). More clips, a steadier choice and a "
        "slower preview; a mean over 8 clips can swing by 2 dB.",
        ge=1,
        le=4096,
    )


@dataclass(frozen=True)
class Config:
    run: RunConfig = section(RunConfig, "Run identity and output folder.")
    data: DataConfig = section(DataConfig, "Clips: shards, frames, size.")
    model: ModelConfig = section(ModelConfig, "The denoiser.")
    vae: VAEConfig = section(VAEConfig, "The 3D VAE (latent space of the DiT).")
    diffusion: DiffusionConfig = section(DiffusionConfig, "Diffusion process and training objective.")
    sampling: SamplingConfig = section(SamplingConfig, "How the trained model is sampled by default.")
    text: TextConfig = section(TextConfig, "Text conditioning (captions).")
    train: TrainConfig = section(TrainConfig, "Training.")

    @classmethod
    def from_dict(cls, values: dict | None) -> Config:
        """Typed, range-checked config from plain values; presets resolved; cross-checks run."""
        cfg = _resolved(build(cls, normalise(values or {}), ""))
        validate(cfg)
        return cfg

    def updated(self, changes: dict[str, Any]) -> Config:
        """A new validated config with dotted keys changed, e.g. ``{"vae.export": path}``."""
        values = self.to_dict()
        for key, value in changes.items():
            set_key(values, key, plain(value))
        return Config.from_dict(values)

    def to_dict(self) -> dict:
        return plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    def trained_part(self) -> dict:
        """What the trained weights depend on (data, model, VAE, diffusion, text): two configs that agree here
        describe the same model, whatever their run, training budget or sampling defaults."""
        d = self.to_dict()
        return {k: d[k] for k in ("data", "model", "vae", "diffusion", "text")}


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML experiment file (or the defaults when None) and apply ``key.sub=value`` overrides."""
    values = read_yaml_mapping(path, ConfigError, "config file") if path is not None else {}
    for item in overrides:
        apply_override(values, item)
    try:
        return Config.from_dict(values)
    except ConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{exc}") from None


def describe_keys(prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every leaf key, for `vdp keys` and docs."""
    return describe(Config, prefix)


def _resolved(cfg: Config) -> Config:
    """Unset architecture fields filled from the named presets, a pretrained VAE's geometry adopted, and the
    default stage list."""
    from ..models import PRESETS

    m = cfg.model
    family_section = m.unet3d if m.family == "unet3d" else m.dit
    filled = _fill_preset(family_section, PRESETS[m.family], m.preset, "model.preset", m.family)
    model = replace(m, **{m.family: filled})
    vae = _fill_preset(cfg.vae, PRESETS["vae"], cfg.vae.preset, "vae.preset", "vae")
    stages = cfg.train.stages
    if vae.diffusers:
        vae = _adopt_diffusers_vae(vae)
        if stages:  # the VAE is pretrained: a vae stage in a shared config is skipped
            stages = tuple(s for s in stages if s != "vae")
    if stages is None:
        stages = ("unet3d",) if m.family == "unet3d" else ("dit",) if vae.export else ("vae", "dit")
    return replace(cfg, model=model, vae=vae, train=replace(cfg.train, stages=tuple(stages)))


def _adopt_diffusers_vae(v: VAEConfig) -> VAEConfig:
    """A pretrained per-frame VAE decides the latent geometry: no temporal compression, its spatial compression,
    latent channels and scaling factor."""
    from ..pretrained import DiffusersVAEError, read_autoencoder_config

    if v.export:
        raise ConfigError("vae.diffusers and vae.export both set: give one latent space")
    try:
        geometry = read_autoencoder_config(v.diffusers)
    except DiffusersVAEError as exc:
        raise ConfigError(f"vae.diffusers: {exc}") from None
    spatial = geometry["spatial_compression"]
    return replace(
        v,
        latent_channels=geometry["latent_channels"],
        spatial_compression=spatial,
        temporal_compression=1,
        scale_factor=geometry["scale_factor"],
        channel_mults=tuple([1] * (int(math.log2(spatial)) + 1)),
    )  # unused: no 3D VAE is built


def _fill_preset(section_cfg, presets: dict, name: str, key: str, family: str):
    if name not in presets:
        raise ConfigError(f"{key}: unknown {family} preset {name!r}; expected one of {list(presets)}")
    unset = {
        k: tuple(v) if isinstance(v, list) else v for k, v in presets[name].items() if getattr(section_cfg, k) is None
    }
    return replace(section_cfg, **unset)
