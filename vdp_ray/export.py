"""Exports: a self-contained folder a Predictor loads with no Ray and no DeepSpeed.

    export/
      model.safetensors   EMA weights of the trained network (denoiser, or the VAE for a VAE-only run)
      config.yaml         the resolved config (with vae.scale_factor for latent models)
      meta.json           family, stage, steps, metrics
      vae/                for latent models: the VAE export this model was trained in
      text_encoder/       for text-conditioned models: the local text encoder (and tokenizer) it was trained with

Weights are read with safetensors only: nothing in an export is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from .config import Config, load_config
from .fsutil import check_replaceable, folder_to_read, swap_in

WEIGHTS, CONFIG, META = "model.safetensors", "config.yaml", "meta.json"
DIFFUSERS_CONFIG = "diffusers_config.json"  # a VAE export wrapping a pretrained diffusers AutoencoderKL
TEXT_ENCODER = "text_encoder"


def save_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> None:
    from safetensors.torch import save_file

    tmp = Path(str(path) + ".tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def write_export(
    directory: str | Path,
    cfg: Config,
    stage: str,
    state: dict[str, torch.Tensor],
    meta: dict,
    vae_export: str | Path | None = None,
    files: dict[str, str] | None = None,
) -> Path:
    """Write an export atomically: into a sibling temp folder, then swapped in. ``files``: extra text files. A
    latent model's export carries its VAE export (``vae_export``, else the config's ``vae.export``)."""
    directory = check_replaceable(directory, META, "an export")  # before anything is written
    if vae_export is None and stage == "dit":
        vae_export = cfg.vae.export
    tmp = directory.with_name(directory.name + ".writing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_state_dict(state, tmp / WEIGHTS)
    cfg.save(tmp / CONFIG)
    (tmp / META).write_text(json.dumps({"stage": stage, "family": cfg.model.family, **meta}, indent=2, default=str))
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    if vae_export is not None:
        shutil.copytree(vae_export, tmp / "vae")
    if stage == "dit" and cfg.text.encoder and Path(cfg.text.encoder).is_dir():  # self-contained for serving
        shutil.copytree(cfg.text.encoder, tmp / TEXT_ENCODER)
    swap_in(tmp, directory, META)
    return directory


def write_diffusers_vae_export(directory: str | Path, cfg: Config) -> Path:
    """A VAE export wrapping the local diffusers AutoencoderKL of ``cfg.vae.diffusers`` (its weights and
    config copied in), so DiT exports made on it carry it like one of our VAEs and load anywhere."""
    from .models.frame_vae import FrameVAE

    vae = FrameVAE.from_folder(cfg.vae.diffusers, cfg.data.channels)
    config = {k: v for k, v in dict(vae.ae.config).items() if not k.startswith("_") or k == "_class_name"}
    # geometry kept, no outside path; a VAE export's config names the vae stage like one we trained
    plain = cfg.updated({"vae.diffusers": None, "vae.export": None, "train.stages": ["vae"]})
    meta = {"steps": 0, "kind": "diffusers", "source": str(cfg.vae.diffusers), "scale_factor": cfg.vae.scale_factor}
    return write_export(
        directory,
        plain,
        "vae",
        vae.state_dict(),
        meta,
        files={DIFFUSERS_CONFIG: json.dumps(config, indent=1, default=list)},
    )


# The VAE settings that define a latent space: a DiT trains in (and records) those of the VAE export it uses.
VAE_GEOMETRY = (
    "preset",
    "base_channels",
    "channel_mults",
    "num_res_blocks",
    "mid_attention",
    "spatial_compression",
    "temporal_compression",
    "latent_channels",
    "scale_factor",
)


def with_vae(cfg: Config, vae_dir: str | Path, changes: dict | None = None) -> Config:
    """``cfg`` set to train in the latent space of the VAE export ``vae_dir``: its geometry and measured scale
    factor, read from the export once (on the driver) and frozen into the config every worker gets; ``changes``:
    more dotted keys to set in the same step."""
    vae = Export(vae_dir)
    if vae.stage != "vae":
        raise FileNotFoundError(f"{vae_dir}: a {vae.stage} export, not a VAE export")
    geometry = {f"vae.{k}": getattr(vae.cfg.vae, k) for k in VAE_GEOMETRY}
    return cfg.updated({**(changes or {}), "vae.export": str(vae_dir), **geometry})


def provenance(meta: dict) -> str:
    """Which weights an export holds, in words, from its ``meta.json``: the step and, under ``train.select_by``,
    the validation score that chose it. An export of step 0 after training is said plainly: training did not
    beat the untrained model (copy-last, or the motion estimate) on validation."""
    steps = meta.get("steps")
    trained = meta.get("trained_steps", steps)
    chosen = meta.get("selected_by")
    if steps is None:
        return "no training record"
    if not chosen:
        return f"the weights after {steps} steps"
    words = f"the EMA weights of step {steps} of {trained}, best on {chosen['metric']} ({chosen['value']:+.4g})"
    if steps == 0 and trained:
        words += (
            "; training did not beat the untrained model on validation, so the export is where it started "
            "(a longer run, or more data, may)"
        )
    return words


class Export:
    """A loaded export: config, metadata and the network(s), on the CPU in fp32."""

    def __init__(self, directory: str | Path):
        self.directory = folder_to_read(Path(directory), META)  # the previous export while a new one is swapped in
        for name in (WEIGHTS, CONFIG, META):
            if not (self.directory / name).is_file():
                raise FileNotFoundError(f"{self.directory}: not an export (missing {name})")
        self.cfg = load_config(self.directory / CONFIG)
        self.meta = json.loads((self.directory / META).read_text())
        self.stage = self.meta["stage"]

    def model(self) -> nn.Module:
        """The exported network with its EMA weights, in eval mode."""
        from .models import build_denoiser, build_vae

        if self.meta.get("kind") == "diffusers":
            from .models.frame_vae import FrameVAE

            config = json.loads((self.directory / DIFFUSERS_CONFIG).read_text())
            net = FrameVAE.from_config_dict(config, self.cfg.data.channels)
        else:
            net = build_vae(self.cfg) if self.stage == "vae" else build_denoiser(self.cfg)
        net.load_state_dict(load_state_dict(self.directory / WEIGHTS))
        return net.eval()

    def vae(self) -> Export | None:
        return Export(self.directory / "vae") if (self.directory / "vae").is_dir() else None

    def text_encoder(self) -> Path | None:
        """The text encoder folder of a text-conditioned export: its own copy, else the path it was trained
        with; None for a model without text."""
        if self.stage != "dit" or not self.cfg.model.dit.text_dim:
            return None
        own = self.directory / TEXT_ENCODER
        return own if own.is_dir() else Path(self.cfg.text.encoder)
