"""One typed config tree for every command: dataclasses loaded from YAML, dotted overrides, validated once.

Every field carries its help text and its allowed values or range in ``metadata``; ``Config.from_dict``
checks types, choices and ranges and names the offending key, and ``Config.validate`` checks the
relations between sections (frame counts against compression factors, sizes against downsampling, ...).
The resolved config (presets filled in) is what gets saved beside checkpoints and exports.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key and what was expected."""


def opt(default: Any, help: str, *, choices: tuple | None = None, ge=None, gt=None, le=None, lt=None):
    """A config field with its help text and constraints."""
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls, help: str):
    return field(default_factory=cls, metadata={"help": help})


# --------------------------------------------------------------------------------------------- sections
@dataclass
class RunConfig:
    name: str = opt("vdp", "Run name, used in logs and as the Ray Train run name.")
    dir: str = opt("runs/vdp", "Run folder (local path or storage URI): config, logs, checkpoints, export.")
    seed: int = opt(0, "Seed for weights, data order, masks and noise.", ge=0)


@dataclass
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
    shuffle_buffer: int = opt(256, "Clips in the local shuffle buffer of each training worker (0 = off).", ge=0)


@dataclass
class UNetConfig:
    patch: int | None = opt(None, "Space-to-depth patch: p x p pixels folded into channels before the first level.",
                            ge=1, le=8)  # fmt: skip
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


@dataclass
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
        None, "Width of the text encoder's token embeddings: cross-attention to the caption in every block. Set "
        "from the stored embeddings when text.encoder is set.", ge=1)  # fmt: skip


@dataclass
class ModelConfig:
    family: str = opt("unet3d", "Denoiser family.", choices=("unet3d", "dit"))
    preset: str = opt("tiny", "Named size; fields left unset in the family's section come from it.")
    unet3d: UNetConfig = section(UNetConfig, "Pixel-space 3D U-Net.")
    dit: DiTConfig = section(DiTConfig, "Latent DiT (inputs are VAE latents).")


@dataclass
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
        None, "A local diffusers AutoencoderKL folder (e.g. Stable Diffusion's VAE) used frame by frame as the "
        "latent space, with its scaling_factor, instead of training our 3D VAE (geometry read from its "
        "config.json; nothing is downloaded). The vae stage is then skipped.")  # fmt: skip
    scale_factor: float | None = opt(
        None, "Latent scale (1/std of latents); measured at the end of VAE training.", gt=0.0
    )


@dataclass
class MaskConfig:
    prediction: float = opt(0.7, "Probability of the prediction task (first k frames given).", ge=0.0, le=1.0)
    generation: float = opt(0.2, "Probability of unconditional generation (no frame given).", ge=0.0, le=1.0)
    interpolation: float = opt(0.1, "Probability of interpolation (first and last given).", ge=0.0, le=1.0)
    random: float = opt(0.0, "Probability of a random subset of frames given.", ge=0.0, le=1.0)
    context_min: int = opt(1, "Fewest given frames for prediction (pixel frames).", ge=1)
    context_max: int = opt(8, "Most given frames for prediction (pixel frames).", ge=1)
    context_drop: float = opt(
        0.1, "Probability of dropping any mask to the null condition (for guidance).", ge=0.0, le=1.0
    )

    def probs(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("prediction", "generation", "interpolation", "random")}


@dataclass
class DiffusionConfig:
    schedule: str = opt("cosine", "Noise schedule.", choices=("linear", "cosine", "sigmoid"))
    num_timesteps: int = opt(1000, "Training timesteps.", ge=10, le=10000)
    zero_terminal_snr: bool = opt(False, "Rescale the schedule to SNR 0 at the last step (needs v or x0).")
    prediction_type: str = opt("v", "What the network predicts.", choices=("eps", "v", "x0"))
    min_snr_gamma: float | None = opt(None, "Min-SNR-gamma loss weighting (e.g. 5); off when unset.", gt=0.0)
    residual: bool = opt(False, "x0 predicted as the change from the nearest given frame (needs prediction_type x0).")
    masks: MaskConfig = section(MaskConfig, "Frame-mask task mix for training.")
    sampler: str = opt("ddim", "Default sampler.", choices=("ddpm", "ddim", "dpm++"))
    sample_steps: int = opt(50, "Default sampling steps.", ge=1)
    eta: float = opt(0.0, "DDIM eta (0 = deterministic, 1 = DDPM-like).", ge=0.0, le=1.0)
    spacing: str = opt("trailing", "Sampling timestep spacing.", choices=("trailing", "leading", "linspace"))
    guidance: float = opt(1.0, "Classifier-free guidance scale on the context (1 = off).", ge=0.0, le=50.0)
    clip_x0: float | None = opt(1.0, "Clamp predicted x0 to [-v, v] while sampling (pixels); unset = off.", gt=0.0)


@dataclass
class TextConfig:
    encoder: str | None = opt(
        None, "Text conditioning: a local transformers text model folder (CLIP text model or T5 encoder); "
        "`vdp encode-text` stores the shards' caption embeddings with it. Unset: no text.")  # fmt: skip
    max_tokens: int = opt(77, "Caption tokens kept (longer captions are cut).", ge=1, le=512)
    dropout: float = opt(0.1, "Chance that a training clip sees the null text instead of its caption "
                         "(what classifier-free guidance on text needs).", ge=0.0, le=1.0)  # fmt: skip
    guidance: float = opt(1.0, "Guidance scale on the text while sampling (1 = off); diffusion.guidance is the "
                          "scale on the context frames.", ge=0.0, le=50.0)  # fmt: skip


@dataclass
class TrainConfig:
    stages: list[str] | None = opt(None, "What to train, in order: vae, dit, unet3d. Unset: from model.family.")
    workers: int = opt(1, "Ray Train workers (data-parallel ranks); an elastic range [min, max] sets train.min_workers "
                       "too.", ge=1, le=4096)  # fmt: skip
    min_workers: int | None = opt(
        None, "Elastic training: go on with as few as this many workers while nodes are missing, and scale back "
        "to train.workers when they return. Unset: always train.workers.", ge=1, le=4096)  # fmt: skip
    resize_check_s: float = opt(60.0, "Elastic training: seconds between checks for more room.", gt=0.0)
    start_timeout_s: float | None = opt(
        None, "Seconds Ray Train waits for a worker group to start before retrying (an elastic run then tries the "
        "size there is room for). Unset: Ray's 60, or 30 with an elastic range, so a run that lost a node "
        "stops waiting for it sooner.", gt=0.0)  # fmt: skip
    placement: str = opt("pack", "Where Ray puts the workers: pack (fill nodes in turn), spread (across nodes), "
                         "strict_spread (one per node).", choices=("pack", "spread", "strict_spread"))  # fmt: skip
    use_gpu: str = opt(
        "auto", "Train on GPUs: auto (if the cluster has any), true or false.", choices=("auto", "true", "false")
    )
    cpus_per_worker: float = opt(1.0, "CPUs reserved per worker (fractional is fine; leave some for Ray Data).", gt=0.0)
    gpus_per_worker: float = opt(1.0, "GPUs per worker when training on GPUs.", ge=0.0)
    batch_size: int = opt(8, "Clips per worker per step (micro-batch).", ge=1)
    grad_accum: int = opt(1, "Micro-batches accumulated per optimizer step.", ge=1)
    latent_cache_mb: float = opt(1024, "Memory per worker (MiB) for the frozen VAE's posterior of clips seen "
                                 "(DiT stage: each clip is encoded once); 0: encode every step.", ge=0)  # fmt: skip
    max_steps: int = opt(1000, "Optimizer steps per stage.", ge=1)
    max_minutes: float | None = opt(
        None, "Wall-clock cap per stage: stop (checkpoint and export) at the first step past it. Unset = none.", gt=0.0
    )
    lr: float = opt(1e-4, "Peak learning rate (AdamW).", gt=0.0, le=1.0)
    weight_decay: float = opt(0.0, "AdamW weight decay.", ge=0.0)
    warmup_steps: int = opt(100, "Linear warm-up steps before cosine decay.", ge=0)
    min_lr_ratio: float = opt(0.1, "Final learning rate as a fraction of the peak.", ge=0.0, le=1.0)
    grad_clip: float = opt(1.0, "Gradient-norm clipping (0 = off).", ge=0.0)
    precision: str = opt(
        "fp16", "fp16 on GPUs (falls back on CPUs without fp16), bf16 or fp32.", choices=("fp16", "bf16", "fp32")
    )
    zero_stage: int = opt(1, "DeepSpeed ZeRO stage.", choices=(0, 1, 2, 3))
    ema_decay: float = opt(0.999, "EMA decay of the exported weights.", ge=0.0, lt=1.0)
    log_every: int = opt(10, "Steps between logged metrics.", ge=1)
    val_every: int = opt(200, "Steps between validations.", ge=1)
    checkpoint_every: int = opt(200, "Steps between checkpoints.", ge=1)
    keep_checkpoints: int = opt(2, "Checkpoints kept per stage.", ge=1)
    max_failures: int = opt(1, "Worker-group restarts after a failure (-1 = unlimited).", ge=-1)
    preview_every: int = opt(500, "Steps between preview strips (sampling on validation clips) in TensorBoard.", ge=1)
    val_batches: int = opt(4, "Validation batches per worker at each validation.", ge=1)
    fault: str = opt("none", "Drills: raise once, SIGKILL rank 0 once, or make the loss NaN, at fault_step.",
                     choices=("none", "raise", "kill", "nan"))  # fmt: skip
    fault_step: int = opt(1, "The step at which train.fault strikes.", ge=1)


@dataclass
class Config:
    run: RunConfig = section(RunConfig, "Run identity and output folder.")
    data: DataConfig = section(DataConfig, "Clips: shards, frames, size.")
    model: ModelConfig = section(ModelConfig, "The denoiser.")
    vae: VAEConfig = section(VAEConfig, "The 3D VAE (latent space of the DiT).")
    diffusion: DiffusionConfig = section(DiffusionConfig, "Diffusion process, objective and sampling.")
    text: TextConfig = section(TextConfig, "Text conditioning (captions).")
    train: TrainConfig = section(TrainConfig, "Training.")

    # ------------------------------------------------------------------------------------- building
    @classmethod
    def from_dict(cls, values: dict | None) -> Config:
        """Typed, range-checked config from plain values; presets resolved; cross-checks run."""
        cfg = _build(cls, _elastic_shorthand(values or {}), "")
        cfg.resolve()
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    def resolve(self) -> None:
        """Fill unset architecture fields from the named presets, and the default stage list."""
        from .models import PRESETS

        _fill_preset(
            self.model.unet3d if self.model.family == "unet3d" else self.model.dit,
            PRESETS[self.model.family],
            self.model.preset,
            "model.preset",
            self.model.family,
        )
        _fill_preset(self.vae, PRESETS["vae"], self.vae.preset, "vae.preset", "vae")
        if self.vae.diffusers:
            self._adopt_diffusers_vae()
            if self.train.stages:  # the VAE is pretrained: a vae stage in a shared config is skipped
                self.train.stages = [s for s in self.train.stages if s != "vae"]
        if self.train.stages is None:
            if self.model.family == "unet3d":
                self.train.stages = ["unet3d"]
            else:
                self.train.stages = ["dit"] if self.vae.export else ["vae", "dit"]

    def _adopt_diffusers_vae(self) -> None:
        """A pretrained per-frame VAE decides the latent geometry: no temporal compression, its spatial
        compression, latent channels and scaling factor."""
        from .pretrained import DiffusersVAEError, read_autoencoder_config

        if self.vae.export:
            raise ConfigError("vae.diffusers and vae.export both set: give one latent space")
        try:
            geometry = read_autoencoder_config(self.vae.diffusers)
        except DiffusersVAEError as exc:
            raise ConfigError(f"vae.diffusers: {exc}") from None
        v = self.vae
        v.latent_channels, v.spatial_compression = geometry["latent_channels"], geometry["spatial_compression"]
        v.temporal_compression, v.scale_factor = 1, geometry["scale_factor"]
        v.channel_mults = tuple([1] * (int(math.log2(v.spatial_compression)) + 1))  # unused: no 3D VAE is built

    def validate(self) -> None:
        """Relations between sections; each error names the keys involved."""
        d, m, v, df, tr = self.data, self.model, self.vae, self.diffusion, self.train
        h, w = d.size
        frames = d.frames
        stages = tr.stages or []
        if tr.min_workers is not None and tr.min_workers > tr.workers:
            raise ConfigError(f"train.min_workers ({tr.min_workers}) must not exceed train.workers ({tr.workers})")
        if self.text.encoder and m.family != "dit":
            raise ConfigError("text.encoder: text conditioning is built into the DiT; set model.family: dit")
        for s in stages:
            if s not in ("vae", "dit", "unet3d"):
                raise ConfigError(f"train.stages: unknown stage {s!r}; expected a list of 'vae', 'dit', 'unet3d'")
        if "unet3d" in stages and m.family != "unet3d":
            raise ConfigError("train.stages: the 'unet3d' stage needs model.family: unet3d")
        if "dit" in stages:
            if m.family != "dit":
                raise ConfigError("train.stages: the 'dit' stage needs model.family: dit")
            if "vae" not in stages[: stages.index("dit")] and not v.export and not v.diffusers:
                raise ConfigError("train.stages: the 'dit' stage needs a VAE: put 'vae' before it, or set vae.export "
                                  "or vae.diffusers")  # fmt: skip
        if df.residual and df.prediction_type != "x0":
            raise ConfigError(
                f"diffusion.residual: needs diffusion.prediction_type x0, got {df.prediction_type!r} "
                "(the residual is measured in x0 space)"
            )
        if df.prediction_type == "eps" and df.zero_terminal_snr:
            raise ConfigError(
                "diffusion.zero_terminal_snr: needs diffusion.prediction_type v or x0 (eps carries no "
                "information about the clip at SNR 0, Lin et al. 2024)"
            )
        mk = df.masks
        if sum(mk.probs().values()) <= 0:
            raise ConfigError(
                "diffusion.masks: the task probabilities (prediction, generation, interpolation, random) are all 0"
            )
        if mk.context_min > mk.context_max:
            raise ConfigError(
                f"diffusion.masks.context_min ({mk.context_min}) must be <= context_max ({mk.context_max})"
            )
        if mk.context_max >= frames:
            raise ConfigError(f"diffusion.masks.context_max ({mk.context_max}) must be < data.frames ({frames})")
        if d.context_frames >= frames:
            raise ConfigError(f"data.context_frames ({d.context_frames}) must be < data.frames ({frames})")

        if m.family == "unet3d":
            u = m.unet3d
            down = u.patch * 2 ** (len(u.channel_mults) - 1)
            if h % down or w % down:
                raise ConfigError(
                    f"data.size {h}x{w} must be divisible by the U-Net's downsampling {down} "
                    f"(model.unet3d.patch * 2^(len(model.unet3d.channel_mults) - 1))"
                )
            bad = [lvl for lvl in u.attn_levels if lvl >= len(u.channel_mults)]
            if bad:
                raise ConfigError(
                    f"model.unet3d.attn_levels {bad} out of range: levels are 0..{len(u.channel_mults) - 1}"
                )
        if m.family == "dit" or "vae" in stages:
            need = int(math.log2(v.spatial_compression)) + 1
            if len(v.channel_mults) != need:
                raise ConfigError(
                    f"vae.channel_mults needs {need} entries for vae.spatial_compression={v.spatial_compression} "
                    f"(log2 + 1), got {list(v.channel_mults)}"
                )
            tc, sc = v.temporal_compression, v.spatial_compression
            if frames % tc:
                raise ConfigError(f"data.frames ({frames}) must be divisible by vae.temporal_compression ({tc})")
            if h % sc or w % sc:
                raise ConfigError(f"data.size {h}x{w} must be divisible by vae.spatial_compression ({sc})")
        if m.family == "dit":
            dt = m.dit
            if dt.hidden % dt.heads:
                raise ConfigError(f"model.dit.hidden ({dt.hidden}) must be divisible by model.dit.heads ({dt.heads})")
            tc, sc = v.temporal_compression, v.spatial_compression
            lt, lh, lw = frames // tc, h // sc, w // sc
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
            for key in ("context_min", "context_max"):
                if getattr(mk, key) % tc:
                    raise ConfigError(
                        f"diffusion.masks.{key} ({getattr(mk, key)}) must be a multiple of "
                        f"vae.temporal_compression ({tc}): given frames must fill whole latent frames"
                    )
            if d.context_frames % tc:
                raise ConfigError(
                    f"data.context_frames ({d.context_frames}) must be a multiple of vae.temporal_compression ({tc})"
                )


# ------------------------------------------------------------------------------------ loading
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


def read_yaml_mapping(path: str | Path, error: type[Exception], what: str) -> dict:
    """A YAML file holding a mapping; every failure raises ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise error(f"{path}: expected a mapping of keys at the top level, got {type(values).__name__}")
    return values


def parse_value(raw: str):
    """A command-line value parsed as YAML (``[64, 64]``, ``true``, ``null``, ``1e-4``); kept as text when it is
    not YAML; empty = None."""
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw


def apply_override(values: dict, item: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (``[64, 64]``, ``true``, ``null``)."""
    key, sep, raw = item.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key.path=value, e.g. train.lr=1e-4")
    value = parse_value(raw)
    node = values
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def describe_keys(cls=Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every leaf key, for `vdp keys` and docs."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe_keys(tp, key + ".")
            continue
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        allowed = _constraint_text(meta)
        kind = allowed if meta.get("choices") is not None else _type_name(tp) + (f", {allowed}" if allowed else "")
        rows.append((key, kind, repr(_plain(default)), meta.get("help", "")))
    return rows


# ------------------------------------------------------------------------------------ internals
def _elastic_shorthand(values: dict) -> dict:
    """train.workers: [min, max] (Ray Train's elastic range) means train.min_workers=min, train.workers=max."""
    train = values.get("train") if isinstance(values, dict) else None
    if not isinstance(train, dict) or not isinstance(train.get("workers"), (list, tuple)):
        return values
    span = train["workers"]
    if len(span) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) for n in span):
        raise ConfigError(f"train.workers: expected a worker count or an elastic range [min, max], got {span!r}")
    if span[0] > span[1]:
        raise ConfigError(f"train.workers: an elastic range is [min, max] with min <= max, got {span!r}")
    if train.get("min_workers") is not None:
        raise ConfigError("train.workers is an elastic range [min, max]: leave train.min_workers unset")
    return {**values, "train": {**train, "workers": span[1], "min_workers": span[0]}}


def _build(cls, values: dict, prefix: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), fields, n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown key '{prefix}{key}'{hint}; valid keys here: {', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        tp, key = hints[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, key + ".")
        else:
            kwargs[name] = _coerce(value, tp, key, fields[name].metadata)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str, meta) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, meta)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        elem = args[0]
        if origin is tuple and len(args) >= 2 and args[1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {list(value)!r}")
        items = [_coerce(v, elem, f"{key}[{i}]", meta) for i, v in enumerate(value)]
        if origin is tuple and not items:
            raise ConfigError(f"{key}: expected at least one value")
        return tuple(items) if origin is tuple else items
    if origin is Literal:
        return _check_choice(value, args, key)
    out = _scalar(value, tp, key)
    if meta.get("choices") is not None:
        _check_choice(out, meta["choices"], key)
    _check_range(out, key, meta)
    return out


def _scalar(value: Any, tp: type, key: str) -> Any:
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
                return value.lower() in ("true", "yes", "on", "1")
            raise ValueError
        if tp is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):
                raise ValueError
            return out
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value).lower() if isinstance(value, bool) else str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}") from None
    raise ConfigError(f"{key}: unsupported type {tp}")


def _check_choice(value, choices, key):
    for c in choices:
        if value == c or (isinstance(value, str) and str(c) == value):
            return c
    raise ConfigError(f"{key}: {value!r} is not allowed; expected one of {list(choices)}")


_BOUNDS = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b, "lt": lambda v, b: v < b}


def _check_range(value, key, meta):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    for bound, ok in _BOUNDS.items():
        if meta.get(bound) is not None and not ok(value, meta[bound]):
            raise ConfigError(f"{key}: {value!r} is out of range; expected {_constraint_text(meta)}")


def _constraint_text(meta) -> str:
    if meta.get("choices") is not None:
        return "one of " + str(list(meta["choices"]))
    parts = [
        f"{word} {meta[b]}"
        for b, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
        if meta.get(b) is not None
    ]
    return " and ".join(parts)


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + " or null"
    if origin in (tuple, list):
        return f"a list of {_type_name(args[0]).split(' ', 1)[-1]}s"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _fill_preset(section_cfg, presets: dict, name: str, key: str, family: str) -> None:
    if name not in presets:
        raise ConfigError(f"{key}: unknown {family} preset {name!r}; expected one of {list(presets)}")
    for k, v in presets[name].items():
        if getattr(section_cfg, k) is None:
            setattr(section_cfg, k, tuple(v) if isinstance(v, list) else v)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
